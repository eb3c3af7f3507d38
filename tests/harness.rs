//! Tests of the test harness itself against real PostgreSQL clusters (no proxy involved).

mod support;

use support::{cancel, summarize, PgCluster, RawClient, TENANT_A, TENANT_B};
use tokio_postgres::Client;

/// Runs `sql` in a transaction that first sets the tenant, as the proxy will; returns the
/// first column of the first row as i64 (for `count(*)`), or the error text.
async fn as_tenant(client: &mut Client, tenant: &str, sql: &str) -> Result<i64, String> {
    let tx = client.transaction().await.map_err(|e| e.to_string())?;
    tx.batch_execute(&format!("SET LOCAL app.current_tenant_id = '{tenant}'")).await.map_err(|e| e.to_string())?;
    let rows = tx.query(sql, &[]).await.map_err(db_message)?;
    tx.commit().await.map_err(|e| e.to_string())?;
    Ok(rows.first().map_or(0, |r| r.get(0)))
}

fn db_message(e: tokio_postgres::Error) -> String {
    e.as_db_error().map_or_else(|| e.to_string(), |db| db.message().to_string())
}

const COUNT: &str = "SELECT count(*) FROM tool_calls";
const INSERT_A: &str = "INSERT INTO tool_calls (tenant_id, tool_name) \
                        VALUES ('aaaaaaaa-0000-4000-8000-00000000000a', 'search') RETURNING 1::bigint";

#[tokio::test]
async fn rls_isolates_tenants_on_a_direct_connection() {
    let pg = PgCluster::start().await;
    let mut app = pg.connect_as_app_user().await;
    assert_eq!(as_tenant(&mut app, TENANT_A, INSERT_A).await, Ok(1));
    assert_eq!(as_tenant(&mut app, TENANT_B, COUNT).await, Ok(0));
    assert_eq!(as_tenant(&mut app, TENANT_A, COUNT).await, Ok(1));
    assert_eq!(pg.count_rows("tool_calls", TENANT_A).await, 1);
}

#[tokio::test]
async fn inserting_another_tenants_row_is_refused() {
    let pg = PgCluster::start().await;
    let mut app = pg.connect_as_app_user().await;
    let err = as_tenant(&mut app, TENANT_B, INSERT_A).await.unwrap_err();
    assert!(err.contains("new row violates row-level security policy"), "{err}");
}

#[tokio::test]
async fn without_a_tenant_setting_no_rows_are_visible() {
    let pg = PgCluster::start().await;
    assert_eq!(pg.seed_tool_calls(TENANT_A, 3).await.len(), 3);
    assert_eq!(pg.count_rows("tool_calls", TENANT_A).await, 3);
    let mut app = pg.connect_as_app_user().await;
    let never_set: i64 = app.query_one(COUNT, &[]).await.unwrap().get(0);
    assert_eq!(never_set, 0);
    // After a transaction used the setting, it reads '' (not NULL); NULLIF keeps it closed.
    assert_eq!(as_tenant(&mut app, TENANT_A, COUNT).await, Ok(3));
    let after_use: i64 = app.query_one(COUNT, &[]).await.unwrap().get(0);
    assert_eq!(after_use, 0);
}

#[tokio::test]
async fn md5_user_logs_in_with_an_md5_stored_password() {
    let pg = PgCluster::start().await;
    let su = pg.superuser().await;
    let stored: String =
        su.query_one("SELECT rolpassword FROM pg_authid WHERE rolname = 'md5_user'", &[]).await.unwrap().get(0);
    assert!(stored.starts_with("md5"), "{stored}");
    let password = pg.md5_password().to_string();
    let mut md5 = pg.connect_as("md5_user", &password, "app").await;
    assert_eq!(as_tenant(&mut md5, TENANT_A, COUNT).await, Ok(0));
}

#[tokio::test]
async fn restart_keeps_the_port_and_accepts_new_connections() {
    let pg = PgCluster::start().await;
    let port = pg.port();
    let before = pg.connect_as_app_user().await;
    pg.restart();
    assert_eq!(pg.port(), port);
    assert!(before.simple_query("SELECT 1").await.is_err());
    let after = pg.connect_as_app_user().await;
    after.simple_query("SELECT 1").await.unwrap();
    pg.stop();
    pg.restart(); // also starts a stopped server
    pg.superuser().await.simple_query("SELECT 1").await.unwrap();
    assert!(pg.log().contains("database system is ready"));
}

#[tokio::test]
async fn two_clusters_run_side_by_side() {
    let (one, two) = tokio::join!(PgCluster::start(), PgCluster::start());
    assert_ne!(one.port(), two.port());
    assert_ne!(one.socket_dir(), two.socket_dir());
    one.seed_tool_calls(TENANT_A, 2).await;
    assert_eq!(one.count_rows("tool_calls", TENANT_A).await, 2);
    assert_eq!(two.count_rows("tool_calls", TENANT_A).await, 0);
}

#[tokio::test]
async fn raw_client_speaks_the_protocol_to_postgres() {
    let pg = PgCluster::start().await;
    let mut raw = RawClient::connect(pg.port()).await;
    let info = raw.login("postgres", "app", "").await.expect("trust login");
    assert!(info.params.contains_key("server_version"), "{info:?}");
    assert_ne!(info.backend_key, (0, 0));

    let simple = raw.simple("SELECT 1").await;
    assert_eq!(summarize(&simple), ["T", "D:1", "C:SELECT 1", "Z:I"]);
    assert_eq!(simple[0].row_description(), ["?column?"]);

    raw.parse("s1", "SELECT $1::text, NULL::int", &[])
        .bind("", "s1", &[Some(b"foo")])
        .describe_portal("")
        .execute("", 0)
        .close_statement("s1")
        .sync();
    raw.flush().await;
    let extended = summarize(&raw.read_until_ready().await);
    assert_eq!(extended, ["1", "2", "T", "D:foo,NULL", "C:SELECT 1", "3", "Z:I"]);

    let error = raw.simple("SELEC 1").await;
    assert_eq!(summarize(&error), ["E:42601", "Z:I"]);
    assert_eq!(error[0].error_fields()[&'P'], "1");

    let notice = raw.simple("BEGIN; BEGIN").await;
    assert_eq!(summarize(&notice), ["C:BEGIN", "N:WARNING", "C:BEGIN", "Z:T"]);
}

#[tokio::test]
async fn raw_client_cancels_a_running_query() {
    let pg = PgCluster::start().await;
    let mut raw = RawClient::connect(pg.port()).await;
    let info = raw.login("postgres", "app", "").await.expect("trust login");
    raw.query("SELECT pg_sleep(30)");
    raw.flush().await;
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let (pid, secret) = info.backend_key;
    cancel(pg.port(), pid, secret).await;
    let replies = summarize(&raw.read_until_ready().await);
    assert_eq!(replies.last().map(String::as_str), Some("Z:I"));
    assert!(replies.contains(&"E:57014".to_string()), "{replies:?}");
    raw.terminate().flush().await;
    assert!(raw.expect_closed().await.is_empty());
}
