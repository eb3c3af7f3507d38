//! The `pgtenant` command line, run as a subprocess: `check-config`, environment overrides,
//! `token`, the example `proxy.toml`, `serve` and `--help`.

mod support;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::Value;
use tempfile::TempDir;
use tokio_postgres::{Client, NoTls};

use support::proxy::{describe, now_secs, wait_for_port};
use support::util::{free_port, random_string, read_log};
use support::{default_claims, mint, toml_str, PgCluster, Proxy, ProxyOptions, TENANT_A, TENANT_B};

const BIN: &str = env!("CARGO_BIN_EXE_pgtenant");
const EXAMPLE_CONFIG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/proxy.toml");
/// Variables the example config reads its secrets from.
const SECRET_VARS: [&str; 2] = ["APP_USER_PASSWORD", "PGTENANT_JWT_SECRET"];

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// `pgtenant <args>` with a clean environment (no inherited `PGTENANT_*` or secrets) plus `env`.
fn command(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args).stdin(Stdio::null());
    for (name, _) in std::env::vars_os() {
        let name_str = name.to_string_lossy();
        if name_str.starts_with("PGTENANT_") || SECRET_VARS.contains(&name_str.as_ref()) {
            cmd.env_remove(&name);
        }
    }
    cmd.env("NO_COLOR", "1").envs(env.iter().copied());
    cmd
}

/// Runs `pgtenant <args>` to completion.
fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    command(args, env).output().unwrap_or_else(|e| panic!("run {BIN} {args:?}: {e}"))
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn assert_exit(out: &Output, code: i32) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "expected exit {code}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        stdout(out),
        stderr(out)
    );
}

/// A temp dir with `proxy.toml` holding `text`.
fn config_file(text: &str) -> (TempDir, PathBuf) {
    let dir = tempfile::Builder::new().prefix("pgtenant-cli-").tempdir().expect("temp dir");
    let path = dir.path().join("proxy.toml");
    std::fs::write(&path, text).expect("write proxy.toml");
    (dir, path)
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("UTF-8 temp path")
}

/// A 48-character HS secret.
fn secret() -> String {
    random_string(48)
}

/// A complete, valid config for `pg` (upstream port `pg_port`) with the HS secret in the file.
fn good_config(pg: Option<&PgCluster>, pg_port: u16, secret: &str) -> String {
    let password = pg.map_or_else(|| "unused".to_string(), |pg| pg.app_password().to_string());
    format!(
        "[listen]\naddr = \"127.0.0.1:{}\"\n\
         [upstream]\nhost = \"127.0.0.1\"\nport = {pg_port}\ndatabase = \"app\"\nuser = \"app_user\"\n\
         password = {}\npool_size = 4\ntls = \"disable\"\n\
         [auth]\nalgorithms = [\"HS256\"]\nhs_secret = {}\n\
         [http]\naddr = \"127.0.0.1:{}\"\n",
        free_port(),
        toml_str(&password),
        toml_str(secret),
        free_port()
    )
}

/// A `pgtenant serve` process, killed on drop.
struct Served {
    child: Child,
    log: PathBuf,
    port: u16,
    _dir: TempDir,
}

impl Served {
    /// Starts `serve --config <config>` with the environment `make_env(listen_port, http_port)`
    /// gives, on fresh ports, retrying when a port was taken meanwhile; returns once the listen
    /// port accepts.
    async fn start(config: &Path, make_env: impl Fn(u16, u16) -> Vec<(String, String)>) -> Served {
        const ATTEMPTS: usize = 4;
        for attempt in 1..=ATTEMPTS {
            let dir = tempfile::Builder::new().prefix("pgtenant-serve-").tempdir().expect("temp dir");
            let log = dir.path().join("serve.log");
            let (port, http_port) = (free_port(), free_port());
            let env = make_env(port, http_port);
            let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            let file = File::create(&log).expect("create serve.log");
            let mut cmd = command(&["serve", "--config", path_str(config)], &env);
            cmd.env("RUST_LOG", "info").stdout(file.try_clone().expect("clone log handle")).stderr(file);
            let child = cmd.spawn().expect("spawn pgtenant serve");
            let mut served = Served { child, log, port, _dir: dir };
            match served.wait_ready().await {
                Ok(()) => return served,
                Err(_) if attempt < ATTEMPTS && served.log().contains("in use") => continue,
                Err(reason) => panic!("pgtenant serve did not start: {reason}"),
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    /// Polls the listen port until it accepts, the process exits, or 15 s pass.
    async fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait on pgtenant serve") {
                return Err(format!("it exited with {status}"));
            }
            if wait_for_port(self.port, Duration::from_millis(200)).await {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!("port {} not accepting after 15 s", self.port));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    fn log(&self) -> String {
        read_log(&self.log)
    }

    /// Connects with tokio-postgres as user `anyname` to database `app` with `token`.
    async fn connect(&self, token: &str) -> Client {
        let mut config = tokio_postgres::Config::new();
        config.host("127.0.0.1").port(self.port).user("anyname").password(token).dbname("app");
        config.connect_timeout(Duration::from_secs(10));
        match config.connect(NoTls).await {
            Ok((client, connection)) => {
                tokio::spawn(async move {
                    let _ = connection.await;
                });
                client
            }
            Err(e) => {
                panic!("connecting through `pgtenant serve` failed: {}\n--- log ---\n{}", describe(&e), self.log())
            }
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- pgtenant serve log ---\n{}", self.log());
        }
    }
}

/// The decoded payload of a JWT.
fn payload(token: &str) -> Value {
    let part = token.split('.').nth(1).unwrap_or_else(|| panic!("not a JWT: {token:?}"));
    let bytes = URL_SAFE_NO_PAD.decode(part).expect("base64url payload");
    serde_json::from_slice(&bytes).expect("JSON payload")
}

/// `pgtenant token` with `args`; returns the printed token (exit 0 required).
fn token(args: &[&str], env: &[(&str, &str)]) -> String {
    let out = run(&[&["token"][..], args].concat(), env);
    assert_exit(&out, 0);
    let text = stdout(&out);
    let token = text.trim().to_string();
    assert_eq!(token.split('.').count(), 3, "not a JWT on stdout: {text:?}");
    token
}

async fn current_tenant(client: &Client) -> String {
    let sql = "SELECT current_setting('app.current_tenant_id')";
    client.query_one(sql, &[]).await.expect("current_setting").get(0)
}

// ---------------------------------------------------------------------------------------------
// check-config
// ---------------------------------------------------------------------------------------------

#[test]
fn check_config_reports_every_problem_with_its_key() {
    let text = format!(
        "[listen]\nadress = \"127.0.0.1:6432\"\n\
         [upstream]\nuser = \"app_user\"\npool_size = \"lots\"\n\
         [auth]\nhs_secret = {}\n\
         [metrics]\nenabled = true\n",
        toml_str(&secret())
    );
    let (_dir, path) = config_file(&text);
    let out = run(&["check-config", "--config", path_str(&path)], &[]);
    assert_exit(&out, 2);
    let err = stderr(&out);
    for needle in [
        "listen.adress: unknown key",
        "upstream.pool_size: expected an integer between 1 and 10000, got \"lots\"",
        "upstream.database: is required",
        "metrics: unknown section",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
    }
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 4, "exactly the four problems expected:\n{err}");
    for line in lines {
        assert!(line.starts_with(&format!("{}: ", path.display())), "line does not name the file: {line}");
    }
}

#[test]
fn check_config_accepts_a_good_file() {
    let (_dir, path) = config_file(&good_config(None, 5432, &secret()));
    let out = run(&["check-config", "--config", path_str(&path)], &[]);
    assert_exit(&out, 0);
    assert!(stdout(&out).contains("ok"), "{}", stdout(&out));
    assert!(stderr(&out).is_empty(), "{}", stderr(&out));
}

#[test]
fn bad_environment_override_names_key_and_variable() {
    let (_dir, path) = config_file(&good_config(None, 5432, &secret()));
    let args = ["check-config", "--config", path_str(&path)];
    let out = run(&args, &[("PGTENANT_UPSTREAM_POOL_SIZE", "abc")]);
    assert_exit(&out, 2);
    let err = stderr(&out);
    assert!(err.contains("upstream.pool_size (from PGTENANT_UPSTREAM_POOL_SIZE)"), "{err}");
    assert!(err.contains("\"abc\""), "{err}");
    // A misspelt override is an error too, not silently ignored.
    let out = run(&args, &[("PGTENANT_UPSTREAM_POOLSIZE", "4")]);
    assert_exit(&out, 2);
    assert!(stderr(&out).contains("PGTENANT_UPSTREAM_POOLSIZE: unknown setting"), "{}", stderr(&out));
    // A valid one passes.
    assert_exit(&run(&args, &[("PGTENANT_UPSTREAM_POOL_SIZE", "40")]), 0);
}

#[tokio::test]
async fn environment_override_wins_over_the_file() {
    let pg = PgCluster::start().await;
    let closed_port = free_port();
    assert_ne!(closed_port, pg.port());
    let secret = secret();
    // The file points at a port nothing listens on; only the override reaches PostgreSQL.
    let (_dir, path) = config_file(&good_config(Some(&pg), closed_port, &secret));
    let pg_port = pg.port().to_string();
    let served = Served::start(&path, |port, http| {
        vec![
            ("PGTENANT_UPSTREAM_PORT".into(), pg_port.clone()),
            ("PGTENANT_LISTEN_ADDR".into(), format!("127.0.0.1:{port}")),
            ("PGTENANT_HTTP_ADDR".into(), format!("127.0.0.1:{http}")),
        ]
    })
    .await;
    let client = served.connect(&mint(&secret, &default_claims(TENANT_A))).await;
    assert_eq!(current_tenant(&client).await, TENANT_A);
    let port: i32 = client.query_one("SELECT inet_server_port()", &[]).await.unwrap().get(0);
    assert_eq!(port, i32::from(pg.port()));
}

#[test]
fn missing_config_file_names_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nowhere").join("proxy.toml");
    let missing = path_str(&missing);
    for args in [
        &["check-config", "--config", missing][..],
        &["serve", "--config", missing][..],
        &["token", "--tenant", TENANT_A, "--config", missing][..],
    ] {
        let out = run(args, &[]);
        assert_exit(&out, 2);
        assert!(stderr(&out).contains(missing), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains("cannot read config file"), "{args:?}: {}", stderr(&out));
    }
    // $PGTENANT_CONFIG is the default path.
    let out = run(&["check-config"], &[("PGTENANT_CONFIG", missing)]);
    assert_exit(&out, 2);
    assert!(stderr(&out).contains(missing), "{}", stderr(&out));
    let (_good_dir, good) = config_file(&good_config(None, 5432, &secret()));
    assert_exit(&run(&["check-config"], &[("PGTENANT_CONFIG", path_str(&good))]), 0);
}

// ---------------------------------------------------------------------------------------------
// token
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn token_command_output_is_accepted_by_the_proxy() {
    let pg = PgCluster::start().await;
    // Issuer and audience are required by the proxy, so acceptance shows `token` set them.
    let options = ProxyOptions::default().set("auth", "issuer", "\"https://issuer.example\"").set(
        "auth",
        "audience",
        "\"pgtenant\"",
    );
    let proxy = Proxy::start(&pg, options).await;
    let config = proxy.config_path();
    let config = path_str(&config);
    let jwt = token(&["--tenant", TENANT_A, "--sub", "alice", "--config", config], &[]);
    let claims = payload(&jwt);
    assert_eq!(claims["tenant_id"], TENANT_A, "{claims}");
    assert_eq!(claims["sub"], "alice", "{claims}");
    assert_eq!(claims["iss"], "https://issuer.example", "{claims}");
    assert_eq!(claims["aud"], "pgtenant", "{claims}");
    let client = match proxy.try_connect(&jwt).await {
        Ok(client) => client,
        Err(e) => panic!("the proxy refused a `pgtenant token` token: {}\n{}", describe(&e), proxy.log()),
    };
    assert_eq!(current_tenant(&client).await, TENANT_A);
    // An upper-case uuid is accepted and arrives normalised.
    let jwt = token(&["--tenant", &TENANT_B.to_uppercase(), "--config", config], &[]);
    let client = proxy.try_connect(&jwt).await.expect("upper-case tenant token");
    assert_eq!(current_tenant(&client).await, TENANT_B);
}

#[test]
fn token_command_refuses_a_bad_tenant() {
    let (_dir, path) = config_file(&good_config(None, 5432, &secret()));
    for bad in ["not-a-uuid", "", "a'; drop"] {
        let out = run(&["token", "--tenant", bad, "--config", path_str(&path)], &[]);
        assert_exit(&out, 2);
        assert!(stderr(&out).contains("--tenant"), "{bad:?}: {}", stderr(&out));
        assert!(stdout(&out).is_empty(), "a token was printed for {bad:?}");
    }
}

#[test]
fn token_command_ttl_sets_exp() {
    let (_dir, path) = config_file(&good_config(None, 5432, &secret()));
    let config = path_str(&path);
    for (ttl, seconds) in [(Some("30m"), 1800), (None, 3600), (Some("90s"), 90), (Some("2d"), 172_800)] {
        let mut args = vec!["--tenant", TENANT_A, "--config", config];
        if let Some(ttl) = ttl {
            args.extend(["--ttl", ttl]);
        }
        let claims = payload(&token(&args, &[]));
        let now = i64::try_from(now_secs()).unwrap();
        let exp = claims["exp"].as_i64().unwrap_or_else(|| panic!("no numeric exp: {claims}"));
        assert!((exp - (now + seconds)).abs() <= 60, "--ttl {ttl:?}: exp {exp}, now {now}");
        let iat = claims["iat"].as_i64().unwrap_or_else(|| panic!("no numeric iat: {claims}"));
        assert!((iat - now).abs() <= 60, "iat {iat}, now {now}");
    }
    let out = run(&["token", "--tenant", TENANT_A, "--ttl", "soon", "--config", config], &[]);
    assert_exit(&out, 2);
    assert!(stderr(&out).contains("--ttl"), "{}", stderr(&out));
}

// ---------------------------------------------------------------------------------------------
// The example proxy.toml
// ---------------------------------------------------------------------------------------------

#[test]
fn example_config_passes_with_its_secrets_set() {
    let jwt_secret = secret();
    let env = [("APP_USER_PASSWORD", "app-user-password"), ("PGTENANT_JWT_SECRET", jwt_secret.as_str())];
    let out = run(&["check-config", "--config", EXAMPLE_CONFIG], &env);
    assert_exit(&out, 0);
    assert!(stdout(&out).contains("ok"), "{}", stdout(&out));
}

#[test]
fn example_config_names_its_missing_secrets() {
    let out = run(&["check-config", "--config", EXAMPLE_CONFIG], &[]);
    assert_exit(&out, 2);
    let err = stderr(&out);
    assert!(err.contains("upstream.password_env") && err.contains("APP_USER_PASSWORD"), "{err}");
    assert!(err.contains("auth.hs_secret_env") && err.contains("PGTENANT_JWT_SECRET"), "{err}");
    // A secret shorter than 32 bytes is refused without being echoed.
    let short = "only-31-bytes-long-secret-value";
    assert_eq!(short.len(), 31);
    let env = [("APP_USER_PASSWORD", "app-user-password"), ("PGTENANT_JWT_SECRET", short)];
    let out = run(&["check-config", "--config", EXAMPLE_CONFIG], &env);
    assert_exit(&out, 2);
    let err = stderr(&out);
    assert!(err.contains("auth.hs_secret_env") && err.contains("at least 32"), "{err}");
    assert!(!err.contains(short) && !err.contains("app-user-password"), "a secret was echoed: {err}");
}

#[tokio::test]
async fn example_config_serves_and_isolates_tenants() {
    let pg = PgCluster::start().await;
    let jwt_secret = secret();
    let (pg_port, app_password) = (pg.port().to_string(), pg.app_password().to_string());
    let served = Served::start(Path::new(EXAMPLE_CONFIG), |port, http| {
        vec![
            ("PGTENANT_LISTEN_ADDR".into(), format!("127.0.0.1:{port}")),
            ("PGTENANT_HTTP_ADDR".into(), format!("127.0.0.1:{http}")),
            ("PGTENANT_UPSTREAM_PORT".into(), pg_port.clone()),
            ("PGTENANT_UPSTREAM_TLS".into(), "disable".into()),
            ("APP_USER_PASSWORD".into(), app_password.clone()),
            ("PGTENANT_JWT_SECRET".into(), jwt_secret.clone()),
        ]
    })
    .await;
    let env = [("PGTENANT_JWT_SECRET", jwt_secret.as_str()), ("APP_USER_PASSWORD", "unused")];
    let token_a = token(&["--tenant", TENANT_A, "--config", EXAMPLE_CONFIG], &env);
    let token_b = token(&["--tenant", TENANT_B, "--config", EXAMPLE_CONFIG], &env);
    let a = served.connect(&token_a).await;
    let b = served.connect(&token_b).await;
    let insert = "INSERT INTO tool_calls (tenant_id, tool_name) VALUES ($1::text::uuid, 'search')";
    a.execute(insert, &[&TENANT_A]).await.expect("tenant A inserts its own row");
    let seen_by_b: i64 = b.query_one("SELECT count(*) FROM tool_calls", &[]).await.unwrap().get(0);
    assert_eq!(seen_by_b, 0);
    let seen_by_a: i64 = a.query_one("SELECT count(*) FROM tool_calls", &[]).await.unwrap().get(0);
    assert_eq!(seen_by_a, 1);
    assert_eq!(pg.count_rows("tool_calls", TENANT_A).await, 1);
    let log = served.log();
    assert!(!log.contains(&token_a) && !log.contains(&jwt_secret), "a secret reached the log:\n{log}");
}

// ---------------------------------------------------------------------------------------------
// --help
// ---------------------------------------------------------------------------------------------

#[test]
fn help_works_for_every_command() {
    let out = run(&["--help"], &[]);
    assert_exit(&out, 0);
    for sub in ["serve", "check-config", "token", "doctor", "policy"] {
        assert!(stdout(&out).contains(sub), "top-level help lacks {sub}:\n{}", stdout(&out));
    }
    let cases: [(&str, &[&str]); 5] = [
        ("serve", &["--config"]),
        ("check-config", &["--config"]),
        ("token", &["--tenant", "--ttl", "--sub", "--config"]),
        ("doctor", &["--database-url", "--role", "--column", "--setting", "--json", "--probe", "--proxy-url"]),
        ("policy", &["--database-url", "--role", "--column", "--setting", "--harden"]),
    ];
    for (sub, flags) in cases {
        for args in [vec![sub, "--help"], vec!["help", sub]] {
            let out = run(&args, &[]);
            assert_exit(&out, 0);
            let text = stdout(&out);
            for flag in flags.iter().chain(&["--log-format"]) {
                assert!(text.contains(flag), "`pgtenant {}` lacks {flag}:\n{text}", args.join(" "));
            }
        }
    }
}
