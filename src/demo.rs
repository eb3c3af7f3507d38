//! `pgtenant demo`: a throwaway PostgreSQL with the reference RLS schema and
//! two seeded tenants, the proxy in front of it with a generated secret, and
//! ready-to-paste `psql` lines; Ctrl-C stops it all and deletes the temp dir.
//!
//! [`cluster`] owns PostgreSQL (initdb, pg_ctl, psql); this module picks the
//! ports, builds the proxy's [`Config`], runs [`crate::server::run`] in
//! process and prints the walkthrough.

pub mod cluster;

use std::collections::HashMap;
use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use rand::RngCore as _;
use tokio::signal::unix::{signal, SignalKind};

use crate::auth::jwt::{mint_hs256, MintClaims};
use crate::config::Config;
use cluster::{Cluster, Interrupted, PgBinaries, Setup};

pub use cluster::NotFound;

/// The proxy port the demo prefers when `--port` is not given and it is free.
const DEFAULT_PORT: u16 = 6432;
/// Lifetime of the printed tokens.
const TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);
/// How long transactions open at Ctrl-C may run on before their clients are cut off.
const SHUTDOWN_TIMEOUT_SECONDS: u64 = 5;

/// A demo tenant: its id and what `seed.sql` gives it.
struct Tenant {
    label: &'static str,
    id: &'static str,
    name: &'static str,
    seeded: &'static str,
}

/// The two tenants of `seed.sql` (which gets the ids as psql variables).
const TENANTS: [Tenant; 2] = [
    Tenant {
        label: "A",
        id: "11111111-1111-4111-8111-111111111111",
        name: "Acme Corp",
        seeded: "3 tool calls, 3 config keys",
    },
    Tenant {
        label: "B",
        id: "22222222-2222-4222-8222-222222222222",
        name: "Globex",
        seeded: "2 tool calls, 3 config keys",
    },
];

/// `pgtenant demo` options.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Keep the temp dir (data directory and log) after Ctrl-C.
    pub keep: bool,
    /// Proxy port; default 6432 when free, else any free port.
    pub port: Option<u16>,
    /// Directory of initdb and pg_ctl, instead of searching PATH and the usual places.
    pub pg_bin: Option<PathBuf>,
    /// Signed tenant context (`tenant.mode = "signed"` and `policy --signed`).
    pub signed: bool,
}

/// Runs the demo until SIGINT or SIGTERM, then stops the proxy and PostgreSQL
/// and deletes the temp dir (unless `keep`). Blocking; builds its own runtime.
pub fn run(options: Options) -> anyhow::Result<()> {
    let bins = PgBinaries::find(options.pg_bin.as_deref())?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("tokio runtime")?;
    let mut cluster = None;
    let result = runtime.block_on(demo(&options, bins, &mut cluster));
    // The proxy's background tasks end with the runtime, before PostgreSQL stops under them.
    runtime.shutdown_timeout(Duration::from_secs(2));
    let stopped = match cluster {
        Some(cluster) => {
            let kept = options.keep.then(|| describe_kept(&cluster));
            let stopped = cluster.shutdown();
            if let Some(kept) = kept {
                say(&kept);
            }
            stopped
        }
        None => Ok(()),
    };
    match result {
        Err(e) if e.is::<Interrupted>() => {
            say("interrupted during setup; cleaned up");
            stopped
        }
        Err(e) => Err(e),
        Ok(()) => stopped,
    }
}

/// Sets up PostgreSQL (into `slot`, so that the caller stops it after the
/// runtime), then serves until a signal.
async fn demo(options: &Options, bins: PgBinaries, slot: &mut Option<Cluster>) -> anyhow::Result<()> {
    // Signals are ours until the proxy has its own: Ctrl-C during setup must
    // clean up, not kill the process and leave a server running.
    let mut stop = Stop::new()?;
    let port = proxy_port(options.port)?;
    let secret = random_hex(32);
    let app_password = random_hex(24);

    let cancel = Arc::new(AtomicBool::new(false));
    let setup = {
        let (cancel, keep, app_password) = (cancel.clone(), options.keep, app_password.clone());
        tokio::task::spawn_blocking(move || {
            let setup = Setup { bins, app_password: &app_password, tenants: [TENANTS[0].id, TENANTS[1].id], keep };
            Cluster::create(&setup, &cancel)
        })
    };
    tokio::pin!(setup);
    let cluster = tokio::select! {
        biased;
        _ = stop.recv() => {
            say("stopping setup ...");
            cancel.store(true, Ordering::Release);
            // The setup notices between steps and cleans up after itself. A step that failed
            // meanwhile most likely failed because Ctrl-C reached it too (initdb, psql).
            if let Ok(cluster) = setup.await.context("setup task")? {
                *slot = Some(cluster);
            }
            return Err(Interrupted.into());
        }
        created = &mut setup => match created.context("setup task")? {
            Ok(cluster) => cluster,
            // Ctrl-C in a terminal reaches initdb or psql at the same time as us: report
            // the interruption, not the failure it caused.
            Err(e) => match tokio::time::timeout(Duration::from_millis(300), stop.recv()).await {
                Ok(()) => return Err(Interrupted.into()),
                Err(_) => return Err(e),
            },
        },
    };
    let pg_port = cluster.port();
    *slot = Some(cluster);
    let cluster = slot.as_ref().expect("just set");

    let http_port = cluster::free_port()?;
    let signing_key = match options.signed {
        true => Some(sign_database(cluster).await?),
        false => None,
    };
    let config = proxy_config(port, http_port, pg_port, &app_password, &secret, signing_key.as_deref())?;

    // The proxy runs in this task, so by the time its port accepts, it has
    // passed the point where it listens for signals itself (no await between).
    let mut proxy = std::pin::pin!(crate::server::run(config, None));
    tokio::select! {
        biased;
        ended = &mut proxy => {
            ended.context("the proxy failed to start")?;
            anyhow::bail!("the proxy stopped during startup");
        }
        _ = stop.recv() => return Err(Interrupted.into()),
        ready = listening(port) => ready?,
    }
    drop(stop);
    print_walkthrough(cluster, port, http_port, secret.as_bytes(), options.signed);
    proxy.await.context("the proxy failed")?;
    say("proxy stopped");
    Ok(())
}

/// SIGINT, SIGTERM and SIGHUP (a closed terminal), until the proxy takes them over.
struct Stop {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Stop {
    fn new() -> anyhow::Result<Stop> {
        let int = signal(SignalKind::interrupt()).context("listening for SIGINT")?;
        let term = signal(SignalKind::terminate()).context("listening for SIGTERM")?;
        let hup = signal(SignalKind::hangup()).context("listening for SIGHUP")?;
        Ok(Stop { int, term, hup })
    }

    async fn recv(&mut self) {
        tokio::select! {
            _ = self.int.recv() => {}
            _ = self.term.recv() => {}
            _ = self.hup.recv() => {}
        }
    }
}

/// Reports progress on stderr as `pgtenant demo: <msg>`; never panics (stderr may be closed).
pub(crate) fn say(msg: impl std::fmt::Display) {
    let _ = writeln!(std::io::stderr(), "pgtenant demo: {msg}");
}

/// `--port`, checked free; else 6432 when free; else any free port.
fn proxy_port(requested: Option<u16>) -> anyhow::Result<u16> {
    let free = |port: u16| TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok();
    match requested {
        Some(port) if free(port) => Ok(port),
        Some(port) => anyhow::bail!("--port {port}: 127.0.0.1:{port} is in use; pick another port"),
        None if free(DEFAULT_PORT) => Ok(DEFAULT_PORT),
        None => cluster::free_port(),
    }
}

/// Waits until the proxy's port accepts connections.
async fn listening(port: u16) -> anyhow::Result<()> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    for _ in 0..300 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::bail!("the proxy did not accept connections on {addr} within 15 s")
}

/// The demo database's own policies read the setting; `--signed` replaces them.
const DROP_DEMO_POLICIES: &str = "DO $$ DECLARE p record; BEGIN \
     FOR p IN SELECT schemaname, tablename, policyname FROM pg_catalog.pg_policies LOOP \
     EXECUTE format('DROP POLICY %I ON %I.%I', p.policyname, p.schemaname, p.tablename); \
     END LOOP; END $$";

/// `--signed`: the database gets what `pgtenant policy --signed` prints (instead of its own
/// policies, which trust the setting) and a fresh key, and `plpgsql` back for everyone, as on
/// a fresh install, so that the walkthrough can show a DO block failing to switch tenants.
/// Returns the key.
async fn sign_database(cluster: &Cluster) -> anyhow::Result<String> {
    use crate::audit::catalog::{Catalog, Scope};
    use crate::audit::connect::{Target, Tls};
    use crate::audit::policy;
    say("signed mode: applying pgtenant policy --signed and loading a fresh key");
    let mut config = tokio_postgres::Config::new();
    config.host_path(cluster.dir()).port(cluster.port()).user("postgres").dbname("app");
    let target = Target { config, tls: Tls::Disable };
    let client = target.connect(None).await.context("connecting to the demo database")?;
    // The script's DROP ... IF EXISTS notices would only clutter the walkthrough.
    client.batch_execute("SET client_min_messages = warning").await.context("client_min_messages")?;
    client.batch_execute(DROP_DEMO_POLICIES).await.context("dropping the demo's own policies")?;
    // As on a fresh install, so that the walkthrough's DO block runs: signed mode needs no hardening.
    client.batch_execute("GRANT USAGE ON LANGUAGE plpgsql TO PUBLIC").await.context("granting plpgsql")?;
    let scope = Scope { role: "app_user".into(), column: "tenant_id".into(), setting: "app.current_tenant_id".into() };
    let catalog = Catalog::read(&target, &scope).await.context("reading the demo database")?;
    let options = policy::Options { harden: false, signed: Some("pgtenant_keyholder".into()) };
    let sql = policy::generate(&catalog, &scope, &options);
    client.batch_execute(&sql).await.context("applying pgtenant policy --signed")?;
    let key = random_hex(32);
    client.query_one("SELECT pgtenant.add_signing_key($1)", &[&key]).await.context("loading the signing key")?;
    Ok(key)
}

/// The proxy's configuration: the generated secret, the cluster's `app_user`,
/// a canary tenant for `/ready`, and in signed mode the signing key.
fn proxy_config(
    port: u16,
    http_port: u16,
    pg_port: u16,
    app_password: &str,
    secret: &str,
    signing_key: Option<&str>,
) -> anyhow::Result<Config> {
    const KEY_VAR: &str = "PGTENANT_DEMO_SIGNING_KEY";
    let mode = match signing_key {
        Some(_) => format!("mode = \"signed\"\nsigning_key_env = \"{KEY_VAR}\""),
        None => "mode = \"plain\"".to_string(),
    };
    let text = format!(
        r#"[listen]
addr = "127.0.0.1:{port}"
shutdown_timeout_seconds = {SHUTDOWN_TIMEOUT_SECONDS}

[upstream]
host = "127.0.0.1"
port = {pg_port}
database = "app"
user = "app_user"
password = "{app_password}"
pool_size = 10
tls = "disable"

[auth]
algorithms = ["HS256"]
hs_secret = "{secret}"
tenant_claim = "tenant_id"
tenant_format = "uuid"

[tenant]
setting = "app.current_tenant_id"
{mode}

[http]
addr = "127.0.0.1:{http_port}"
canary_tenant = "{canary}"
"#,
        canary = TENANTS[0].id,
    );
    // PGTENANT_* variables are not applied: the demo's settings are fixed.
    let env: HashMap<String, String> = signing_key.map(|k| (KEY_VAR.to_string(), k.to_string())).into_iter().collect();
    Config::from_toml_str(&text, "pgtenant demo", &env)
        .map_err(|errors| anyhow::anyhow!("the demo's proxy configuration is invalid:\n{errors}"))
}

/// `n` random bytes as lowercase hex (2n characters).
fn random_hex(n: usize) -> String {
    let mut bytes = vec![0u8; n];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn token(secret: &[u8], tenant: &Tenant) -> String {
    let claims = MintClaims {
        tenant_claim: "tenant_id".into(),
        tenant: tenant.id.into(),
        ttl_seconds: TOKEN_TTL.as_secs() as i64,
        subject: Some(format!("demo-tenant-{}", tenant.label.to_lowercase())),
        issuer: None,
        audience: None,
    };
    mint_hs256(secret, &claims)
}

/// Prints the connection lines for each tenant and what to try, on stdout.
fn print_walkthrough(cluster: &Cluster, port: u16, http_port: u16, secret: &[u8], signed: bool) {
    let [a, b] = &TENANTS;
    let mut out = String::new();
    let mut line = |s: &str| {
        out.push_str(s);
        out.push('\n');
    };
    line("");
    line("pgtenant demo is running.");
    line("");
    line(&format!("  PostgreSQL  127.0.0.1:{}, database app, pooled role app_user (RLS enforced)", cluster.port()));
    line(&format!("  temp dir    {} (data/, postgres.log, socket)", cluster.dir().display()));
    line(&format!("  proxy       127.0.0.1:{port} (HS256 secret generated for this run)"));
    line(&format!("  health      http://127.0.0.1:{http_port}/ready   metrics: http://127.0.0.1:{http_port}/metrics"));
    for tenant in &TENANTS {
        let url = format!("postgres://demo:{}@127.0.0.1:{port}/app", token(secret, tenant));
        line("");
        line(&format!("Tenant {} \"{}\" (tenant_id {}): {}", tenant.label, tenant.name, tenant.id, tenant.seeded));
        line(&format!("  psql \"{url}\""));
        line(&format!("  DATABASE_URL={url}"));
    }
    line("");
    line(&format!("Try, in tenant {}'s psql (and the same in {}'s):", a.label, b.label));
    line("  SELECT tenant_id, tool_name, success FROM tool_calls;      -- your rows only");
    line(&format!("  SELECT count(*) FROM tool_calls WHERE tenant_id = '{}';", b.id));
    line(&format!("        -- 0: tenant {}'s rows are invisible, even by name", b.label));
    line("  SELECT key, value FROM tenant_config;                      -- your settings only");
    line("  INSERT INTO tool_calls (tool_name) VALUES ('hello') RETURNING tenant_id;");
    line("        -- tenant_id comes from your token (the column default reads the setting)");
    line(&format!("  UPDATE tool_calls SET tenant_id = '{}';", b.id));
    line("        -- ERROR: new row violates row-level security policy");
    line(&format!("  SET app.current_tenant_id = '{}';", b.id));
    line("        -- ERROR 42501: refused by pgtenant; your connection stays usable");
    if signed {
        line("Signed mode (plpgsql left usable, as on a fresh install): SQL the proxy cannot see");
        line("may change the setting, but cannot prove it:");
        line("  BEGIN;");
        line(&format!(
            "  DO $$ BEGIN EXECUTE 'SELECT set_' || 'config(''app.current_' || 'tenant_id'', ''{}'', true)'; END $$;",
            b.id
        ));
        line("  SELECT current_setting('app.current_tenant_id'), pgtenant.current_tenant(), count(*) FROM tool_calls;");
        line(&format!("        -- the setting says {}, the verified tenant is NULL, 0 rows", b.label));
        line("  ROLLBACK;");
    }
    line("");
    let dir = cluster.dir().display();
    line("All rows, as superuser straight to PostgreSQL (bypasses RLS; over the socket, not the proxy):");
    line(&format!("  psql -h {dir} -p {} -U postgres app", cluster.port()));
    line("The example MCP server (examples/mcp-server) runs on either DATABASE_URL.");
    line(&format!(
        "Tokens expire in {} h. Ctrl-C stops the proxy and PostgreSQL and deletes {dir} (--keep keeps it).",
        TOKEN_TTL.as_secs() / 3600
    ));
    line("");
    // Not print!: a closed stdout (a pipe whose reader quit) must not panic before cleanup.
    let _ = std::io::stdout().write_all(out.as_bytes()).and_then(|()| std::io::stdout().flush());
}

/// What to tell the user about a kept cluster: where it is and how to start it again.
fn describe_kept(cluster: &Cluster) -> String {
    let data = cluster.data_dir();
    let log = cluster.dir().join("postgres.log");
    let pg_ctl = format!("{} -D {} -l {} start", cluster.pg_ctl_path().display(), data.display(), log.display());
    let start = match cluster.run_as() {
        Some(user) => format!("runuser -u {user} -- {pg_ctl}"),
        None => pg_ctl,
    };
    format!(
        "kept {} (data directory {}); start it again with:\n    {start}\n\
         then connect with: psql -h {} -p {} -U postgres app",
        cluster.dir().display(),
        data.display(),
        cluster.dir().display(),
        cluster.port()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_proxy_config_is_valid_and_fixed() {
        let secret = random_hex(32);
        let config = proxy_config(16432, 19930, 54321, "pw", &secret, None).expect("valid config");
        assert_eq!(config.listen.addr, "127.0.0.1:16432".parse().unwrap());
        assert_eq!(config.http.addr, "127.0.0.1:19930".parse().unwrap());
        assert_eq!((config.upstream.port, config.upstream.user.as_str()), (54321, "app_user"));
        assert_eq!(config.http.canary_tenant.as_ref().map(|t| t.as_str()), Some(TENANTS[0].id));
        assert_eq!(config.auth.key, crate::config::KeySource::HsSecret(secret.clone().into_bytes()));
        assert_eq!(config.tenant.mode, crate::config::TenantMode::Plain);
        let key = random_hex(32);
        let signed = proxy_config(16432, 19930, 54321, "pw", &secret, Some(&key)).expect("valid signed config");
        let expected = crate::auth::signing::SigningKey::new(key.into_bytes()).unwrap();
        assert_eq!(signed.tenant.mode, crate::config::TenantMode::Signed(expected));
    }

    #[test]
    fn secrets_are_random_hex_of_the_asked_length() {
        let (a, b) = (random_hex(32), random_hex(32));
        assert_eq!(a.len(), 64);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        assert_ne!(a, b);
    }

    #[test]
    fn tokens_verify_for_their_tenant() {
        let secret = random_hex(32);
        let config = proxy_config(16432, 19930, 54321, "pw", &secret, None).unwrap();
        let verifier = crate::auth::jwt::Verifier::new(&config.auth).unwrap();
        for tenant in &TENANTS {
            let verified = verifier.verify(&token(secret.as_bytes(), tenant)).expect("token verifies");
            assert_eq!(verified.tenant.as_str(), tenant.id);
        }
    }
}
