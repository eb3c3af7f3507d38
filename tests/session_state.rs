//! Session state never crosses tenants on a shared server connection
//! (wire-contract cases 15 and 16). For now the proxy closes a server
//! connection that may carry session state instead of pooling it.

mod support;

use support::{summarize, PgCluster, Proxy, ProxyOptions, RawClient, TENANT_A, TENANT_B};

async fn login(proxy: &Proxy, tenant: &str) -> RawClient {
    let mut c = RawClient::connect(proxy.port()).await;
    c.login("anyname", "app", &proxy.token(tenant)).await.expect("login");
    c
}

#[tokio::test]
async fn case15_session_set_does_not_reach_the_next_tenant() {
    let pg = PgCluster::start().await;
    let proxy = Proxy::start(&pg, ProxyOptions::default().pool_size(1)).await;
    let mut a = login(&proxy, TENANT_A).await;
    assert_eq!(summarize(&a.simple("SET search_path = evil").await), ["C:SET", "Z:I"]);
    assert_eq!(summarize(&a.simple("SELECT set_config('statement_timeout', '1234', false)").await)[0], "T");
    let mut b = login(&proxy, TENANT_B).await;
    let got = summarize(&b.simple("SHOW search_path").await);
    assert_eq!(got, ["T", "D:\"$user\", public", "C:SHOW", "Z:I"]);
    assert_eq!(summarize(&b.simple("SHOW statement_timeout").await), ["T", "D:0", "C:SHOW", "Z:I"]);
}

#[tokio::test]
async fn case16_temp_tables_listen_and_sql_prepare_do_not_reach_the_next_tenant() {
    let pg = PgCluster::start().await;
    pg.superuser().await.batch_execute("GRANT TEMP ON DATABASE app TO app_user").await.unwrap();
    let proxy = Proxy::start(&pg, ProxyOptions::default().pool_size(1)).await;
    let mut a = login(&proxy, TENANT_A).await;
    assert_eq!(summarize(&a.simple("CREATE TEMP TABLE secret AS SELECT 1 AS x").await), ["C:SELECT 1", "Z:I"]);
    assert_eq!(summarize(&a.simple("PREPARE leaked AS SELECT 42").await), ["C:PREPARE", "Z:I"]);
    assert_eq!(summarize(&a.simple("LISTEN tenant_a_channel").await), ["C:LISTEN", "Z:I"]);
    let mut b = login(&proxy, TENANT_B).await;
    assert_eq!(summarize(&b.simple("SELECT * FROM pg_temp.secret").await), ["E:42P01", "Z:I"]);
    assert_eq!(summarize(&b.simple("EXECUTE leaked").await), ["E:26000", "Z:I"]);
    let listening = summarize(&b.simple("SELECT count(*) FROM pg_listening_channels()").await);
    assert_eq!(listening, ["T", "D:0", "C:SELECT 1", "Z:I"]);
}
