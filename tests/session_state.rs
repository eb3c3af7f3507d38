//! Session state never crosses tenants on a shared server connection
//! (wire-contract cases 15 and 16), settings follow their client, and state
//! that cannot follow it is refused with a clear error.

mod support;

use support::{summarize, PgCluster, Proxy, ProxyOptions, RawClient, TENANT_A, TENANT_B};

#[tokio::test]
async fn case15_session_set_does_not_reach_the_next_tenant() {
    let pg = PgCluster::start().await;
    let proxy = Proxy::start(&pg, ProxyOptions::default().pool_size(1)).await;
    let mut a = proxy.raw_login(TENANT_A).await;
    assert_eq!(summarize(&a.simple("SET search_path = evil").await), ["C:SET", "Z:I"]);
    assert_eq!(summarize(&a.simple("SELECT set_config('statement_timeout', '1234', false)").await)[0], "T");
    let mut b = proxy.raw_login(TENANT_B).await;
    let got = summarize(&b.simple("SHOW search_path").await);
    assert_eq!(got, ["T", "D:\"$user\", public", "C:SHOW", "Z:I"]);
    assert_eq!(summarize(&b.simple("SHOW statement_timeout").await), ["T", "D:0", "C:SHOW", "Z:I"]);
}

#[tokio::test]
async fn case16_session_state_is_refused_or_never_reaches_the_next_tenant() {
    let pg = PgCluster::start().await;
    pg.superuser().await.batch_execute("GRANT TEMP ON DATABASE app TO app_user").await.unwrap();
    let proxy = Proxy::start(&pg, ProxyOptions::default().pool_size(1)).await;
    let mut a = proxy.raw_login(TENANT_A).await;
    // Temp tables work within the client's transaction...
    let temp = "BEGIN; CREATE TEMP TABLE secret AS SELECT 1 AS x; SELECT x FROM secret; COMMIT";
    assert_eq!(
        summarize(&a.simple(temp).await),
        ["C:BEGIN", "C:SELECT 1", "T", "D:1", "C:SELECT 1", "C:COMMIT", "Z:I"]
    );
    // ...and what cannot follow the client is refused with a clear error.
    for sql in ["PREPARE leaked AS SELECT 42", "LISTEN tenant_a_channel", "SELECT pg_advisory_lock(42)"] {
        let msgs = a.simple(sql).await;
        assert_eq!(summarize(&msgs), ["E:0A000", "Z:I"], "{sql}");
        assert!(msgs[0].error_fields()[&'M'].contains("transaction pooling"), "{sql}");
    }
    let hold = "BEGIN; DECLARE c CURSOR WITH HOLD FOR SELECT 1; COMMIT";
    assert_eq!(summarize(&a.simple(hold).await), ["C:BEGIN", "E:0A000", "Z:E"]);
    assert_eq!(summarize(&a.simple("ROLLBACK").await), ["C:ROLLBACK", "Z:I"]);
    // B, on the same single server connection, sees none of A's state.
    let mut b = proxy.raw_login(TENANT_B).await;
    assert_eq!(summarize(&b.simple("SELECT * FROM pg_temp.secret").await), ["E:42P01", "Z:I"]);
    assert_eq!(summarize(&b.simple("EXECUTE leaked").await), ["E:0A000", "Z:I"]);
    let listening = summarize(&b.simple("SELECT count(*) FROM pg_listening_channels()").await);
    assert_eq!(listening, ["T", "D:0", "C:SELECT 1", "Z:I"]);
    let locks = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'";
    assert_eq!(summarize(&b.simple(locks).await), ["T", "D:0", "C:SELECT 1", "Z:I"]);
}

/// The single value of a one-row, one-column result.
async fn value(c: &mut RawClient, sql: &str) -> String {
    let msgs = c.simple(sql).await;
    let row = msgs.iter().find(|m| m.tag == b'D').unwrap_or_else(|| panic!("{sql}: {:?}", summarize(&msgs)));
    row.data_row()[0].clone().unwrap_or_default()
}

#[tokio::test]
async fn session_settings_follow_the_client_to_other_server_connections() {
    let pg = PgCluster::start().await;
    let proxy = Proxy::start(&pg, ProxyOptions::default().pool_size(2)).await;
    let mut a = proxy.raw_login(TENANT_A).await;
    let mut holder = proxy.raw_login(TENANT_B).await;
    assert_eq!(summarize(&a.simple("SET search_path = tenant_a_schema, public").await), ["C:SET", "Z:I"]);
    assert_eq!(summarize(&a.simple("SET statement_timeout = '7s'").await), ["C:SET", "Z:I"]);
    let first_pid = value(&mut a, "SELECT pg_backend_pid()::text").await;
    // Keep A's last server busy so A's next transaction lands on the other one.
    let mut pids = std::collections::HashSet::new();
    for _ in 0..4 {
        assert_eq!(summarize(&holder.simple("BEGIN").await), ["C:BEGIN", "Z:T"]);
        let held = value(&mut holder, "SELECT pg_backend_pid()::text").await;
        let pid = value(&mut a, "SELECT pg_backend_pid()::text").await;
        assert_ne!(pid, held);
        pids.insert(pid);
        assert_eq!(value(&mut a, "SHOW search_path").await, "tenant_a_schema, public");
        assert_eq!(value(&mut a, "SHOW statement_timeout").await, "7s");
        // The holder's connection does not carry A's settings.
        assert_eq!(value(&mut holder, "SHOW search_path").await, "\"$user\", public");
        assert_eq!(summarize(&holder.simple("COMMIT").await), ["C:COMMIT", "Z:I"]);
    }
    pids.insert(first_pid);
    assert_eq!(pids.len(), 2, "A ran on both server connections");
}

#[tokio::test]
async fn rolled_back_and_reset_settings_are_not_reapplied() {
    let pg = PgCluster::start().await;
    let proxy = Proxy::start(&pg, ProxyOptions::default().pool_size(1)).await;
    let mut a = proxy.raw_login(TENANT_A).await;
    let mut b = proxy.raw_login(TENANT_B).await;
    let sql = "BEGIN; SET search_path = rolled_back; ROLLBACK";
    assert_eq!(summarize(&a.simple(sql).await), ["C:BEGIN", "C:SET", "C:ROLLBACK", "Z:I"]);
    assert_eq!(value(&mut b, "SHOW search_path").await, "\"$user\", public");
    assert_eq!(value(&mut a, "SHOW search_path").await, "\"$user\", public");
    assert_eq!(summarize(&a.simple("SET work_mem = '3MB'").await), ["C:SET", "Z:I"]);
    assert_eq!(value(&mut b, "SHOW work_mem").await, "4MB");
    assert_eq!(value(&mut a, "SHOW work_mem").await, "3MB");
    assert_eq!(summarize(&a.simple("RESET ALL").await), ["C:RESET", "Z:I"]);
    assert_eq!(value(&mut b, "SHOW work_mem").await, "4MB");
    assert_eq!(value(&mut a, "SHOW work_mem").await, "4MB");
}

#[tokio::test]
async fn startup_parameters_are_applied_and_reported() {
    let pg = PgCluster::start().await;
    let proxy = Proxy::start(&pg, ProxyOptions::default().pool_size(2)).await;
    let token = proxy.token(TENANT_A);
    let mut a = RawClient::connect(proxy.port()).await;
    let params = [
        ("user", "anyname"),
        ("database", "app"),
        ("application_name", "billing-worker"),
        ("TimeZone", "Asia/Tokyo"),
        ("options", "-c search_path=startup_path"),
    ];
    let info = a.login_with(&params, &token).await.expect("login");
    assert_eq!(info.params["application_name"], "billing-worker");
    assert_eq!(info.params["TimeZone"], "Asia/Tokyo");
    assert_eq!(value(&mut a, "SHOW application_name").await, "billing-worker");
    assert_eq!(value(&mut a, "SHOW TimeZone").await, "Asia/Tokyo");
    assert_eq!(value(&mut a, "SHOW search_path").await, "startup_path");
    let mut b = proxy.raw_login(TENANT_B).await;
    for _ in 0..3 {
        assert_eq!(value(&mut b, "SHOW application_name").await, "");
    }
    // A bad value fails the login as it would on PostgreSQL.
    let mut bad = RawClient::connect(proxy.port()).await;
    let params = [("user", "x"), ("database", "app"), ("TimeZone", "Mars/Olympus_Mons")];
    let err = bad.login_with(&params, &token).await.unwrap_err();
    assert_eq!(err.code(), "22023");
    assert!(err.message().contains("TimeZone") || err.message().contains("time zone"), "{}", err.message());
    // Encodings that can hide quotes from the proxy's lexer are refused.
    let mut sjis = RawClient::connect(proxy.port()).await;
    let params = [("user", "x"), ("database", "app"), ("client_encoding", "SJIS")];
    assert_eq!(sjis.login_with(&params, &token).await.unwrap_err().code(), "42501");
}
