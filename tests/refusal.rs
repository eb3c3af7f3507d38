//! Refusing attempts to change the tenant: wire-contract cases 12, 13, 14,
//! the fastpath interface, and refusals inside blocks and pipelines.

mod support;

use support::{summarize, PgCluster, Proxy, ProxyOptions, RawClient, TENANT_A, TENANT_B};

const TENANT_QUERY: &str = "SELECT current_setting('app.current_tenant_id')";

async fn setup() -> (PgCluster, Proxy, RawClient) {
    let pg = PgCluster::start().await;
    let proxy = Proxy::start(&pg, ProxyOptions::default()).await;
    let mut c = RawClient::connect(proxy.port()).await;
    c.login("anyname", "app", &proxy.token(TENANT_A)).await.expect("login");
    (pg, proxy, c)
}

/// Every spelling of a change to the tenant setting the wire contract lists.
fn tamper_spellings() -> Vec<String> {
    let b = TENANT_B;
    vec![
        format!("SET app.current_tenant_id = '{b}'"),
        format!("set APP.CURRENT_TENANT_ID to '{b}'"),
        format!("SET SESSION app.current_tenant_id = '{b}'"),
        format!("SET LOCAL app.current_tenant_id = '{b}'"),
        format!("SET \"app\".\"current_tenant_id\" = '{b}'"),
        format!("SET \"app.current_tenant_id\" = '{b}'"),
        format!("SET U&\"\\0061pp\".current_tenant_id = '{b}'"),
        format!("SET app /* c */ . -- c\n current_tenant_id = '{b}'"),
        "RESET app.current_tenant_id".to_string(),
        "reset \"app\".current_tenant_id".to_string(),
        format!("SELECT set_config('app.current_tenant_id', '{b}', false)"),
        format!("SELECT pg_catalog.set_config('app.current_tenant_id', '{b}', true)"),
        format!("SELECT \"pg_catalog\".\"set_config\"('APP.current_tenant_id', '{b}', false)"),
        format!("SELECT set_config(E'app.current_tenant_id', '{b}', false)"),
        format!("SELECT set_config($$app.current_tenant_id$$, '{b}', false)"),
        format!("SELECT set_config('app.' || 'current_tenant_id', '{b}', false)"),
        format!("SELECT set_config(lower('APP.CURRENT_TENANT_ID'), '{b}', false)"),
        format!("SELECT 1 FROM pg_catalog.set_config /* x */ ('app.current_tenant_id', '{b}', false)"),
        format!("ALTER ROLE app_user SET app.current_tenant_id = '{b}'"),
        format!("ALTER DATABASE app SET app.current_tenant_id = '{b}'"),
        "ALTER ROLE app_user IN DATABASE app RESET app.current_tenant_id".to_string(),
        format!("CREATE FUNCTION f() RETURNS int LANGUAGE sql SET app.current_tenant_id = '{b}' AS $$SELECT 1$$"),
        "SET standard_conforming_strings = off".to_string(),
        "SET client_encoding = 'SJIS'".to_string(),
    ]
}

#[tokio::test]
async fn case12_every_spelling_is_refused_and_the_session_stays_usable() {
    let (pg, _proxy, mut c) = setup().await;
    for sql in tamper_spellings() {
        let msgs = c.simple(&sql).await;
        assert_eq!(summarize(&msgs), ["E:42501", "Z:I"], "{sql}");
        let fields = msgs[0].error_fields();
        assert_eq!(fields[&'S'], "ERROR");
        let named = ["app.current_tenant_id", "standard_conforming_strings", "client_encoding"];
        assert!(named.iter().any(|n| fields[&'M'].contains(n)), "{sql}: {}", fields[&'M']);
        let after = summarize(&c.simple(TENANT_QUERY).await);
        assert_eq!(after, ["T", &format!("D:{TENANT_A}"), "C:SELECT 1", "Z:I"], "after {sql}");
    }
    // Nothing of the refused statements reached PostgreSQL.
    assert!(!pg.log().contains(TENANT_B), "the other tenant's id appears in the server log");
}

#[tokio::test]
async fn case12_refused_in_the_extended_protocol_too() {
    let (_pg, _proxy, mut c) = setup().await;
    for sql in tamper_spellings() {
        c.parse("", &sql, &[]).bind("", "", &[]).execute("", 0).sync();
        c.parse("", TENANT_QUERY, &[]).bind("", "", &[]).execute("", 0).sync();
        c.flush().await;
        assert_eq!(summarize(&c.read_until_ready().await), ["E:42501", "Z:I"], "{sql}");
        let next = summarize(&c.read_until_ready().await);
        assert_eq!(next, ["1", "2", &format!("D:{TENANT_A}"), "C:SELECT 1", "Z:I"], "after {sql}");
    }
    // A named statement that tampers is refused at Parse and never exists.
    c.parse("evil", &format!("SET app.current_tenant_id = '{TENANT_B}'"), &[]).sync();
    c.flush().await;
    assert_eq!(summarize(&c.read_until_ready().await), ["E:42501", "Z:I"]);
    c.bind("", "evil", &[]).execute("", 0).sync();
    c.flush().await;
    assert_eq!(summarize(&c.read_until_ready().await), ["E:26000", "Z:I"]);
}

#[tokio::test]
async fn case13_set_config_session_wide_is_refused() {
    let (_pg, _proxy, mut c) = setup().await;
    let msgs = c.simple(&format!("SELECT set_config('app.current_tenant_id', '{TENANT_B}', false)")).await;
    assert_eq!(summarize(&msgs), ["E:42501", "Z:I"]);
    assert!(msgs[0].error_fields()[&'M'].contains("app.current_tenant_id"));
    assert_eq!(summarize(&c.simple(TENANT_QUERY).await), ["T", &format!("D:{TENANT_A}"), "C:SELECT 1", "Z:I"]);
}

#[tokio::test]
async fn case14_refusal_in_a_block_aborts_it_like_a_server_error() {
    let (_pg, _proxy, mut c) = setup().await;
    assert_eq!(summarize(&c.simple("BEGIN").await), ["C:BEGIN", "Z:T"]);
    let set = format!("SET LOCAL app.current_tenant_id = '{TENANT_B}'");
    assert_eq!(summarize(&c.simple(&set).await), ["E:42501", "Z:E"]);
    assert_eq!(summarize(&c.simple("SELECT 1").await), ["E:25P02", "Z:E"]);
    assert_eq!(summarize(&c.simple("ROLLBACK").await), ["C:ROLLBACK", "Z:I"]);
    assert_eq!(summarize(&c.simple(TENANT_QUERY).await), ["T", &format!("D:{TENANT_A}"), "C:SELECT 1", "Z:I"]);
}

#[tokio::test]
async fn refusal_mid_query_runs_what_came_before_and_skips_the_rest() {
    let (pg, _proxy, mut c) = setup().await;
    let sql = format!(
        "INSERT INTO tool_calls (tenant_id, tool_name) VALUES ('{TENANT_A}', 'kept'); \
         SET app.current_tenant_id = '{TENANT_B}'; SELECT 2"
    );
    // One implicit transaction: the error rolls the INSERT back, as on a direct connection.
    assert_eq!(summarize(&c.simple(&sql).await), ["C:INSERT 0 1", "E:42501", "Z:I"]);
    assert_eq!(pg.count_rows("tool_calls", TENANT_A).await, 0);
    let explicit = format!("BEGIN; SELECT 1; SET app.current_tenant_id = '{TENANT_B}'; SELECT 2");
    assert_eq!(summarize(&c.simple(&explicit).await), ["C:BEGIN", "T", "D:1", "C:SELECT 1", "E:42501", "Z:E"]);
    assert_eq!(summarize(&c.simple("ROLLBACK").await), ["C:ROLLBACK", "Z:I"]);
}

#[tokio::test]
async fn refusal_in_a_pipeline_skips_to_sync() {
    let (_pg, _proxy, mut c) = setup().await;
    c.parse("", "SELECT 1", &[]).bind("", "", &[]).execute("", 0);
    c.parse("", &format!("SELECT set_config('app.current_tenant_id', '{TENANT_B}', false)"), &[]);
    c.bind("", "", &[]).execute("", 0).sync();
    c.parse("", TENANT_QUERY, &[]).bind("", "", &[]).execute("", 0).sync();
    c.flush().await;
    assert_eq!(summarize(&c.read_until_ready().await), ["1", "2", "D:1", "C:SELECT 1", "E:42501", "Z:I"]);
    assert_eq!(summarize(&c.read_until_ready().await), ["1", "2", &format!("D:{TENANT_A}"), "C:SELECT 1", "Z:I"]);
}

#[tokio::test]
async fn fastpath_function_call_is_refused() {
    let (_pg, _proxy, mut c) = setup().await;
    // 2078 is set_config's OID; the proxy refuses every fastpath call regardless.
    let args: [Option<&[u8]>; 3] = [Some(b"app.current_tenant_id"), Some(TENANT_B.as_bytes()), Some(b"f")];
    c.function_call(2078, &args).flush().await;
    let msgs = c.read_until_ready().await;
    assert_eq!(summarize(&msgs), ["E:42501", "Z:I"]);
    assert!(msgs[0].error_fields()[&'M'].contains("fastpath"));
    assert_eq!(summarize(&c.simple("BEGIN").await), ["C:BEGIN", "Z:T"]);
    c.function_call(2078, &args).flush().await;
    assert_eq!(summarize(&c.read_until_ready().await), ["E:42501", "Z:E"]);
    assert_eq!(summarize(&c.simple("ROLLBACK").await), ["C:ROLLBACK", "Z:I"]);
    assert_eq!(summarize(&c.simple(TENANT_QUERY).await), ["T", &format!("D:{TENANT_A}"), "C:SELECT 1", "Z:I"]);
}

#[tokio::test]
async fn other_settings_and_resets_are_not_refused() {
    let (_pg, _proxy, mut c) = setup().await;
    for sql in [
        "SET search_path = public",
        "SET application_name = 'x'",
        "RESET ALL",
        "SELECT set_config('search_path', 'public', false)",
        "SELECT 'SET app.current_tenant_id = 1'",
        "SELECT 1 -- SET app.current_tenant_id = 1",
        "SELECT $x$ set_config('app.current_tenant_id','b',false) $x$",
        "DISCARD ALL",
    ] {
        let got = summarize(&c.simple(sql).await);
        assert!(!got.iter().any(|m| m.starts_with("E:")), "{sql}: {got:?}");
        assert_eq!(got.last().map(String::as_str), Some("Z:I"), "{sql}");
    }
    assert_eq!(summarize(&c.simple(TENANT_QUERY).await), ["T", &format!("D:{TENANT_A}"), "C:SELECT 1", "Z:I"]);
}

#[tokio::test]
async fn unterminated_text_is_an_error_not_a_bypass() {
    let (_pg, _proxy, mut c) = setup().await;
    let msgs = c.simple(&format!("SET app.current_tenant_id = '{TENANT_B}'; SELECT 'unterminated")).await;
    assert_eq!(summarize(&msgs), ["E:42601", "Z:I"]);
    assert_eq!(summarize(&c.simple(TENANT_QUERY).await), ["T", &format!("D:{TENANT_A}"), "C:SELECT 1", "Z:I"]);
}
