//! `pgtenant policy`: from tables that have the tenant column but no RLS, its output (applied
//! twice) isolates tenants through the proxy, and doctor finds nothing wrong with the tables.

mod support;

use std::process::Output;

use serde_json::Value;
use tokio_postgres::SimpleQueryMessage;

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
}
