//! The pooled role must not be able to bypass row-level security.

mod support;

use support::{summarize, PgCluster, Proxy, ProxyOptions, RawClient, TENANT_A};

async fn login_error(proxy: &Proxy) -> support::ErrorFields {
    let mut c = RawClient::connect(proxy.port()).await;
    c.login("anyname", "app", &proxy.token(TENANT_A)).await.expect_err("login must fail")
}

#[tokio::test]
async fn a_superuser_upstream_is_refused_unless_overridden() {
    let pg = PgCluster::start().await;
    let options = ProxyOptions::default().upstream_user("postgres").unset("upstream", "password");
    let proxy = Proxy::start(&pg, options.clone()).await;
    let err = login_error(&proxy).await;
    assert_eq!(err.code(), "08006");
    assert!(err.message().contains("superuser"), "{}", err.message());
    assert!(proxy.log().contains("can bypass row-level security"), "{}", proxy.log());
    let allowed = Proxy::start(&pg, options.set("upstream", "allow_rls_bypassing_role", "true")).await;
    let mut c = RawClient::connect(allowed.port()).await;
    c.login("anyname", "app", &allowed.token(TENANT_A)).await.expect("override admits it");
    assert_eq!(summarize(&c.simple("SELECT 1").await), ["T", "D:1", "C:SELECT 1", "Z:I"]);
    assert!(allowed.log().contains("TENANTS ARE NOT ISOLATED"));
}

#[tokio::test]
async fn bypassrls_and_unforced_owned_tables_are_refused() {
    let pg = PgCluster::start().await;
    let su = pg.superuser().await;
    su.batch_execute("ALTER ROLE app_user BYPASSRLS").await.unwrap();
    let proxy = Proxy::start(&pg, ProxyOptions::default()).await;
    let err = login_error(&proxy).await;
    assert!(err.message().contains("BYPASSRLS"), "{}", err.message());
    su.batch_execute(
        "ALTER ROLE app_user NOBYPASSRLS; CREATE TABLE owned (tenant_id uuid); ALTER TABLE owned OWNER TO app_user; \
         ALTER TABLE owned ENABLE ROW LEVEL SECURITY;",
    )
    .await
    .unwrap();
    // New server connections are checked again: the grant changed since.
    let proxy = Proxy::start(&pg, ProxyOptions::default()).await;
    let err = login_error(&proxy).await;
    assert!(err.message().contains("owned") && err.message().contains("FORCE"), "{}", err.message());
    su.batch_execute("ALTER TABLE owned FORCE ROW LEVEL SECURITY").await.unwrap();
    let proxy = Proxy::start(&pg, ProxyOptions::default()).await;
    let mut c = RawClient::connect(proxy.port()).await;
    c.login("anyname", "app", &proxy.token(TENANT_A)).await.expect("a forced table is fine");
}
