//! Tenant isolation through the proxy: wire-contract cases 1, 2, 3 and 20.

mod support;

use support::{PgCluster, Proxy, ProxyOptions, TENANT_A, TENANT_B};

const INSERT: &str = "INSERT INTO tool_calls (tenant_id, tool_name) VALUES ($1::text::uuid, $2)";

#[tokio::test]
async fn case01_each_tenant_sees_only_its_rows() {
    let pg = PgCluster::start().await;
    let proxy = Proxy::start(&pg, ProxyOptions::default()).await;
    let a = proxy.connect(TENANT_A).await;
    let b = proxy.connect(TENANT_B).await;
    a.execute(INSERT, &[&TENANT_A, &"search"]).await.unwrap();
    let seen_by_b: i64 = b.query_one("SELECT count(*) FROM tool_calls", &[]).await.unwrap().get(0);
    assert_eq!(seen_by_b, 0);
    let seen_by_a: i64 = a.query_one("SELECT count(*) FROM tool_calls", &[]).await.unwrap().get(0);
    assert_eq!(seen_by_a, 1);
    // Simple protocol too.
    let rows = b.simple_query("SELECT tool_name FROM tool_calls").await.unwrap();
    assert_eq!(rows.iter().filter(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(_))).count(), 0);
    assert_eq!(pg.count_rows("tool_calls", TENANT_A).await, 1);
}

#[tokio::test]
async fn case02_writing_another_tenants_row_violates_the_policy() {
    let pg = PgCluster::start().await;
    let proxy = Proxy::start(&pg, ProxyOptions::default()).await;
    let b = proxy.connect(TENANT_B).await;
    let err = b.execute(INSERT, &[&TENANT_A, &"forge"]).await.unwrap_err();
    let db = err.as_db_error().expect("a server error");
    assert!(db.message().contains("new row violates row-level security policy"), "{}", db.message());
    assert_eq!(pg.count_rows("tool_calls", TENANT_A).await, 0);
    // The session is still usable.
    let n: i64 = b.query_one("SELECT count(*) FROM tool_calls", &[]).await.unwrap().get(0);
    assert_eq!(n, 0);
}

#[tokio::test]
async fn case03_current_setting_is_the_tokens_tenant() {
    let pg = PgCluster::start().await;
    let proxy = Proxy::start(&pg, ProxyOptions::default()).await;
    let a = proxy.connect(TENANT_A).await;
    let row = a.query_one("SELECT current_setting('app.current_tenant_id')", &[]).await.unwrap();
    assert_eq!(row.get::<_, String>(0), TENANT_A);
    let simple = a.simple_query("SELECT current_setting('app.current_tenant_id')").await.unwrap();
    let value = simple.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
        _ => None,
    });
    assert_eq!(value.as_deref(), Some(TENANT_A));
}
