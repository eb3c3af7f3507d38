//! `pgtenant doctor`: the hardened reference schema is clean, each deliberately broken database
//! is flagged by exactly the check for its failure mode, and `doctor --probe` passes through a
//! proxy that isolates tenants and fails through one whose upstream role bypasses RLS. The same
//! for the signed tenant context: the hardened `policy --signed` reference is clean, and each
//! way to break it is flagged by exactly its `signed.*` check.

mod support;

use std::process::Output;

use serde_json::Value;
use tokio_postgres::Client;

use support::{PgCluster, Proxy, ProxyOptions, TENANT_A, TENANT_B};

fn pgtenant(args: &[&str]) -> Output {
    support::proxy::run_cli(args)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The superuser URL of database `db`.
fn url(pg: &PgCluster, db: &str) -> String {
    format!("postgres://postgres@127.0.0.1:{}/{db}?sslmode=disable", pg.port())
}

/// `doctor --json` on `db`: (exit code, report).
fn doctor(pg: &PgCluster, db: &str) -> (i32, Value) {
    doctor_with(pg, db, &[])
}

/// `doctor --json <flags>` on `db`: (exit code, report).
fn doctor_with(pg: &PgCluster, db: &str, flags: &[&str]) -> (i32, Value) {
    let url = url(pg, db);
    let out = pgtenant(&[&["doctor", "--json", "--database-url", &url][..], flags].concat());
    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("doctor output is not JSON ({e}):\n{}\n{}", text(&out.stdout), text(&out.stderr)));
    (out.status.code().expect("exit code"), report)
}

/// The (id, severity) of every finding worse than info, sorted and deduplicated.
fn serious(report: &Value) -> Vec<(String, String)> {
    let mut found: Vec<(String, String)> = report["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .filter(|f| f["severity"] != "info")
        .map(|f| (f["id"].as_str().unwrap().to_string(), f["severity"].as_str().unwrap().to_string()))
        .collect();
    found.sort();
    found.dedup();
    found
}

/// Extra tenant tables for the reference schema: a partitioned table with one partition.
const PARTITIONED: &str =
    "CREATE TABLE tool_runs (tenant_id uuid NOT NULL, at date NOT NULL, n int) PARTITION BY RANGE (at);
     CREATE TABLE tool_runs_2026 PARTITION OF tool_runs FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
     CREATE TABLE plans (id int PRIMARY KEY, name text);
     GRANT SELECT ON plans TO app_user;";

/// `pgtenant policy --harden` for `db`, applied twice (it must be idempotent).
async fn harden(pg: &PgCluster, client: &Client, db: &str) {
    let out = pgtenant(&["policy", "--harden", "--database-url", &url(pg, db)]);
    assert_eq!(out.status.code(), Some(0), "policy failed: {}", text(&out.stderr));
    let sql = text(&out.stdout);
    for round in 1..=2 {
        if let Err(e) = client.batch_execute(&sql).await {
            panic!("applying the policy output (round {round}) failed: {e:?}\n{sql}");
        }
    }
}

/// One failure mode: SQL run as superuser in a fresh copy of the hardened database (`{db}` is
/// its name), SQL that undoes its cluster-wide part afterwards, and what doctor must say.
struct Case {
    name: &'static str,
    break_sql: &'static str,
    undo_sql: &'static str,
    /// The only check worse than info that may fire; "" for a case that must stay clean.
    id: &'static str,
    severity: &'static str,
    /// A string the finding's object must contain, when it matters.
    object: &'static str,
    /// Extra doctor flags.
    flags: &'static [&'static str],
}

const fn case(name: &'static str, break_sql: &'static str, id: &'static str, severity: &'static str) -> Case {
    Case { name, break_sql, undo_sql: "", id, severity, object: "", flags: &[] }
}

const fn global(
    name: &'static str,
    break_sql: &'static str,
    undo_sql: &'static str,
    id: &'static str,
    severity: &'static str,
) -> Case {
    Case { name, break_sql, undo_sql, id, severity, object: "", flags: &[] }
}

const CASES: &[Case] = &[
    global("superuser role", "ALTER ROLE app_user SUPERUSER", "ALTER ROLE app_user NOSUPERUSER", "role.superuser", "unsafe"),
    global("BYPASSRLS", "ALTER ROLE app_user BYPASSRLS", "ALTER ROLE app_user NOBYPASSRLS", "role.bypassrls", "unsafe"),
    global("CREATEROLE", "ALTER ROLE app_user CREATEROLE", "ALTER ROLE app_user NOCREATEROLE", "role.createrole", "unsafe"),
    global("CREATEDB", "ALTER ROLE app_user CREATEDB", "ALTER ROLE app_user NOCREATEDB", "role.createdb", "warning"),
    case("owner of a tenant table", "ALTER TABLE tool_calls OWNER TO app_user", "role.owner", "unsafe"),
    global(
        "member of the owner of a tenant table",
        "CREATE ROLE doctor_owners; ALTER TABLE tool_events OWNER TO doctor_owners; GRANT doctor_owners TO app_user",
        "DROP OWNED BY doctor_owners CASCADE; DROP ROLE doctor_owners",
        "role.owner",
        "unsafe",
    ),
    global(
        "member of pg_read_all_stats",
        "GRANT pg_read_all_stats TO app_user",
        "REVOKE pg_read_all_stats FROM app_user",
        "role.read_all_stats",
        "warning",
    ),
    global(
        "member of pg_monitor",
        "GRANT pg_monitor TO app_user",
        "REVOKE pg_monitor FROM app_user",
        "role.read_all_stats",
        "warning",
    ),
    global(
        "member of pg_read_all_data",
        "GRANT pg_read_all_data TO app_user",
        "REVOKE pg_read_all_data FROM app_user",
        "role.all_data",
        "warning",
    ),
    global(
        "member of pg_read_server_files",
        "GRANT pg_read_server_files TO app_user",
        "REVOKE pg_read_server_files FROM app_user",
        "role.server_files",
        "unsafe",
    ),
    case("table without RLS", "ALTER TABLE tool_calls DISABLE ROW LEVEL SECURITY", "table.rls_disabled", "unsafe"),
    Case {
        name: "partition without RLS",
        break_sql: "ALTER TABLE tool_runs_2026 DISABLE ROW LEVEL SECURITY",
        undo_sql: "",
        id: "table.rls_disabled",
        severity: "unsafe",
        object: "partition public.tool_runs_2026 (of public.tool_runs)",
        flags: &[],
    },
    case("RLS not forced", "ALTER TABLE tool_calls NO FORCE ROW LEVEL SECURITY", "table.rls_not_forced", "warning"),
    case(
        "missing DELETE policy",
        "DROP POLICY pgtenant_delete ON tool_calls; DROP POLICY tool_calls_delete ON tool_calls",
        "table.policy_missing",
        "warning",
    ),
    case(
        "USING (true)",
        "CREATE POLICY open_read ON tool_calls FOR SELECT TO app_user USING (true)",
        "policy.using_true",
        "unsafe",
    ),
    case(
        "WITH CHECK (true) for PUBLIC",
        "CREATE POLICY open_write ON tool_events FOR INSERT WITH CHECK (true)",
        "policy.using_true",
        "unsafe",
    ),
    case(
        "policy not reading the setting",
        "CREATE POLICY by_name ON tool_calls FOR SELECT TO app_user USING (tool_name = current_user)",
        "policy.no_setting",
        "unsafe",
    ),
    case(
        "restrictive policy without the setting is fine",
        "CREATE POLICY only_success ON tool_calls AS RESTRICTIVE FOR SELECT TO app_user USING (success)",
        "",
        "",
    ),
    case("no index led by tenant_id", "DROP INDEX tool_calls_tenant_id_idx", "table.index_missing", "warning"),
    case(
        "unique index without tenant_id",
        "CREATE UNIQUE INDEX tool_calls_name_key ON tool_calls (tool_name)",
        "table.unique_without_tenant",
        "warning",
    ),
    case(
        "foreign key without tenant_id",
        "ALTER TABLE tool_events ADD CONSTRAINT tool_events_call_fk FOREIGN KEY (call_id) REFERENCES tool_calls (id)",
        "table.fk_without_tenant",
        "warning",
    ),
    case("TEMP on the database", "GRANT TEMPORARY ON DATABASE {db} TO app_user", "bypass.temp", "unsafe"),
    case("CREATE on public", "GRANT CREATE ON SCHEMA public TO PUBLIC", "bypass.create_schema", "unsafe"),
    case("plpgsql usage", "GRANT USAGE ON LANGUAGE plpgsql TO PUBLIC", "bypass.language", "unsafe"),
    case(
        "set_config for PUBLIC",
        "GRANT EXECUTE ON FUNCTION set_config(text, text, boolean) TO PUBLIC",
        "bypass.set_config",
        "warning",
    ),
    case(
        "set_config denied to the role",
        "REVOKE EXECUTE ON FUNCTION set_config(text, text, boolean) FROM app_user",
        "role.set_config_denied",
        "warning",
    ),
    case(
        "query_to_xml executable",
        "GRANT EXECUTE ON FUNCTION query_to_xml(text, boolean, boolean, text) TO app_user",
        "bypass.sql_text_function",
        "warning",
    ),
    case("dblink installed", "CREATE EXTENSION dblink", "bypass.dblink", "warning"),
    case(
        "function with SET app.current_tenant_id",
        "CREATE FUNCTION public.as_tenant_b() RETURNS bigint LANGUAGE sql \
         SET app.current_tenant_id = 'bbbbbbbb-0000-4000-8000-00000000000b' AS 'SELECT count(*) FROM public.tool_calls'",
        "function.set_setting",
        "unsafe",
    ),
    global(
        "ALTER ROLE app_user SET app.current_tenant_id",
        "ALTER ROLE app_user SET app.current_tenant_id = 'bbbbbbbb-0000-4000-8000-00000000000b'",
        "ALTER ROLE app_user RESET app.current_tenant_id",
        "setting.role_default",
        "unsafe",
    ),
    case(
        "ALTER DATABASE SET app.current_tenant_id",
        "ALTER DATABASE {db} SET app.current_tenant_id = 'bbbbbbbb-0000-4000-8000-00000000000b'",
        "setting.role_default",
        "unsafe",
    ),
    case(
        "pg_stat_activity readable",
        "GRANT SELECT ON pg_stat_activity TO PUBLIC; GRANT EXECUTE ON FUNCTION pg_stat_get_activity(integer) TO PUBLIC",
        "bypass.stat_activity",
        "warning",
    ),
    case(
        "pg_prepared_statements readable",
        "GRANT EXECUTE ON FUNCTION pg_prepared_statement() TO PUBLIC",
        "bypass.prepared_statements",
        "warning",
    ),
    case("TRUNCATE grant", "GRANT TRUNCATE ON tool_calls TO app_user", "table.truncate", "unsafe"),
    case("REFERENCES grant", "GRANT REFERENCES ON tool_calls TO app_user", "table.references", "warning"),
    case("TRIGGER grant", "GRANT TRIGGER ON tool_calls TO PUBLIC", "table.trigger", "warning"),
    case(
        "view without security_invoker",
        "CREATE VIEW public.all_calls AS SELECT * FROM public.tool_calls; GRANT SELECT ON public.all_calls TO app_user",
        "view.not_security_invoker",
        "unsafe",
    ),
    case(
        "view over a view without security_invoker",
        "CREATE VIEW public.calls_inner WITH (security_invoker = true) AS SELECT * FROM public.tool_calls; \
         CREATE VIEW public.calls_outer AS SELECT * FROM public.calls_inner; \
         GRANT SELECT ON public.calls_inner, public.calls_outer TO app_user",
        "view.not_security_invoker",
        "unsafe",
    ),
    case(
        "view with security_invoker is fine",
        "CREATE VIEW public.my_calls WITH (security_invoker = true) AS SELECT * FROM public.tool_calls; \
         GRANT SELECT ON public.my_calls TO app_user",
        "",
        "",
    ),
    case(
        "materialized view",
        "CREATE MATERIALIZED VIEW public.calls_mv AS SELECT * FROM public.tool_calls; GRANT SELECT ON public.calls_mv TO app_user",
        "view.materialized",
        "unsafe",
    ),
    case(
        "SECURITY DEFINER without search_path",
        "CREATE FUNCTION public.count_calls() RETURNS bigint LANGUAGE sql SECURITY DEFINER \
         AS 'SELECT count(*) FROM public.tool_calls'",
        "function.definer_search_path",
        "warning",
    ),
    case(
        "SECURITY DEFINER with a pinned search_path is fine",
        "CREATE FUNCTION public.count_calls() RETURNS bigint LANGUAGE sql SECURITY DEFINER \
         SET search_path = public, pg_temp AS 'SELECT count(*) FROM public.tool_calls'",
        "",
        "",
    ),
    Case {
        name: "--signed without the signed context",
        break_sql: "",
        undo_sql: "",
        id: "signed.missing",
        severity: "unsafe",
        object: "schema pgtenant",
        flags: &["--signed"],
    },
];

/// Runs one case in database `db` (a fresh copy of the hardened template); a mismatch is returned.
async fn run_case(pg: &PgCluster, db: &str, case: &Case) -> Result<(), String> {
    let client = pg.connect_as("postgres", "", db).await;
    client
        .batch_execute(&case.break_sql.replace("{db}", db))
        .await
        .map_err(|e| format!("{}: break SQL failed: {e:?}", case.name))?;
    drop(client);
    let (code, report) = doctor_with(pg, db, case.flags);
    let found = serious(&report);
    let expected: Vec<(String, String)> = match case.id {
        "" => Vec::new(),
        id => vec![(id.to_string(), case.severity.to_string())],
    };
    let expected_code = match case.severity {
        "unsafe" => 2,
        "warning" => 1,
        _ => 0,
    };
    let object_ok = case.object.is_empty()
        || report["findings"].as_array().unwrap().iter().any(|f| f["id"] == case.id && f["object"] == case.object);
    if found != expected || code != expected_code || !object_ok {
        return Err(format!(
            "{}: expected {expected:?} (exit {expected_code}{}), got {found:?} (exit {code})\n{report:#}",
            case.name,
            if case.object.is_empty() { String::new() } else { format!(", object {:?}", case.object) }
        ));
    }
    Ok(())
}

/// Runs every case in its own copy of database `app`; panics listing the cases that failed.
async fn run_cases(pg: &PgCluster, admin: &Client, cases: &[Case]) {
    let mut failures = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let db = format!("case_{i}");
        copy_of_app(admin, &db).await;
        if let Err(e) = run_case(pg, &db, case).await {
            failures.push(e);
        }
        if !case.undo_sql.is_empty() {
            let client = pg.connect_as("postgres", "", &db).await;
            client.batch_execute(case.undo_sql).await.unwrap_or_else(|e| panic!("{}: undo failed: {e:?}", case.name));
        }
        admin.batch_execute(&format!("DROP DATABASE {db} WITH (FORCE)")).await.expect("drop case database");
    }
    assert!(failures.is_empty(), "{} of {} cases failed:\n\n{}", failures.len(), cases.len(), failures.join("\n\n"));
}

/// A fresh copy of database `app` named `db`, with the database-level settings a template
/// copy does not carry (TEMPORARY is granted to PUBLIC again by default).
async fn copy_of_app(admin: &Client, db: &str) {
    // The template must have no connections: end leftovers (closed clients linger briefly).
    admin
        .batch_execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = 'app'")
        .await
        .expect("terminate connections to app");
    let mut last_error = None;
    for _ in 0..50 {
        match admin.batch_execute(&format!("CREATE DATABASE {db} TEMPLATE app")).await {
            Ok(()) => {
                admin.batch_execute(&format!("REVOKE TEMPORARY ON DATABASE {db} FROM PUBLIC")).await.expect("revoke");
                return;
            }
            Err(e) => last_error = Some(e),
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("CREATE DATABASE {db} TEMPLATE app failed: {last_error:?}");
}

#[tokio::test]
async fn doctor_passes_the_hardened_reference_and_flags_each_failure_mode() {
    let pg = PgCluster::start().await;
    let su = pg.superuser().await;
    su.batch_execute(PARTITIONED).await.expect("extra tables");

    // The reference schema as tests/support creates it, on fresh-install privileges: unsafe.
    let (code, report) = doctor(&pg, "app");
    let ids: Vec<String> = serious(&report).into_iter().map(|(id, _)| id).collect();
    assert_eq!(code, 2, "{report:#}");
    for id in ["bypass.temp", "bypass.language", "bypass.set_config", "bypass.stat_activity"] {
        assert!(ids.iter().any(|i| i == id), "{id} missing from {ids:?}");
    }

    // After `pgtenant policy --harden` (applied twice): clean.
    harden(&pg, &su, "app").await;
    drop(su);
    let (code, report) = doctor(&pg, "app");
    assert_eq!((code, serious(&report)), (0, Vec::new()), "{report:#}");
    let signed: Vec<&Value> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["id"].as_str().unwrap().starts_with("signed."))
        .collect();
    assert!(signed.is_empty(), "a plain database gets no signed findings: {signed:#?}");
    let objects = report["objects"].to_string();
    assert!(objects.contains("partition public.tool_runs_2026 (of public.tool_runs)"), "{objects}");
    let human = pgtenant(&["doctor", "--database-url", &url(&pg, "app")]);
    assert_eq!(human.status.code(), Some(0));
    let human = text(&human.stdout);
    assert!(human.contains("partition public.tool_runs_2026 (of public.tool_runs)\n  ok\n"), "{human}");
    assert!(human.contains("0 unsafe, 0 warning(s)"), "{human}");

    let admin = pg.connect_as("postgres", "", "postgres").await;
    run_cases(&pg, &admin, CASES).await;

    // A server-wide value of the setting (postgresql.conf): every session starts as that tenant.
    let conf = pg.data_dir().join("pgtenant-test.conf");
    let original = std::fs::read_to_string(&conf).expect("read pgtenant-test.conf");
    std::fs::write(&conf, format!("{original}app.current_tenant_id = '{TENANT_B}'\n")).expect("write conf");
    admin.batch_execute("SELECT pg_reload_conf()").await.expect("reload");
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let (code, report) = doctor(&pg, "app");
    std::fs::write(&conf, original).expect("restore conf");
    admin.batch_execute("SELECT pg_reload_conf()").await.expect("reload");
    assert_eq!((code, serious(&report)), (2, vec![("setting.server_default".into(), "unsafe".into())]), "{report:#}");
}

/// The reference schema's own policies read the setting directly: signed mode replaces them.
const DROP_REFERENCE_POLICIES: &str = "
    DO $$
    DECLARE t text; c text;
    BEGIN
      FOREACH t IN ARRAY ARRAY['tool_calls', 'tool_events', 'tenant_config'] LOOP
        FOREACH c IN ARRAY ARRAY['select', 'insert', 'update', 'delete'] LOOP
          EXECUTE format('DROP POLICY %I ON %I', t || '_' || c, t);
        END LOOP;
      END LOOP;
    END $$;";

/// A key for the signed reference (doctor only needs one to be loaded).
const SIGNING_KEY: &str = "pgtenant-doctor-test-signing-key-0123456789";

/// `pgtenant.current_tenant()` re-created with everything right but the proof check.
const TRUSTING_FUNCTION: &str = "CREATE OR REPLACE FUNCTION pgtenant.current_tenant() RETURNS text \
     LANGUAGE sql STABLE SECURITY DEFINER PARALLEL SAFE SET search_path = pg_catalog, pg_temp \
     AS $$ SELECT NULLIF(current_setting('app.current_tenant_id', true), '') $$";

/// Each way to break the hardened signed reference, with the one check that must flag it.
const SIGNED_CASES: &[Case] = &[
    case(
        "key table readable by the role",
        "GRANT SELECT ON pgtenant.signing_keys TO app_user",
        "signed.key_table_access",
        "unsafe",
    ),
    case(
        "key column readable by PUBLIC",
        "GRANT SELECT (key) ON pgtenant.signing_keys TO PUBLIC",
        "signed.key_table_access",
        "unsafe",
    ),
    global(
        "key table writable through a role",
        "CREATE ROLE key_writers; GRANT INSERT ON pgtenant.signing_keys TO key_writers; GRANT key_writers TO app_user",
        "DROP OWNED BY key_writers; DROP ROLE key_writers",
        "signed.key_table_access",
        "unsafe",
    ),
    case(
        "TRUNCATE on the key table",
        "GRANT TRUNCATE ON pgtenant.signing_keys TO app_user",
        "signed.key_table_access",
        "unsafe",
    ),
    global(
        "member of the key holder",
        "GRANT pgtenant_keyholder TO app_user",
        "REVOKE pgtenant_keyholder FROM app_user",
        "signed.key_holder_member",
        "unsafe",
    ),
    case("CREATE on schema pgtenant", "GRANT CREATE ON SCHEMA pgtenant TO app_user", "signed.schema_create", "unsafe"),
    case(
        "add_signing_key executable by the role",
        "GRANT EXECUTE ON FUNCTION pgtenant.add_signing_key(text) TO app_user",
        "signed.key_functions",
        "unsafe",
    ),
    case(
        "another key-holder function for PUBLIC",
        "CREATE FUNCTION pgtenant.key_count() RETURNS bigint LANGUAGE sql SECURITY DEFINER \
         SET search_path = pg_catalog AS 'SELECT count(*) FROM pgtenant.signing_keys'; \
         ALTER FUNCTION pgtenant.key_count() OWNER TO pgtenant_keyholder",
        "signed.key_functions",
        "unsafe",
    ),
    case(
        "function not SECURITY DEFINER",
        "ALTER FUNCTION pgtenant.current_tenant() SECURITY INVOKER",
        "signed.function_definer",
        "unsafe",
    ),
    case(
        "function without a pinned search_path",
        "ALTER FUNCTION pgtenant.current_tenant() RESET search_path",
        "signed.function_search_path",
        "unsafe",
    ),
    case(
        "function owned by the role",
        "ALTER FUNCTION pgtenant.current_tenant() OWNER TO app_user",
        "signed.function_owner",
        "unsafe",
    ),
    case(
        "function owned by a superuser",
        "ALTER FUNCTION pgtenant.current_tenant() OWNER TO postgres",
        "signed.function_owner",
        "warning",
    ),
    case(
        "function VOLATILE",
        "ALTER FUNCTION pgtenant.current_tenant() VOLATILE",
        "signed.function_volatility",
        "warning",
    ),
    case(
        "function IMMUTABLE",
        "ALTER FUNCTION pgtenant.current_tenant() IMMUTABLE",
        "signed.function_volatility",
        "unsafe",
    ),
    case(
        "function not executable by the role",
        "REVOKE EXECUTE ON FUNCTION pgtenant.current_tenant() FROM app_user",
        "signed.function_denied",
        "warning",
    ),
    case("function that trusts the setting", TRUSTING_FUNCTION, "signed.function_trusts_setting", "unsafe"),
    case("function without pgcrypto", "DROP EXTENSION pgcrypto", "signed.function_fails", "warning"),
    case("no key loaded", "DELETE FROM pgtenant.signing_keys", "signed.no_keys", "warning"),
    case("key table dropped", "DROP TABLE pgtenant.signing_keys", "signed.missing", "unsafe"),
    case(
        "policy reading the setting directly",
        "CREATE POLICY legacy_read ON tool_calls FOR SELECT TO app_user \
         USING (tenant_id = (SELECT NULLIF(current_setting('app.current_tenant_id', true), '')::uuid))",
        "signed.policy_reads_setting",
        "unsafe",
    ),
    case(
        "plain pgtenant policy left over",
        "DROP POLICY pgtenant_delete ON tool_events; CREATE POLICY pgtenant_delete ON tool_events FOR DELETE \
         TO app_user USING (tenant_id = (SELECT NULLIF(current_setting('app.current_tenant_id', true), '')::uuid))",
        "signed.policy_reads_setting",
        "unsafe",
    ),
    case(
        "restrictive policy reading the setting is fine",
        "CREATE POLICY narrow ON tool_calls AS RESTRICTIVE FOR SELECT TO app_user \
         USING (tenant_id = (SELECT NULLIF(current_setting('app.current_tenant_id', true), '')::uuid))",
        "",
        "",
    ),
    case(
        "policy calling the function outside a subquery",
        "CREATE POLICY per_row ON tool_calls FOR SELECT TO app_user \
         USING (tenant_id = pgtenant.current_tenant()::uuid)",
        "signed.policy_unwrapped",
        "warning",
    ),
    global(
        "bound parameters logged",
        "ALTER ROLE app_user RESET log_parameter_max_length",
        "ALTER ROLE app_user SET log_parameter_max_length = 0",
        "signed.log_parameters",
        "warning",
    ),
];

#[tokio::test]
async fn doctor_passes_the_signed_reference_and_flags_each_way_to_break_it() {
    let pg = PgCluster::start().await;
    let su = pg.superuser().await;
    su.batch_execute(DROP_REFERENCE_POLICIES).await.expect("drop the reference policies");

    // `policy --signed --harden`, applied twice, and one key: clean.
    let out = pgtenant(&["policy", "--signed", "--harden", "--database-url", &url(&pg, "app")]);
    assert_eq!(out.status.code(), Some(0), "policy failed: {}", text(&out.stderr));
    let sql = text(&out.stdout);
    for round in 1..=2 {
        su.batch_execute(&sql).await.unwrap_or_else(|e| panic!("round {round}: {e:?}\n{sql}"));
    }
    su.query("SELECT pgtenant.add_signing_key($1)", &[&SIGNING_KEY]).await.expect("load a key");
    drop(su);
    let (code, report) = doctor_with(&pg, "app", &["--signed"]);
    assert_eq!((code, serious(&report)), (0, Vec::new()), "{report:#}");
    let signed: Vec<&Value> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["id"].as_str().unwrap().starts_with("signed."))
        .collect();
    assert!(signed.is_empty(), "not even info: {signed:#?}");
    let human = pgtenant(&["doctor", "--database-url", &url(&pg, "app")]);
    let human = text(&human.stdout);
    assert!(human.contains("function pgtenant.current_tenant()\n  ok\n"), "{human}");
    assert!(human.contains("table pgtenant.signing_keys\n  ok\n"), "{human}");

    // doctor as a role that can read the catalogs but neither the keys nor call the function
    // (set_config is revoked from PUBLIC by --harden): those two checks say they were skipped.
    let su = pg.superuser().await;
    su.batch_execute("CREATE ROLE auditor LOGIN PASSWORD 'auditor-password'").await.expect("auditor");
    let auditor = format!("postgres://auditor:auditor-password@127.0.0.1:{}/app?sslmode=disable", pg.port());
    let out = pgtenant(&["doctor", "--json", "--database-url", &auditor]);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out.stderr)));
    let mut signed: Vec<(String, String)> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["id"].as_str().unwrap().starts_with("signed."))
        .map(|f| (f["id"].as_str().unwrap().to_string(), f["severity"].as_str().unwrap().to_string()))
        .collect();
    signed.sort();
    let skipped = ["signed.function_untested", "signed.keys_unreadable"].map(|id| (id.to_string(), "info".to_string()));
    assert_eq!(signed, skipped, "{report:#}");
    su.batch_execute("DROP ROLE auditor").await.expect("drop auditor");
    drop(su);

    let admin = pg.connect_as("postgres", "", "postgres").await;
    run_cases(&pg, &admin, SIGNED_CASES).await;
}

#[tokio::test]
async fn doctor_usage_and_connection_errors() {
    let out = pgtenant(&["doctor"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("--database-url"), "{}", text(&out.stderr));
    let out = pgtenant(&["doctor", "--database-url", "postgres://u@127.0.0.1:1/db?sslmode=verify-ca"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("verify-ca is not supported"), "{}", text(&out.stderr));
    let out = pgtenant(&["doctor", "--database-url", "postgres://u@127.0.0.1:1/db", "--setting", "tenant"]);
    assert_eq!(out.status.code(), Some(2));
    let out = pgtenant(&["doctor", "--database-url", "postgres://u@127.0.0.1:1/db?sslmode=disable"]);
    assert_eq!(out.status.code(), Some(1), "unreachable database is a runtime failure");
    assert!(text(&out.stderr).contains("could not connect"), "{}", text(&out.stderr));
    let out = pgtenant(&["doctor", "--proxy-url", "postgres://x@127.0.0.1:1/app"]);
    assert_eq!(out.status.code(), Some(2), "--proxy-url needs --probe");
}

/// `doctor --probe` through `proxy`: (exit code, report).
fn probe(proxy: &Proxy, pg: &PgCluster, token_b: &str) -> (i32, Value) {
    let proxy_url = format!("postgres://probe@127.0.0.1:{}/app?sslmode=disable", proxy.port());
    let direct = format!("postgres://app_user:{}@127.0.0.1:{}/app?sslmode=disable", pg.app_password(), pg.port());
    let token_a = proxy.token(TENANT_A);
    let args = ["doctor", "--probe", "--json", "--proxy-url", &proxy_url, "--token-a", &token_a, "--token-b", token_b];
    let out = pgtenant(&[&args[..], &["--database-url", &direct]].concat());
    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("probe output is not JSON ({e}):\n{}\n{}", text(&out.stdout), text(&out.stderr)));
    (out.status.code().expect("exit code"), report)
}

fn ids(report: &Value, key: &str) -> Vec<String> {
    report[key].as_array().unwrap().iter().map(|p| p["id"].as_str().unwrap().to_string()).collect()
}

#[tokio::test]
async fn probe_passes_through_an_isolating_proxy_and_fails_through_a_bypassing_one() {
    let pg = PgCluster::start().await;
    let su = pg.superuser().await;
    harden(&pg, &su, "app").await;
    pg.seed_tool_calls(TENANT_A, 2).await;

    let proxy = Proxy::start(&pg, ProxyOptions::default()).await;
    let (code, report) = probe(&proxy, &pg, &proxy.token(TENANT_B));
    assert_eq!(code, 0, "{report:#}");
    let passed = ids(&report, "passed");
    for id in ["probe.context", "probe.own_rows", "probe.read", "probe.update", "probe.delete", "probe.insert"] {
        assert_eq!(passed.iter().filter(|p| *p == id).count(), if id == "probe.context" { 1 } else { 2 }, "{id}");
    }
    for id in ["probe.no_context", "probe.tamper", "probe.tamper_do"] {
        assert!(passed.iter().any(|p| p == id), "{id} not in {passed:?}");
    }
    // The marker rows are gone; the seeded rows are untouched.
    for table in ["tenant_config", "tool_events"] {
        assert_eq!(pg.count_rows(table, TENANT_A).await + pg.count_rows(table, TENANT_B).await, 0, "{table}");
    }
    assert_eq!(pg.count_rows("tool_calls", TENANT_A).await, 2);

    // Two tokens for one tenant are a usage error.
    let (code, _) = probe_usage(&proxy, &proxy.token(TENANT_A));
    assert_eq!(code, 2);

    // The postgres superuser upstream (allowed explicitly) bypasses RLS: unsafe.
    let options = ProxyOptions::default().upstream_user("postgres").unset("upstream", "password").set(
        "upstream",
        "allow_rls_bypassing_role",
        "true",
    );
    let bypassing = Proxy::start(&pg, options).await;
    let (code, report) = probe(&bypassing, &pg, &bypassing.token(TENANT_B));
    assert_eq!(code, 2, "{report:#}");
    let failed = ids(&report, "findings");
    for id in ["probe.read", "probe.update", "probe.delete", "probe.insert"] {
        assert!(failed.iter().any(|f| f == id), "{id} not in {failed:?}");
    }
    assert_eq!(pg.count_rows("tenant_config", TENANT_A).await, 0, "markers are cleaned up after a failure too");
    assert_eq!(pg.count_rows("tool_calls", TENANT_A).await, 2, "rolled back: nothing deleted");
}

/// `doctor --probe` with tenant A's token twice: (exit code, stderr).
fn probe_usage(proxy: &Proxy, token_b: &str) -> (i32, String) {
    let proxy_url = format!("postgres://probe@127.0.0.1:{}/app?sslmode=disable", proxy.port());
    let token_a = proxy.token(TENANT_A);
    let out = pgtenant(&["doctor", "--probe", "--proxy-url", &proxy_url, "--token-a", &token_a, "--token-b", token_b]);
    (out.status.code().expect("exit code"), text(&out.stderr))
}

#[tokio::test]
async fn probe_through_signed_mode_on_a_default_install_passes_the_do_block_check() {
    const KEY: &str = "probe-signing-key-0123456789abcdef-0123456789";
    let pg = PgCluster::start().await;
    pg.seed_tool_calls(TENANT_A, 2).await;
    // Plain mode on a default install: a DO block switches tenants.
    let plain = Proxy::start(&pg, ProxyOptions::default()).await;
    let (code, report) = probe(&plain, &pg, &plain.token(TENANT_B));
    assert_eq!(code, 2, "{report:#}");
    assert!(ids(&report, "findings").iter().any(|f| f == "probe.tamper_do"), "{report:#}");
    drop(plain);

    // Signed mode: the setting still changes, but no policy trusts it.
    pg.make_signed(&[KEY]).await;
    let signed = Proxy::start(&pg, ProxyOptions::signed(KEY)).await;
    let (_, report) = probe(&signed, &pg, &signed.token(TENANT_B));
    let passed = ids(&report, "passed");
    for id in ["probe.tamper_do", "probe.read", "probe.update", "probe.delete", "probe.insert", "probe.own_rows"] {
        assert!(passed.iter().any(|p| p == id), "{id} not in {passed:?}\n{report:#}");
    }
    assert!(!ids(&report, "findings").iter().any(|f| f.starts_with("probe.")), "{report:#}");
}
