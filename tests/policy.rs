//! `pgtenant policy`: from tables that have the tenant column but no RLS, its output (applied
//! twice) isolates tenants through the proxy, and doctor finds nothing wrong with the tables.
//! `pgtenant policy --signed`: only a proof made with a loaded key opens a tenant's rows, so SQL
//! that sets the tenant setting (a `DO` block, a `pg_temp` function, `query_to_xml`) reaches
//! no other tenant's rows, where the plain policies let it.

mod support;

use std::process::{Command, Output};

use pgtenant::auth::signing::SigningKey;
use serde_json::Value;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, SimpleQueryMessage};

use support::{PgCluster, Proxy, ProxyOptions, TENANT_A, TENANT_B};

const INSERT: &str = "INSERT INTO tool_calls (tenant_id, tool_name) VALUES ($1::text::uuid, $2)";

/// Undoes the reference schema's RLS: no policies, RLS off, no grants, no tenant index.
const STRIP_RLS: &str = "
    DO $$
    DECLARE t text;
    BEGIN
      FOREACH t IN ARRAY ARRAY['tool_calls', 'tool_events', 'tenant_config'] LOOP
        EXECUTE format('DROP POLICY %I ON %I', t || '_select', t);
        EXECUTE format('DROP POLICY %I ON %I', t || '_insert', t);
        EXECUTE format('DROP POLICY %I ON %I', t || '_update', t);
        EXECUTE format('DROP POLICY %I ON %I', t || '_delete', t);
        EXECUTE format('ALTER TABLE %I NO FORCE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I DISABLE ROW LEVEL SECURITY', t);
        EXECUTE format('REVOKE ALL ON %I FROM app_user, md5_user', t);
      END LOOP;
    END $$;
    DROP INDEX tool_calls_tenant_id_idx, tool_events_tenant_id_idx;
    REVOKE USAGE ON ALL SEQUENCES IN SCHEMA public FROM app_user, md5_user;
    CREATE TABLE plans (id int PRIMARY KEY, name text);";

fn pgtenant(args: &[&str]) -> Output {
    support::proxy::run_cli(args)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn policy_sql(url: &str) -> String {
    let out = pgtenant(&["policy", "--database-url", url]);
    assert_eq!(out.status.code(), Some(0), "policy failed: {}", text(&out.stderr));
    text(&out.stdout)
}

#[tokio::test]
async fn policy_output_applied_twice_isolates_tenants() {
    let pg = PgCluster::start().await;
    let url = format!("postgres://postgres@127.0.0.1:{}/app?sslmode=disable", pg.port());
    let su = pg.superuser().await;
    su.batch_execute(STRIP_RLS).await.expect("strip RLS");

    let sql = policy_sql(&url);
    assert!(sql
        .contains("-- Tables with the tenant column (3): public.tenant_config, public.tool_calls, public.tool_events"));
    assert!(sql.contains("-- Tables without it, left alone (1): public.plans"), "{sql}");
    assert!(sql.contains("CREATE INDEX IF NOT EXISTS tool_calls_tenant_id_idx ON public.tool_calls (tenant_id);"));
    assert!(sql.contains("-- index led by tenant_id: tenant_config_pkey (exists)"), "{sql}");
    assert!(sql.contains("GRANT USAGE ON SEQUENCE public.tool_calls_id_seq TO app_user;"), "{sql}");
    assert!(!sql.contains("plans ("), "tables without the column are left alone");
    su.batch_execute(&sql).await.unwrap_or_else(|e| panic!("first apply: {e:?}\n{sql}"));
    su.batch_execute(&sql).await.unwrap_or_else(|e| panic!("second apply: {e:?}\n{sql}"));
    // Generated again from the new state, it still applies (the index now exists).
    let again = policy_sql(&url);
    assert!(again.contains("-- index led by tenant_id: tool_calls_tenant_id_idx (exists)"), "{again}");
    su.batch_execute(&again).await.unwrap_or_else(|e| panic!("third apply: {e:?}\n{again}"));
    let policies: i64 =
        su.query_one("SELECT count(*) FROM pg_policy WHERE polname LIKE 'pgtenant\\_%'", &[]).await.unwrap().get(0);
    assert_eq!(policies, 12, "four policies on each of three tables, not duplicated");

    // The isolation behaviour of tests/isolation.rs, through the proxy.
    let proxy = Proxy::start(&pg, ProxyOptions::default()).await;
    let a = proxy.connect(TENANT_A).await;
    let b = proxy.connect(TENANT_B).await;
    a.execute(INSERT, &[&TENANT_A, &"search"]).await.expect("tenant A inserts its own row");
    let seen_by_a: i64 = a.query_one("SELECT count(*) FROM tool_calls", &[]).await.unwrap().get(0);
    let seen_by_b: i64 = b.query_one("SELECT count(*) FROM tool_calls", &[]).await.unwrap().get(0);
    assert_eq!((seen_by_a, seen_by_b), (1, 0));
    let rows = b.simple_query("SELECT tool_name FROM tool_calls").await.unwrap();
    assert_eq!(rows.iter().filter(|m| matches!(m, SimpleQueryMessage::Row(_))).count(), 0);
    let err = b.execute(INSERT, &[&TENANT_A, &"forge"]).await.unwrap_err();
    let message = err.as_db_error().expect("a server error").message().to_string();
    assert!(message.contains("new row violates row-level security policy"), "{message}");
    let moved = b.execute("UPDATE tool_calls SET tool_name = 'x'", &[]).await.unwrap();
    let deleted = b.execute("DELETE FROM tool_calls", &[]).await.unwrap();
    assert_eq!((moved, deleted), (0, 0));
    assert_eq!(pg.count_rows("tool_calls", TENANT_A).await, 1);
    // A session with no tenant sees nothing.
    let direct = pg.connect_as_app_user().await;
    let n: i64 = direct.query_one("SELECT count(*) FROM tool_calls", &[]).await.unwrap().get(0);
    assert_eq!(n, 0);

    // doctor finds nothing wrong with the tables (the database itself is not hardened).
    let out = pgtenant(&["doctor", "--json", "--database-url", &url]);
    let report: Value = serde_json::from_slice(&out.stdout).expect("doctor JSON");
    let table_problems: Vec<&Value> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["severity"] != "info")
        .filter(|f| f["id"].as_str().unwrap().starts_with("table.") || f["id"].as_str().unwrap().starts_with("policy."))
        .collect();
    assert!(table_problems.is_empty(), "{table_problems:#?}");
}

#[tokio::test]
async fn policy_usage_errors() {
    let out = pgtenant(&["policy"]);
    assert_eq!(out.status.code(), Some(2), "--database-url is required");
    let out = pgtenant(&["policy", "--database-url", "postgres://u@127.0.0.1:1/app", "--setting", "no_dot"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("--setting"), "{}", text(&out.stderr));
    let out = pgtenant(&["policy", "--database-url", "postgres://u@127.0.0.1:1/app?sslmode=disable"]);
    assert_eq!(out.status.code(), Some(1), "an unreachable database is a runtime failure");
    let out = pgtenant(&["policy", "--database-url", "postgres://u@127.0.0.1:1/app", "--key-owner", "keys"]);
    assert_eq!(out.status.code(), Some(2), "--key-owner needs --signed");
    let out = pgtenant(&[
        "policy",
        "--database-url",
        "postgres://u@127.0.0.1:1/app",
        "--signed",
        "--setting",
        "pgtenant.proof",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    for owner in ["app_user", "Keys", "pg_keys"] {
        let out =
            pgtenant(&["policy", "--database-url", "postgres://u@127.0.0.1:1/app", "--signed", "--key-owner", owner]);
        assert_eq!(out.status.code(), Some(2), "{owner}");
        assert!(text(&out.stderr).contains("--key-owner"), "{owner}: {}", text(&out.stderr));
    }
}

/// SQL run as `app_user` inside a transaction that tries to switch the tenant to B in ways the
/// proxy never sees as text: (name, SQL).
const FORGERIES: [(&str, &str); 3] = [
    ("DO block", "DO $$ BEGIN PERFORM set_config('app.current_tenant_id', '{B}', true); END $$"),
    (
        "pg_temp function",
        "CREATE FUNCTION pg_temp.as_b() RETURNS text LANGUAGE sql \
         AS $$ SELECT set_config('app.current_tenant_id', '{B}', true) $$; SELECT pg_temp.as_b()",
    ),
    (
        "query_to_xml",
        "SELECT query_to_xml('SELECT set_config(''app.current_tenant_id'', ''{B}'', true)', false, false, '')",
    ),
];

/// The tenants whose `tool_calls` rows `client` sees, with their counts, in a transaction
/// (rolled back) that sets the tenant to `tenant` and the proof to `proof` (if any) and then
/// runs `forge`.
async fn visible(client: &Client, tenant: &str, proof: Option<&str>, forge: &str) -> Vec<(String, i64)> {
    client.batch_execute("BEGIN").await.expect("BEGIN");
    client.query("SELECT set_config('app.current_tenant_id', $1, true)", &[&tenant]).await.expect("set tenant");
    if let Some(proof) = proof {
        client.query("SELECT set_config('pgtenant.proof', $1, true)", &[&proof]).await.expect("set proof");
    }
    if !forge.is_empty() {
        client.batch_execute(&forge.replace("{B}", TENANT_B)).await.unwrap_or_else(|e| panic!("{forge}: {e:?}"));
    }
    let rows = client.query("SELECT tenant_id::text, count(*) FROM tool_calls GROUP BY 1 ORDER BY 1", &[]).await;
    client.batch_execute("ROLLBACK").await.expect("ROLLBACK");
    rows.expect("count rows").iter().map(|r| (r.get(0), r.get(1))).collect()
}

/// Everything `policy --signed` creates or changes, as text, to compare two runs.
async fn signed_state(client: &Client) -> String {
    let sql = "SELECT string_agg(x, E'\n' ORDER BY x) FROM ( \
        SELECT pg_catalog.format('policy %s %s %s %s', polrelid::regclass, polname, \
               pg_get_expr(polqual, polrelid), pg_get_expr(polwithcheck, polrelid)) FROM pg_policy \
        UNION ALL SELECT pg_catalog.format('function %s %s %s %s %s %s', p.oid::regprocedure, \
               pg_get_userbyid(proowner), proacl, proconfig, provolatile, md5(prosrc)) \
               FROM pg_proc p WHERE pronamespace = 'pgtenant'::regnamespace \
        UNION ALL SELECT pg_catalog.format('schema %s %s %s', nspname, pg_get_userbyid(nspowner), nspacl) \
               FROM pg_namespace WHERE nspname IN ('pgtenant', 'public') \
        UNION ALL SELECT pg_catalog.format('relation %s %s %s %s %s', c.oid::regclass, pg_get_userbyid(relowner), \
               relacl, relrowsecurity, relforcerowsecurity) FROM pg_class c \
               WHERE relnamespace IN ('pgtenant'::regnamespace, 'public'::regnamespace) \
        UNION ALL SELECT pg_catalog.format('setting %s %s %s', setrole::regrole, setdatabase, setconfig) \
               FROM pg_db_role_setting \
        UNION ALL SELECT pg_catalog.format('role %s %s %s %s', rolname, rolcanlogin, rolsuper, rolbypassrls) \
               FROM pg_roles WHERE rolname = 'pgtenant_keyholder' \
        UNION ALL SELECT pg_catalog.format('extension %s %s', extname, extnamespace::regnamespace) \
               FROM pg_extension) s(x)";
    client.query_one(sql, &[]).await.expect("signed state").get(0)
}

/// The SQLSTATE of a failed statement.
fn sqlstate(result: Result<Vec<tokio_postgres::Row>, tokio_postgres::Error>) -> SqlState {
    let err = result.expect_err("the statement must fail");
    err.code().cloned().unwrap_or_else(|| panic!("not a server error: {err:?}"))
}

/// The key-loading lines at the end of `policy --signed`, run with bash as its comment says,
/// reading the key from `key_file`; returns psql's output.
fn load_key_as_documented(pg: &PgCluster, url: &str, sql: &str, key_file: &std::path::Path) -> String {
    let lines: Vec<&str> = sql.lines().collect();
    let start = lines
        .iter()
        .position(|l| l.starts_with("--   psql ") && l.ends_with("<<'SQL'"))
        .expect("the psql line of the comment");
    let end = start + lines[start..].iter().position(|l| *l == "--   SQL").expect("the end of the here-document");
    let script: Vec<&str> = lines[start..=end].iter().map(|l| l.trim_start_matches("--   ")).collect();
    let script = script.join("\n").replace("/etc/pgtenant/signing.key", key_file.to_str().unwrap());
    let path = format!("{}:{}", pg.bin_dir().display(), std::env::var("PATH").unwrap_or_default());
    let out = Command::new("bash")
        .args(["-c", &script])
        .env("DATABASE_URL", url)
        .env("PATH", path)
        .output()
        .expect("run bash");
    assert!(out.status.success(), "{script}\n{}{}", text(&out.stdout), text(&out.stderr));
    text(&out.stdout)
}

#[tokio::test]
async fn signed_policies_only_open_rows_to_a_valid_proof() {
    let pg = PgCluster::start().await;
    let url = format!("postgres://postgres@127.0.0.1:{}/app?sslmode=disable", pg.port());
    let su = pg.superuser().await;
    su.batch_execute(STRIP_RLS).await.expect("strip RLS");
    pg.seed_tool_calls(TENANT_A, 2).await;
    pg.seed_tool_calls(TENANT_B, 3).await;
    let a_rows = vec![(TENANT_A.to_string(), 2)];
    let b_rows = vec![(TENANT_B.to_string(), 3)];

    // Negative control: with the plain policies, each forgery reaches tenant B's rows.
    su.batch_execute(&policy_sql(&url)).await.expect("plain policies");
    let app = pg.connect_as_app_user().await;
    assert_eq!(visible(&app, TENANT_A, None, "").await, a_rows);
    for (name, forge) in FORGERIES {
        assert_eq!(visible(&app, TENANT_A, None, forge).await, b_rows, "plain policies and a {name}");
    }
    drop(app);

    // Statement logging on, to check that neither the key nor a proof reaches the log.
    su.batch_execute("ALTER SYSTEM SET log_statement = 'all'").await.expect("log all");
    su.batch_execute("SELECT pg_reload_conf()").await.expect("reload");
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;

    // policy --signed: applied with psql -f, then again in one batch, then regenerated and applied.
    let out = pgtenant(&["policy", "--signed", "--database-url", &url]);
    assert_eq!(out.status.code(), Some(0), "policy --signed failed: {}", text(&out.stderr));
    let sql = text(&out.stdout);
    assert!(sql.contains("CREATE EXTENSION IF NOT EXISTS pgcrypto WITH SCHEMA pgtenant;"), "{sql}");
    assert!(sql.contains("USING (tenant_id = (SELECT pgtenant.current_tenant())::uuid);"), "{sql}");
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("policy.sql");
    std::fs::write(&file, &sql).expect("write policy.sql");
    let psql = Command::new(pg.bin_dir().join("psql"))
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", &url, "-f", file.to_str().unwrap()])
        .output()
        .expect("run psql");
    assert!(psql.status.success(), "psql -f policy.sql failed: {}", text(&psql.stderr));
    let first = signed_state(&su).await;
    su.batch_execute(&sql).await.unwrap_or_else(|e| panic!("second apply: {e:?}\n{sql}"));
    assert_eq!(signed_state(&su).await, first, "the second run changed something");
    let out = pgtenant(&["policy", "--signed", "--database-url", &url]);
    let again = text(&out.stdout);
    assert!(again.contains("-- pgcrypto is installed in schema pgtenant") && !again.contains("CREATE EXTENSION"));
    su.batch_execute(&again).await.unwrap_or_else(|e| panic!("regenerated apply: {e:?}\n{again}"));
    assert_eq!(signed_state(&su).await, first, "the regenerated script changed something");

    // No key yet: nobody sees anything.
    let app = pg.connect_as_app_user().await;
    let one = SigningKey::new(b"pgtenant-signed-test-key-number-one".to_vec()).unwrap();
    assert_eq!(visible(&app, TENANT_A, Some(&one.proof(TENANT_A)), "").await, []);

    // Key one, loaded the way the script's last comment says (the file ends with a newline).
    let key_file = dir.path().join("signing.key");
    std::fs::write(&key_file, "pgtenant-signed-test-key-number-one\n").expect("write key");
    let loaded = load_key_as_documented(&pg, &url, &sql, &key_file);
    assert!(loaded.contains(one.kid()), "{loaded}");

    // The function is evaluated once per query (an InitPlan), and the tenant index is usable.
    app.batch_execute("SET enable_seqscan = off").await.unwrap();
    let plan: Vec<String> =
        app.query("EXPLAIN SELECT * FROM tool_calls", &[]).await.unwrap().iter().map(|r| r.get(0)).collect();
    app.batch_execute("RESET enable_seqscan").await.unwrap();
    let plan = plan.join("\n");
    assert!(plan.contains("InitPlan") && plan.contains("Index Cond: (tenant_id ="), "{plan}");

    // Only tenant A's own proof opens tenant A's rows.
    assert_eq!(visible(&app, TENANT_A, Some(&one.proof(TENANT_A)), "").await, a_rows);
    assert_eq!(visible(&app, TENANT_B, Some(&one.proof(TENANT_A)), "").await, [], "B with A's proof");
    let other = SigningKey::new(b"pgtenant-signed-test-key-never-loaded".to_vec()).unwrap();
    assert_eq!(visible(&app, TENANT_A, Some(&other.proof(TENANT_A)), "").await, [], "a key not loaded");
    let forged_kid = format!("v1:{}:{}", one.kid(), other.proof(TENANT_A).rsplit(':').next().unwrap());
    assert_eq!(visible(&app, TENANT_A, Some(&forged_kid), "").await, [], "a loaded kid, a wrong HMAC");
    assert_eq!(visible(&app, TENANT_A, None, "").await, [], "no proof");
    assert_eq!(visible(&app, "", Some(&one.proof("")), "").await, [], "an empty tenant");
    for (name, forge) in FORGERIES {
        assert_eq!(
            visible(&app, TENANT_A, Some(&one.proof(TENANT_A)), forge).await,
            [],
            "signed policies and a {name}"
        );
    }
    // Writes follow the same proof.
    app.batch_execute("BEGIN").await.unwrap();
    app.query(
        "SELECT set_config('app.current_tenant_id', $1, true), set_config('pgtenant.proof', $2, true)",
        &[&TENANT_A, &one.proof(TENANT_A)],
    )
    .await
    .unwrap();
    app.execute(INSERT, &[&TENANT_A, &"signed"]).await.expect("A inserts its own row");
    app.batch_execute(&FORGERIES[0].1.replace("{B}", TENANT_B)).await.unwrap();
    let err = app.execute(INSERT, &[&TENANT_B, &"forged"]).await.unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::INSUFFICIENT_PRIVILEGE), "{err:?}");
    app.batch_execute("ROLLBACK").await.unwrap();

    // Rotation: key two (loaded with surrounding whitespace, which is ignored) and key one are
    // both valid; after key one is removed, only key two's proofs work.
    let two = SigningKey::new(b"pgtenant-signed-test-key-number-two".to_vec()).unwrap();
    su.batch_execute("SET log_statement = 'none'").await.unwrap();
    let kid: String = su
        .query_one("SELECT pgtenant.add_signing_key($1)", &[&"  pgtenant-signed-test-key-number-two\n"])
        .await
        .expect("add key two")
        .get(0);
    assert_eq!(kid, two.kid());
    let again: String = su
        .query_one("SELECT pgtenant.add_signing_key($1)", &[&"pgtenant-signed-test-key-number-two"])
        .await
        .unwrap()
        .get(0);
    assert_eq!(again, two.kid(), "adding a loaded key again changes nothing");
    assert_eq!(
        sqlstate(su.query("SELECT pgtenant.add_signing_key('too-short')", &[]).await),
        SqlState::INVALID_PARAMETER_VALUE
    );
    assert_eq!(visible(&app, TENANT_A, Some(&one.proof(TENANT_A)), "").await, a_rows, "old key during rotation");
    assert_eq!(visible(&app, TENANT_B, Some(&two.proof(TENANT_B)), "").await, b_rows, "new key during rotation");
    let removed: bool = su.query_one("SELECT pgtenant.remove_signing_key($1)", &[&one.kid()]).await.unwrap().get(0);
    assert!(removed);
    let removed: bool = su.query_one("SELECT pgtenant.remove_signing_key($1)", &[&one.kid()]).await.unwrap().get(0);
    assert!(!removed, "nothing left to remove");
    assert_eq!(visible(&app, TENANT_A, Some(&one.proof(TENANT_A)), "").await, [], "the removed key");
    assert_eq!(visible(&app, TENANT_A, Some(&two.proof(TENANT_A)), "").await, a_rows);

    // The application role cannot read the keys, nor add or remove one.
    assert_eq!(sqlstate(app.query("SELECT * FROM pgtenant.signing_keys", &[]).await), SqlState::INSUFFICIENT_PRIVILEGE);
    let add = app.query("SELECT pgtenant.add_signing_key($1)", &[&"pgtenant-signed-test-key-of-the-tenant"]).await;
    assert_eq!(sqlstate(add), SqlState::INSUFFICIENT_PRIVILEGE);
    let remove = app.query("SELECT pgtenant.remove_signing_key($1)", &[&two.kid()]).await;
    assert_eq!(sqlstate(remove), SqlState::INSUFFICIENT_PRIVILEGE);
    let shown: String = app.query_one("SHOW log_parameter_max_length", &[]).await.unwrap().get(0);
    assert_eq!(shown, "0");

    // The log: statements were logged (it can fail), bound parameters were not, and neither
    // the keys nor any proof is in it.
    app.query("SELECT $1::text AS pgtenant_log_marker", &[&"app-parameter-marker"]).await.unwrap();
    su.batch_execute("RESET log_statement").await.unwrap();
    su.query("SELECT $1::text AS pgtenant_superuser_marker", &[&"superuser-bound-marker"]).await.unwrap();
    su.batch_execute("ALTER SYSTEM RESET log_statement").await.unwrap();
    su.batch_execute("SELECT pg_reload_conf()").await.unwrap();
    let log = pg.log();
    assert!(log.contains("pgtenant_log_marker") && log.contains("superuser-bound-marker"), "statements are logged");
    assert!(!log.contains("app-parameter-marker"), "app_user's bound parameters are not logged");
    for secret in [
        "pgtenant-signed-test-key-number-one".to_string(),
        "pgtenant-signed-test-key-number-two".to_string(),
        one.proof(TENANT_A),
        two.proof(TENANT_B),
    ] {
        assert!(!log.contains(&secret), "{secret} is in the server log");
    }

    // Plain policies would replace the signed ones: the script says so.
    assert!(policy_sql(&url).contains("This database has the signed tenant context"));

    // doctor: the signed setup is sound, and code that sets the tenant setting (TEMP, plpgsql,
    // both still usable here) is no longer a way around the policies.
    let out = pgtenant(&["doctor", "--json", "--signed", "--database-url", &url]);
    let report: Value = serde_json::from_slice(&out.stdout).expect("doctor JSON");
    let findings = report["findings"].as_array().unwrap();
    let unsafe_or_signed: Vec<&Value> = findings
        .iter()
        .filter(|f| f["severity"] == "unsafe" || f["id"].as_str().unwrap().starts_with("signed."))
        .collect();
    assert!(unsafe_or_signed.is_empty(), "{unsafe_or_signed:#?}");
    for id in ["bypass.temp", "bypass.language"] {
        assert!(findings.iter().any(|f| f["id"] == id && f["severity"] == "info"), "{id} is info: {report:#}");
    }
}
