//! Operations: `/metrics` values move with real traffic and keep tenant
//! labels bounded; `/health` is liveness; `/ready` reflects the upstream, the
//! upstream role and the RLS canary, with a JSON reason.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use support::{summarize, PgCluster, Proxy, ProxyOptions, TENANT_A, TENANT_B};

/// Parses the Prometheus text into `name{labels}` → value (comments skipped).
fn samples(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            Some((key.to_string(), value.parse().ok()?))
        })
        .collect()
}

async fn scrape(proxy: &Proxy) -> HashMap<String, f64> {
    let (status, body) = proxy.http_get("/metrics").await;
    assert_eq!(status, 200, "{body}");
    for line in body.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        assert!(line.starts_with("pgtenant_"), "metric without the pgtenant_ prefix: {line}");
    }
    samples(&body)
}

fn get(m: &HashMap<String, f64>, key: &str) -> f64 {
    m.get(key).copied().unwrap_or(0.0)
}

/// Polls `/ready` until its status is `want` after the first check; returns the body.
async fn ready_becomes(proxy: &Proxy, want: u16) -> String {
    let mut last = String::new();
    for _ in 0..150 {
        let (status, body) = proxy.http_get("/ready").await;
        if status == want && !body.contains("not checked yet") {
            return body;
        }
        last = format!("{status} {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("/ready never answered {want}; last: {last}\n{}", proxy.log());
}

fn ready_options() -> ProxyOptions {
    ProxyOptions::default().set("http", "ready_check_seconds", "1")
}

#[tokio::test]
async fn metrics_move_with_real_traffic() {
    let pg = PgCluster::start().await;
    let proxy = Proxy::start(&pg, ProxyOptions::default().pool_size(2)).await;
    let before = scrape(&proxy).await;
    assert_eq!(get(&before, "pgtenant_pool_size"), 2.0);

    let mut a = proxy.raw_login(TENANT_A).await;
    let mut b = proxy.raw_login(TENANT_B).await;
    for _ in 0..5 {
        assert_eq!(summarize(&a.simple("SELECT 1").await), ["T", "D:1", "C:SELECT 1", "Z:I"]);
    }
    assert_eq!(summarize(&b.simple("BEGIN").await), ["C:BEGIN", "Z:T"]);
    assert_eq!(summarize(&b.simple("SELECT 2").await), ["T", "D:2", "C:SELECT 1", "Z:T"]);
    let refused = b.simple("SET app.current_tenant_id = 'x'").await;
    assert_eq!(summarize(&refused), ["E:42501", "Z:E"]);
    assert!(proxy.try_connect("not-a-token").await.is_err());

    // B is mid-transaction (failed): it holds a server connection now.
    let during = scrape(&proxy).await;
    assert_eq!(get(&during, "pgtenant_clients_connected"), 2.0);
    assert!(get(&during, "pgtenant_pool_server_connections_active") >= 1.0);
    assert_eq!(get(&during, "pgtenant_active_tenants"), 2.0);
    assert_eq!(summarize(&b.simple("ROLLBACK").await), ["C:ROLLBACK", "Z:I"]);

    // The server connection goes back just after the client has its ReadyForQuery.
    let mut after = scrape(&proxy).await;
    for _ in 0..100 {
        if get(&after, "pgtenant_pool_server_connections_active") == 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        after = scrape(&proxy).await;
    }
    let moved = |key: &str| get(&after, key) - get(&before, key);
    assert!(moved("pgtenant_queries_total") >= 9.0, "queries: {}", moved("pgtenant_queries_total"));
    assert_eq!(moved("pgtenant_transactions_total"), 6.0, "five for A, one for B");
    assert_eq!(moved("pgtenant_transaction_duration_seconds_count"), 6.0);
    assert!(after.keys().any(|k| k.starts_with("pgtenant_transaction_duration_seconds_bucket{le=")), "no buckets");
    assert!(moved("pgtenant_pool_wait_seconds_count") >= 6.0);
    assert_eq!(moved("pgtenant_logins_total"), 2.0);
    assert_eq!(moved(r#"pgtenant_login_failures_total{reason="token_invalid"}"#), 1.0);
    assert_eq!(moved(r#"pgtenant_refused_statements_total{kind="tenant_setting"}"#), 1.0);
    assert!(moved("pgtenant_client_bytes_received_total") > 100.0);
    assert!(moved("pgtenant_client_bytes_sent_total") > 100.0);
    assert!(get(&after, "pgtenant_server_connects_total") >= 1.0);
    assert_eq!(get(&after, "pgtenant_pool_server_connections_active"), 0.0);
    assert!(get(&after, "pgtenant_pool_server_connections_idle") >= 1.0);
    assert!(get(&after, &format!(r#"pgtenant_tenant_transactions_total{{tenant="{TENANT_A}"}}"#)) == 5.0);
    assert!(get(&after, &format!(r#"pgtenant_tenant_transactions_total{{tenant="{TENANT_B}"}}"#)) == 1.0);

    drop((a, b));
    for _ in 0..100 {
        if get(&scrape(&proxy).await, "pgtenant_clients_connected") == 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let gone = scrape(&proxy).await;
    assert_eq!((get(&gone, "pgtenant_clients_connected"), get(&gone, "pgtenant_active_tenants")), (0.0, 0.0));
}

#[tokio::test]
async fn tenant_labels_stay_bounded() {
    let pg = PgCluster::start().await;
    let proxy = Proxy::start(&pg, ProxyOptions::default().set("http", "tenant_metrics_top", "2")).await;
    for i in 0..6 {
        let tenant = format!("cccccccc-0000-4000-8000-00000000000{i}");
        let mut c = proxy.raw_login(&tenant).await;
        for _ in 0..=i {
            assert_eq!(summarize(&c.simple("SELECT 1").await), ["T", "D:1", "C:SELECT 1", "Z:I"]);
        }
    }
    let m = scrape(&proxy).await;
    let labelled: Vec<&String> = m.keys().filter(|k| k.starts_with("pgtenant_tenant_transactions_total{")).collect();
    assert_eq!(labelled.len(), 2, "{labelled:?}");
    assert_eq!(get(&m, r#"pgtenant_tenant_transactions_total{tenant="cccccccc-0000-4000-8000-000000000005"}"#), 6.0);
    assert_eq!(get(&m, r#"pgtenant_tenant_transactions_total{tenant="cccccccc-0000-4000-8000-000000000004"}"#), 5.0);
    assert_eq!(get(&m, "pgtenant_transactions_total"), 21.0, "the total counts every tenant");
}

#[tokio::test]
async fn health_is_liveness_and_ready_checks_upstream_and_canary() {
    let pg = PgCluster::start().await;
    pg.seed_tool_calls(TENANT_A, 3).await;
    let options = ready_options().set("http", "canary_tenant", format!("\"{TENANT_A}\"")).set(
        "http",
        "canary_query",
        "\"SELECT count(*) FROM tool_calls\"",
    );
    let proxy = Proxy::start(&pg, options).await;
    assert_eq!(proxy.http_get("/health").await, (200, "ok\n".to_string()));
    let body = ready_becomes(&proxy, 200).await;
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["ready"], true);
    assert_eq!(json["checks"]["canary"], "ok");
    assert_eq!(json["checks"]["role"], "ok");

    // Upstream down: not ready, with the reason; liveness unaffected.
    pg.stop();
    let body = ready_becomes(&proxy, 503).await;
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["ready"], false);
    assert!(json["reason"].as_str().unwrap().starts_with("upstream: "), "{body}");
    assert_eq!(proxy.http_get("/health").await.0, 200);
    pg.restart();
    ready_becomes(&proxy, 200).await;
    let m = scrape(&proxy).await;
    assert_eq!(get(&m, "pgtenant_ready"), 1.0);
}

#[tokio::test]
async fn ready_fails_when_the_canary_sees_nothing_or_too_much() {
    let pg = PgCluster::start().await;
    // The canary tenant has no rows: indistinguishable from broken injection, so not ready.
    let options = ready_options().set("http", "canary_tenant", format!("\"{TENANT_B}\"")).set(
        "http",
        "canary_query",
        "\"SELECT count(*) FROM tool_calls\"",
    );
    let proxy = Proxy::start(&pg, options).await;
    let body = ready_becomes(&proxy, 503).await;
    assert!(body.contains("sees 0 rows: tenant context injection is broken"), "{body}");
    assert!(proxy.log().contains("not ready"), "{}", proxy.log());

    // A table without row-level security shows rows with no tenant set.
    let su = pg.superuser().await;
    su.batch_execute("CREATE TABLE open_table (tenant_id uuid); GRANT SELECT ON open_table TO app_user").await.unwrap();
    su.execute("INSERT INTO open_table VALUES ($1::text::uuid)", &[&TENANT_A]).await.unwrap();
    let options = ready_options().set("http", "canary_tenant", format!("\"{TENANT_A}\"")).set(
        "http",
        "canary_query",
        "\"SELECT count(*) FROM open_table\"",
    );
    let proxy = Proxy::start(&pg, options).await;
    let body = ready_becomes(&proxy, 503).await;
    assert!(body.contains("with no tenant set: row-level security is not enforced"), "{body}");
}

#[tokio::test]
async fn ready_fails_with_the_reason_when_the_role_bypasses_rls() {
    let pg = PgCluster::start().await;
    let unsafe_role = ProxyOptions::default().upstream_user("postgres").unset("upstream", "password");
    let proxy = Proxy::start(&pg, unsafe_role.clone().set("http", "ready_check_seconds", "1")).await;
    let body = ready_becomes(&proxy, 503).await;
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(json["reason"].as_str().unwrap().contains("it is a superuser"), "{body}");
    // The loudly-named override serves anyway, and says so.
    let overridden =
        unsafe_role.set("upstream", "allow_rls_bypassing_role", "true").set("http", "ready_check_seconds", "1");
    let proxy = Proxy::start(&pg, overridden).await;
    let body = ready_becomes(&proxy, 200).await;
    assert!(body.contains("overridden (upstream.allow_rls_bypassing_role)"), "{body}");
}

#[tokio::test]
async fn sigterm_drains_idle_clients_now_and_open_transactions_when_they_end() {
    let pg = PgCluster::start().await;
    let options = ProxyOptions::default().set("listen", "shutdown_timeout_seconds", "20");
    let mut proxy = Proxy::start(&pg, options).await;
    let mut idle = proxy.raw_login(TENANT_A).await;
    assert_eq!(summarize(&idle.simple("SELECT 1").await), ["T", "D:1", "C:SELECT 1", "Z:I"]);
    let mut busy = proxy.raw_login(TENANT_B).await;
    assert_eq!(summarize(&busy.simple("BEGIN").await), ["C:BEGIN", "Z:T"]);
    ready_becomes(&proxy, 200).await;

    proxy.signal("TERM");
    // The idle client is told at once, with PostgreSQL's own shutdown error.
    let msgs = idle.expect_closed().await;
    assert_eq!(summarize(&msgs), ["E:57P01"]);
    assert_eq!(msgs[0].error_fields()[&'S'], "FATAL");
    // Readiness fails as soon as the drain starts, with the reason; no new clients.
    let (status, body) = proxy.http_get("/ready").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("draining"), "{body}");
    assert!(
        tokio::net::TcpStream::connect(("127.0.0.1", proxy.port())).await.is_err(),
        "still accepting during the drain"
    );
    // The open transaction finishes normally; then the client is told.
    assert_eq!(summarize(&busy.simple("SELECT 2").await), ["T", "D:2", "C:SELECT 1", "Z:T"]);
    assert_eq!(summarize(&busy.simple("COMMIT").await), ["C:COMMIT", "Z:I"]);
    assert_eq!(summarize(&busy.expect_closed().await), ["E:57P01"]);
    let status = proxy.wait_exit(Duration::from_secs(10)).await.expect("the proxy exits after the drain");
    assert!(status.success(), "exit status {status:?}\n{}", proxy.log());
    // Idle server connections were closed with a Terminate (PostgreSQL logs a
    // dropped idle connection only at DEBUG1, so the proxy's count is the evidence).
    let log = proxy.log();
    let closed = log.split("shut down server_connections=").nth(1).and_then(|rest| rest.split_whitespace().next());
    assert!(closed.and_then(|n| n.parse::<u32>().ok()).is_some_and(|n| n >= 1), "{log}");
    let su = pg.superuser().await;
    let left: i64 =
        su.query_one("SELECT count(*) FROM pg_stat_activity WHERE usename = 'app_user'", &[]).await.unwrap().get(0);
    assert_eq!(left, 0);
}

#[tokio::test]
async fn the_drain_ends_open_transactions_at_the_shutdown_timeout() {
    let pg = PgCluster::start().await;
    let options = ProxyOptions::default().set("listen", "shutdown_timeout_seconds", "1");
    let mut proxy = Proxy::start(&pg, options).await;
    let mut stuck = proxy.raw_login(TENANT_A).await;
    assert_eq!(summarize(&stuck.simple("BEGIN").await), ["C:BEGIN", "Z:T"]);
    let insert = "INSERT INTO tool_calls (tenant_id, tool_name) VALUES (current_setting('app.current_tenant_id')::uuid, 'never')";
    assert_eq!(summarize(&stuck.simple(insert).await), ["C:INSERT 0 1", "Z:T"]);
    proxy.signal("TERM");
    assert_eq!(summarize(&stuck.expect_closed().await), ["E:57P01"]);
    let status = proxy.wait_exit(Duration::from_secs(10)).await.expect("the proxy exits");
    assert!(status.success(), "exit status {status:?}");
    // The transaction never committed.
    assert_eq!(pg.count_rows("tool_calls", TENANT_A).await, 0);
}

/// Waits until the proxy log contains `needle` `times` times.
async fn log_count_reaches(proxy: &Proxy, needle: &str, times: usize) {
    for _ in 0..200 {
        if proxy.log().matches(needle).count() >= times {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{needle:?} did not appear {times} times:\n{}", proxy.log());
}

#[tokio::test]
async fn sighup_reloads_keys_and_pool_size_without_dropping_connections() {
    let pg = PgCluster::start().await;
    let proxy = Proxy::start(&pg, ProxyOptions::default().pool_size(2)).await;
    let mut survivor = proxy.raw_login(TENANT_A).await;
    assert_eq!(summarize(&survivor.simple("BEGIN").await), ["C:BEGIN", "Z:T"]);
    let original = std::fs::read_to_string(proxy.config_path()).unwrap();
    let new_secret = "a-completely-different-secret-of-at-least-32-bytes";
    let rotated = original
        .replace(&support::toml_str(proxy.secret()), &support::toml_str(new_secret))
        .replace("pool_size = 2", "pool_size = 5");
    assert_ne!(rotated, original);
    std::fs::write(proxy.config_path(), &rotated).unwrap();
    proxy.signal("HUP");
    log_count_reaches(&proxy, "configuration reloaded", 1).await;

    // New logins need the new key; the old key no longer works.
    let new_token = support::mint(new_secret, &support::default_claims(TENANT_B));
    let client = proxy.try_connect(&new_token).await.expect("a token signed with the reloaded key");
    let row = client.query_one("SELECT current_setting('app.current_tenant_id')", &[]).await.unwrap();
    assert_eq!(row.get::<_, String>(0), TENANT_B);
    assert!(proxy.try_connect(&proxy.token(TENANT_A)).await.is_err(), "the old key still accepted");
    // The pool grew, and the open transaction went on untouched.
    assert_eq!(scrape(&proxy).await.get("pgtenant_pool_size").copied(), Some(5.0));
    assert_eq!(summarize(&survivor.simple("COMMIT").await), ["C:COMMIT", "Z:I"]);

    // A broken file is refused; the running configuration stays.
    std::fs::write(proxy.config_path(), format!("{rotated}\n[listen]\nnonsense = 1\n")).unwrap();
    proxy.signal("HUP");
    log_count_reaches(&proxy, "configuration NOT reloaded", 1).await;
    // So is a change that needs a restart.
    let moved = rotated.replace("database = \"app\"", "database = \"other\"");
    std::fs::write(proxy.config_path(), &moved).unwrap();
    proxy.signal("HUP");
    log_count_reaches(&proxy, "configuration NOT reloaded", 2).await;
    assert!(proxy.log().contains("these keys change only with a restart: upstream.host / port / database / user"));
    assert!(proxy.try_connect(&new_token).await.is_ok(), "the reloaded configuration is still in force");
    assert_eq!(summarize(&survivor.simple("SELECT 1").await), ["T", "D:1", "C:SELECT 1", "Z:I"]);
}

#[tokio::test]
async fn json_logs_have_one_line_per_lifecycle_event_and_no_secrets() {
    let pg = PgCluster::start().await;
    let proxy = Proxy::start(&pg, ProxyOptions::default().arg("--log-format").arg("json")).await;
    let token = proxy.token(TENANT_A);
    let client = proxy.try_connect(&token).await.expect("login");
    client.simple_query("SELECT 1").await.unwrap();
    drop(client);
    let forged = support::mint("not-the-secret-but-long-enough-to-be-one", &support::default_claims(TENANT_B));
    assert!(proxy.try_connect(&forged).await.is_err());
    log_count_reaches(&proxy, "client disconnected", 1).await;
    log_count_reaches(&proxy, "login refused", 1).await;

    let log = proxy.log();
    let events: Vec<serde_json::Value> = log
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
        .collect();
    let find = |message: &str| {
        events
            .iter()
            .find(|e| e["fields"]["message"] == message)
            .unwrap_or_else(|| panic!("no {message:?} event in:\n{log}"))
    };
    let login = find("client logged in");
    assert_eq!(login["fields"]["tenant"], TENANT_A);
    assert!(login["fields"]["peer"].as_str().unwrap().starts_with("127.0.0.1:"));
    let gone = find("client disconnected");
    assert_eq!(gone["fields"]["tenant"], TENANT_A);
    assert!(gone["fields"]["duration_seconds"].as_f64().unwrap() > 0.0);
    let refused = find("login refused");
    assert_eq!(refused["fields"]["code"], "28P01");
    assert_eq!(refused["fields"]["error"], "authentication failed: token signature is invalid");
    assert!(refused["fields"]["peer"].is_string());
    for secret in [token.as_str(), forged.as_str(), proxy.secret(), pg.app_password()] {
        assert!(!log.contains(secret), "a secret is in the log");
    }
    // No token fragment either (a signature or payload segment).
    for part in token.split('.').chain(forged.split('.')) {
        assert!(!log.contains(part), "a token segment is in the log");
    }
}
