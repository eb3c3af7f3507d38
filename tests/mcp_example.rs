//! The example MCP server (`examples/mcp-server`) behind the proxy, end to end: two
//! instances, each with its own tenant's token in `DATABASE_URL`, driven by the MCP SDK's
//! client over stdio (`examples/mcp-server/test/isolation.mjs`); each must see only its own
//! tool calls and configuration, while the same server straight to PostgreSQL as superuser
//! (the negative control) sees both. Then one instance over Streamable HTTP serves both
//! tenants by their bearer tokens (the sidecar pattern of `deploy/`), with the same isolation
//! and 401 for a missing or forged token. The test fails when the driver fails, and then checks
//! as superuser that every call was stored under the tenant of the server that logged it.
//!
//! The example's packages come from its `package-lock.json` (`npm ci`, once per lock file,
//! as in `tests/clients.rs`) and it is compiled with its own pinned `tsc`. A missing `node`
//! or `npm` fails the test (`.ci/run` installs them).

mod support;

use std::fs::File;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use support::install::{npm_ci, run_installer};
use support::util::{random_string, tail};
use support::{PgCluster, Proxy, ProxyOptions, TENANT_A, TENANT_B};

/// How long the driver may run before it is killed.
const RUN_TIMEOUT: Duration = Duration::from_secs(180);

/// The column defaults the example relies on (as in `pgtenant demo`'s schema): rows get
/// their tenant from the setting the proxy sets, so the server never names it. Plus each
/// tenant's configuration.
const EXAMPLE_SCHEMA: &str = "
    ALTER TABLE tool_calls ALTER COLUMN tenant_id
        SET DEFAULT NULLIF(current_setting('app.current_tenant_id', true), '')::uuid;
    ALTER TABLE tool_events ALTER COLUMN tenant_id
        SET DEFAULT NULLIF(current_setting('app.current_tenant_id', true), '')::uuid;
    ALTER TABLE tenant_config ALTER COLUMN tenant_id
        SET DEFAULT NULLIF(current_setting('app.current_tenant_id', true), '')::uuid;
";

const CONFIG_A: &str = "Acme Corp";
const CONFIG_B: &str = "Globex";

fn example_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples").join("mcp-server")
}

/// `npm ci` (once per lock file) and `tsc` (every run, a few seconds), once per process.
fn build_example() {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    if let Err(e) = DONE.get_or_init(|| {
        const HINT: &str = "Node.js and npm are needed for the example MCP server test; install them \
                            with `apt-get install -y nodejs npm` (bash .ci/run does)";
        let dir = example_dir();
        npm_ci(&dir, HINT)?;
        let mut tsc = Command::new("node");
        tsc.arg(dir.join("node_modules/typescript/bin/tsc")).args(["-p", "tsconfig.json"]).current_dir(&dir);
        run_installer(tsc, "tsc (examples/mcp-server)")
    }) {
        panic!("building examples/mcp-server failed:\n{e}");
    }
}

/// Runs the isolation driver with `env`; its exit status (None: killed after
/// [`RUN_TIMEOUT`]) and everything it printed.
async fn run_driver(env: &[(&str, String)]) -> (Option<std::process::ExitStatus>, String) {
    let log_dir = tempfile::tempdir().expect("temp dir for output");
    let log_path = log_dir.path().join("driver.log");
    let log = File::create(&log_path).expect("create driver log");
    let mut cmd = Command::new("node");
    cmd.arg("test/isolation.mjs").current_dir(example_dir());
    // Settings from the caller's environment must not redirect the servers elsewhere.
    for var in ["PGHOST", "PGPORT", "PGUSER", "PGPASSWORD", "PGDATABASE", "PGSERVICE", "PGOPTIONS", "PGSSLMODE"] {
        cmd.env_remove(var);
    }
    for var in ["DATABASE_URL", "NODE_OPTIONS", "MCP_HTTP_PORT", "MCP_HTTP_HOST"] {
        cmd.env_remove(var);
    }
    cmd.envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("clone log handle"))
        .stderr(log)
        // Its own process group, so that a timeout also ends the servers it started.
        .process_group(0);
    let mut child = cmd.spawn().expect("start node test/isolation.mjs");
    let deadline = Instant::now() + RUN_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the driver") {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = Command::new("kill").args(["-KILL", "--", &format!("-{}", child.id())]).status();
            let _ = child.wait();
            break None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let output = std::fs::read_to_string(&log_path).unwrap_or_else(|e| format!("<could not read output: {e}>"));
    (status, output)
}

/// `(tenant_id, count)` of the `tool_calls` whose name starts with `marker`, as superuser.
async fn stored_under(pg: &PgCluster, marker: &str) -> Vec<(String, i64)> {
    let su = pg.superuser().await;
    let sql = "SELECT tenant_id::text, count(*) FROM tool_calls WHERE starts_with(tool_name, $1) \
               GROUP BY 1 ORDER BY 1";
    let rows = su.query(sql, &[&marker]).await.expect("count tool calls by tenant");
    rows.iter().map(|r| (r.get(0), r.get(1))).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_example_servers_each_see_only_their_own_tool_calls() {
    build_example();
    let pg = PgCluster::start().await;
    let su = pg.superuser().await;
    su.batch_execute(EXAMPLE_SCHEMA).await.expect("column defaults for the example");
    let seed = "INSERT INTO tenant_config (tenant_id, key, value) VALUES \
                ($1::text::uuid, 'display_name', $2), ($3::text::uuid, 'display_name', $4)";
    su.execute(seed, &[&TENANT_A, &CONFIG_A, &TENANT_B, &CONFIG_B]).await.expect("seed tenant_config");
    let proxy = Proxy::start(&pg, ProxyOptions::default()).await;

    let url = |tenant: &str| format!("postgres://anyname:{}@127.0.0.1:{}/app", proxy.token(tenant), proxy.port());
    let (marker_a, marker_b) = (format!("mcp-e2e-a-{}", random_string(12)), format!("mcp-e2e-b-{}", random_string(12)));
    let env = [
        ("DATABASE_URL_A", url(TENANT_A)),
        ("DATABASE_URL_B", url(TENANT_B)),
        ("MARKER_A", marker_a.clone()),
        ("MARKER_B", marker_b.clone()),
        ("CONFIG_A", CONFIG_A.to_string()),
        ("CONFIG_B", CONFIG_B.to_string()),
        ("ADMIN_DATABASE_URL", format!("postgres://postgres@127.0.0.1:{}/app", pg.port())),
    ];
    let started = Instant::now();
    let (status, output) = run_driver(&env).await;
    let elapsed = started.elapsed().as_secs_f64();
    let describe = || {
        format!(
            "node test/isolation.mjs ({}, {elapsed:.1} s)\n--- output ---\n{output}\n--- proxy log ---\n{}",
            status.map_or("killed after the timeout".to_string(), |s| s.to_string()),
            tail(&proxy.log(), 60)
        )
    };
    assert!(status.is_some_and(|s| s.success()), "{}", describe());
    let summary = output.lines().find_map(|l| l.strip_suffix(" passed, 0 failed")).and_then(|n| n.parse().ok());
    assert!(summary.is_some_and(|n: u32| n >= 13), "expected `N passed, 0 failed` (N >= 13): {}", describe());
    eprintln!("{}", describe());

    // The calls really are in the database, each under the tenant of the server that logged it.
    assert_eq!(stored_under(&pg, &marker_a).await, vec![(TENANT_A.to_string(), 3)]);
    assert_eq!(stored_under(&pg, &marker_b).await, vec![(TENANT_B.to_string(), 3)]);
}
