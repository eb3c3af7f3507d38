//! `pgtenant demo`, run as a subprocess: the printed `DATABASE_URL`s isolate the two
//! tenants, the tenant setting cannot be changed, Ctrl-C (SIGINT) stops everything and
//! deletes the temp dir (also halfway through setup), `--keep` keeps it, and missing
//! PostgreSQL binaries or a taken `--port` end with exit 1 and a message saying why.

mod support;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_postgres::{Client, NoTls};

use support::proxy::binary;
use support::util::free_port;

/// How long the demo may take to print its walkthrough (initdb on a busy machine).
const START_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the demo may take to stop after SIGINT.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);

/// What the demo printed, line by line, from stdout and stderr.
#[derive(Clone, Default)]
struct Output(Arc<Mutex<Vec<String>>>);

impl Output {
    fn text(&self) -> String {
        self.0.lock().unwrap().join("\n")
    }
}

/// A running `pgtenant demo`, killed on drop (its temp dir is then cleaned by the test).
struct Demo {
    child: Child,
    output: Output,
    lines: Receiver<String>,
}

impl Demo {
    fn spawn(args: &[&str]) -> Demo {
        let mut cmd = Command::new(binary());
        cmd.arg("demo").args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("PGTENANT_") {
                cmd.env_remove(name);
            }
        }
        cmd.env("RUST_LOG", "info").env("NO_COLOR", "1");
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {} demo: {e}", binary()));
        let output = Output::default();
        let (tx, lines) = channel();
        let streams: [Box<dyn Read + Send>; 2] =
            [Box::new(child.stdout.take().unwrap()), Box::new(child.stderr.take().unwrap())];
        for stream in streams {
            let (tx, output) = (tx.clone(), output.clone());
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    output.0.lock().unwrap().push(line.clone());
                    let _ = tx.send(line);
                }
            });
        }
        Demo { child, output, lines }
    }

    /// Waits for a line containing `needle`; panics with the output after `timeout`.
    fn wait_for(&mut self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => {
                    panic!("no line with {needle:?} within {timeout:?}\n--- demo output ---\n{}", self.output.text())
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait().expect("wait for demo");
                    panic!(
                        "demo ended ({status}) before printing {needle:?}\n--- demo output ---\n{}",
                        self.output.text()
                    )
                }
            }
        }
    }

    /// Waits for the whole walkthrough and parses it.
    fn walkthrough(&mut self) -> Walkthrough {
        self.wait_for("Ctrl-C stops the proxy", START_TIMEOUT);
        Walkthrough::parse(&self.output.text())
    }

    fn interrupt(&self) {
        let pid = self.child.id().to_string();
        let status = Command::new("kill").args(["-s", "INT", &pid]).status().expect("run kill");
        assert!(status.success(), "kill -s INT {pid} failed");
    }

    fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait on demo") {
                // Let the reader threads take the last lines.
                std::thread::sleep(Duration::from_millis(100));
                return status;
            }
            if Instant::now() >= deadline {
                panic!("demo still running {STOP_TIMEOUT:?} after SIGINT\n--- output ---\n{}", self.output.text());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- demo output ---\n{}", self.output.text());
        }
    }
}

/// What the walkthrough says.
#[derive(Debug)]
struct Walkthrough {
    temp_dir: PathBuf,
    pg_port: u16,
    /// (tenant id, DATABASE_URL), tenant A first.
    tenants: Vec<(String, String)>,
    psql_lines: Vec<String>,
}

impl Walkthrough {
    fn parse(text: &str) -> Walkthrough {
        let after = |prefix: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(prefix))
                .unwrap_or_else(|| panic!("no line starting {prefix:?} in\n{text}"))
                .trim()
        };
        let temp_dir = PathBuf::from(after("  temp dir").split_whitespace().next().unwrap());
        let pg = after("  PostgreSQL  127.0.0.1:");
        let pg_port = pg[..pg.find(',').unwrap()].parse().expect("PostgreSQL port");
        let ids: Vec<String> = text
            .lines()
            .filter(|l| l.starts_with("Tenant "))
            .map(|l| l.split("(tenant_id ").nth(1).unwrap().split(')').next().unwrap().to_string())
            .collect();
        let urls: Vec<String> =
            text.lines().filter_map(|l| l.strip_prefix("  DATABASE_URL=")).map(str::to_string).collect();
        let psql_lines = text.lines().filter(|l| l.starts_with("  psql \"")).map(str::to_string).collect();
        assert_eq!((ids.len(), urls.len()), (2, 2), "two tenants with a DATABASE_URL each in\n{text}");
        let tenants = ids.into_iter().zip(urls).collect();
        Walkthrough { temp_dir, pg_port, tenants, psql_lines }
    }

    /// Superuser `postgres` straight to PostgreSQL over the socket in the temp dir (bypasses RLS).
    async fn superuser(&self) -> Client {
        let mut config = tokio_postgres::Config::new();
        config.host_path(&self.temp_dir).port(self.pg_port).user("postgres").dbname("app");
        let (client, connection) = config.connect(NoTls).await.expect("connect as superuser over the socket");
        tokio::spawn(connection);
        client
    }
}

async fn connect(url: &str) -> Client {
    let (client, connection) =
        tokio_postgres::connect(url, NoTls).await.unwrap_or_else(|e| panic!("connect to {url}: {e:?}"));
    tokio::spawn(connection);
    client
}

/// `(id, tenant_id)` of every `tool_calls` row the client sees.
async fn tool_calls(client: &Client) -> Vec<(i64, String)> {
    let rows = client.query("SELECT id, tenant_id::text FROM tool_calls ORDER BY id", &[]).await.expect("select");
    rows.iter().map(|r| (r.get(0), r.get(1))).collect()
}

fn assert_gone(dir: &Path, pg_port: u16, output: &str) {
    assert!(!dir.exists(), "{} still exists after the demo stopped\n{output}", dir.display());
    assert!(TcpStream::connect(("127.0.0.1", pg_port)).is_err(), "PostgreSQL still listens on {pg_port}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_see_only_their_rows_and_ctrl_c_cleans_up() {
    let port = free_port();
    let mut demo = Demo::spawn(&["--port", &port.to_string()]);
    let w = demo.walkthrough();
    assert!(w.temp_dir.join("data").join("PG_VERSION").is_file(), "no data directory in {}", w.temp_dir.display());
    for line in &w.psql_lines {
        assert!(line.starts_with("  psql \"postgres://demo:ey"), "{line}");
        assert!(line.ends_with(&format!("@127.0.0.1:{port}/app\"")), "{line}");
    }
    assert_eq!(w.psql_lines.len(), 2);

    let su = w.superuser().await;
    let all = tool_calls(&su).await;
    let mut seen = BTreeSet::new();
    for (tenant, url) in &w.tenants {
        let client = connect(url).await;
        let rows = tool_calls(&client).await;
        assert!(!rows.is_empty(), "tenant {tenant} sees no seed rows");
        assert!(rows.iter().all(|(_, t)| t == tenant), "tenant {tenant} sees {rows:?}");
        let expected: Vec<_> = all.iter().filter(|(_, t)| t == tenant).cloned().collect();
        assert_eq!(rows, expected, "tenant {tenant} must see exactly its rows");
        seen.extend(rows.iter().map(|(id, _)| *id));
        let config = client.query("SELECT tenant_id::text FROM tenant_config", &[]).await.unwrap();
        assert!(!config.is_empty() && config.iter().all(|r| r.get::<_, String>(0) == *tenant));

        // The other tenant's rows, asked for by id: none.
        let other = &w.tenants.iter().find(|(t, _)| t != tenant).unwrap().0;
        let sql = "SELECT count(*) FROM tool_calls WHERE tenant_id = $1::text::uuid";
        let n: i64 = client.query_one(sql, &[other]).await.unwrap().get(0);
        assert_eq!(n, 0, "tenant {tenant} sees tenant {other}'s rows");

        // A new row gets the tenant from the token (the column default), with no tenant_id given.
        let sql = "INSERT INTO tool_calls (tool_name) VALUES ('from-test') RETURNING tenant_id::text";
        let inserted: String = client.query_one(sql, &[]).await.unwrap().get(0);
        assert_eq!(&inserted, tenant);

        // Changing the tenant setting is refused (42501) and the connection stays usable.
        let err = client.batch_execute(&format!("SET app.current_tenant_id = '{other}'")).await.unwrap_err();
        assert_eq!(err.code(), Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE), "{err:?}");
        let now: String =
            client.query_one("SELECT current_setting('app.current_tenant_id')", &[]).await.unwrap().get(0);
        assert_eq!(&now, tenant);
    }
    let all_ids: BTreeSet<i64> = all.iter().map(|(id, _)| *id).collect();
    assert_eq!(seen, all_ids, "together the tenants see every seed row, each once");

    // The schema is what the demo promises: RLS enabled and forced, app_user unprivileged.
    let sql = "SELECT count(*) FROM pg_class WHERE relname IN ('tool_calls', 'tool_events', 'tenant_config') \
               AND relrowsecurity AND relforcerowsecurity";
    assert_eq!(su.query_one(sql, &[]).await.unwrap().get::<_, i64>(0), 3);
    let sql = "SELECT rolsuper OR rolbypassrls FROM pg_roles WHERE rolname = 'app_user'";
    assert!(!su.query_one(sql, &[]).await.unwrap().get::<_, bool>(0));
    drop(su);

    demo.interrupt();
    let status = demo.wait_exit();
    let output = demo.output.text();
    assert_eq!(status.code(), Some(0), "exit status after SIGINT\n{output}");
    assert!(output.contains("removed"), "{output}");
    assert_gone(&w.temp_dir, w.pg_port, &output);
}

#[test]
fn keep_leaves_the_stopped_cluster() {
    let port = free_port();
    let mut demo = Demo::spawn(&["--keep", "--port", &port.to_string()]);
    let w = demo.walkthrough();
    demo.interrupt();
    let status = demo.wait_exit();
    let output = demo.output.text();
    let data = w.temp_dir.join("data");
    let kept = data.join("PG_VERSION").is_file();
    let stopped = !data.join("postmaster.pid").exists();
    let _ = std::fs::remove_dir_all(&w.temp_dir);
    assert_eq!(status.code(), Some(0), "{output}");
    assert!(kept, "--keep: the data directory is gone\n{output}");
    assert!(stopped, "--keep: PostgreSQL still running\n{output}");
    assert!(output.contains("kept") && output.contains("start it again"), "{output}");
}

#[test]
fn ctrl_c_during_setup_cleans_up() {
    let mut demo = Demo::spawn(&["--port", &free_port().to_string()]);
    let line = demo.wait_for("initdb in ", START_TIMEOUT);
    let dir = PathBuf::from(line.split("initdb in ").nth(1).unwrap().split_whitespace().next().unwrap());
    demo.interrupt();
    let status = demo.wait_exit();
    let output = demo.output.text();
    assert_eq!(status.code(), Some(0), "{output}");
    assert!(output.contains("interrupted during setup"), "{output}");
    assert!(!dir.exists(), "{} still exists\n{output}", dir.display());
}

#[test]
fn missing_postgres_binaries_exit_1_with_the_install_command() {
    let out = Command::new(binary())
        .args(["demo", "--pg-bin", "/nonexistent/pgtenant-test"])
        .stdin(Stdio::null())
        .output()
        .expect("run demo");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    for needle in ["PostgreSQL server binaries (initdb, pg_ctl) not found", "/nonexistent/pgtenant-test"] {
        assert!(stderr.contains(needle), "{needle:?} missing from\n{stderr}");
    }
    for needle in ["sudo apt-get install postgresql", "brew install postgresql", "--pg-bin"] {
        assert!(stderr.contains(needle), "{needle:?} missing from\n{stderr}");
    }
    assert!(out.stdout.is_empty(), "nothing on stdout: {}", String::from_utf8_lossy(&out.stdout));
}

#[test]
fn a_taken_port_is_refused_before_anything_starts() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let out = Command::new(binary()).args(["demo", "--port", &port]).stdin(Stdio::null()).output().expect("run demo");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&format!("--port {port}")) && stderr.contains("in use"), "{stderr}");
    assert!(!stderr.contains("initdb in"), "nothing is started: {stderr}");
}

#[test]
fn help_lists_the_options() {
    let out = Command::new(binary()).args(["demo", "--help"]).output().expect("run demo --help");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    for flag in ["--keep", "--port", "--pg-bin", "--log-format"] {
        assert!(text.contains(flag), "`pgtenant demo --help` lacks {flag}:\n{text}");
    }
    let top = Command::new(binary()).arg("--help").output().expect("run --help");
    assert!(String::from_utf8_lossy(&top.stdout).contains("demo"), "top-level help lacks demo");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_demo_keeps_tenants_apart_even_from_a_do_block() {
    let port = free_port();
    let mut demo = Demo::spawn(&["--port", &port.to_string(), "--signed"]);
    let w = demo.walkthrough();
    let output = demo.output.text();
    assert!(output.contains("Signed mode (plpgsql left usable") && !output.contains("NOTICE"), "{output}");
    let (a, url_a) = &w.tenants[0];
    let b = &w.tenants[1].0;
    let client = connect(url_a).await;
    let rows = tool_calls(&client).await;
    assert!(!rows.is_empty() && rows.iter().all(|(_, t)| t == a), "{rows:?}");
    let verified: Option<String> = client.query_one("SELECT pgtenant.current_tenant()", &[]).await.unwrap().get(0);
    assert_eq!(verified.as_deref(), Some(a.as_str()));

    // The walkthrough's attack: the setting changes, nothing proves it, no rows.
    client.batch_execute("BEGIN").await.unwrap();
    let attack = format!(
        "DO $$ BEGIN EXECUTE 'SELECT set_' || 'config(''app.current_' || 'tenant_id'', ''{b}'', true)'; END $$"
    );
    client.batch_execute(&attack).await.unwrap();
    let sql = "SELECT current_setting('app.current_tenant_id'), pgtenant.current_tenant(), count(*) FROM tool_calls";
    let row = client.query_one(sql, &[]).await.unwrap();
    assert_eq!(row.get::<_, String>(0), *b);
    assert_eq!(row.get::<_, Option<String>>(1), None);
    assert_eq!(row.get::<_, i64>(2), 0);
    client.batch_execute("ROLLBACK").await.unwrap();
    drop(client);

    demo.interrupt();
    let status = demo.wait_exit();
    let output = demo.output.text();
    assert_eq!(status.code(), Some(0), "exit status after SIGINT\n{output}");
    assert_gone(&w.temp_dir, w.pg_port, &output);
}
