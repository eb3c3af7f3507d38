//! Tenant injection on the wire: wire-contract cases 4 to 11, plus pipelines
//! with transaction control, checked message by message with a raw client.

mod support;

use support::{summarize, PgCluster, Proxy, ProxyOptions, TENANT_A, TENANT_B};

const TENANT_QUERY: &str = "SELECT current_setting('app.current_tenant_id')";

async fn setup() -> (PgCluster, Proxy) {
    let pg = PgCluster::start().await;
    let proxy = Proxy::start(&pg, ProxyOptions::default()).await;
    (pg, proxy)
}

fn tenant_row(tenant: &str) -> String {
    format!("D:{tenant}")
}

#[tokio::test]
async fn case04_explicit_block_in_separate_messages_keeps_the_tenant() {
    let (_pg, proxy) = setup().await;
    let mut c = proxy.raw_login(TENANT_A).await;
    assert_eq!(summarize(&c.simple("BEGIN").await), ["C:BEGIN", "Z:T"]);
    for _ in 0..3 {
        let got = summarize(&c.simple(TENANT_QUERY).await);
        assert_eq!(got, ["T", &tenant_row(TENANT_A), "C:SELECT 1", "Z:T"]);
    }
    assert_eq!(summarize(&c.simple("COMMIT").await), ["C:COMMIT", "Z:I"]);
    // Outside the block each statement is its own transaction and still sees the tenant.
    assert_eq!(summarize(&c.simple(TENANT_QUERY).await), ["T", &tenant_row(TENANT_A), "C:SELECT 1", "Z:I"]);
}

#[tokio::test]
async fn case05_begin_isolation_level_still_works() {
    let (_pg, proxy) = setup().await;
    let mut c = proxy.raw_login(TENANT_A).await;
    assert_eq!(summarize(&c.simple("BEGIN ISOLATION LEVEL SERIALIZABLE").await), ["C:BEGIN", "Z:T"]);
    let q = "SELECT current_setting('transaction_isolation') || '/' || current_setting('app.current_tenant_id')";
    assert_eq!(summarize(&c.simple(q).await), ["T", &format!("D:serializable/{TENANT_A}"), "C:SELECT 1", "Z:T"]);
    assert_eq!(summarize(&c.simple("COMMIT").await), ["C:COMMIT", "Z:I"]);
    // The same through the extended protocol, BEGIN being the first message.
    c.parse("", "BEGIN ISOLATION LEVEL REPEATABLE READ", &[]).bind("", "", &[]).execute("", 0).sync();
    c.parse("", q, &[]).bind("", "", &[]).execute("", 0).sync();
    c.flush().await;
    let first = summarize(&c.read_until_ready().await);
    assert_eq!(first, ["1", "2", "C:BEGIN", "Z:T"]);
    let second = summarize(&c.read_until_ready().await);
    assert_eq!(second, ["1", "2", &format!("D:repeatable read/{TENANT_A}"), "C:SELECT 1", "Z:T"]);
    assert_eq!(summarize(&c.simple("COMMIT").await), ["C:COMMIT", "Z:I"]);
}

#[tokio::test]
async fn case06_set_transaction_after_begin_works() {
    let (_pg, proxy) = setup().await;
    let mut c = proxy.raw_login(TENANT_A).await;
    assert_eq!(summarize(&c.simple("BEGIN").await), ["C:BEGIN", "Z:T"]);
    assert_eq!(summarize(&c.simple("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ").await), ["C:SET", "Z:T"]);
    let q = "SELECT current_setting('transaction_isolation') || '/' || current_setting('app.current_tenant_id')";
    assert_eq!(summarize(&c.simple(q).await), ["T", &format!("D:repeatable read/{TENANT_A}"), "C:SELECT 1", "Z:T"]);
    assert_eq!(summarize(&c.simple("ROLLBACK").await), ["C:ROLLBACK", "Z:I"]);
}

#[tokio::test]
async fn case07_tenant_is_set_again_after_commit_inside_one_query() {
    let (pg, proxy) = setup().await;
    let mut c = proxy.raw_login(TENANT_A).await;
    let sql = format!(
        "INSERT INTO tool_calls (tenant_id, tool_name) VALUES ('{TENANT_A}', 'x'); COMMIT; {TENANT_QUERY}; \
         BEGIN; {TENANT_QUERY}; ROLLBACK; {TENANT_QUERY}"
    );
    let got = summarize(&c.simple(&sql).await);
    let row = tenant_row(TENANT_A);
    // COMMIT outside an explicit block warns, as it does on a direct connection.
    let expected = [
        "C:INSERT 0 1",
        "N:WARNING",
        "C:COMMIT",
        "T",
        &row,
        "C:SELECT 1",
        "C:BEGIN",
        "T",
        &row,
        "C:SELECT 1",
        "C:ROLLBACK",
        "T",
        &row,
        "C:SELECT 1",
        "Z:I",
    ];
    assert_eq!(got, expected);
    assert_eq!(pg.count_rows("tool_calls", TENANT_A).await, 1);
    // AND CHAIN starts a new transaction inside the block: it needs the tenant too.
    let chained = format!("BEGIN; COMMIT AND CHAIN; {TENANT_QUERY}; COMMIT");
    assert_eq!(
        summarize(&c.simple(&chained).await),
        ["C:BEGIN", "C:COMMIT", "T", &row, "C:SELECT 1", "C:COMMIT", "Z:I"]
    );
}

#[tokio::test]
async fn case08_error_positions_point_into_the_clients_text() {
    let (_pg, proxy) = setup().await;
    let mut c = proxy.raw_login(TENANT_A).await;
    let msgs = c.simple("SELECT 1; SELEC 2").await;
    assert_eq!(summarize(&msgs), ["E:42601", "Z:I"]);
    assert_eq!(msgs[0].error_fields()[&'P'], "11");
    // Multibyte characters count as one, and an insert after COMMIT does not shift positions.
    let msgs = c.simple("SELECT 'é'; COMMIT; SELECT nosuchcolumn").await;
    let err = msgs.iter().find(|m| m.tag == b'E').expect("an error");
    assert_eq!(err.error_fields()[&'P'], "28");
    // Extended protocol: the client's own Parse text.
    c.parse("", "SELECT 1 +", &[]).sync();
    c.flush().await;
    let msgs = c.read_until_ready().await;
    assert_eq!(summarize(&msgs), ["E:42601", "Z:I"]);
    assert_eq!(msgs[0].error_fields()[&'P'], "11");
}

#[tokio::test]
async fn case09_statements_that_cannot_run_in_a_block_are_forwarded_alone() {
    let (pg, proxy) = setup().await;
    let su = pg.superuser().await;
    su.batch_execute("GRANT CREATE ON SCHEMA public TO app_user").await.unwrap();
    let mut c = proxy.raw_login(TENANT_A).await;
    assert_eq!(summarize(&c.simple("CREATE TABLE scratch (x int)").await), ["C:CREATE TABLE", "Z:I"]);
    let vacuum = summarize(&c.simple("VACUUM scratch").await);
    assert_eq!(vacuum, ["C:VACUUM", "Z:I"]);
    let create = summarize(&c.simple("CREATE INDEX CONCURRENTLY scratch_x ON scratch (x)").await);
    assert_eq!(create, ["C:CREATE INDEX", "Z:I"]);
    let drop = summarize(&c.simple("DROP INDEX CONCURRENTLY scratch_x").await);
    assert_eq!(drop, ["C:DROP INDEX", "Z:I"]);
    // Inside a block they fail exactly as they would directly.
    assert_eq!(summarize(&c.simple("BEGIN").await), ["C:BEGIN", "Z:T"]);
    assert_eq!(summarize(&c.simple("VACUUM scratch").await), ["E:25001", "Z:E"]);
    assert_eq!(summarize(&c.simple("ROLLBACK").await), ["C:ROLLBACK", "Z:I"]);
}

#[tokio::test]
async fn case10_pipelined_extended_groups_all_see_the_tenant() {
    let (_pg, proxy) = setup().await;
    let mut c = proxy.raw_login(TENANT_B).await;
    for _ in 0..3 {
        c.parse("", TENANT_QUERY, &[]).bind("", "", &[]).execute("", 0).sync();
    }
    c.flush().await;
    for _ in 0..3 {
        assert_eq!(summarize(&c.read_until_ready().await), ["1", "2", &tenant_row(TENANT_B), "C:SELECT 1", "Z:I"]);
    }
}

#[tokio::test]
async fn case11_error_in_one_group_leaves_the_next_group_with_the_tenant() {
    let (_pg, proxy) = setup().await;
    let mut c = proxy.raw_login(TENANT_A).await;
    c.parse("", "SELECT 1/(0 * random())::int", &[]).bind("", "", &[]).execute("", 0).sync();
    c.parse("", TENANT_QUERY, &[]).bind("", "", &[]).execute("", 0).sync();
    c.flush().await;
    assert_eq!(summarize(&c.read_until_ready().await), ["1", "2", "E:22012", "Z:I"]);
    assert_eq!(summarize(&c.read_until_ready().await), ["1", "2", &tenant_row(TENANT_A), "C:SELECT 1", "Z:I"]);
}

#[tokio::test]
async fn pipelined_block_across_sync_groups_keeps_one_transaction() {
    let (_pg, proxy) = setup().await;
    let mut c = proxy.raw_login(TENANT_A).await;
    c.parse("", "BEGIN", &[]).bind("", "", &[]).execute("", 0).sync();
    c.parse("", "SELECT txid_current()::text", &[]).bind("", "", &[]).execute("", 0).sync();
    c.parse("", "SELECT txid_current()::text", &[]).bind("", "", &[]).execute("", 0).sync();
    c.parse("", "COMMIT", &[]).bind("", "", &[]).execute("", 0).sync();
    c.parse("", TENANT_QUERY, &[]).bind("", "", &[]).execute("", 0).sync();
    c.flush().await;
    assert_eq!(summarize(&c.read_until_ready().await), ["1", "2", "C:BEGIN", "Z:T"]);
    let first = summarize(&c.read_until_ready().await);
    let second = summarize(&c.read_until_ready().await);
    assert_eq!(first[2], second[2], "both statements ran in one transaction");
    assert_eq!(first[4], "Z:T");
    assert_eq!(summarize(&c.read_until_ready().await), ["1", "2", "C:COMMIT", "Z:I"]);
    assert_eq!(summarize(&c.read_until_ready().await), ["1", "2", &tenant_row(TENANT_A), "C:SELECT 1", "Z:I"]);
}

#[tokio::test]
async fn transactions_of_two_tenants_on_one_server_connection_stay_apart() {
    let pg = PgCluster::start().await;
    let proxy = Proxy::start(&pg, ProxyOptions::default().pool_size(1)).await;
    let mut a = proxy.raw_login(TENANT_A).await;
    let mut b = proxy.raw_login(TENANT_B).await;
    let pid_query = "SELECT pg_backend_pid()::text || '/' || current_setting('app.current_tenant_id')";
    let mut pids = std::collections::HashSet::new();
    for _ in 0..5 {
        for (client, tenant) in [(&mut a, TENANT_A), (&mut b, TENANT_B)] {
            let msgs = client.simple(pid_query).await;
            let value = msgs[1].data_row()[0].clone().unwrap();
            let (pid, seen) = value.split_once('/').unwrap();
            assert_eq!(seen, tenant);
            pids.insert(pid.to_string());
        }
    }
    assert_eq!(pids.len(), 1, "pool_size 1 means one backend served both tenants");
    // While A holds a transaction open, B waits for the only server connection.
    assert_eq!(summarize(&a.simple("BEGIN").await), ["C:BEGIN", "Z:T"]);
    b.query(TENANT_QUERY).flush().await;
    let waited = b.try_read_message(std::time::Duration::from_millis(300)).await;
    assert!(matches!(&waited, Err(e) if e.kind() == std::io::ErrorKind::TimedOut), "{waited:?}");
    assert_eq!(summarize(&a.simple("COMMIT").await), ["C:COMMIT", "Z:I"]);
    assert_eq!(summarize(&b.read_until_ready().await), ["T", &tenant_row(TENANT_B), "C:SELECT 1", "Z:I"]);
}

#[tokio::test]
async fn injection_is_invisible_even_with_notices() {
    let (_pg, proxy) = setup().await;
    let mut c = proxy.raw_login(TENANT_A).await;
    // The extended-protocol injection must not leak its replies or warnings.
    c.parse("", "SELECT 1", &[]).bind("", "", &[]).describe_portal("").execute("", 0).sync();
    c.flush().await;
    assert_eq!(summarize(&c.read_until_ready().await), ["1", "2", "T", "D:1", "C:SELECT 1", "Z:I"]);
    assert_eq!(summarize(&c.simple("").await), ["I", "Z:I"]);
    assert_eq!(summarize(&c.simple(";").await), ["I", "Z:I"]);
}

#[tokio::test]
async fn extended_injection_binds_the_tenant_and_spares_the_unnamed_statement() {
    let pg = PgCluster::start().await;
    let proxy = Proxy::start(&pg, ProxyOptions::default().pool_size(1)).await;
    let mut c = proxy.raw_login(TENANT_A).await;
    // An unnamed statement prepared in one transaction and bound in the next
    // (same server connection: pool_size 1) is still the client's own.
    c.parse("", TENANT_QUERY, &[]).sync();
    c.flush().await;
    assert_eq!(summarize(&c.read_until_ready().await), ["1", "Z:I"]);
    c.bind("", "", &[]).execute("", 0).sync();
    c.flush().await;
    assert_eq!(summarize(&c.read_until_ready().await), ["2", &tenant_row(TENANT_A), "C:SELECT 1", "Z:I"]);
    // The tenant travels as a bound parameter, and no WARNING is logged for it.
    let su = pg.superuser().await;
    let texts: Vec<String> = su
        .query("SELECT query FROM pg_stat_activity WHERE usename = 'app_user'", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(texts.iter().all(|q| !q.contains(TENANT_A)), "{texts:?}");
    assert!(!pg.log().contains("SET LOCAL can only be used"), "{}", pg.log());
}
