//! Review findings: each test states what a direct PostgreSQL connection
//! does, and fails while the proxy does otherwise.

mod support;

use std::time::Duration;

use support::{summarize, Message, PgCluster, Proxy, ProxyOptions, RawClient, TENANT_A, TENANT_B};

const TENANT_QUERY: &str = "SELECT current_setting('app.current_tenant_id')";

async fn setup(pool_size: usize) -> (PgCluster, Proxy) {
    let pg = PgCluster::start().await;
    let proxy = Proxy::start(&pg, ProxyOptions::default().pool_size(pool_size)).await;
    (pg, proxy)
}

/// Reads up to ReadyForQuery, or returns what arrived if nothing more comes within `secs`.
async fn read_ready_within(c: &mut RawClient, secs: u64) -> Result<Vec<Message>, Vec<String>> {
    let mut got = Vec::new();
    loop {
        match c.try_read_message(Duration::from_secs(secs)).await {
            Ok(Some(m)) => {
                let done = m.tag == b'Z';
                got.push(m);
                if done {
                    return Ok(got);
                }
            }
            _ => return Err(summarize(&got)),
        }
    }
}

async fn extended_warmup(c: &mut RawClient) {
    // An ordinary extended-protocol transaction: the proxy prepares its
    // tenant statement (`pgtenant_tenant`) on this server connection.
    c.parse("", "SELECT 1", &[]).bind("", "", &[]).execute("", 0).sync();
    c.flush().await;
    assert_eq!(summarize(&c.read_until_ready().await), ["1", "2", "D:1", "C:SELECT 1", "Z:I"]);
}

// ---------------------------------------------------------------------------
// 1. Tenant isolation
// ---------------------------------------------------------------------------

/// A client binds the proxy's own tenant statement by its (fixed) server
/// name with another tenant's id. On a direct connection no such statement
/// exists (26000); through the proxy the Bind is forwarded unchanged.
#[tokio::test]
async fn r01_bind_of_the_proxys_tenant_statement_cannot_switch_tenant() {
    let (pg, proxy) = setup(1).await;
    pg.seed_tool_calls(TENANT_B, 2).await;
    let mut a = proxy.raw_login(TENANT_A).await;
    extended_warmup(&mut a).await;
    let probe = "SELECT current_setting('app.current_tenant_id') || '/' || (SELECT count(*) FROM tool_calls)";
    a.bind("", "pgtenant_tenant", &[Some(TENANT_B.as_bytes())]).execute("", 0);
    a.parse("", probe, &[]).bind("", "", &[]).execute("", 0).sync();
    a.flush().await;
    let got = summarize(&a.read_until_ready().await);
    assert!(!got.iter().any(|m| m.contains(TENANT_B)), "tenant A acted as tenant B: {got:?}");
    assert_eq!(got, ["E:26000", "Z:I"]);
}

/// The same through SQL `EXECUTE` in a simple Query.
#[tokio::test]
async fn r02_sql_execute_of_the_proxys_tenant_statement_cannot_switch_tenant() {
    let (pg, proxy) = setup(1).await;
    pg.seed_tool_calls(TENANT_B, 2).await;
    let mut a = proxy.raw_login(TENANT_A).await;
    extended_warmup(&mut a).await;
    let sql = format!("EXECUTE pgtenant_tenant('{TENANT_B}'); SELECT count(*)::text FROM tool_calls");
    let got = summarize(&a.simple(&sql).await);
    assert!(!got.iter().any(|m| m.contains(TENANT_B) || m == "D:2"), "tenant A acted as tenant B: {got:?}");
    // Direct connection: 26000; a refusal (42501/0A000) would do as well.
    assert!(got.first().is_some_and(|m| m.starts_with("E:")), "{got:?}");
}

/// A transaction that opens with a Bind of a named `BEGIN` gets the tenant
/// through the *unnamed* statement (`SET LOCAL ... = '<A>'`), which stays on
/// the server connection. The next client binds the unnamed statement
/// without parsing it and runs with tenant A.
#[tokio::test]
async fn r03_unnamed_set_local_left_by_the_injection_gives_the_next_client_tenant_a() {
    let (pg, proxy) = setup(1).await;
    pg.seed_tool_calls(TENANT_A, 3).await;
    let mut victim = proxy.raw_login(TENANT_A).await;
    // A driver with a statement cache: BEGIN and COMMIT are named statements too.
    victim.parse("begin", "BEGIN", &[]).parse("commit", "COMMIT", &[]).sync();
    victim.flush().await;
    assert_eq!(summarize(&victim.read_until_ready().await), ["1", "1", "Z:I"]);
    victim.bind("", "begin", &[]).execute("", 0).sync();
    victim.flush().await;
    assert_eq!(summarize(&victim.read_until_ready().await), ["2", "C:BEGIN", "Z:T"]);
    victim.bind("", "commit", &[]).execute("", 0).sync();
    victim.flush().await;
    assert_eq!(summarize(&victim.read_until_ready().await), ["2", "C:COMMIT", "Z:I"]);

    let mut attacker = proxy.raw_login(TENANT_B).await;
    let probe = "SELECT current_setting('app.current_tenant_id') || '/' || (SELECT count(*) FROM tool_calls)";
    attacker.bind("", "", &[]).execute("", 0);
    attacker.parse("", probe, &[]).bind("", "", &[]).execute("", 0).sync();
    attacker.flush().await;
    let got = summarize(&attacker.read_until_ready().await);
    assert!(!got.iter().any(|m| m.contains(TENANT_A)), "tenant B acted as tenant A: {got:?}");
    // A fresh session has no unnamed statement.
    assert_eq!(got, ["E:26000", "Z:I"]);
}

/// Client A's unnamed statement stays on the pooled server connection and
/// client B executes it (B sees A's query and its results).
#[tokio::test]
async fn r04_unnamed_statement_of_one_client_is_not_usable_by_another() {
    let (_pg, proxy) = setup(1).await;
    let mut a = proxy.raw_login(TENANT_A).await;
    a.parse("", "SELECT 'query text of tenant A'", &[]).sync();
    a.flush().await;
    assert_eq!(summarize(&a.read_until_ready().await), ["1", "Z:I"]);
    let mut b = proxy.raw_login(TENANT_B).await;
    b.bind("", "", &[]).execute("", 0).sync();
    b.flush().await;
    let got = summarize(&b.read_until_ready().await);
    assert_eq!(got, ["E:26000", "Z:I"], "B ran A's unnamed statement");
}

/// `SELECT set_config('search_path', ..., false)` in a named statement
/// (prepared outside a transaction, as libpq's PQprepare does) changes the
/// session, yet the server connection goes back to the pool: the next
/// tenant runs with A's search_path (wire-contract case 15).
#[tokio::test]
async fn r05_session_set_config_in_a_named_statement_does_not_reach_the_next_client() {
    let (_pg, proxy) = setup(1).await;
    let mut a = proxy.raw_login(TENANT_A).await;
    a.parse("s", "SELECT set_config('search_path', 'evil', false)", &[]).sync();
    a.flush().await;
    assert_eq!(summarize(&a.read_until_ready().await), ["1", "Z:I"]);
    a.bind("", "s", &[]).execute("", 0).sync();
    a.flush().await;
    assert_eq!(summarize(&a.read_until_ready().await), ["2", "D:evil", "C:SELECT 1", "Z:I"]);
    let mut b = proxy.raw_login(TENANT_B).await;
    let got = summarize(&b.simple("SHOW search_path").await);
    assert_eq!(got, ["T", "D:\"$user\", public", "C:SHOW", "Z:I"]);
}

/// The same for a named statement parsed inside a transaction and executed
/// again in a later one.
#[tokio::test]
async fn r06_session_set_config_executed_again_later_does_not_reach_the_next_client() {
    let (_pg, proxy) = setup(1).await;
    let mut a = proxy.raw_login(TENANT_A).await;
    assert_eq!(summarize(&a.simple("BEGIN").await), ["C:BEGIN", "Z:T"]);
    a.parse("s", "SELECT set_config('statement_timeout', '4321', false)", &[]).sync();
    a.flush().await;
    assert_eq!(summarize(&a.read_until_ready().await), ["1", "Z:T"]);
    assert_eq!(summarize(&a.simple("ROLLBACK").await), ["C:ROLLBACK", "Z:I"]);
    a.bind("", "s", &[]).execute("", 0).sync();
    a.flush().await;
    assert_eq!(summarize(&a.read_until_ready().await), ["2", "D:4321ms", "C:SELECT 1", "Z:I"]);
    let mut b = proxy.raw_login(TENANT_B).await;
    assert_eq!(summarize(&b.simple("SHOW statement_timeout").await), ["T", "D:0", "C:SHOW", "Z:I"]);
}

/// One tenant's prepared statement texts are readable by another tenant in
/// `pg_prepared_statements` of the shared server connection.
#[tokio::test]
async fn r07_prepared_statement_text_is_not_visible_to_another_tenant() {
    // Server-side statements are shared per connection; the database closes
    // this view to the app role (README, "Hardening the database").
    let (pg, proxy) = setup(1).await;
    let su = pg.superuser().await;
    su.batch_execute("REVOKE EXECUTE ON FUNCTION pg_catalog.pg_prepared_statement() FROM PUBLIC").await.unwrap();
    let mut a = proxy.raw_login(TENANT_A).await;
    a.parse("s", "SELECT 'private literal of tenant A' || $1::text", &[]).sync();
    a.bind("", "s", &[Some(b"x")]).execute("", 0).sync();
    a.flush().await;
    a.read_until_ready().await;
    a.read_until_ready().await;
    let mut b = proxy.raw_login(TENANT_B).await;
    let got = summarize(&b.simple("SELECT statement FROM pg_prepared_statements").await);
    assert!(!got.iter().any(|m| m.contains("tenant A")), "B reads A's statement text: {got:?}");
    assert_eq!(got, ["E:42501", "Z:I"]);
}

/// `DEALLOCATE pgtenant_tenant` is forwarded: the pooled connection loses
/// the tenant statement while the proxy still believes it is there, and
/// every later extended-protocol transaction of *other* tenants on that
/// connection fails.
#[tokio::test]
async fn r08_deallocate_of_the_tenant_statement_does_not_break_other_clients() {
    let (_pg, proxy) = setup(1).await;
    let mut a = proxy.raw_login(TENANT_A).await;
    extended_warmup(&mut a).await;
    let _ = a.simple("DEALLOCATE pgtenant_tenant").await;
    let mut b = proxy.raw_login(TENANT_B).await;
    b.parse("", TENANT_QUERY, &[]).bind("", "", &[]).execute("", 0).sync();
    b.flush().await;
    let got = summarize(&b.read_until_ready().await);
    assert_eq!(got, ["1", "2", &format!("D:{TENANT_B}"), "C:SELECT 1", "Z:I"]);
}

/// A simple Query inside an extended-protocol unit commits the unit's
/// implicit transaction; the steps after it run in a new transaction, which
/// the proxy does not give the tenant.
#[tokio::test]
async fn r09_steps_after_a_query_inside_an_extended_unit_keep_the_tenant() {
    let (_pg, proxy) = setup(2).await;
    let mut a = proxy.raw_login(TENANT_A).await;
    a.parse("", "SELECT 1", &[]).bind("", "", &[]).execute("", 0);
    a.query("SELECT 2");
    a.parse("", TENANT_QUERY, &[]).bind("", "", &[]).execute("", 0).sync();
    a.flush().await;
    let first = summarize(&a.read_until_ready().await);
    assert_eq!(first, ["1", "2", "D:1", "C:SELECT 1", "T", "D:2", "C:SELECT 1", "Z:I"]);
    let second = summarize(&a.read_until_ready().await);
    assert_eq!(second, ["1", "2", &format!("D:{TENANT_A}"), "C:SELECT 1", "Z:I"]);
}

// ---------------------------------------------------------------------------
// 2. Protocol desynchronisation
// ---------------------------------------------------------------------------

/// After an error in an unsynced extended unit PostgreSQL ignores a simple
/// Query too (until Sync). The proxy still expects a ReadyForQuery for it;
/// from then on every reply is attributed to the previous request, and the
/// hidden `SET LOCAL`'s CommandComplete reaches the client.
#[tokio::test]
async fn r10_query_skipped_after_an_error_does_not_desync_the_reply_queue() {
    let (_pg, proxy) = setup(2).await;
    let mut a = proxy.raw_login(TENANT_A).await;
    a.parse("", "SELECT 1/0", &[]).bind("", "", &[]).execute("", 0);
    a.query("SELECT 1");
    a.sync();
    a.flush().await;
    // (1/0 is folded when the unnamed statement is planned, at Bind.)
    assert_eq!(summarize(&a.read_until_ready().await), ["1", "E:22012", "Z:I"]);
    let got = summarize(&a.simple(TENANT_QUERY).await);
    assert_eq!(got, ["T", &format!("D:{TENANT_A}"), "C:SELECT 1", "Z:I"]);
}

/// libpq (and tokio-postgres) run COPY FROM STDIN through the extended
/// protocol and send Sync both with the Execute and after CopyDone.
/// PostgreSQL ignores a Sync during COPY; the proxy expects two
/// ReadyForQuery and desynchronises.
#[tokio::test]
async fn r11_sync_during_extended_copy_in_does_not_desync() {
    let (pg, proxy) = setup(2).await;
    let su = pg.superuser().await;
    su.batch_execute("CREATE TABLE sink (t text); GRANT INSERT, SELECT ON sink TO app_user").await.unwrap();
    let mut a = proxy.raw_login(TENANT_A).await;
    a.parse("", "COPY sink FROM STDIN", &[]).bind("", "", &[]).execute("", 0).sync();
    a.flush().await;
    let mut head = Vec::new();
    for _ in 0..3 {
        head.push(a.read_message().await);
    }
    assert_eq!(summarize(&head), ["1", "2", "G"]);
    a.raw(b'd', b"row\n").raw(b'c', b"").sync();
    a.flush().await;
    assert_eq!(summarize(&a.read_until_ready().await), ["C:COPY 1", "Z:I"]);
    let got = summarize(&a.simple(TENANT_QUERY).await);
    assert_eq!(got, ["T", &format!("D:{TENANT_A}"), "C:SELECT 1", "Z:I"]);
}

/// `BEGIN; COPY ... FROM STDIN` in one Query: the proxy stops reading client
/// messages until the transaction status is known, but the server waits for
/// the COPY data. The client hangs forever.
#[tokio::test]
async fn r12_copy_in_after_transaction_control_in_one_query_does_not_hang() {
    let (pg, proxy) = setup(2).await;
    let su = pg.superuser().await;
    su.batch_execute("CREATE TABLE sink (t text); GRANT INSERT, SELECT ON sink TO app_user").await.unwrap();
    let mut a = proxy.raw_login(TENANT_A).await;
    a.query("BEGIN; COPY sink FROM STDIN").flush().await;
    let mut head = Vec::new();
    for _ in 0..2 {
        head.push(a.read_message().await);
    }
    assert_eq!(summarize(&head), ["C:BEGIN", "G"]);
    a.raw(b'd', b"row\n").raw(b'c', b"").flush().await;
    let got = read_ready_within(&mut a, 5).await.map(|m| summarize(&m));
    assert_eq!(got, Ok(vec!["C:COPY 1".to_string(), "Z:T".to_string()]));
}

/// A client leaves while the tail of a large message it sent (here
/// CopyData outside COPY, which PostgreSQL ignores) is still being written
/// upstream; nothing is owed, so the half-written connection goes back to
/// the pool and the next client's messages are swallowed as CopyData.
#[tokio::test]
async fn r13_half_written_message_is_not_pooled() {
    let (_pg, proxy) = setup(1).await;
    let mut a = proxy.raw_login(TENANT_A).await;
    a.query("SELECT pg_sleep(0.5)");
    a.raw(b'd', &vec![b'x'; 48 << 20]);
    a.flush().await;
    assert_eq!(summarize(&a.read_until_ready().await), ["T", "D:", "C:SELECT 1", "Z:I"]);
    drop(a);
    let mut b = proxy.raw_login(TENANT_B).await;
    b.query(TENANT_QUERY).flush().await;
    let got = read_ready_within(&mut b, 5).await.map(|m| summarize(&m));
    assert_eq!(got, Ok(vec!["T".to_string(), format!("D:{TENANT_B}"), "C:SELECT 1".to_string(), "Z:I".to_string()]));
}

/// A named Parse that fails inside a transaction leaves the name registered
/// in the proxy: on PostgreSQL the name does not exist, and preparing it
/// again succeeds.
#[tokio::test]
async fn r14_failed_named_parse_does_not_keep_the_name() {
    let (_pg, proxy) = setup(2).await;
    let mut a = proxy.raw_login(TENANT_A).await;
    assert_eq!(summarize(&a.simple("BEGIN").await), ["C:BEGIN", "Z:T"]);
    a.parse("s", "SELEC 1", &[]).sync();
    a.flush().await;
    assert_eq!(summarize(&a.read_until_ready().await), ["E:42601", "Z:E"]);
    assert_eq!(summarize(&a.simple("ROLLBACK").await), ["C:ROLLBACK", "Z:I"]);
    a.parse("s", "SELECT 1", &[]).bind("", "s", &[]).execute("", 0).sync();
    a.flush().await;
    assert_eq!(summarize(&a.read_until_ready().await), ["1", "2", "D:1", "C:SELECT 1", "Z:I"]);
}

/// A statement prepared on the server while it skips to Sync after an
/// error is recorded as prepared although the server ignored the Parse;
/// later Binds on that connection fail with "does not exist".
#[tokio::test]
async fn r15_prepare_skipped_after_an_error_is_prepared_again() {
    let (_pg, proxy) = setup(1).await;
    let mut a = proxy.raw_login(TENANT_A).await;
    a.parse("x", "SELECT 42", &[]).sync();
    a.flush().await;
    assert_eq!(summarize(&a.read_until_ready().await), ["1", "Z:I"]);
    a.parse("", "SELECT 1/0", &[]).bind("", "", &[]).execute("", 0).flush_msg();
    a.flush().await;
    let mut head = Vec::new();
    for _ in 0..2 {
        head.push(a.read_message().await);
    }
    assert_eq!(summarize(&head), ["1", "E:22012"]);
    a.bind("", "x", &[]).execute("", 0).sync();
    a.flush().await;
    assert_eq!(summarize(&a.read_until_ready().await), ["Z:I"]);
    a.bind("", "x", &[]).execute("", 0).sync();
    a.flush().await;
    assert_eq!(summarize(&a.read_until_ready().await), ["2", "D:42", "C:SELECT 1", "Z:I"]);
}

/// The unnamed statement parsed in one unit and bound in the next: when it
/// is transaction control, the proxy's injection (`Parse` of the unnamed
/// statement) replaces it, and the client's BEGIN runs as `SET LOCAL`.
#[tokio::test]
async fn r16_unnamed_begin_bound_in_a_later_unit_still_begins() {
    let (_pg, proxy) = setup(1).await;
    let mut a = proxy.raw_login(TENANT_A).await;
    a.parse("", "BEGIN", &[]).sync();
    a.flush().await;
    assert_eq!(summarize(&a.read_until_ready().await), ["1", "Z:I"]);
    a.bind("", "", &[]).execute("", 0).sync();
    a.flush().await;
    assert_eq!(summarize(&a.read_until_ready().await), ["2", "C:BEGIN", "Z:T"]);
}

/// A refused *named* Parse is replaced by a stand-in Parse of the *unnamed*
/// statement, which destroys the client's own unnamed statement.
#[tokio::test]
async fn r17_refused_named_parse_keeps_the_unnamed_statement() {
    let (_pg, proxy) = setup(1).await;
    let mut a = proxy.raw_login(TENANT_A).await;
    // A failed Parse of a *named* statement does not touch the unnamed one.
    a.parse("", "SELECT 7", &[]).sync();
    a.parse("n", "SET app.current_tenant_id = 'x'", &[]).sync();
    a.bind("", "", &[]).execute("", 0).sync();
    a.flush().await;
    assert_eq!(summarize(&a.read_until_ready().await), ["1", "Z:I"]);
    assert_eq!(summarize(&a.read_until_ready().await), ["E:42501", "Z:I"]);
    assert_eq!(summarize(&a.read_until_ready().await), ["2", "D:7", "C:SELECT 1", "Z:I"]);
}

/// `DEALLOCATE s` answered by the proxy after an error that the proxy has
/// not seen yet: PostgreSQL reports 25P02 and status `E`, the proxy
/// `DEALLOCATE` and status `T`.
#[tokio::test]
async fn r18_local_deallocate_in_an_aborted_block_is_not_answered_as_success() {
    let (_pg, proxy) = setup(2).await;
    let mut a = proxy.raw_login(TENANT_A).await;
    a.parse("s", "SELECT 1", &[]).sync();
    a.flush().await;
    assert_eq!(summarize(&a.read_until_ready().await), ["1", "Z:I"]);
    assert_eq!(summarize(&a.simple("BEGIN").await), ["C:BEGIN", "Z:T"]);
    a.query("SELECT 1/0").query("DEALLOCATE s").flush().await;
    assert_eq!(summarize(&a.read_until_ready().await), ["E:22012", "Z:E"]);
    assert_eq!(summarize(&a.read_until_ready().await), ["E:25P02", "Z:E"]);
}

/// `RESET ALL` restores the values given at connection start on
/// PostgreSQL (they are the reset values); through the proxy they are
/// lost for the rest of the session.
#[tokio::test]
async fn r19_reset_all_keeps_startup_settings() {
    let (_pg, proxy) = setup(2).await;
    let mut a = RawClient::connect(proxy.port()).await;
    let params = [("user", "anyname"), ("database", "app"), ("DateStyle", "SQL, DMY")];
    a.login_with(&params, &proxy.token(TENANT_A)).await.expect("login");
    // The proxy may report the value again (ParameterStatus) whenever it
    // re-applies it on a server connection that did not have it yet, which
    // depends on which pooled connection the transaction gets.
    let show = |msgs: Vec<support::Message>| {
        let reported: Vec<_> = msgs.iter().filter(|m| m.tag == b'S').map(|m| m.parameter_status()).collect();
        assert!(reported.iter().all(|(n, v)| n == "DateStyle" && v == "SQL, DMY"), "{reported:?}");
        summarize(&msgs).into_iter().filter(|m| m != "S").collect::<Vec<String>>()
    };
    assert_eq!(show(a.simple("SHOW DateStyle").await), ["T", "D:SQL, DMY", "C:SHOW", "Z:I"]);
    let _ = a.simple("RESET ALL").await;
    assert_eq!(show(a.simple("SHOW DateStyle").await), ["T", "D:SQL, DMY", "C:SHOW", "Z:I"]);
}

// ---------------------------------------------------------------------------
// 3. Memory
// ---------------------------------------------------------------------------

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// A client that sends Syncs (answered by the proxy itself while no server
/// is attached) and never reads grows the proxy's output buffer without
/// bound.
#[tokio::test]
async fn r20_replies_the_proxy_answers_itself_are_bounded() {
    let (_pg, proxy) = setup(1).await;
    let mut a = proxy.raw_login(TENANT_A).await;
    let before = rss_kib(proxy.pid());
    // The proxy stops reading from a client that does not read its replies,
    // so these writes block once the socket buffers are full: bound the wait.
    let flood = async {
        for _ in 0..40 {
            for _ in 0..200_000 {
                a.sync();
            }
            a.flush().await;
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), flood).await;
    let grown_mib = rss_kib(proxy.pid()).saturating_sub(before) / 1024;
    assert!(grown_mib < 16, "proxy RSS grew by {grown_mib} MiB for a client that does not read");
}

/// VACUUM through the extended protocol (tokio-postgres `execute`): the
/// proxy injects the tenant in front of it in the same implicit
/// transaction (wire-contract case 9 says it is forwarded without it).
#[tokio::test]
async fn r21_vacuum_through_the_extended_protocol_behaves_as_directly() {
    let (pg, proxy) = setup(2).await;
    let direct = pg.connect_as_app_user().await;
    direct.execute("VACUUM tool_calls", &[]).await.expect("direct VACUUM via extended protocol");
    let c = proxy.connect(TENANT_A).await;
    c.execute("VACUUM tool_calls", &[]).await.expect("VACUUM via extended protocol through the proxy");
}

/// `COMMIT AND CHAIN` through the extended protocol starts a new
/// transaction; the simple-Query path sets the tenant again after it, the
/// extended path does not.
#[tokio::test]
async fn r22_extended_commit_and_chain_keeps_the_tenant() {
    let (_pg, proxy) = setup(2).await;
    let mut a = proxy.raw_login(TENANT_A).await;
    assert_eq!(summarize(&a.simple("BEGIN").await), ["C:BEGIN", "Z:T"]);
    a.parse("", "COMMIT AND CHAIN", &[]).bind("", "", &[]).execute("", 0).sync();
    a.flush().await;
    assert_eq!(summarize(&a.read_until_ready().await), ["1", "2", "C:COMMIT", "Z:T"]);
    a.parse("", TENANT_QUERY, &[]).bind("", "", &[]).execute("", 0).sync();
    a.flush().await;
    let got = summarize(&a.read_until_ready().await);
    assert_eq!(got, ["1", "2", &format!("D:{TENANT_A}"), "C:SELECT 1", "Z:T"]);
}

/// BEGIN ... COMMIT and then more statements in one extended-protocol
/// unit: the statements after COMMIT run in a new implicit transaction
/// without the tenant.
#[tokio::test]
async fn r23_statements_after_commit_in_one_extended_unit_keep_the_tenant() {
    let (_pg, proxy) = setup(2).await;
    let mut a = proxy.raw_login(TENANT_A).await;
    for sql in ["BEGIN", "SELECT 1", "COMMIT", TENANT_QUERY] {
        a.parse("", sql, &[]).bind("", "", &[]).execute("", 0);
    }
    a.sync();
    a.flush().await;
    let got = summarize(&a.read_until_ready().await);
    let row = format!("D:{TENANT_A}");
    assert_eq!(
        got,
        ["1", "2", "C:BEGIN", "1", "2", "D:1", "C:SELECT 1", "1", "2", "C:COMMIT", "1", "2", &row, "C:SELECT 1", "Z:I"]
    );
}

/// When the hidden query that brings a server connection's settings in
/// line with the client fails, the client's statements still run, with
/// the previous client's session settings.
#[tokio::test]
async fn r24_failed_settings_sync_does_not_expose_the_previous_clients_settings() {
    let (_pg, proxy) = setup(1).await;
    let mut x = proxy.raw_login(TENANT_B).await;
    // Both settings are read back after the transaction and re-applied with
    // one `SELECT set_config(...), set_config(...)`, which fails (the
    // isolation level cannot change once the SELECT took its snapshot).
    let set = "SET default_transaction_isolation = 'serializable'; SET transaction_isolation = 'serializable'";
    assert_eq!(summarize(&x.simple(set).await), ["C:SET", "C:SET", "Z:I"]);
    assert_eq!(summarize(&x.simple("SHOW transaction_isolation").await), ["T", "D:serializable", "C:SHOW", "Z:I"]);
    let mut victim = proxy.raw_login(TENANT_A).await;
    assert_eq!(summarize(&victim.simple("SET search_path = victim_private_schema").await), ["C:SET", "Z:I"]);
    // (a second query lets the proxy finish reading the setting back)
    assert_eq!(summarize(&victim.simple("SELECT 1").await), ["T", "D:1", "C:SELECT 1", "Z:I"]);
    drop(victim);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got = summarize(&x.simple("SHOW search_path").await);
    assert!(!got.iter().any(|m| m.contains("victim_private_schema")), "{got:?}");
}

/// asyncpg with `statement_cache_size=0` (the PgBouncer setting) prepares
/// the unnamed statement with Parse/Describe/Sync and binds it in the next
/// round trip. The proxy releases the server in between; the Bind lands
/// on another server connection.
#[tokio::test]
async fn r25_unnamed_statement_survives_to_the_next_unit() {
    let (_pg, proxy) = setup(2).await;
    let mut a = proxy.raw_login(TENANT_A).await;
    let mut other = proxy.raw_login(TENANT_B).await;
    // Make both server connections exist.
    assert_eq!(summarize(&other.simple("BEGIN").await), ["C:BEGIN", "Z:T"]);
    assert_eq!(summarize(&a.simple("SELECT 1").await), ["T", "D:1", "C:SELECT 1", "Z:I"]);
    assert_eq!(summarize(&other.simple("COMMIT").await), ["C:COMMIT", "Z:I"]);
    a.parse("", "SELECT $1::text || '!'", &[25]).describe_statement("").sync();
    a.flush().await;
    assert_eq!(summarize(&a.read_until_ready().await), ["1", "t", "T", "Z:I"]);
    // Another client takes the connection A just used.
    assert_eq!(summarize(&other.simple("BEGIN").await), ["C:BEGIN", "Z:T"]);
    a.bind("", "", &[Some(b"hi")]).execute("", 0).sync();
    a.flush().await;
    assert_eq!(summarize(&a.read_until_ready().await), ["2", "D:hi!", "C:SELECT 1", "Z:I"]);
}

/// `lastval()` / `currval()` are session state: after tenant A inserts, the
/// next tenant on the same server connection reads A's sequence value.
#[tokio::test]
async fn r26_sequence_values_of_another_tenant_are_not_visible() {
    let (_pg, proxy) = setup(1).await;
    let mut a = proxy.raw_login(TENANT_A).await;
    let insert = format!("INSERT INTO tool_calls (tenant_id, tool_name) VALUES ('{TENANT_A}', 'x')");
    assert_eq!(summarize(&a.simple(&insert).await), ["C:INSERT 0 1", "Z:I"]);
    let mut b = proxy.raw_login(TENANT_B).await;
    let got = summarize(&b.simple("SELECT lastval()").await);
    // Direct connection: 55000 "lastval is not yet defined in this session".
    assert_eq!(got, ["T", "E:55000", "Z:I"]);
}
