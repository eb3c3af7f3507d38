//! Launches the `pgtenant` binary against a [`PgCluster`] and mints the JWTs clients log in with.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tempfile::TempDir;
use tokio_postgres::{Client, Config, NoTls};

use super::pg::PgCluster;
use super::util::{free_port, random_string, read_log, tail};

/// How long `Proxy::start` waits for the listen port to accept connections.
const READY_TIMEOUT: Duration = Duration::from_secs(15);
/// How often `Proxy::start` picks new ports when the proxy could not bind its own.
const START_ATTEMPTS: usize = 4;

/// Path of the proxy binary under test.
pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_pgtenant")
}

/// Runs `pgtenant <args>` to completion with no inherited `PGTENANT_*` or
/// `PGPASSWORD` variables, so the caller's environment cannot change the outcome.
pub fn run_cli(args: &[&str]) -> std::process::Output {
    let mut cmd = Command::new(binary());
    cmd.args(args).stdin(Stdio::null());
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("PGTENANT_") || name == "PGPASSWORD" {
            cmd.env_remove(name);
        }
    }
    cmd.output().unwrap_or_else(|e| panic!("run {} {args:?}: {e}", binary()))
}

/// How to start the proxy. `ProxyOptions::default()` gives the fixed reference config.
#[derive(Clone, Debug)]
pub struct ProxyOptions {
    /// `upstream.pool_size` (default 4).
    pub pool_size: usize,
    /// `(section, key, raw TOML value)` set in the config: replaces the key when the section
    /// already has it, else adds it (creating the section if needed). Values are raw TOML,
    /// e.g. `"\"require\""`, `"40"`, `"[\"RS256\"]"`; see [`toml_str`].
    pub extra_toml: Vec<(String, String, String)>,
    /// `(section, key)` removed from the config (to test missing-key handling); removals are
    /// applied before `extra_toml`.
    pub remove_toml: Vec<(String, String)>,
    /// Raw TOML appended verbatim at the end of the file (e.g. whole new tables).
    pub raw_toml: String,
    /// Extra environment for the proxy process. `RUST_LOG` defaults to the test's own or
    /// `info`; inherited `PGTENANT_*` variables are removed.
    pub env: Vec<(String, String)>,
    /// `upstream.user` (default `app_user`); `md5_user` gets the md5 password.
    pub upstream_user: String,
    /// Host part of `listen.addr` (default `127.0.0.1`); the port is always picked by
    /// [`Proxy::start`]. A wildcard such as `0.0.0.0` still accepts on 127.0.0.1.
    pub listen_host: String,
    /// Extra command-line arguments after `serve --config PATH` (e.g. `--log-format json`).
    pub args: Vec<String>,
}

impl Default for ProxyOptions {
    fn default() -> Self {
        ProxyOptions {
            pool_size: 4,
            extra_toml: Vec::new(),
            remove_toml: Vec::new(),
            raw_toml: String::new(),
            env: Vec::new(),
            upstream_user: "app_user".to_string(),
            listen_host: "127.0.0.1".to_string(),
            args: Vec::new(),
        }
    }
}

impl ProxyOptions {
    /// The defaults in `tenant.mode = "signed"` with `key` (from an environment variable).
    pub fn signed(key: &str) -> Self {
        ProxyOptions::default()
            .set("tenant", "mode", "\"signed\"")
            .set("tenant", "signing_key_env", "\"TEST_SIGNING_KEY\"")
            .env("TEST_SIGNING_KEY", key)
    }

    /// Adds a command-line argument after `serve --config PATH`.
    pub fn arg(mut self, arg: &str) -> Self {
        self.args.push(arg.to_string());
        self
    }

    /// Sets `upstream.pool_size`.
    pub fn pool_size(mut self, n: usize) -> Self {
        self.pool_size = n;
        self
    }

    /// Sets `[section] key = value`, `value` being raw TOML (see [`toml_str`]).
    pub fn set(mut self, section: &str, key: &str, value: impl Into<String>) -> Self {
        self.extra_toml.push((section.to_string(), key.to_string(), value.into()));
        self
    }

    /// Removes `[section] key` from the config.
    pub fn unset(mut self, section: &str, key: &str) -> Self {
        self.remove_toml.push((section.to_string(), key.to_string()));
        self
    }

    /// Appends raw TOML at the end of the file.
    pub fn raw_toml(mut self, toml: &str) -> Self {
        self.raw_toml.push_str(toml);
        self
    }

    /// Adds an environment variable for the proxy process.
    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.env.push((name.to_string(), value.to_string()));
        self
    }

    /// Sets `upstream.user`.
    pub fn upstream_user(mut self, user: &str) -> Self {
        self.upstream_user = user.to_string();
        self
    }

    /// Sets the host part of `listen.addr` (e.g. `0.0.0.0` to accept non-loopback clients).
    pub fn listen_host(mut self, host: &str) -> Self {
        self.listen_host = host.to_string();
        self
    }

    /// Renders `proxy.toml` for `pg`, the given ports and HS secret, with the options applied.
    pub fn render(&self, pg: &PgCluster, listen_port: u16, http_port: u16, secret: &str) -> String {
        let password = match self.upstream_user.as_str() {
            "md5_user" => pg.md5_password(),
            _ => pg.app_password(),
        };
        let upstream = (pg.port(), self.upstream_user.as_str(), password);
        let listen = format!("{}:{listen_port}", self.listen_host);
        let mut sections = base_config(upstream, self.pool_size, &listen, http_port, secret);
        for (section, key) in &self.remove_toml {
            if let Some((_, entries)) = sections.iter_mut().find(|(name, _)| name == section) {
                entries.retain(|(k, _)| k != key);
            }
        }
        for (section, key, value) in &self.extra_toml {
            set_key(&mut sections, section, key, value);
        }
        let mut text = String::new();
        for (name, entries) in &sections {
            text.push_str(&format!("[{name}]\n"));
            for (key, value) in entries {
                text.push_str(&format!("{key} = {value}\n"));
            }
        }
        text.push_str(&self.raw_toml);
        text
    }
}

/// Ordered `[section]` → ordered `key = value` (values are raw TOML).
type Sections = Vec<(String, Vec<(String, String)>)>;

/// The fixed reference config; `upstream` is (port, user, password).
fn base_config(
    upstream: (u16, &str, &str),
    pool_size: usize,
    listen_addr: &str,
    http_port: u16,
    secret: &str,
) -> Sections {
    let (pg_port, user, password) = upstream;
    let section = |name: &str, entries: Vec<(&str, String)>| {
        let entries = entries.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        (name.to_string(), entries)
    };
    vec![
        section("listen", vec![("addr", toml_str(listen_addr))]),
        section(
            "upstream",
            vec![
                ("host", toml_str("127.0.0.1")),
                ("port", pg_port.to_string()),
                ("database", toml_str("app")),
                ("user", toml_str(user)),
                ("password", toml_str(password)),
                ("pool_size", pool_size.to_string()),
                ("tls", toml_str("disable")),
            ],
        ),
        section(
            "auth",
            vec![
                ("algorithms", "[\"HS256\"]".to_string()),
                ("hs_secret", toml_str(secret)),
                ("tenant_claim", toml_str("tenant_id")),
                ("tenant_format", toml_str("uuid")),
            ],
        ),
        section("tenant", vec![("setting", toml_str("app.current_tenant_id"))]),
        section("http", vec![("addr", toml_str(&format!("127.0.0.1:{http_port}")))]),
    ]
}

fn set_key(sections: &mut Sections, section: &str, key: &str, value: &str) {
    let index = match sections.iter().position(|(name, _)| name == section) {
        Some(i) => i,
        None => {
            sections.push((section.to_string(), Vec::new()));
            sections.len() - 1
        }
    };
    let entries = &mut sections[index].1;
    match entries.iter_mut().find(|(k, _)| k == key) {
        Some(entry) => entry.1 = value.to_string(),
        None => entries.push((key.to_string(), value.to_string())),
    }
}

/// `s` as a TOML basic string, quoted and escaped.
pub fn toml_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A running `pgtenant serve` process, killed on drop.
pub struct Proxy {
    dir: TempDir,
    child: Child,
    port: u16,
    http_port: u16,
    secret: String,
}

impl Proxy {
    /// Writes `proxy.toml` for `pg` and starts the proxy; returns once the listen port accepts.
    ///
    /// Panics with the proxy's log when it exits early or does not accept within 15 s.
    pub async fn start(pg: &PgCluster, options: ProxyOptions) -> Proxy {
        let dir = tempfile::Builder::new().prefix("pgtenant-proxy-").tempdir().expect("create proxy temp dir");
        let secret = random_string(48);
        for attempt in 1..=START_ATTEMPTS {
            let (port, http_port) = (free_port(), free_port());
            let config = options.render(pg, port, http_port, &secret);
            std::fs::write(dir.path().join("proxy.toml"), config).expect("write proxy.toml");
            let mut child = spawn(dir.path(), &options.env, &options.args);
            let reason = match wait_ready(&mut child, port).await {
                Ok(()) => return Proxy { dir, child, port, http_port, secret },
                Err(reason) => reason,
            };
            kill(&mut child);
            let log = read_log(&dir.path().join("proxy.log"));
            let port_taken = log.contains("in use") || log.contains("AddrInUse");
            if !port_taken || attempt == START_ATTEMPTS {
                panic!("proxy did not start: {reason}\n--- proxy log ---\n{log}");
            }
        }
        unreachable!("the last attempt either returns or panics")
    }

    /// The proxy's client port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The proxy's HTTP port on 127.0.0.1 (`/metrics`, `/health`, `/ready`).
    pub fn http_port(&self) -> u16 {
        self.http_port
    }

    /// The proxy's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The HS256 secret in the config.
    pub fn secret(&self) -> &str {
        &self.secret
    }

    /// Path of the `proxy.toml` the proxy was started with.
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("proxy.toml")
    }

    /// Everything the proxy wrote to stdout and stderr so far.
    pub fn log(&self) -> String {
        read_log(&self.dir.path().join("proxy.log"))
    }

    /// A valid token for `tenant`: claims `tenant_id`, `sub`, `iat`, `exp` (now + 1 h).
    pub fn token(&self, tenant: &str) -> String {
        mint(&self.secret, &default_claims(tenant))
    }

    /// A token with exactly `claims`, signed with the proxy's secret.
    pub fn token_with(&self, claims: Value) -> String {
        mint(&self.secret, &claims)
    }

    /// A client config for the proxy: user `anyname`, database `app`, the given password.
    pub fn config(&self, password: &str) -> Config {
        let mut config = Config::new();
        config
            .host("127.0.0.1")
            .port(self.port)
            .user("anyname")
            .password(password)
            .dbname("app")
            .connect_timeout(Duration::from_secs(10));
        config
    }

    /// A raw protocol client logged in as `tenant` with a fresh token.
    pub async fn raw_login(&self, tenant: &str) -> crate::support::RawClient {
        let mut c = crate::support::RawClient::connect(self.port).await;
        if let Err(e) = c.login("anyname", "app", &self.token(tenant)).await {
            panic!("raw login as tenant {tenant} failed: {e:?}\n--- proxy log ---\n{}", tail(&self.log(), 100));
        }
        c
    }

    /// Connects as `tenant` with a fresh token; panics with the proxy log on failure.
    pub async fn connect(&self, tenant: &str) -> Client {
        match self.try_connect(&self.token(tenant)).await {
            Ok(client) => client,
            Err(e) => panic!(
                "connecting through the proxy as tenant {tenant} failed: {}\n--- proxy log ---\n{}",
                describe(&e),
                tail(&self.log(), 100)
            ),
        }
    }

    /// Connects with `password` (normally a JWT) as user `anyname` to database `app`.
    pub async fn try_connect(&self, password: &str) -> Result<Client, tokio_postgres::Error> {
        let (client, connection) = self.config(password).connect(NoTls).await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(client)
    }

    /// `GET path` on the HTTP port: (status code, body). Panics if nothing answers in 10 s.
    pub async fn http_get(&self, path: &str) -> (u16, String) {
        let fetch = http_get(self.http_port, path);
        match tokio::time::timeout(Duration::from_secs(10), fetch).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(e)) => panic!("GET {path} on port {} failed: {e}", self.http_port),
            Err(_) => panic!("GET {path} on port {}: no answer within 10 s", self.http_port),
        }
    }

    /// Sends a signal by name (`TERM`, `HUP`, `KILL`, ...) to the proxy process.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill").args(["-s", name, &self.pid().to_string()]).status().expect("run kill");
        assert!(status.success(), "kill -s {name} {} failed", self.pid());
    }

    /// Waits up to `timeout` for the proxy to exit; its exit status, or `None` if still running.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait on proxy") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        kill(&mut self.child);
        if std::thread::panicking() {
            eprintln!("--- proxy log (port {}) ---\n{}", self.port, tail(&self.log(), 200));
        }
    }
}

/// Starts `pgtenant serve --config <dir>/proxy.toml`, output to `<dir>/proxy.log`.
fn spawn(dir: &Path, env: &[(String, String)], args: &[String]) -> Child {
    let log = File::create(dir.join("proxy.log")).expect("create proxy.log");
    let mut cmd = Command::new(binary());
    cmd.arg("serve")
        .arg("--config")
        .arg(dir.join("proxy.toml"))
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("clone log handle"))
        .stderr(log);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("PGTENANT_") {
            cmd.env_remove(name);
        }
    }
    if std::env::var_os("RUST_LOG").is_none() {
        cmd.env("RUST_LOG", "info");
    }
    cmd.env("NO_COLOR", "1");
    cmd.envs(env.iter().map(|(k, v)| (k, v)));
    cmd.spawn().unwrap_or_else(|e| panic!("spawn {}: {e}", binary()))
}

/// Polls `port` until it accepts, the process exits, or [`READY_TIMEOUT`] passes.
async fn wait_ready(child: &mut Child, port: u16) -> Result<(), String> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait on proxy") {
            return Err(format!("the proxy exited with {status}"));
        }
        if wait_for_port(port, Duration::from_millis(200)).await {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!("port {port} not accepting after {READY_TIMEOUT:?}"));
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// A minimal HTTP/1.0 GET (so the answer is never chunked): (status code, body).
pub async fn http_get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await?;
    let answer = String::from_utf8_lossy(&answer);
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let status = head.split_whitespace().nth(1).and_then(|code| code.parse().ok());
    let status = status.ok_or_else(|| std::io::Error::other(format!("bad HTTP answer: {head:?}")))?;
    Ok((status, body.to_string()))
}

/// Whether 127.0.0.1:`port` accepts a TCP connection within `timeout`.
pub async fn wait_for_port(port: u16, timeout: Duration) -> bool {
    let connect = tokio::net::TcpStream::connect(("127.0.0.1", port));
    matches!(tokio::time::timeout(timeout, connect).await, Ok(Ok(_)))
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970").as_secs()
}

/// The claims of [`Proxy::token`], to tweak before [`Proxy::token_with`] or [`mint`].
pub fn default_claims(tenant: &str) -> Value {
    let now = now_secs();
    json!({ "tenant_id": tenant, "sub": "test-user", "iat": now, "exp": now + 3600 })
}

/// An HS256 JWT over `claims` signed with `secret`.
pub fn mint(secret: &str, claims: &Value) -> String {
    let key = EncodingKey::from_secret(secret.as_bytes());
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &key).expect("encode JWT")
}

/// A tokio-postgres error with the server's SQLSTATE and message when there is one.
pub fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} {}: {}", db.severity(), db.code().code(), db.message()),
        None => format!("{e:?}"),
    }
}
