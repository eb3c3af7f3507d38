//! Real client libraries through the proxy: node-postgres, postgres.js, psycopg 3, asyncpg
//! and pgbench (`-M simple`, `-M extended`, `-M prepared`).
//!
//! Each library test starts its own PostgreSQL and proxy with a small pool
//! ([`POOL_SIZE`] server connections for many client connections), then runs the
//! library's suite under `tests/clients/` as a subprocess with the connection settings in
//! the environment. The libraries come from npm and PyPI, pinned in
//! `tests/clients/node/package-lock.json` and `tests/clients/python/requirements.txt`, and
//! are installed on first use (`npm ci`, `pip install --target`), once per lock file: a stamp
//! next to the installed files says which lock file they came from. A missing `npm`,
//! `python3` or `pip` fails these tests (`.ci/run` installs them). Each library suite
//! also runs against a proxy in signed mode (`*_signed`), unchanged.

mod support;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use support::install::{install_once, npm_ci, read, run_installer, tool_version};
use support::{PgCluster, Proxy, ProxyOptions, TENANT_A, TENANT_B};

/// Server connections for all clients of one test: far fewer than the client connections.
const POOL_SIZE: usize = 3;
/// How long one client suite or pgbench run may take before it is killed.
const RUN_TIMEOUT: Duration = Duration::from_secs(300);

fn clients_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests").join("clients")
}

fn node_dir() -> PathBuf {
    clients_dir().join("node")
}

fn python_dir() -> PathBuf {
    clients_dir().join("python")
}

/// The Python interpreter the suites run with.
const PYTHON: &str = "python3";

// ---------------------------------------------------------------------------------------
// Installing the client libraries, once per lock file
// ---------------------------------------------------------------------------------------

/// `node_modules` from `package-lock.json` (`npm ci`), installed once per process at most.
fn node_deps() {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    if let Err(e) = DONE.get_or_init(install_node_deps) {
        panic!("installing the Node.js client libraries failed:\n{e}");
    }
}

/// `.deps` from `requirements.txt` (`pip install --target`), installed once per process at most.
fn python_deps() {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    if let Err(e) = DONE.get_or_init(install_python_deps) {
        panic!("installing the Python client libraries failed:\n{e}");
    }
}

fn install_node_deps() -> Result<(), String> {
    const HINT: &str = "Node.js and npm are needed for the node-postgres and postgres.js tests; \
                        install them with `apt-get install -y nodejs npm` (bash .ci/run does)";
    npm_ci(&node_dir(), HINT)
}

fn install_python_deps() -> Result<(), String> {
    const HINT: &str = "Python 3 with pip is needed for the psycopg and asyncpg tests; install them \
                        with `apt-get install -y python3 python3-pip` (bash .ci/run does)";
    let python = tool_version(PYTHON, &["--version"]).map_err(|e| format!("{e}\n{HINT}"))?;
    let pip = tool_version(PYTHON, &["-m", "pip", "--version"]).map_err(|e| format!("{e}\n{HINT}"))?;
    let dir = python_dir();
    let requirements = read(&dir.join("requirements.txt"))?;
    let stamp = format!("{python}\n{requirements}");
    install_once(&dir, ".deps", &stamp, |staging| {
        let target = staging.join(".deps");
        let mut cmd = Command::new(PYTHON);
        cmd.args([
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "--no-input",
            "--only-binary=:all:",
            "--no-compile",
        ])
        .args(["--no-warn-script-location", "--root-user-action=ignore", "--target"])
        .arg(&target)
        .arg("-r")
        .arg(dir.join("requirements.txt"))
        .env("PIP_NO_CACHE_DIR", "")
        .current_dir(staging);
        run_installer(cmd, &format!("pip install ({pip})"))?;
        Ok(target)
    })
}

// ---------------------------------------------------------------------------------------
// Running a client suite against a fresh cluster and proxy
// ---------------------------------------------------------------------------------------

async fn start() -> (PgCluster, Proxy) {
    start_in(Mode::Plain).await
}

/// `tenant.mode` of the proxy a suite runs against.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Plain,
    /// Signed: the database verifies the tenant's proof (`pgtenant policy --signed`).
    Signed,
}

const SIGNING_KEY: &str = "clients-signing-key-0123456789abcdef-0123";

async fn start_in(mode: Mode) -> (PgCluster, Proxy) {
    let pg = PgCluster::start().await;
    let options = match mode {
        Mode::Plain => ProxyOptions::default(),
        Mode::Signed => {
            pg.make_signed(&[SIGNING_KEY]).await;
            ProxyOptions::signed(SIGNING_KEY)
        }
    };
    let proxy = Proxy::start(&pg, options.pool_size(POOL_SIZE)).await;
    (pg, proxy)
}

/// The connection settings the suites read (see `tests/clients/node/env.mjs`).
fn client_env(pg: &PgCluster, proxy: &Proxy) -> Vec<(String, String)> {
    let url = |tenant: &str| format!("postgres://anyname:{}@127.0.0.1:{}/app", proxy.token(tenant), proxy.port());
    vec![
        ("PGTENANT_URL_A".into(), url(TENANT_A)),
        ("PGTENANT_URL_B".into(), url(TENANT_B)),
        ("TENANT_A".into(), TENANT_A.into()),
        ("TENANT_B".into(), TENANT_B.into()),
        ("PGTENANT_ADMIN_URL".into(), format!("postgres://postgres@127.0.0.1:{}/app", pg.port())),
        ("PGTENANT_POOL_SIZE".into(), POOL_SIZE.to_string()),
    ]
}

/// What a finished subprocess printed (stdout and stderr interleaved) and how it ended.
struct Run {
    what: String,
    status: Option<std::process::ExitStatus>,
    output: String,
    elapsed: Duration,
}

impl Run {
    fn success(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }

    fn describe(&self) -> String {
        let status = match self.status {
            Some(s) => s.to_string(),
            None => format!("killed after {RUN_TIMEOUT:?}"),
        };
        format!(
            "{} ({status}, {:.1} s)\n--- output ---\n{}\n--- end of output ---",
            self.what,
            self.elapsed.as_secs_f64(),
            self.output
        )
    }
}

/// Runs `cmd` with `env`, the output going to a temp file, killed after [`RUN_TIMEOUT`].
async fn run(what: &str, mut cmd: tokio::process::Command, env: &[(String, String)]) -> Run {
    let log_dir = tempfile::tempdir().expect("temp dir for output");
    let log_path = log_dir.path().join("output.log");
    let log = File::create(&log_path).expect("create output log");
    // Settings from the caller's environment must not redirect the clients elsewhere.
    for var in ["PGHOST", "PGHOSTADDR", "PGPORT", "PGUSER", "PGPASSWORD", "PGDATABASE", "PGSERVICE", "PGOPTIONS"] {
        cmd.env_remove(var);
    }
    for var in ["PGSSLMODE", "PGPASSFILE", "DATABASE_URL", "NODE_OPTIONS", "PYTHONPATH", "PYTHONHOME"] {
        cmd.env_remove(var);
    }
    cmd.envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("clone log handle"))
        .stderr(log)
        // Its own process group, so that a timeout also ends what it started (node --test
        // runs each file in a child process).
        .process_group(0)
        .kill_on_drop(true);
    let started = Instant::now();
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("{what}: could not start: {e}"));
    let status = match tokio::time::timeout(RUN_TIMEOUT, child.wait()).await {
        Ok(status) => Some(status.unwrap_or_else(|e| panic!("{what}: wait: {e}"))),
        Err(_) => {
            if let Some(pid) = child.id() {
                let _ = Command::new("kill").args(["-KILL", "--", &format!("-{pid}")]).status();
            }
            let _ = child.kill().await;
            None
        }
    };
    let output = std::fs::read_to_string(&log_path).unwrap_or_else(|e| format!("<could not read output: {e}>"));
    Run { what: what.to_string(), status, output, elapsed: started.elapsed() }
}

/// Runs one client suite against a fresh cluster and proxy and fails the test if it fails or
/// ran no test; `count_tests` reads the number of tests that passed from the output.
async fn run_suite(
    what: &str,
    mode: Mode,
    dir: PathBuf,
    program: &str,
    args: &[&str],
    extra_env: &[(&str, String)],
    count_tests: fn(&str) -> Option<u32>,
) {
    let (pg, proxy) = start_in(mode).await;
    let mut env = client_env(&pg, &proxy);
    env.extend(extra_env.iter().map(|(k, v)| (k.to_string(), v.clone())));
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args).current_dir(&dir);
    let result = run(what, cmd, &env).await;
    if !result.success() {
        panic!("{}", result.describe());
    }
    match count_tests(&result.output) {
        Some(n) if n > 0 => eprintln!("{}", result.describe()),
        _ => panic!("no test passed: {}", result.describe()),
    }
}

/// Passed tests in the summary of `node --test` (`# pass N`, with `# fail 0`).
fn node_tests_passed(output: &str) -> Option<u32> {
    let value = |key: &str| {
        let line = output.lines().rev().find(|l| l.starts_with(key))?;
        line[key.len()..].trim().parse::<u32>().ok()
    };
    (value("# fail ")? == 0).then(|| value("# pass "))?
}

/// Tests run in the summary of `python3 -m unittest` (`Ran N tests`, then `OK`).
fn unittest_tests_passed(output: &str) -> Option<u32> {
    let ran = output.lines().rev().find_map(|l| l.strip_prefix("Ran "))?;
    let n = ran.split_whitespace().next()?.parse().ok()?;
    output.lines().any(|l| l == "OK" || l.starts_with("OK (")).then_some(n)
}

async fn node_suite(file: &str, mode: Mode) {
    node_deps();
    let args = ["--test", file];
    run_suite(&format!("node {file}"), mode, node_dir(), "node", &args, &[], node_tests_passed).await;
}

#[tokio::test]
async fn node_postgres() {
    node_suite("pg.test.mjs", Mode::Plain).await;
}

#[tokio::test]
async fn postgres_js() {
    node_suite("postgres.test.mjs", Mode::Plain).await;
}

fn python_env() -> Vec<(&'static str, String)> {
    let deps = python_dir().join(".deps");
    vec![("PYTHONPATH", deps.display().to_string()), ("PYTHONDONTWRITEBYTECODE", "1".into())]
}

async fn python_suite(module: &str, mode: Mode) {
    python_deps();
    let args = ["-m", "unittest", "-v", module];
    let what = format!("python {module}");
    run_suite(&what, mode, python_dir(), PYTHON, &args, &python_env(), unittest_tests_passed).await;
}

#[tokio::test]
async fn psycopg3() {
    python_suite("test_psycopg", Mode::Plain).await;
}

#[tokio::test]
async fn asyncpg() {
    python_suite("test_asyncpg", Mode::Plain).await;
}

// The same suites against a proxy in signed mode, where the database checks
// each transaction's tenant proof: the drivers must not notice any difference.

#[tokio::test]
async fn node_postgres_signed() {
    node_suite("pg.test.mjs", Mode::Signed).await;
}

#[tokio::test]
async fn postgres_js_signed() {
    node_suite("postgres.test.mjs", Mode::Signed).await;
}

#[tokio::test]
async fn psycopg3_signed() {
    python_suite("test_psycopg", Mode::Signed).await;
}

#[tokio::test]
async fn asyncpg_signed() {
    python_suite("test_asyncpg", Mode::Signed).await;
}

// ---------------------------------------------------------------------------------------
// pgbench
// ---------------------------------------------------------------------------------------

const PGBENCH_TABLES: &str = "pgbench_accounts, pgbench_branches, pgbench_tellers, pgbench_history";

fn pgbench() -> PathBuf {
    support::pg::pgbench_bin()
}

/// A cluster with pgbench's tables (scale 1, created as superuser) usable by `app_user`, and
/// a proxy in front of it.
async fn start_pgbench() -> (PgCluster, Proxy) {
    let (pg, proxy) = start().await;
    let mut init = tokio::process::Command::new(pgbench());
    init.args(["-i", "-s", "1", "-q", "-h", "127.0.0.1", "-U", "postgres", "-p"]).arg(pg.port().to_string()).arg("app");
    let result = run("pgbench -i -s 1 (as postgres, directly)", init, &[]).await;
    assert!(result.success(), "{}", result.describe());
    let su = pg.superuser().await;
    // TRUNCATE on pgbench_history: pgbench truncates it before a run unless -n.
    let grants = format!(
        "GRANT SELECT, INSERT, UPDATE ON {PGBENCH_TABLES} TO app_user;
         GRANT TRUNCATE ON pgbench_history TO app_user;"
    );
    su.batch_execute(&grants).await.expect("grant pgbench tables to app_user");
    (pg, proxy)
}

/// Runs pgbench through the proxy as `tenant`; `args` come before the database name.
async fn pgbench_run(proxy: &Proxy, tenant: &str, args: Vec<String>) -> Run {
    let mut cmd = tokio::process::Command::new(pgbench());
    cmd.args(["-h", "127.0.0.1", "-U", "anyname", "-p"]).arg(proxy.port().to_string()).args(&args).arg("app");
    let what = format!("pgbench {} (tenant {tenant})", args.join(" "));
    run(&what, cmd, &[("PGPASSWORD".into(), proxy.token(tenant))]).await
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

/// Asserts a pgbench run succeeded with `expected` transactions processed and none failed.
fn assert_pgbench_ok(result: &Run, expected: u32) {
    assert!(result.success(), "{}", result.describe());
    let processed = format!("number of transactions actually processed: {expected}/{expected}\n");
    assert!(result.output.contains(&processed), "expected {processed:?} in\n{}", result.describe());
    assert!(
        result.output.contains("number of failed transactions: 0 (0.000%)"),
        "expected no failed transactions in\n{}",
        result.describe()
    );
    eprintln!("{}", result.describe());
}

/// A pgbench script that fails (division by zero) unless every statement sees `tenant`,
/// in autocommit statements and inside an explicit transaction.
fn tenant_script(tenant: &str) -> String {
    format!(
        "\\set aid random(1, 100000 * :scale)\n\
         SELECT current_setting('app.current_tenant_id') = '{tenant}' AS ok \\gset\n\
         \\if :ok\n\
         SELECT abalance FROM pgbench_accounts WHERE aid = :aid;\n\
         \\else\n\
         SELECT 1/0 AS wrong_tenant;\n\
         \\endif\n\
         BEGIN;\n\
         SELECT current_setting('app.current_tenant_id') = '{tenant}' AS ok_in_tx \\gset\n\
         UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = :aid;\n\
         SELECT current_setting('app.current_tenant_id') = '{tenant}' AS ok_after \\gset\n\
         \\if :ok_in_tx\n\
         \\if :ok_after\n\
         \\else\n\
         SELECT 1/0 AS wrong_tenant;\n\
         \\endif\n\
         \\else\n\
         SELECT 1/0 AS wrong_tenant;\n\
         \\endif\n\
         END;\n"
    )
}

/// Select-only and TPC-B-like runs, then the tenant-checking script for both tenants at once,
/// all in protocol mode `mode`.
async fn pgbench_mode(mode: &str) {
    let (_pg, proxy) = start_pgbench().await;
    let m = ["-M", mode];

    let select_only = [&["-n", "-S", "-c", "8", "-j", "2", "-t", "200"][..], &m].concat();
    assert_pgbench_ok(&pgbench_run(&proxy, TENANT_A, strings(&select_only)).await, 1600);

    // The default TPC-B-like script, without -n: pgbench first runs VACUUM (a warning for a
    // non-owner) and TRUNCATE pgbench_history through the proxy.
    let tpcb = [&["-c", "8", "-j", "2", "-t", "100"][..], &m].concat();
    assert_pgbench_ok(&pgbench_run(&proxy, TENANT_B, strings(&tpcb)).await, 800);

    let scripts = tempfile::tempdir().expect("temp dir for scripts");
    let mut runs = Vec::new();
    for tenant in [TENANT_A, TENANT_B] {
        let path = scripts.path().join(format!("tenant-{tenant}.sql"));
        std::fs::write(&path, tenant_script(tenant)).expect("write pgbench script");
        let script = path.display().to_string();
        let args = [&["-n", "-c", "4", "-j", "2", "-t", "100"][..], &m, &["-f", &script]].concat();
        runs.push(pgbench_run(&proxy, tenant, strings(&args)));
    }
    // Both tenants at the same time, on the same 3 server connections.
    let (a, b) = tokio::join!(runs.remove(0), runs.remove(0));
    assert_pgbench_ok(&a, 400);
    assert_pgbench_ok(&b, 400);
}

#[tokio::test]
async fn pgbench_simple() {
    pgbench_mode("simple").await;
}

#[tokio::test]
async fn pgbench_extended() {
    pgbench_mode("extended").await;
}

#[tokio::test]
async fn pgbench_prepared() {
    pgbench_mode("prepared").await;
}

/// The tenant script really checks: run with the other tenant's token, it fails.
#[tokio::test]
async fn pgbench_tenant_script_fails_for_another_tenant() {
    let (_pg, proxy) = start_pgbench().await;
    let scripts = tempfile::tempdir().expect("temp dir for scripts");
    let path = scripts.path().join("tenant-a.sql");
    std::fs::write(&path, tenant_script(TENANT_A)).expect("write pgbench script");
    for mode in ["simple", "extended", "prepared"] {
        let args = strings(&["-n", "-c", "1", "-t", "1", "-M", mode, "-f", &path.display().to_string()]);
        let result = pgbench_run(&proxy, TENANT_B, args).await;
        assert!(!result.success(), "expected a failure: {}", result.describe());
        assert!(result.output.contains("division by zero"), "{}", result.describe());
        eprintln!("{}", result.describe());
    }
}
