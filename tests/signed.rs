//! Signed tenant context (`tenant.mode = "signed"`) on a default, not hardened,
//! PostgreSQL: SQL that changes the tenant setting where the proxy cannot see it
//! (a `DO` block, a `pg_temp` function, `query_to_xml`) reads another tenant's
//! rows in plain mode and none of them in signed mode; the proof never shows in
//! another session's view or in the logs; and everything else still works.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pgtenant::auth::signing::SigningKey;
use tokio_postgres::{Client, SimpleQueryMessage};

use support::raw::Message;
use support::{PgCluster, Proxy, ProxyOptions, TENANT_A, TENANT_B};

const KEY: &str = "signing-key-one-0123456789abcdef-0123456789";
const KEY_2: &str = "signing-key-two-0123456789abcdef-0123456789";
const ROWS_A: usize = 3;
const ROWS_B: usize = 5;

/// Statements that set the tenant setting to `{B}` where the proxy's inspector
/// cannot see it, each followed (in the same transaction) by a count of B's rows.
fn attacks() -> Vec<(&'static str, String)> {
    // Spelled in pieces so that no inspector could spot `set_config` or the setting.
    let set_b = "'SELECT set_' || 'config(''app.current_' || 'tenant_id'', ''{B}'', true)'";
    let b = TENANT_B;
    vec![
        ("DO block", format!("DO $$ BEGIN EXECUTE {set_b}; END $$")),
        (
            "pg_temp function",
            format!(
                "CREATE FUNCTION pg_temp.switch_tenant() RETURNS void LANGUAGE plpgsql \
                 AS $$ BEGIN EXECUTE {set_b}; END $$; SELECT pg_temp.switch_tenant()"
            ),
        ),
        (
            "query_to_xml",
            format!("DO $$ BEGIN EXECUTE 'SELECT query_' || 'to_xml(' || quote_literal({set_b}) || ', false, false, '''')'; END $$"),
        ),
    ]
    .into_iter()
    .map(|(name, sql)| (name, sql.replace("{B}", b)))
    .collect()
}

/// Seeds both tenants' rows.
async fn seed_rows(pg: &PgCluster) {
    pg.seed_tool_calls(TENANT_A, ROWS_A).await;
    pg.seed_tool_calls(TENANT_B, ROWS_B).await;
}

async fn count(client: &Client, sql: &str) -> i64 {
    let rows = client.simple_query(sql).await.unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    let values: Vec<i64> = rows
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get(0).and_then(|v| v.parse().ok()),
            _ => None,
        })
        .collect();
    *values.last().unwrap_or_else(|| panic!("{sql}: no count in {values:?}"))
}

/// B's rows seen by a tenant-A session after `attack`, in the same transaction.
async fn rows_of_b_after(client: &Client, attack: &str) -> i64 {
    client.batch_execute("BEGIN").await.unwrap();
    client.batch_execute(attack).await.unwrap_or_else(|e| panic!("{attack}: {e:?}"));
    let sql = format!("SELECT count(*) FROM tool_calls WHERE tenant_id = '{TENANT_B}'");
    let n = count(client, &sql).await;
    client.batch_execute("ROLLBACK").await.unwrap();
    n
}

#[tokio::test]
async fn sql_inside_the_database_reads_other_tenants_in_plain_mode() {
    let pg = PgCluster::start().await;
    seed_rows(&pg).await;
    let proxy = Proxy::start(&pg, ProxyOptions::default()).await;
    let a = proxy.connect(TENANT_A).await;
    assert_eq!(count(&a, "SELECT count(*) FROM tool_calls").await, ROWS_A as i64);
    for (name, attack) in attacks() {
        // The leak the signed mode exists for: without it these tests could not fail.
        assert_eq!(rows_of_b_after(&a, &attack).await, ROWS_B as i64, "{name} should leak in plain mode");
    }
}

#[tokio::test]
async fn sql_inside_the_database_cannot_forge_the_tenant_in_signed_mode() {
    let pg = PgCluster::start().await;
    seed_rows(&pg).await;
    pg.make_signed(&[KEY]).await;
    let proxy = Proxy::start(&pg, ProxyOptions::signed(KEY)).await;
    let a = proxy.connect(TENANT_A).await;
    assert_eq!(count(&a, "SELECT count(*) FROM tool_calls").await, ROWS_A as i64);
    for (name, attack) in attacks() {
        assert_eq!(rows_of_b_after(&a, &attack).await, 0, "{name} must not reach B's rows in signed mode");
    }
    // Extended protocol too, and the session is unharmed.
    let n: i64 = a.query_one("SELECT count(*) FROM tool_calls", &[]).await.unwrap().get(0);
    assert_eq!(n, ROWS_A as i64);
    let b = proxy.connect(TENANT_B).await;
    let n: i64 = b.query_one("SELECT count(*) FROM tool_calls", &[]).await.unwrap().get(0);
    assert_eq!(n, ROWS_B as i64);
    // A tenant that reads its own proof can replay it only for itself.
    let proof: String = a.query_one("SELECT current_setting('pgtenant.proof')", &[]).await.unwrap().get(0);
    assert_eq!(proof, SigningKey::new(KEY.as_bytes().to_vec()).unwrap().proof(TENANT_A));
    let replay = format!(
        "DO $$ BEGIN EXECUTE 'SELECT set_' || 'config(''pgtenant.' || 'proof'', ''{proof}'', true), \
         set_' || 'config(''app.current_' || 'tenant_id'', ''{TENANT_B}'', true)'; END $$"
    );
    assert_eq!(rows_of_b_after(&a, &replay).await, 0, "A's proof does not open B's rows");
    // Setting the proof directly is refused like the tenant setting.
    let err = a.batch_execute("SET pgtenant.proof = 'x'").await.unwrap_err();
    assert_eq!(err.as_db_error().map(|e| e.code().code()), Some("42501"), "{err:?}");
}

#[tokio::test]
async fn the_proof_never_shows_in_other_sessions_or_logs() {
    let pg = PgCluster::start().await;
    seed_rows(&pg).await;
    pg.make_signed(&[KEY]).await;
    let su = pg.superuser().await;
    su.batch_execute("ALTER SYSTEM SET log_statement = 'all'").await.unwrap();
    su.batch_execute("SELECT pg_reload_conf()").await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let proxy = Proxy::start(&pg, ProxyOptions::signed(KEY)).await;
    let proof = SigningKey::new(KEY.as_bytes().to_vec()).unwrap().proof(TENANT_A);
    let hmac = proof.rsplit(':').next().unwrap().to_string();

    let a = proxy.connect(TENANT_A).await;
    let b = proxy.connect(TENANT_B).await;
    // A stays inside a transaction, both protocols used, while B looks around.
    a.batch_execute("BEGIN").await.unwrap();
    assert_eq!(count(&a, "SELECT count(*) FROM tool_calls").await, ROWS_A as i64);
    let n: i64 =
        a.query_one("SELECT count(*) FROM tool_calls WHERE tool_name LIKE $1", &[&"seed-%"]).await.unwrap().get(0);
    assert_eq!(n, ROWS_A as i64);
    let seen = b.simple_query("SELECT coalesce(string_agg(query, ' | '), '') FROM pg_stat_activity").await.unwrap();
    let texts: String = seen
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        })
        .collect();
    assert!(texts.contains("tool_calls"), "B sees A's query texts on a default install: {texts}");
    assert!(!texts.contains(&hmac) && !texts.contains("v1:"), "the proof leaked into pg_stat_activity: {texts}");
    a.batch_execute("COMMIT").await.unwrap();
    drop((a, b));
    tokio::time::sleep(Duration::from_millis(200)).await;

    let server_log = pg.log();
    assert!(server_log.contains("pgtenant.proof"), "statement logging is on and shows the tenant statement");
    assert!(!server_log.contains(&hmac), "the proof leaked into the server log");
    let proxy_log = proxy.log();
    assert!(!proxy_log.contains(&hmac) && !proxy_log.contains(KEY), "the proof or key leaked into the proxy log");
}

#[tokio::test]
async fn transaction_setup_and_multi_statement_queries_work_in_signed_mode() {
    let pg = PgCluster::start().await;
    seed_rows(&pg).await;
    pg.make_signed(&[KEY]).await;
    let proxy = Proxy::start(&pg, ProxyOptions::signed(KEY).pool_size(2)).await;
    let a = proxy.connect(TENANT_A).await;
    let all = "SELECT count(*) FROM tool_calls";

    // BEGIN ISOLATION LEVEL alone, then statements (simple protocol).
    a.batch_execute("BEGIN ISOLATION LEVEL SERIALIZABLE").await.unwrap();
    a.batch_execute("SET TRANSACTION READ ONLY").await.unwrap();
    assert_eq!(count(&a, all).await, ROWS_A as i64);
    assert_eq!(show(&a, "transaction_isolation").await, "serializable");
    assert_eq!(show(&a, "transaction_read_only").await, "on");
    a.batch_execute("COMMIT").await.unwrap();

    // BEGIN ISOLATION LEVEL and statements in one Query.
    let rows = a
        .simple_query(&format!("BEGIN ISOLATION LEVEL REPEATABLE READ; {all}; SHOW transaction_isolation; COMMIT"))
        .await
        .unwrap();
    assert_eq!(row_values(&rows), vec![ROWS_A.to_string(), "repeatable read".to_string()]);

    // Extended protocol: BEGIN prepared and executed, then queries.
    a.execute("BEGIN ISOLATION LEVEL SERIALIZABLE", &[]).await.unwrap();
    let n: i64 = a.query_one(all, &[]).await.unwrap().get(0);
    assert_eq!(n, ROWS_A as i64);
    let level: String = a.query_one("SHOW transaction_isolation", &[]).await.unwrap().get(0);
    assert_eq!(level, "serializable");
    a.execute("COMMIT", &[]).await.unwrap();

    // A COMMIT followed by more statements in one Query: each transaction gets the tenant.
    let rows = a
        .simple_query(&format!(
            "{all}; COMMIT; BEGIN ISOLATION LEVEL SERIALIZABLE; {all}; SHOW transaction_isolation; COMMIT; {all}"
        ))
        .await
        .unwrap();
    let a_rows = ROWS_A.to_string();
    assert_eq!(row_values(&rows), vec![a_rows.clone(), a_rows.clone(), "serializable".into(), a_rows.clone()]);

    // COMMIT AND CHAIN: the chained transaction gets the tenant too.
    a.batch_execute("BEGIN").await.unwrap();
    assert_eq!(count(&a, &format!("{all}; COMMIT AND CHAIN")).await, ROWS_A as i64);
    assert_eq!(count(&a, all).await, ROWS_A as i64);
    a.batch_execute("COMMIT").await.unwrap();

    // Errors ahead of the tenant statement: the Query fails like on PostgreSQL,
    // positions point into the client's text, and the session goes on.
    let sql = format!("{all}; COMMIT; BEGIN ISOLATION LEVEL BOGUS; {all}");
    let err = a.simple_query(&sql).await.unwrap_err();
    let db = err.as_db_error().expect("a server error");
    assert_eq!(db.code().code(), "42601", "{db:?}");
    let at = sql.find("BOGUS").unwrap() + 1;
    assert_eq!(db.position(), Some(&tokio_postgres::error::ErrorPosition::Original(at as u32)), "{db:?}");
    let err = a.simple_query(&format!("{all}; COMMIT; SELEC 1")).await.unwrap_err();
    let at = format!("{all}; COMMIT; ").len() + 1;
    let position = err.as_db_error().and_then(|e| e.position().cloned());
    assert_eq!(position, Some(tokio_postgres::error::ErrorPosition::Original(at as u32)), "{err:?}");
    assert_eq!(count(&a, all).await, ROWS_A as i64);
}

#[tokio::test]
async fn a_failed_step_ahead_of_a_pipelined_query_does_not_swallow_the_next_one() {
    let pg = PgCluster::start().await;
    seed_rows(&pg).await;
    pg.make_signed(&[KEY]).await;
    let proxy = Proxy::start(&pg, ProxyOptions::signed(KEY)).await;
    let mut raw = proxy.raw_login(TENANT_A).await;
    raw.query("BEGIN ISOLATION LEVEL BOGUS; SELECT 1").query("SELECT count(*) FROM tool_calls");
    raw.flush().await;
    let first = raw.read_until_ready().await;
    let tags: Vec<u8> = first.iter().map(|m| m.tag).collect();
    assert_eq!(tags, b"EZ", "one error, then ReadyForQuery: {first:?}");
    assert_eq!(first[0].sqlstate(), "42601");
    assert_eq!(first[1].ready_status(), b'I');
    let second = raw.read_until_ready().await;
    let values: Vec<Option<String>> = second.iter().filter(|m| m.tag == b'D').flat_map(Message::data_row).collect();
    assert_eq!(values, vec![Some(ROWS_A.to_string())], "{second:?}");
}

#[tokio::test]
async fn copy_followed_by_a_new_transaction_in_one_query() {
    let pg = PgCluster::start().await;
    pg.make_signed(&[KEY]).await;
    // COPY FROM is not allowed into tables under RLS at all; a plain table then.
    let su = pg.superuser().await;
    su.batch_execute("CREATE TABLE notes (note text); GRANT SELECT, INSERT ON notes TO app_user").await.unwrap();
    let proxy = Proxy::start(&pg, ProxyOptions::signed(KEY)).await;
    let mut raw = proxy.raw_login(TENANT_A).await;
    // Outside a transaction block the Query stays whole (the tenant is carried
    // into the second transaction), so the COPY works as on PostgreSQL.
    raw.query("COPY notes FROM STDIN; COMMIT; SELECT pgtenant.current_tenant()");
    raw.flush().await;
    let first = raw.read_message().await;
    assert_eq!(first.tag, b'G', "CopyInResponse, got {first:?}");
    raw.raw(b'd', b"copied\n").raw(b'c', b"");
    raw.flush().await;
    let done = raw.read_until_ready().await;
    let tags: Vec<String> = done.iter().filter(|m| m.tag == b'C').map(Message::command_tag).collect();
    assert_eq!(tags, vec!["COPY 1", "COMMIT", "SELECT 1"], "{done:?}");
    let rows: Vec<Option<String>> = done.iter().filter(|m| m.tag == b'D').flat_map(Message::data_row).collect();
    assert_eq!(rows, vec![Some(TENANT_A.to_string())], "the second transaction has the verified tenant");

    // Inside a block whose tenant is still pending the proxy must send the
    // statements before the COMMIT ahead, which a COPY cannot be: refused.
    raw.simple("BEGIN").await;
    let refused = raw.simple("COPY notes FROM STDIN; COMMIT; SELECT 1").await;
    assert_eq!(refused.len(), 2, "{refused:?}");
    assert_eq!(refused[0].sqlstate(), "0A000");
    assert!(String::from_utf8_lossy(&refused[0].body).contains("separate query"), "{refused:?}");
    raw.simple("ROLLBACK").await;
    let after = raw.simple("SELECT count(*) FROM notes").await;
    let values: Vec<Option<String>> = after.iter().filter(|m| m.tag == b'D').flat_map(Message::data_row).collect();
    assert_eq!(values, vec![Some("1".to_string())], "{after:?}");
}

/// A TCP relay between the proxy and PostgreSQL that counts round trips: the
/// times the proxy sends after the server has spoken (or first).
struct Relay {
    port: u16,
    turns: Arc<AtomicUsize>,
}

impl Relay {
    async fn start(target: u16) -> Relay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let turns = Arc::new(AtomicUsize::new(0));
        let counter = turns.clone();
        tokio::spawn(async move {
            while let Ok((proxy_side, _)) = listener.accept().await {
                let server_side = tokio::net::TcpStream::connect(("127.0.0.1", target)).await.unwrap();
                tokio::spawn(relay_one(proxy_side, server_side, counter.clone()));
            }
        });
        Relay { port, turns }
    }

    fn turns(&self) -> usize {
        self.turns.load(Ordering::SeqCst)
    }
}

async fn relay_one(mut up: tokio::net::TcpStream, mut down: tokio::net::TcpStream, turns: Arc<AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut a, mut b) = (vec![0u8; 1 << 16], vec![0u8; 1 << 16]);
    let mut server_spoke_last = true;
    loop {
        tokio::select! {
            n = up.read(&mut a) => {
                let Ok(n @ 1..) = n else { return };
                if server_spoke_last {
                    turns.fetch_add(1, Ordering::SeqCst);
                    server_spoke_last = false;
                }
                if down.write_all(&a[..n]).await.is_err() { return }
            }
            n = down.read(&mut b) => {
                let Ok(n @ 1..) = n else { return };
                server_spoke_last = true;
                if up.write_all(&b[..n]).await.is_err() { return }
            }
        }
    }
}

#[tokio::test]
async fn signed_mode_adds_no_round_trip() {
    let pg = PgCluster::start().await;
    seed_rows(&pg).await;
    pg.make_signed(&[KEY]).await;
    let mut turns = Vec::new();
    for signed in [false, true] {
        let relay = Relay::start(pg.port()).await;
        let options = if signed { ProxyOptions::signed(KEY) } else { ProxyOptions::default() };
        let options = options.pool_size(1).set("upstream", "port", relay.port.to_string()).set(
            "http",
            "ready_check_seconds",
            "3600",
        );
        let proxy = Proxy::start(&pg, options).await;
        let a = proxy.connect(TENANT_A).await;
        let statement = a.prepare("SELECT count(*) FROM tool_calls WHERE id > $1").await.unwrap();
        count(&a, "SELECT 1").await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let before = relay.turns();
        for _ in 0..3 {
            count(&a, "SELECT count(*) FROM tool_calls").await;
            a.query_one(&statement, &[&0i64]).await.unwrap();
            a.batch_execute("BEGIN ISOLATION LEVEL SERIALIZABLE").await.unwrap();
            count(&a, "SELECT count(*) FROM tool_calls; COMMIT; SELECT count(*) FROM tool_calls").await;
        }
        let n = count(&a, "SELECT count(*) FROM tool_calls").await;
        assert_eq!(n, if signed { ROWS_A as i64 } else { 0 }, "plain policies were dropped by make_signed");
        turns.push(relay.turns() - before);
    }
    // One round trip per client request (3 x 4, and the last count), in both modes.
    assert_eq!(turns, vec![13, 13], "round trips to PostgreSQL (plain, signed)");
}

#[tokio::test]
async fn keys_rotate_with_two_valid_at_once() {
    let pg = PgCluster::start().await;
    seed_rows(&pg).await;
    pg.make_signed(&[KEY, KEY_2]).await;
    let key_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(key_file.path(), format!("{KEY}\n")).unwrap();
    let options = ProxyOptions::default().set("tenant", "mode", "\"signed\"").set(
        "tenant",
        "signing_key_file",
        support::proxy::toml_str(&key_file.path().display().to_string()),
    );
    let proxy = Proxy::start(&pg, options).await;
    let a = proxy.connect(TENANT_A).await;
    let all = "SELECT count(*) FROM tool_calls";
    assert_eq!(count(&a, all).await, ROWS_A as i64);

    // Switch the proxy to the second key; the connected client follows at its next transaction.
    std::fs::write(key_file.path(), KEY_2).unwrap();
    proxy.signal("HUP");
    let kid_2 = SigningKey::new(KEY_2.as_bytes().to_vec()).unwrap().kid().to_string();
    let mut switched = false;
    for _ in 0..50 {
        let proof: String = a.query_one("SELECT current_setting('pgtenant.proof')", &[]).await.unwrap().get(0);
        if proof.contains(&kid_2) {
            switched = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(switched, "the reload did not switch keys: {}", proxy.log());
    let kid_1 = SigningKey::new(KEY.as_bytes().to_vec()).unwrap().kid().to_string();
    let su = pg.superuser().await;
    let removed: bool = su.query_one("SELECT pgtenant.remove_signing_key($1)", &[&kid_1]).await.unwrap().get(0);
    assert!(removed);
    assert_eq!(count(&a, all).await, ROWS_A as i64, "the new key works alone");
    assert!(!proxy.log().contains(KEY_2), "the key is never logged");

    // A proxy still on the removed key sees nothing: fail closed.
    let stale = Proxy::start(&pg, ProxyOptions::signed(KEY)).await;
    let old = stale.connect(TENANT_A).await;
    assert_eq!(count(&old, all).await, 0);
}

#[tokio::test]
async fn readiness_checks_the_signed_setup() {
    let pg = PgCluster::start().await;
    seed_rows(&pg).await;
    let ready_fast = |options: ProxyOptions| options.set("http", "ready_check_seconds", "1");
    // Signed mode against a database without the signed setup: not ready, and why.
    let bare = Proxy::start(&pg, ready_fast(ProxyOptions::signed(KEY))).await;
    let (status, body) = wait_ready(&bare).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("pgtenant.current_tenant() failed") && body.contains("policy --signed"), "{body}");
    drop(bare);

    pg.make_signed(&[KEY]).await;
    let canary = |key: &str| {
        ready_fast(ProxyOptions::signed(key)).set("http", "canary_tenant", format!("\"{TENANT_A}\"")).set(
            "http",
            "canary_query",
            "\"SELECT count(*) FROM tool_calls\"",
        )
    };
    let good = Proxy::start(&pg, canary(KEY)).await;
    let (status, body) = wait_ready(&good).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"signed\":\"ok\"") && body.contains("\"canary\":\"ok\""), "{body}");
    // A key the database does not know: the signed check says which one, with or
    // without a canary.
    let kid = SigningKey::new(KEY_2.as_bytes().to_vec()).unwrap().kid().to_string();
    for options in [canary(KEY_2), ready_fast(ProxyOptions::signed(KEY_2))] {
        let wrong = Proxy::start(&pg, options).await;
        let (status, body) = wait_ready(&wrong).await;
        assert_eq!(status, 503, "{body}");
        assert!(body.contains("does not accept this proxy's proofs") && body.contains(&kid), "{body}");
    }
}

/// Statements mixed into random queries: transaction setup and control, reads,
/// errors at different places (syntax, runtime, isolation too late).
const VOCABULARY: &[&str] = &[
    "BEGIN",
    "BEGIN ISOLATION LEVEL SERIALIZABLE",
    "START TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY",
    "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
    "SET TRANSACTION READ ONLY",
    "COMMIT",
    "ROLLBACK",
    "COMMIT AND CHAIN",
    "SAVEPOINT s",
    "ROLLBACK TO SAVEPOINT s",
    "SELECT count(*) FROM tool_calls",
    "SHOW transaction_isolation",
    "VERIFY",
    "SET LOCAL statement_timeout = 0",
    "SHOW statement_timeout",
    "LOCK TABLE tool_calls IN SHARE MODE",
    "RELEASE SAVEPOINT s",
    "SELEC 1",
    "SELECT 1/0",
];

/// What a reply sequence means, without the data that differs by tenant.
fn shape(messages: &[Message]) -> Vec<String> {
    messages
        .iter()
        .filter_map(|m| match m.tag {
            b'E' => Some(format!("E {}", m.sqlstate())),
            b'Z' => Some(format!("Z {}", m.ready_status() as char)),
            b'C' => Some(format!("C {}", m.command_tag())),
            b'T' | b'D' | b'I' | b's' | b'n' | b'1' | b'2' | b'3' => Some((m.tag as char).to_string()),
            _ => None, // notices and parameter changes may legitimately differ
        })
        .collect()
}

/// Sends one simple Query or one extended unit (Parse/Bind/Describe/Execute per
/// statement, one Sync) and reads its replies.
async fn send(client: &mut support::RawClient, statements: &[&str], extended: bool) -> Vec<Message> {
    if extended {
        for sql in statements {
            client.parse("", sql, &[]).bind("", "", &[]).describe_portal("").execute("", 0);
        }
        client.sync();
    } else {
        client.query(&statements.join("; "));
    }
    client.flush().await;
    client.read_until_ready().await
}

/// Whether a statement list ends a transaction (or rolls back to a savepoint)
/// before its last statement, or opens with a statement that may run before
/// the tenant (an over-approximation of the shapes signed mode sends in parts).
fn may_go_in_parts(statements: &[&str]) -> bool {
    let starts = |s: &str, words: &[&str]| words.iter().any(|w| s.to_ascii_uppercase().starts_with(w));
    let ends = ["COMMIT", "ROLLBACK", "END", "ABORT"];
    let ahead = ["BEGIN", "START", "SET", "SHOW", "SAVEPOINT", "RELEASE", "LOCK", "COMMIT", "ROLLBACK"];
    let n = statements.len();
    statements[..n - 1].iter().any(|s| starts(s, &ends)) || (n > 1 && starts(statements[0], &ahead))
}

/// Random mixes of [`VOCABULARY`], as simple Queries and extended units, through
/// the proxy and directly: the same replies (tags, errors, statuses), and every
/// verification that runs sees the client's tenant. `VERIFY` stands for the
/// mode's check: the database-verified tenant in signed mode, the setting in plain.
async fn differential(signed: bool, seed: u64, rounds: usize) {
    let pg = PgCluster::start().await;
    seed_rows(&pg).await;
    let options = if signed {
        pg.make_signed(&[KEY]).await;
        ProxyOptions::signed(KEY)
    } else {
        ProxyOptions::default()
    };
    let proxy = Proxy::start(&pg, options.pool_size(2)).await;
    let verify = if signed {
        "SELECT pgtenant.current_tenant() IS NOT DISTINCT FROM 'TENANT' AS verified".replace("TENANT", TENANT_A)
    } else {
        "SELECT current_setting('app.current_tenant_id', true) IS NOT DISTINCT FROM 'TENANT'"
            .replace("TENANT", TENANT_A)
    };
    let mut through = proxy.raw_login(TENANT_A).await;
    let mut direct = support::RawClient::connect(pg.port()).await;
    direct.login("postgres", "app", "").await.expect("direct login");
    let mut state = seed;
    let mut next = |n: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % n as u64) as usize
    };
    let (mut verified, mut parts) = (0, 0);
    let mut outside = true;
    for round in 0..rounds {
        let statements: Vec<String> = (0..1 + next(4))
            .map(|_| match VOCABULARY[next(VOCABULARY.len())] {
                "VERIFY" => verify.clone(),
                other => other.to_string(),
            })
            .collect();
        let statements: Vec<&str> = statements.iter().map(String::as_str).collect();
        let extended = next(3) == 0;
        let got = send(&mut through, &statements, extended).await;
        let want = send(&mut direct, &statements, extended).await;
        for row in got.iter().filter(|m| m.tag == b'D').map(Message::data_row) {
            if let [Some(v)] = row.as_slice() {
                if v == "t" || v == "f" {
                    assert_eq!(v, "t", "round {round}: a transaction ran without the tenant: {statements:?}");
                    verified += 1;
                }
            }
        }
        // The shapes signed mode may send in parts (README, signed-mode limits):
        // inside a transaction block, a simple Query that ends a transaction and
        // goes on, or that opens with statements the tenant must follow. A late
        // syntax error is then found after the earlier parts ran, so these are
        // only checked for the tenant; then both sides start afresh.
        if signed && !outside && !extended && may_go_in_parts(&statements) {
            parts += 1;
            through.simple("ROLLBACK").await;
            direct.simple("ROLLBACK").await;
            outside = true;
            continue;
        }
        assert_eq!(shape(&got), shape(&want), "round {round}, extended {extended}: {statements:?}");
        outside = want.last().map(Message::ready_status) == Some(b'I');
    }
    eprintln!("{rounds} rounds, {verified} verifications, {parts} sent in parts");
    assert!(verified > rounds / 40, "too few verifications ran to mean anything: {verified}");
}

#[tokio::test]
async fn random_transaction_mixes_behave_as_on_postgresql_and_always_carry_the_tenant() {
    differential(true, 0x2545_f491_4f6c_dd1d, 1500).await;
}

#[tokio::test]
async fn random_transaction_mixes_in_plain_mode_too() {
    differential(false, 0x9e37_79b9_7f4a_7c15, 1500).await;
}

/// A pgbench script that fails (division by zero) unless the database verifies
/// `tenant` (not just reads the setting), in autocommit statements and after
/// `BEGIN ISOLATION LEVEL REPEATABLE READ`.
fn verified_tenant_script(tenant: &str) -> String {
    format!(
        "SELECT pgtenant.current_tenant() IS NOT DISTINCT FROM '{tenant}' AS ok \\gset\n\
         \\if :ok\n\
         SELECT count(*) FROM tool_calls;\n\
         \\else\n\
         SELECT 1/0 AS wrong_tenant;\n\
         \\endif\n\
         BEGIN ISOLATION LEVEL REPEATABLE READ;\n\
         SELECT pgtenant.current_tenant() IS NOT DISTINCT FROM '{tenant}' \
           AND current_setting('transaction_isolation') = 'repeatable read' AS ok_in_tx \\gset\n\
         SELECT count(*) FROM tool_calls;\n\
         END;\n\
         \\if :ok_in_tx\n\
         \\else\n\
         SELECT 1/0 AS wrong_tenant;\n\
         \\endif\n"
    )
}

/// Runs pgbench through `proxy` as `tenant`; returns (success, output).
async fn pgbench(proxy: &Proxy, tenant: &str, args: &[&str]) -> (bool, String) {
    let out = tokio::process::Command::new(support::pg::pgbench_bin())
        .args(["-h", "127.0.0.1", "-U", "anyname", "-p", &proxy.port().to_string()])
        .args(args)
        .arg("app")
        .env("PGPASSWORD", proxy.token(tenant))
        .output()
        .await
        .expect("run pgbench");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

#[tokio::test]
async fn pgbench_in_every_protocol_mode_sees_the_verified_tenant() {
    let pg = PgCluster::start().await;
    seed_rows(&pg).await;
    pg.make_signed(&[KEY]).await;
    let proxy = Proxy::start(&pg, ProxyOptions::signed(KEY).pool_size(3)).await;
    let dir = tempfile::tempdir().unwrap();
    for mode in ["simple", "extended", "prepared"] {
        let mut runs = Vec::new();
        for tenant in [TENANT_A, TENANT_B] {
            let path = dir.path().join(format!("{mode}-{tenant}.sql"));
            std::fs::write(&path, verified_tenant_script(tenant)).unwrap();
            runs.push((tenant, path.display().to_string()));
        }
        let run = |(tenant, path): (&'static str, String)| {
            let proxy = &proxy;
            async move { pgbench(proxy, tenant, &["-n", "-c", "4", "-j", "2", "-t", "50", "-M", mode, "-f", &path]).await }
        };
        let ((ok_a, out_a), (ok_b, out_b)) = tokio::join!(run(runs[0].clone()), run(runs[1].clone()));
        for (ok, out) in [(ok_a, out_a), (ok_b, out_b)] {
            assert!(ok && out.contains("number of transactions actually processed: 200/200"), "{mode}: {out}");
            assert!(out.contains("number of failed transactions: 0 (0.000%)"), "{mode}: {out}");
        }
        // The script really checks: with the other tenant's token it fails.
        let (ok, out) = pgbench(&proxy, TENANT_B, &["-n", "-c", "1", "-t", "1", "-M", mode, "-f", &runs[0].1]).await;
        assert!(!ok && out.contains("division by zero"), "{mode}: {out}");
    }
}

async fn wait_ready(proxy: &Proxy) -> (u16, String) {
    let mut last = (0, String::new());
    for _ in 0..100 {
        last = proxy.http_get("/ready").await;
        if !last.1.contains("not checked yet") {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    last
}

async fn show(client: &Client, name: &str) -> String {
    let rows = client.simple_query(&format!("SHOW {name}")).await.unwrap();
    row_values(&rows).pop().unwrap()
}

fn row_values(messages: &[SimpleQueryMessage]) -> Vec<String> {
    messages
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        })
        .collect()
}
