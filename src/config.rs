//! Loads `proxy.toml` plus `PGTENANT_<SECTION>_<KEY>` environment overrides into one validated [`Config`].

use std::collections::HashMap;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use jsonwebtoken::{Algorithm, AlgorithmFamily};

use crate::auth::fetch::HttpsUrl;
use crate::auth::signing::SigningKey;
use crate::auth::tenant::{TenantFormat, TenantId};

/// Prefix of environment variables that can override file settings.
pub const ENV_PREFIX: &str = "PGTENANT_";

/// Shortest accepted HS secret, in bytes (RFC 7518 §3.2: at least the HS256 hash size).
pub const MIN_HS_SECRET_LEN: usize = 32;

/// Every accepted section with its space-separated keys; anything else in the file is an error.
const SCHEMA: &[(&str, &str)] = &[
    ("listen", "addr tls_cert tls_key allow_plaintext_auth max_client_conn startup_timeout_seconds"),
    ("listen", "max_message_bytes login_failures_before_backoff login_backoff_max_seconds tls_reload_seconds"),
    ("listen", "shutdown_timeout_seconds"),
    ("upstream", "host port database user password password_env pool_size tls tls_ca_file"),
    ("upstream", "connect_timeout_seconds pool_timeout_seconds max_prepared_statements allow_rls_bypassing_role"),
    ("upstream", "max_connections_per_tenant channel_binding"),
    ("auth", "algorithms hs_secret_env hs_secret public_key_file jwks_file jwks_url jwks_ca_file"),
    ("auth", "jwks_refresh_seconds jwks_min_refresh_seconds"),
    ("auth", "tenant_claim tenant_format issuer audience leeway_seconds"),
    ("tenant", "setting mode signing_key_env signing_key_file"),
    ("http", "addr canary_tenant canary_query ready_check_seconds tenant_metrics_top tenant_metrics_all"),
];

/// Keys whose values must never be echoed in error messages.
const SECRET_KEYS: &[&str] = &["upstream.password", "auth.hs_secret"];

/// The JWT algorithms `auth.algorithms` may list.
const SUPPORTED_ALGORITHMS: &[Algorithm] = {
    use Algorithm::*;
    &[HS256, HS384, HS512, RS256, RS384, RS512, ES256, ES384, EdDSA]
};

/// The whole validated configuration. `Debug` redacts secrets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// `[listen]`: the client-facing PostgreSQL listener.
    pub listen: ListenConfig,
    /// `[upstream]`: the real PostgreSQL server.
    pub upstream: UpstreamConfig,
    /// `[auth]`: JWT verification.
    pub auth: AuthConfig,
    /// `[tenant]`: how the tenant reaches PostgreSQL.
    pub tenant: TenantConfig,
    /// `[http]`: health and metrics endpoint.
    pub http: HttpConfig,
}

/// `[listen]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenConfig {
    /// Address clients connect to.
    pub addr: SocketAddr,
    /// Certificate and key for client TLS; `None` disables TLS.
    pub tls: Option<TlsFiles>,
    /// Whether a JWT may be sent over a connection without TLS.
    pub allow_plaintext_auth: bool,
    /// Most client connections held at once.
    pub max_client_conn: usize,
    /// Time a client has to finish startup and authentication.
    pub startup_timeout: Duration,
    /// Largest message a client may send, in bytes.
    pub max_message_bytes: usize,
    /// Failed logins from one address before its failures are answered slowly.
    pub login_failures_before_backoff: u32,
    /// Longest delay before a failed login is answered.
    pub login_backoff_max: Duration,
    /// How often the TLS certificate files are checked for changes; zero turns it off.
    pub tls_reload_interval: Duration,
    /// How long open transactions may run on after SIGTERM before clients are cut off.
    pub shutdown_timeout: Duration,
}

/// PEM files for the client-facing TLS listener (resolved, readable at load time).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// Certificate chain (PEM).
    pub cert: PathBuf,
    /// Private key (PEM).
    pub key: PathBuf,
}

/// `[upstream]` section. `Debug` redacts the password.
#[derive(Clone, PartialEq, Eq)]
pub struct UpstreamConfig {
    /// Server host name or address.
    pub host: String,
    /// Server port.
    pub port: u16,
    /// Database every pooled connection uses.
    pub database: String,
    /// Role every pooled connection logs in as.
    pub user: String,
    /// Password, already resolved from `password` or `password_env`; `None` means trust.
    pub password: Option<String>,
    /// Server connections in the pool.
    pub pool_size: usize,
    /// TLS policy towards the server.
    pub tls: UpstreamTls,
    /// CA bundle for verifying the server (required for `verify-full`).
    pub tls_ca_file: Option<PathBuf>,
    /// Limit for opening one server connection.
    pub connect_timeout: Duration,
    /// How long a client waits for a free server connection.
    pub pool_timeout: Duration,
    /// Prepared statements kept per server connection; the least recently
    /// used is closed beyond this.
    pub max_prepared_statements: usize,
    /// Serve even when `user` can bypass row-level security (a superuser,
    /// BYPASSRLS, or owner of tables without FORCE). Tenants are then NOT
    /// isolated; meant only for migrations and tests.
    pub allow_rls_bypassing_role: bool,
    /// SCRAM channel binding towards the server.
    pub channel_binding: ChannelBindingMode,
    /// Server connections one tenant may hold at once, so that one tenant
    /// cannot take the whole pool.
    pub max_connections_per_tenant: usize,
}

/// `upstream.tls`: TLS policy towards PostgreSQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamTls {
    /// Never use TLS.
    Disable,
    /// Use TLS when the server offers it, without verifying it.
    Prefer,
    /// Require TLS, without verifying the server certificate.
    Require,
    /// Require TLS and verify the certificate chain and host name.
    VerifyFull,
}

/// `upstream.channel_binding`: whether SCRAM logins are bound to the TLS session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelBindingMode {
    /// Never bind.
    Disable,
    /// Bind when the connection uses TLS and the server offers SCRAM-SHA-256-PLUS.
    Prefer,
    /// Refuse to log in without a channel-bound SCRAM exchange.
    Require,
}

/// `[auth]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthConfig {
    /// Allowed JWT algorithms, all of one kind (HS or asymmetric).
    pub algorithms: Vec<Algorithm>,
    /// Key material that verifies tokens.
    pub key: KeySource,
    /// Claim name or dotted path (`org.tenant`) holding the tenant id.
    pub tenant_claim: String,
    /// Expected shape of the tenant id.
    pub tenant_format: TenantFormat,
    /// Required `iss`, if any.
    pub issuer: Option<String>,
    /// Required `aud` member, if any.
    pub audience: Option<String>,
    /// Clock skew tolerated on `exp` and `nbf`, in seconds.
    pub leeway: u64,
}

/// Where token verification keys come from. `Debug` redacts the secret.
#[derive(Clone, PartialEq, Eq)]
pub enum KeySource {
    /// Shared HMAC secret (at least [`MIN_HS_SECRET_LEN`] bytes).
    HsSecret(Vec<u8>),
    /// PEM public key file (RSA, EC P-256/P-384 or Ed25519), readable at load time.
    PublicKeyPem(PathBuf),
    /// A JSON Web Key Set, selected per token by `kid` (asymmetric algorithms only).
    Jwks(JwksConfig),
}

/// `auth.jwks_*`: where the key set comes from and how often it is reloaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwksConfig {
    /// The file or URL.
    pub location: JwksLocation,
    /// Period of background reloads (`auth.jwks_refresh_seconds`).
    pub refresh: Duration,
    /// Least time between two loads triggered by unknown `kid`s (`auth.jwks_min_refresh_seconds`).
    pub min_refresh: Duration,
}

/// `auth.jwks_file` or `auth.jwks_url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksLocation {
    /// A local JWKS file, readable at load time.
    File(PathBuf),
    /// An `https://` URL, optionally verified against a private CA instead of the public roots.
    Url {
        /// The URL.
        url: HttpsUrl,
        /// `auth.jwks_ca_file`: PEM CA certificates to trust instead of the webpki roots.
        ca_file: Option<PathBuf>,
    },
}

/// `[tenant]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantConfig {
    /// Lowercased custom GUC that receives the tenant id (e.g. `app.current_tenant_id`).
    pub setting: String,
    /// How the tenant id is presented to PostgreSQL.
    pub mode: TenantMode,
}

/// `tenant.mode`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TenantMode {
    /// The tenant id is set as is; policies read the setting.
    Plain,
    /// The tenant id is set with a proof signed by this key; policies call a
    /// function that checks it (see [`crate::auth::signing`]).
    Signed(SigningKey),
}

impl TenantMode {
    /// The signing key, in signed mode.
    pub fn signing_key(&self) -> Option<&SigningKey> {
        match self {
            TenantMode::Plain => None,
            TenantMode::Signed(key) => Some(key),
        }
    }
}

/// `[http]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpConfig {
    /// Address of the health/metrics endpoint.
    pub addr: SocketAddr,
    /// A tenant with seed rows that `/ready` queries through the injection path.
    pub canary_tenant: Option<TenantId>,
    /// The canary query: must count more than zero rows for the canary
    /// tenant, and zero with no tenant set.
    pub canary_query: String,
    /// How often readiness is checked.
    pub ready_check_interval: Duration,
    /// Tenants (by transaction count) that get their own transaction counter.
    pub tenant_metrics_top: usize,
    /// Every tenant gets its own transaction counter (unbounded label values).
    pub tenant_metrics_all: bool,
}

/// One configuration problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// `section.key` (plus the overriding variable), a variable name, or empty for the whole file.
    pub key: String,
    /// What is wrong; never contains a secret value.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.key.as_str() {
            "" => f.write_str(&self.message),
            key => write!(f, "{key}: {}", self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

/// Every problem found while loading one configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors {
    /// The configuration file path (or label) the problems belong to.
    pub source: String,
    /// All problems, in the order found.
    pub errors: Vec<ConfigError>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, err) in self.errors.iter().enumerate() {
            let sep = if i == 0 { "" } else { "\n" };
            write!(f, "{sep}{}: {err}", self.source)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl fmt::Debug for UpstreamConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("database", &self.database)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("pool_size", &self.pool_size)
            .field("tls", &self.tls)
            .field("tls_ca_file", &self.tls_ca_file)
            .field("connect_timeout", &self.connect_timeout)
            .field("pool_timeout", &self.pool_timeout)
            .field("max_prepared_statements", &self.max_prepared_statements)
            .field("allow_rls_bypassing_role", &self.allow_rls_bypassing_role)
            .finish()
    }
}

impl fmt::Debug for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeySource::HsSecret(s) => write!(f, "HsSecret(<redacted, {} bytes>)", s.len()),
            KeySource::PublicKeyPem(p) => f.debug_tuple("PublicKeyPem").field(p).finish(),
            KeySource::Jwks(j) => f.debug_tuple("Jwks").field(j).finish(),
        }
    }
}

impl Config {
    /// Loads `path` with overrides and secrets taken from the process environment.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        // Non-UTF-8 variables cannot hold valid settings; a secret variable
        // skipped here is then reported as "not set".
        let env: HashMap<String, String> =
            std::env::vars_os().filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?))).collect();
        Self::load_with_env(path, &env)
    }

    /// Loads `path` with `env` standing in for the process environment.
    pub fn load_with_env(path: &Path, env: &HashMap<String, String>) -> Result<Config, ConfigErrors> {
        let source = path.display().to_string();
        match std::fs::read_to_string(path) {
            Ok(text) => Self::from_toml_str(&text, &source, env),
            Err(e) => Err(ConfigErrors { source, errors: vec![error("", format!("cannot read config file: {e}"))] }),
        }
    }

    /// Parses TOML `text`; relative paths resolve against the directory of `source`.
    pub fn from_toml_str(text: &str, source: &str, env: &HashMap<String, String>) -> Result<Config, ConfigErrors> {
        let fail = |errors| ConfigErrors { source: source.to_owned(), errors };
        // After a syntax error nothing else is trustworthy; report just that.
        let table = text.parse::<toml::Table>().map_err(|e| fail(vec![syntax_error(text, &e)]))?;
        let base_dir = Path::new(source).parent().unwrap_or(Path::new("")).to_path_buf();
        let mut r = Reader { raw: HashMap::new(), env, base_dir, errors: Vec::new() };
        r.load_file(table);
        r.load_env();
        match build(&mut r) {
            Ok(cfg) if r.errors.is_empty() => Ok(cfg),
            _ => Err(fail(r.errors)),
        }
    }
}

fn error(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError { key: key.to_owned(), message: message.into() }
}

fn build(r: &mut Reader) -> Result<Config, Reported> {
    let listen = listen(r);
    let upstream = upstream(r);
    let auth = auth(r);
    let tenant = tenant(r);
    let http = http(r, auth.as_ref().ok().map(|a| a.tenant_format));
    if let (Ok(l), Ok(h)) = (&listen, &http) {
        if l.addr == h.addr {
            r.fail("http.addr", "must differ from listen.addr");
        }
    }
    let (listen, upstream, auth, tenant, http) = (listen?, upstream?, auth?, tenant?, http?);
    Ok(Config { listen, upstream, auth, tenant, http })
}

fn http(r: &mut Reader, format: Option<TenantFormat>) -> Result<HttpConfig, Reported> {
    let addr = r.socket_addr("http.addr", 9930);
    let canary_tenant = match (r.opt_string("http.canary_tenant"), format) {
        (Ok(Some(raw)), Some(format)) => TenantId::parse(&raw, format)
            .map(Some)
            .map_err(|e| r.fail("http.canary_tenant", format!("not a valid tenant id for auth.tenant_format: {e}"))),
        (Ok(_), None) => Err(Reported),
        (Ok(None), _) => Ok(None),
        (Err(e), _) => Err(e),
    };
    let canary_query = r.string_or("http.canary_query", "SELECT count(*) FROM tenant_config");
    let ready_check = r.int("http.ready_check_seconds", 1, 3600, 5);
    let top = r.int("http.tenant_metrics_top", 0, 1000, 10);
    let all = r.boolean("http.tenant_metrics_all", false);
    Ok(HttpConfig {
        addr: addr?,
        canary_tenant: canary_tenant?,
        canary_query: canary_query?,
        ready_check_interval: seconds(ready_check?),
        tenant_metrics_top: top? as usize,
        tenant_metrics_all: all?,
    })
}

fn listen(r: &mut Reader) -> Result<ListenConfig, Reported> {
    let addr = r.socket_addr("listen.addr", 6432);
    let tls = listen_tls(r);
    let allow_plaintext_auth = r.boolean("listen.allow_plaintext_auth", false);
    let max_client_conn = r.int("listen.max_client_conn", 1, 1_000_000, 10_000);
    let startup_timeout = r.int("listen.startup_timeout_seconds", 1, 3600, 10);
    // The floor keeps room for a maximum-size token and ordinary queries.
    let max_message_bytes = r.int("listen.max_message_bytes", 64 << 10, 1 << 30, 64 << 20);
    let failures = r.int("listen.login_failures_before_backoff", 1, 1_000_000, 5);
    let backoff_max = r.int("listen.login_backoff_max_seconds", 0, 60, 5);
    let tls_reload = r.int("listen.tls_reload_seconds", 0, 86_400, 60);
    let shutdown = r.int("listen.shutdown_timeout_seconds", 0, 3600, 30);
    Ok(ListenConfig {
        addr: addr?,
        tls: tls?,
        allow_plaintext_auth: allow_plaintext_auth?,
        max_client_conn: max_client_conn? as usize,
        startup_timeout: seconds(startup_timeout?),
        max_message_bytes: max_message_bytes? as usize,
        login_failures_before_backoff: failures? as u32,
        login_backoff_max: seconds(backoff_max?),
        tls_reload_interval: seconds(tls_reload?),
        shutdown_timeout: seconds(shutdown?),
    })
}

fn listen_tls(r: &mut Reader) -> Result<Option<TlsFiles>, Reported> {
    let (has_cert, has_key) = (r.is_set("listen.tls_cert"), r.is_set("listen.tls_key"));
    let (cert, key) = (r.file("listen.tls_cert"), r.file("listen.tls_key"));
    if has_cert != has_key {
        let (missing, other) = match has_cert {
            true => ("listen.tls_key", "listen.tls_cert"),
            false => ("listen.tls_cert", "listen.tls_key"),
        };
        return Err(r.fail(missing, format!("required when {other} is set (give both or neither)")));
    }
    Ok(cert?.zip(key?).map(|(cert, key)| TlsFiles { cert, key }))
}

fn upstream(r: &mut Reader) -> Result<UpstreamConfig, Reported> {
    use UpstreamTls::*;
    let host = r.string_or("upstream.host", "127.0.0.1");
    let port = r.int("upstream.port", 1, 65535, 5432);
    let database = r.required("upstream.database");
    let user = r.required("upstream.user");
    let password = upstream_password(r);
    let pool_size = r.int("upstream.pool_size", 1, 10_000, 20);
    let modes = [("disable", Disable), ("prefer", Prefer), ("require", Require), ("verify-full", VerifyFull)];
    let tls = r.choice("upstream.tls", &modes, Prefer);
    let mut tls_ca_file = r.file("upstream.tls_ca_file");
    let connect_timeout = r.int("upstream.connect_timeout_seconds", 1, 300, 5);
    let pool_timeout = r.int("upstream.pool_timeout_seconds", 1, 3600, 10);
    let max_prepared = r.int("upstream.max_prepared_statements", 1, 100_000, 200);
    let allow_bypass = r.boolean("upstream.allow_rls_bypassing_role", false);
    let per_tenant = per_tenant_cap(r, pool_size.as_ref().ok().copied());
    let binding_modes = [
        ("disable", ChannelBindingMode::Disable),
        ("prefer", ChannelBindingMode::Prefer),
        ("require", ChannelBindingMode::Require),
    ];
    let mut channel_binding = r.choice("upstream.channel_binding", &binding_modes, ChannelBindingMode::Prefer);
    if let (Ok(Disable), Ok(ChannelBindingMode::Require)) = (&tls, &channel_binding) {
        let msg = "\"require\" needs TLS, but upstream.tls = \"disable\"";
        channel_binding = Err(r.fail("upstream.channel_binding", msg));
    }
    if let (Ok(VerifyFull), Ok(None)) = (&tls, &tls_ca_file) {
        let msg = "required when upstream.tls = \"verify-full\"";
        tls_ca_file = Err(r.fail("upstream.tls_ca_file", msg));
    }
    Ok(UpstreamConfig {
        host: host?,
        port: port? as u16,
        database: database?,
        user: user?,
        password: password?,
        pool_size: pool_size? as usize,
        tls: tls?,
        tls_ca_file: tls_ca_file?,
        connect_timeout: seconds(connect_timeout?),
        pool_timeout: seconds(pool_timeout?),
        max_prepared_statements: max_prepared? as usize,
        allow_rls_bypassing_role: allow_bypass?,
        max_connections_per_tenant: per_tenant?,
        channel_binding: channel_binding?,
    })
}

/// `upstream.max_connections_per_tenant`: by default three quarters of the
/// pool (rounded up), so one busy tenant always leaves room for the others.
fn per_tenant_cap(r: &mut Reader, pool_size: Option<i64>) -> Result<usize, Reported> {
    let Some(pool) = pool_size else { return Err(Reported) };
    let default = pool - pool / 4;
    let cap = r.int("upstream.max_connections_per_tenant", 1, 10_000, default)?;
    if cap > pool {
        return Err(
            r.fail("upstream.max_connections_per_tenant", format!("must not exceed upstream.pool_size ({pool})"))
        );
    }
    Ok(cap as usize)
}

fn upstream_password(r: &mut Reader) -> Result<Option<String>, Reported> {
    let direct = r.opt_string("upstream.password");
    let via_env = r.env_secret("upstream.password_env");
    match (direct?, via_env?) {
        (Some(_), Some(_)) => {
            let msg = "set at most one of upstream.password and upstream.password_env";
            Err(r.fail("upstream.password", msg))
        }
        (direct, via_env) => Ok(direct.or(via_env)),
    }
}

fn auth(r: &mut Reader) -> Result<AuthConfig, Reported> {
    use TenantFormat::*;
    let algorithms = algorithms(r);
    let key = match &algorithms {
        Ok(algs) => key_source(r, algs),
        Err(_) => Err(Reported),
    };
    let tenant_claim = tenant_claim(r);
    let tenant_format = r.choice("auth.tenant_format", &[("uuid", Uuid), ("text", Text)], Uuid);
    let issuer = r.opt_string("auth.issuer");
    let audience = r.opt_string("auth.audience");
    let leeway = r.int("auth.leeway_seconds", 0, 300, 30);
    Ok(AuthConfig {
        algorithms: algorithms?,
        key: key?,
        tenant_claim: tenant_claim?,
        tenant_format: tenant_format?,
        issuer: issuer?,
        audience: audience?,
        leeway: leeway? as u64,
    })
}

fn algorithms(r: &mut Reader) -> Result<Vec<Algorithm>, Reported> {
    const KEY: &str = "auth.algorithms";
    let names = r.list(KEY, &["HS256"])?;
    if names.is_empty() {
        return Err(r.fail(KEY, "must list at least one algorithm"));
    }
    let mut algs = Vec::new();
    let mut bad = false;
    for name in &names {
        match SUPPORTED_ALGORITHMS.iter().find(|a| format!("{a:?}") == *name) {
            Some(alg) if !algs.contains(alg) => algs.push(*alg),
            Some(_) => {}
            None => {
                let known = SUPPORTED_ALGORITHMS.iter().map(|a| format!("{a:?}"));
                let known = known.collect::<Vec<_>>().join(", ");
                r.fail(KEY, format!("unsupported algorithm {name:?} (supported: {known})"));
                bad = true;
            }
        }
    }
    if bad {
        return Err(Reported);
    }
    let hs = algs.iter().filter(|a| a.family() == AlgorithmFamily::Hmac).count();
    if hs > 0 && hs < algs.len() {
        // A shared secret and a public key must never verify the same tokens
        // (the classic HS/RS key-confusion attack).
        return Err(r.fail(KEY, "HS algorithms cannot be mixed with asymmetric ones"));
    }
    Ok(algs)
}

fn key_source(r: &mut Reader, algs: &[Algorithm]) -> Result<KeySource, Reported> {
    const SECRET: &str = "auth.hs_secret";
    const SECRET_ENV: &str = "auth.hs_secret_env";
    const PEM: &str = "auth.public_key_file";
    let secret = r.opt_string(SECRET);
    let secret_env = r.env_secret(SECRET_ENV);
    let pem = r.file(PEM);
    let jwks = jwks(r);
    if algs.iter().any(|a| a.family() != AlgorithmFamily::Hmac) {
        let misplaced: Vec<&str> = [SECRET, SECRET_ENV].into_iter().filter(|k| r.is_set(k)).collect();
        for key in &misplaced {
            r.fail(key, "only used with HS algorithms; auth.algorithms are asymmetric");
        }
        return match (pem?, jwks?) {
            (Some(_), Some(_)) => {
                Err(r.fail(PEM, "set only one of auth.public_key_file, auth.jwks_file and auth.jwks_url"))
            }
            (Some(path), None) if misplaced.is_empty() => Ok(KeySource::PublicKeyPem(path)),
            (None, Some(jwks)) if misplaced.is_empty() => Ok(KeySource::Jwks(jwks)),
            (Some(_), None) | (None, Some(_)) => Err(Reported),
            (None, None) => Err(r.fail(
                PEM,
                "required for asymmetric algorithms (a PEM public key), or set auth.jwks_file or auth.jwks_url",
            )),
        };
    }
    if r.is_set(PEM) {
        r.fail(PEM, "only used with asymmetric algorithms; auth.algorithms are HS");
    }
    for key in [JWKS_FILE, JWKS_URL] {
        // A JWKS publishes public keys; HS tokens would need the shared secret (and
        // accepting one from a key set is the HS/RS confusion this must prevent).
        if r.is_set(key) {
            r.fail(key, "a JWKS only verifies asymmetric algorithms; auth.algorithms lists HS ones");
        }
    }
    let (key, value) = match (secret?, secret_env?) {
        (Some(_), Some(_)) => {
            let msg = "set only one of auth.hs_secret and auth.hs_secret_env";
            return Err(r.fail(SECRET, msg));
        }
        (Some(v), None) => (SECRET, v),
        (None, Some(v)) => (SECRET_ENV, v),
        (None, None) => {
            let msg = "HS algorithms need a secret: set auth.hs_secret_env or auth.hs_secret";
            return Err(r.fail(SECRET_ENV, msg));
        }
    };
    if value.len() < MIN_HS_SECRET_LEN {
        let msg = format!("the secret is {} bytes; at least {MIN_HS_SECRET_LEN} are required", value.len());
        return Err(r.fail(key, msg));
    }
    pem?;
    jwks?;
    Ok(KeySource::HsSecret(value.into_bytes()))
}

const JWKS_FILE: &str = "auth.jwks_file";
const JWKS_URL: &str = "auth.jwks_url";
const JWKS_CA: &str = "auth.jwks_ca_file";

/// The `auth.jwks_*` keys; `Ok(None)` when neither a file nor a URL is set.
fn jwks(r: &mut Reader) -> Result<Option<JwksConfig>, Reported> {
    let file = r.file(JWKS_FILE);
    let url = jwks_url(r);
    let ca_file = r.file(JWKS_CA);
    let refresh = r.int("auth.jwks_refresh_seconds", 1, 86_400, 300);
    let min_refresh = r.int("auth.jwks_min_refresh_seconds", 1, 3600, 30);
    let location = match (file?, url?, ca_file?) {
        (Some(_), Some(_), _) => return Err(r.fail(JWKS_URL, "set only one of auth.jwks_file and auth.jwks_url")),
        (_, None, Some(_)) => return Err(r.fail(JWKS_CA, "only used with auth.jwks_url")),
        (Some(path), None, None) => JwksLocation::File(path),
        (None, Some(url), ca_file) => JwksLocation::Url { url, ca_file },
        (None, None, None) => return Ok(None),
    };
    Ok(Some(JwksConfig { location, refresh: seconds(refresh?), min_refresh: seconds(min_refresh?) }))
}

fn jwks_url(r: &mut Reader) -> Result<Option<HttpsUrl>, Reported> {
    let Some(text) = r.opt_string(JWKS_URL)? else {
        return Ok(None);
    };
    match HttpsUrl::parse(text.trim()) {
        Ok(url) => Ok(Some(url)),
        Err(e) => {
            let msg = format!("{e}{}", r.got(JWKS_URL));
            Err(r.fail(JWKS_URL, msg))
        }
    }
}

fn tenant_claim(r: &mut Reader) -> Result<String, Reported> {
    let claim = r.string_or("auth.tenant_claim", "tenant_id")?;
    if claim.split('.').any(str::is_empty) {
        let msg = "expected a claim name or dotted path like org.tenant";
        return Err(r.fail("auth.tenant_claim", msg));
    }
    Ok(claim)
}

fn tenant(r: &mut Reader) -> Result<TenantConfig, Reported> {
    let setting = r.string_or("tenant.setting", "app.current_tenant_id");
    let setting = setting.and_then(|raw| custom_guc_name(&raw).map_err(|m| r.fail("tenant.setting", m)));
    let modes = [("plain", false), ("signed", true)];
    let mode = match r.choice("tenant.mode", &modes, false) {
        Ok(true) => signing_key(r).map(TenantMode::Signed),
        Ok(false) => {
            // Only used in signed mode, so the variable or file need not exist
            // (the sample configuration names one); type-checked so typos surface.
            let env = r.opt_string(SIGNING_ENV);
            r.opt_string(SIGNING_FILE)?;
            env?;
            Ok(TenantMode::Plain)
        }
        Err(e) => Err(e),
    };
    Ok(TenantConfig { setting: setting?, mode: mode? })
}

const SIGNING_ENV: &str = "tenant.signing_key_env";
const SIGNING_FILE: &str = "tenant.signing_key_file";

/// The signed-mode key: the text of an environment variable or of a file
/// (surrounding whitespace, e.g. a trailing newline, removed).
fn signing_key(r: &mut Reader) -> Result<SigningKey, Reported> {
    let from_env = r.env_secret(SIGNING_ENV);
    let file = r.file(SIGNING_FILE);
    let (key, text) = match (from_env?, file?) {
        (Some(_), Some(_)) => return Err(r.fail(SIGNING_ENV, "set only one of signing_key_env and signing_key_file")),
        (Some(text), None) => (SIGNING_ENV, text),
        (None, Some(path)) => match std::fs::read_to_string(&path) {
            Ok(text) => (SIGNING_FILE, text),
            Err(e) => return Err(r.fail(SIGNING_FILE, format!("cannot read {}: {e}", path.display()))),
        },
        (None, None) => {
            let msg = "tenant.mode = signed needs a key: set tenant.signing_key_env or tenant.signing_key_file";
            return Err(r.fail(SIGNING_ENV, msg));
        }
    };
    SigningKey::new(text.trim().as_bytes().to_vec()).map_err(|m| r.fail(key, m))
}

/// Lowercases and validates a custom GUC name such as `app.current_tenant_id`.
pub fn custom_guc_name(raw: &str) -> Result<String, String> {
    let name = raw.to_ascii_lowercase();
    // 63 = NAMEDATALEN - 1: PostgreSQL would silently truncate longer names.
    if name.len() > 63 {
        return Err(format!("must be at most 63 bytes, got {}", name.len()));
    }
    let part_ok = |p: &str| {
        let mut bytes = p.bytes();
        matches!(bytes.next(), Some(b'a'..=b'z' | b'_'))
            && bytes.all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'$'))
    };
    if name.split('.').count() < 2 || !name.split('.').all(part_ok) {
        return Err(format!(
            "expected a custom setting name like app.current_tenant_id \
             (two or more dot-separated parts, each [a-z_][a-z0-9_$]*), got {raw:?}"
        ));
    }
    Ok(name)
}

fn seconds(n: i64) -> Duration {
    Duration::from_secs(n.max(0) as u64)
}

fn syntax_error(text: &str, e: &toml::de::Error) -> ConfigError {
    let position = e.span().and_then(|span| text.get(..span.start)).map(|before| {
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        format!(" at line {line}, column {column}")
    });
    let msg = e.message().trim_end();
    error("", format!("TOML syntax error{}: {msg}", position.unwrap_or_default()))
}

/// The keys `section` accepts.
fn section_keys(section: &str) -> impl Iterator<Item = &'static str> + '_ {
    SCHEMA.iter().filter(move |(s, _)| *s == section).flat_map(|(_, keys)| keys.split(' '))
}

/// Marker: the problem has already been recorded in [`Reader::errors`].
struct Reported;

/// A setting's value before typing: from the file or from an override variable.
enum Raw {
    File(toml::Value),
    Env { var: String, text: String },
}

impl Raw {
    fn text(&self) -> Option<&str> {
        match self {
            Raw::File(toml::Value::String(s)) | Raw::Env { text: s, .. } => Some(s),
            Raw::File(_) => None,
        }
    }

    fn int(&self) -> Option<i64> {
        match self {
            Raw::File(toml::Value::Integer(n)) => Some(*n),
            Raw::Env { text, .. } => text.trim().parse().ok(),
            Raw::File(_) => None,
        }
    }

    fn boolean(&self) -> Option<bool> {
        match self {
            Raw::File(toml::Value::Boolean(b)) => Some(*b),
            Raw::Env { text, .. } => match text.trim().to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" | "on" => Some(true),
                "false" | "0" | "no" | "off" => Some(false),
                _ => None,
            },
            Raw::File(_) => None,
        }
    }

    /// A string array; a plain string (always so from the environment) is split on commas.
    fn list(&self) -> Option<Vec<String>> {
        if let Raw::File(toml::Value::Array(items)) = self {
            return items.iter().map(|v| v.as_str().map(String::from)).collect();
        }
        let parts = self.text()?.split(',').map(str::trim).filter(|p| !p.is_empty());
        Some(parts.map(String::from).collect())
    }
}

/// Typed access to the merged settings, collecting every problem instead of stopping.
struct Reader<'a> {
    raw: HashMap<String, Raw>,
    env: &'a HashMap<String, String>,
    base_dir: PathBuf,
    errors: Vec<ConfigError>,
}

impl Reader<'_> {
    fn load_file(&mut self, table: toml::Table) {
        for (section, value) in table {
            let keys: Vec<&str> = section_keys(&section).collect();
            if keys.is_empty() {
                let msg = "unknown section (expected listen, upstream, auth, tenant or http)";
                self.fail(&section, msg);
                continue;
            }
            let toml::Value::Table(entries) = value else {
                self.fail(&section, format!("expected a table ([{section}])"));
                continue;
            };
            for (key, value) in entries {
                let full = format!("{section}.{key}");
                if keys.contains(&key.as_str()) {
                    self.raw.insert(full, Raw::File(value));
                } else {
                    self.fail(&full, "unknown key");
                }
            }
        }
    }

    /// Applies `PGTENANT_<SECTION>_<KEY>`; other `PGTENANT_*` names belong to someone else.
    fn load_env(&mut self) {
        let mut vars: Vec<(&String, &String)> = self.env.iter().filter(|(k, _)| k.starts_with(ENV_PREFIX)).collect();
        vars.sort();
        for (var, text) in vars {
            let rest = &var[ENV_PREFIX.len()..];
            let Some((section, key)) = SCHEMA.iter().find_map(|(section, _)| {
                let key = rest.strip_prefix(&section.to_ascii_uppercase())?.strip_prefix('_')?;
                Some((*section, key))
            }) else {
                continue;
            };
            match section_keys(section).find(|k| k.to_ascii_uppercase() == key) {
                Some(k) => {
                    let raw = Raw::Env { var: var.clone(), text: text.clone() };
                    self.raw.insert(format!("{section}.{k}"), raw);
                }
                None => {
                    let msg = format!("unknown setting: [{section}] has no key {:?}", key.to_ascii_lowercase());
                    self.errors.push(error(var, msg));
                }
            }
        }
    }

    /// Records a problem with `key`, naming the overriding variable when there is one.
    fn fail(&mut self, key: &str, message: impl Into<String>) -> Reported {
        let label = match self.raw.get(key) {
            Some(Raw::Env { var, .. }) => format!("{key} (from {var})"),
            _ => key.to_owned(),
        };
        self.errors.push(error(&label, message));
        Reported
    }

    /// `, got <value>` for messages; empty for secret keys so they are never echoed.
    fn got(&self, key: &str) -> String {
        let shown = match self.raw.get(key) {
            _ if SECRET_KEYS.contains(&key) => return String::new(),
            None => return String::new(),
            Some(Raw::File(toml::Value::String(s))) | Some(Raw::Env { text: s, .. }) => format!("{s:?}"),
            Some(Raw::File(v)) => v.to_string(),
        };
        match shown.char_indices().nth(80) {
            Some((cut, _)) => format!(", got {}…", &shown[..cut]),
            None => format!(", got {shown}"),
        }
    }

    /// Present and not an empty string: an empty value counts as unset, so an
    /// empty override clears a file setting.
    fn is_set(&self, key: &str) -> bool {
        self.raw.get(key).is_some_and(|raw| raw.text() != Some(""))
    }

    /// `Ok(None)` when unset; an error naming `expected` when `parse` refuses the value.
    fn get<T>(
        &mut self,
        key: &str,
        expected: &str,
        parse: impl FnOnce(&Raw) -> Option<T>,
    ) -> Result<Option<T>, Reported> {
        if !self.is_set(key) {
            return Ok(None);
        }
        if let Some(value) = self.raw.get(key).and_then(parse) {
            return Ok(Some(value));
        }
        let msg = format!("expected {expected}{}", self.got(key));
        Err(self.fail(key, msg))
    }

    fn opt_string(&mut self, key: &str) -> Result<Option<String>, Reported> {
        self.get(key, "a string", |r| r.text().map(String::from))
    }

    fn string_or(&mut self, key: &str, default: &str) -> Result<String, Reported> {
        Ok(self.opt_string(key)?.unwrap_or_else(|| default.to_owned()))
    }

    fn required(&mut self, key: &str) -> Result<String, Reported> {
        self.opt_string(key)?.ok_or_else(|| self.fail(key, "is required"))
    }

    fn int(&mut self, key: &str, min: i64, max: i64, default: i64) -> Result<i64, Reported> {
        let expected = format!("an integer between {min} and {max}");
        let n = self.get(key, &expected, |r| r.int().filter(|n| (min..=max).contains(n)))?;
        Ok(n.unwrap_or(default))
    }

    fn boolean(&mut self, key: &str, default: bool) -> Result<bool, Reported> {
        Ok(self.get(key, "true or false", Raw::boolean)?.unwrap_or(default))
    }

    fn choice<T: Copy>(&mut self, key: &str, options: &[(&str, T)], default: T) -> Result<T, Reported> {
        let names: Vec<&str> = options.iter().map(|(n, _)| *n).collect();
        let expected = format!("one of {}", names.join(", "));
        let found = self.get(key, &expected, |r| {
            let text = r.text()?.to_ascii_lowercase();
            options.iter().find(|(n, _)| *n == text).map(|(_, v)| *v)
        })?;
        Ok(found.unwrap_or(default))
    }

    fn list(&mut self, key: &str, default: &[&str]) -> Result<Vec<String>, Reported> {
        let items = self.get(key, "an array of strings", Raw::list)?;
        Ok(items.unwrap_or_else(|| default.iter().map(|s| s.to_string()).collect()))
    }

    /// A socket address; unset means `127.0.0.1:<default_port>`.
    fn socket_addr(&mut self, key: &str, default_port: u16) -> Result<SocketAddr, Reported> {
        let addr = self.get(key, "an address like 127.0.0.1:6432", |r| r.text()?.trim().parse().ok())?;
        Ok(addr.unwrap_or(SocketAddr::from((Ipv4Addr::LOCALHOST, default_port))))
    }

    /// An optional file path, resolved against the config directory and checked readable.
    fn file(&mut self, key: &str) -> Result<Option<PathBuf>, Reported> {
        let Some(raw) = self.opt_string(key)? else {
            return Ok(None);
        };
        let path = self.base_dir.join(raw);
        let problem = match std::fs::metadata(&path) {
            Ok(meta) if !meta.is_file() => Some("is not a regular file".to_owned()),
            Ok(_) => std::fs::File::open(&path).err().map(|e| format!("cannot be read: {e}")),
            Err(e) => Some(format!("cannot be read: {e}")),
        };
        match problem {
            Some(problem) => Err(self.fail(key, format!("{} {problem}", path.display()))),
            None => Ok(Some(path)),
        }
    }

    /// Resolves a `*_env` key: the named variable must exist and be non-empty.
    fn env_secret(&mut self, key: &str) -> Result<Option<String>, Reported> {
        let Some(name) = self.opt_string(key)? else {
            return Ok(None);
        };
        match self.env.get(&name).filter(|v| !v.is_empty()) {
            Some(v) => Ok(Some(v.clone())),
            None => Err(self.fail(key, format!("environment variable {name} is not set or is empty"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "0123456789abcdef0123456789abcdef-test-only";
    const MINIMAL: &str = r#"
[upstream]
database = "app"
user = "app_user"
[auth]
hs_secret_env = "TEST_JWT_SECRET"
"#;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        let mut map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        map.entry("TEST_JWT_SECRET".into()).or_insert_with(|| SECRET.into());
        map
    }

    /// A temp dir holding proxy.toml (with `text`) and a few readable files.
    struct Fixture {
        dir: tempfile::TempDir,
    }

    impl Fixture {
        fn new() -> Fixture {
            let dir = tempfile::tempdir().unwrap();
            std::fs::create_dir(dir.path().join("certs")).unwrap();
            for f in ["certs/server.crt", "certs/server.key", "ca.crt", "jwt.pub.pem", "jwks.json"] {
                std::fs::write(dir.path().join(f), "x").unwrap();
            }
            Fixture { dir }
        }

        fn source(&self) -> String {
            self.dir.path().join("proxy.toml").display().to_string()
        }

        fn load(&self, text: &str, vars: &[(&str, &str)]) -> Result<Config, ConfigErrors> {
            Config::from_toml_str(text, &self.source(), &env(vars))
        }

        fn errors(&self, text: &str, vars: &[(&str, &str)]) -> Vec<String> {
            let errs = self.load(text, vars).unwrap_err();
            errs.errors.iter().map(ToString::to_string).collect()
        }
    }

    fn has(errors: &[String], needle: &str) -> bool {
        errors.iter().any(|e| e.contains(needle))
    }

    #[test]
    fn minimal_file_gets_defaults() {
        let cfg = Fixture::new().load(MINIMAL, &[]).unwrap();
        assert_eq!(cfg.listen.addr, "127.0.0.1:6432".parse().unwrap());
        assert_eq!(cfg.listen.tls, None);
        assert!(!cfg.listen.allow_plaintext_auth);
        assert_eq!(cfg.listen.max_client_conn, 10_000);
        assert_eq!(cfg.listen.startup_timeout, Duration::from_secs(10));
        assert_eq!((cfg.listen.max_message_bytes, cfg.listen.login_failures_before_backoff), (64 << 20, 5));
        assert_eq!(cfg.listen.login_backoff_max, Duration::from_secs(5));
        assert_eq!(cfg.listen.tls_reload_interval, Duration::from_secs(60));
        let up = &cfg.upstream;
        assert_eq!(up.max_connections_per_tenant, 15, "three quarters of the pool of 20");
        assert_eq!(up.channel_binding, ChannelBindingMode::Prefer);
        assert_eq!(
            (up.host.as_str(), up.port, up.database.as_str(), up.user.as_str()),
            ("127.0.0.1", 5432, "app", "app_user")
        );
        assert_eq!(up.password, None);
        assert_eq!((up.pool_size, up.tls, up.tls_ca_file.clone()), (20, UpstreamTls::Prefer, None));
        assert_eq!((up.connect_timeout, up.pool_timeout), (Duration::from_secs(5), Duration::from_secs(10)));
        let auth = &cfg.auth;
        assert_eq!(auth.algorithms, vec![Algorithm::HS256]);
        assert_eq!(auth.key, KeySource::HsSecret(SECRET.as_bytes().to_vec()));
        assert_eq!((auth.tenant_claim.as_str(), auth.tenant_format), ("tenant_id", TenantFormat::Uuid));
        assert_eq!((auth.issuer.clone(), auth.audience.clone(), auth.leeway), (None, None, 30));
        assert_eq!(cfg.tenant, TenantConfig { setting: "app.current_tenant_id".into(), mode: TenantMode::Plain });
        assert_eq!(cfg.http.addr, "127.0.0.1:9930".parse().unwrap());
        assert_eq!(
            (cfg.http.canary_tenant.clone(), cfg.http.canary_query.as_str()),
            (None, "SELECT count(*) FROM tenant_config")
        );
        assert_eq!((cfg.http.tenant_metrics_top, cfg.http.tenant_metrics_all), (10, false));
        assert_eq!(cfg.listen.shutdown_timeout, Duration::from_secs(30));
    }

    #[test]
    fn canary_tenant_must_fit_the_tenant_format() {
        let fx = Fixture::new();
        let bad = [("PGTENANT_HTTP_CANARY_TENANT", "not-a-uuid")];
        assert!(has(
            &fx.errors(MINIMAL, &bad),
            "http.canary_tenant (from PGTENANT_HTTP_CANARY_TENANT): not a valid tenant id"
        ));
        let good = [("PGTENANT_HTTP_CANARY_TENANT", "6F1C0E0A-0000-4000-8000-000000000001")];
        let cfg = fx.load(MINIMAL, &good).unwrap();
        assert_eq!(cfg.http.canary_tenant.unwrap().as_str(), "6f1c0e0a-0000-4000-8000-000000000001");
    }

    #[test]
    fn per_tenant_cap_follows_and_is_bounded_by_the_pool() {
        let fx = Fixture::new();
        let cfg = fx.load(MINIMAL, &[("PGTENANT_UPSTREAM_POOL_SIZE", "3")]).unwrap();
        assert_eq!(cfg.upstream.max_connections_per_tenant, 3);
        let cfg = fx.load(MINIMAL, &[("PGTENANT_UPSTREAM_POOL_SIZE", "8")]).unwrap();
        assert_eq!(cfg.upstream.max_connections_per_tenant, 6);
        let vars = [("PGTENANT_UPSTREAM_POOL_SIZE", "4"), ("PGTENANT_UPSTREAM_MAX_CONNECTIONS_PER_TENANT", "5")];
        assert_eq!(fx.errors(MINIMAL, &vars), vec!["upstream.max_connections_per_tenant (from PGTENANT_UPSTREAM_MAX_CONNECTIONS_PER_TENANT): must not exceed upstream.pool_size (4)"]);
        let no_tls = [("PGTENANT_UPSTREAM_TLS", "disable"), ("PGTENANT_UPSTREAM_CHANNEL_BINDING", "require")];
        assert!(has(
            &fx.errors(MINIMAL, &no_tls),
            "upstream.channel_binding (from PGTENANT_UPSTREAM_CHANNEL_BINDING): \"require\" needs TLS"
        ));
        let small = [("PGTENANT_LISTEN_MAX_MESSAGE_BYTES", "1000")];
        assert!(has(&fx.errors(MINIMAL, &small), "expected an integer between 65536 and 1073741824"));
    }

    #[test]
    fn full_file_with_relative_paths() {
        let fx = Fixture::new();
        let text = r#"
[listen]
addr = "0.0.0.0:7432"
tls_cert = "certs/server.crt"
tls_key = "certs/server.key"
allow_plaintext_auth = true
max_client_conn = 500
startup_timeout_seconds = 3
[upstream]
host = "db.internal"
port = 5433
database = "app"
user = "app_user"
password_env = "DB_PASSWORD"
pool_size = 40
tls = "verify-full"
tls_ca_file = "ca.crt"
connect_timeout_seconds = 2
pool_timeout_seconds = 7
[auth]
algorithms = ["RS256", "RS384"]
public_key_file = "jwt.pub.pem"
tenant_claim = "org.tenant"
tenant_format = "text"
issuer = "https://issuer.example"
audience = "pgtenant"
leeway_seconds = 0
[tenant]
setting = "App.Tenant_ID"
mode = "plain"
signing_key_env = "UNUSED"
[http]
addr = "127.0.0.1:9999"
"#;
        let cfg = fx.load(text, &[("DB_PASSWORD", "s3cret-db")]).unwrap();
        let base = fx.dir.path();
        assert_eq!(cfg.listen.addr, "0.0.0.0:7432".parse().unwrap());
        let tls = TlsFiles { cert: base.join("certs/server.crt"), key: base.join("certs/server.key") };
        assert_eq!(cfg.listen.tls, Some(tls));
        assert!(cfg.listen.allow_plaintext_auth);
        assert_eq!((cfg.listen.max_client_conn, cfg.listen.startup_timeout), (500, Duration::from_secs(3)));
        assert_eq!(cfg.upstream.password.as_deref(), Some("s3cret-db"));
        assert_eq!((cfg.upstream.port, cfg.upstream.pool_size, cfg.upstream.tls), (5433, 40, UpstreamTls::VerifyFull));
        assert_eq!(cfg.upstream.tls_ca_file, Some(base.join("ca.crt")));
        assert_eq!(cfg.upstream.pool_timeout, Duration::from_secs(7));
        assert_eq!(cfg.auth.algorithms, vec![Algorithm::RS256, Algorithm::RS384]);
        assert_eq!(cfg.auth.key, KeySource::PublicKeyPem(base.join("jwt.pub.pem")));
        assert_eq!(cfg.auth.tenant_format, TenantFormat::Text);
        assert_eq!(cfg.auth.issuer.as_deref(), Some("https://issuer.example"));
        assert_eq!(cfg.auth.leeway, 0);
        assert_eq!(cfg.tenant.setting, "app.tenant_id");
        assert_eq!(cfg.http.addr.port(), 9999);
    }

    #[test]
    fn environment_overrides_win() {
        let vars = [
            ("PGTENANT_UPSTREAM_POOL_SIZE", "40"),
            ("PGTENANT_AUTH_ALGORITHMS", "HS256, HS384"),
            ("PGTENANT_LISTEN_ALLOW_PLAINTEXT_AUTH", "true"),
            ("PGTENANT_UPSTREAM_DATABASE", "other"),
            ("PGTENANT_UPSTREAM_PASSWORD", "from-env"),
            ("PGTENANT_TENANT_SETTING", "app.tenant"),
            ("PGTENANT_HTTP_ADDR", "127.0.0.1:1234"),
            // Not overrides: unknown section names are someone else's variables.
            ("PGTENANT_CONFIG", "/etc/pgtenant/proxy.toml"),
            ("PGTENANT_JWT_SECRET", "whatever"),
            ("PGTENANT_LOG", "debug"),
        ];
        let cfg = Fixture::new().load(MINIMAL, &vars).unwrap();
        assert_eq!(cfg.upstream.pool_size, 40);
        assert_eq!(cfg.auth.algorithms, vec![Algorithm::HS256, Algorithm::HS384]);
        assert!(cfg.listen.allow_plaintext_auth);
        assert_eq!(cfg.upstream.database, "other");
        assert_eq!(cfg.upstream.password.as_deref(), Some("from-env"));
        assert_eq!(cfg.tenant.setting, "app.tenant");
        assert_eq!(cfg.http.addr.port(), 1234);
    }

    #[test]
    fn unknown_override_names_the_variable() {
        let errs = Fixture::new().errors(MINIMAL, &[("PGTENANT_UPSTREAM_POOLSIZE", "4"), ("PGTENANT_AUTH_", "x")]);
        assert!(has(&errs, "PGTENANT_UPSTREAM_POOLSIZE: unknown setting"), "{errs:?}");
        assert!(has(&errs, "PGTENANT_AUTH_: unknown setting"), "{errs:?}");
    }

    #[test]
    fn bad_override_value_names_key_and_variable() {
        let errs = Fixture::new().errors(MINIMAL, &[("PGTENANT_UPSTREAM_POOL_SIZE", "abc")]);
        assert_eq!(
            errs,
            vec![
                r#"upstream.pool_size (from PGTENANT_UPSTREAM_POOL_SIZE): expected an integer between 1 and 10000, got "abc""#
            ]
        );
    }

    #[test]
    fn wrong_types_name_the_key() {
        let text = format!("{MINIMAL}\n[listen]\nmax_client_conn = \"many\"\nallow_plaintext_auth = \"yes\"\n");
        let text = text
            .replace("user = \"app_user\"", "user = \"app_user\"\npool_size = \"abc\"\nport = 70000\ntls = \"maybe\"");
        let errs = Fixture::new().errors(&text, &[]);
        assert!(
            errs.contains(&r#"upstream.pool_size: expected an integer between 1 and 10000, got "abc""#.to_owned()),
            "{errs:?}"
        );
        assert!(has(&errs, "upstream.port: expected an integer between 1 and 65535, got 70000"), "{errs:?}");
        assert!(has(&errs, r#"upstream.tls: expected one of disable, prefer, require, verify-full, got "maybe""#));
        assert!(has(&errs, "listen.max_client_conn: expected an integer"));
        assert!(has(&errs, r#"listen.allow_plaintext_auth: expected true or false, got "yes""#));
        assert_eq!(errs.len(), 5, "{errs:?}");
    }

    #[test]
    fn unknown_sections_and_keys_rejected() {
        let text = format!("{MINIMAL}\n[listen]\nport = 1\n[metrics]\nenabled = true\n");
        let errs = Fixture::new().errors(&text, &[]);
        assert!(has(&errs, "listen.port: unknown key"), "{errs:?}");
        assert!(has(&errs, "metrics: unknown section"), "{errs:?}");
        let errs = Fixture::new().errors(&format!("stray = 1\n{MINIMAL}"), &[]);
        assert!(has(&errs, "stray: unknown section"), "{errs:?}");
    }

    #[test]
    fn all_problems_are_collected() {
        let text = r#"
[listen]
addr = "nowhere"
tls_cert = "missing.crt"
[upstream]
pool_size = 0
[auth]
algorithms = ["HS256", "RS256"]
leeway_seconds = 301
[tenant]
setting = "tenant"
mode = "signed"
"#;
        let errs = Fixture::new().errors(text, &[]);
        for needle in [
            "listen.addr: expected an address",
            "listen.tls_key: required when listen.tls_cert is set",
            "upstream.database: is required",
            "upstream.user: is required",
            "upstream.pool_size: expected an integer between 1 and 10000, got 0",
            "auth.algorithms: HS algorithms cannot be mixed with asymmetric ones",
            "auth.leeway_seconds: expected an integer between 0 and 300, got 301",
            "tenant.setting: expected a custom setting name",
            "tenant.signing_key_env: tenant.mode = signed needs a key",
        ] {
            assert!(has(&errs, needle), "missing {needle:?} in {errs:#?}");
        }
    }

    #[test]
    fn signed_mode_reads_its_key_from_env_or_file() {
        let fx = Fixture::new();
        let key = "k".repeat(40);
        let text = format!("{MINIMAL}[tenant]\nmode = \"signed\"\nsigning_key_env = \"SIGNING\"\n");
        let cfg = fx.load(&text, &[("SIGNING", &key)]).unwrap();
        let expected = SigningKey::new(key.clone().into_bytes()).unwrap();
        assert_eq!(cfg.tenant.mode, TenantMode::Signed(expected.clone()));
        std::fs::write(fx.dir.path().join("signing.key"), format!("{key}\n")).unwrap();
        let text = format!("{MINIMAL}[tenant]\nmode = \"signed\"\nsigning_key_file = \"signing.key\"\n");
        assert_eq!(fx.load(&text, &[]).unwrap().tenant.mode, TenantMode::Signed(expected), "newline trimmed");
        assert!(!format!("{cfg:?}").contains(&key), "the key never shows in Debug output");
    }

    #[test]
    fn signed_mode_refuses_missing_short_or_doubled_keys() {
        let fx = Fixture::new();
        let signed = format!("{MINIMAL}[tenant]\nmode = \"signed\"\n");
        let errs = fx.errors(&signed, &[]);
        assert!(has(&errs, "tenant.signing_key_env: tenant.mode = signed needs a key"), "{errs:?}");
        let short = format!("{signed}signing_key_env = \"SIGNING\"\n");
        let errs = fx.errors(&short, &[("SIGNING", "too-short")]);
        assert!(has(&errs, "tenant.signing_key_env: the signing key is 9 bytes; at least 32"), "{errs:?}");
        assert!(!errs.iter().any(|e| e.contains("too-short")), "the key is not echoed: {errs:?}");
        let errs = fx.errors(&short, &[]);
        assert!(has(&errs, "environment variable SIGNING is not set"), "{errs:?}");
        let both = format!("{short}signing_key_file = \"ca.crt\"\n");
        let errs = fx.errors(&both, &[("SIGNING", &"k".repeat(32))]);
        assert!(has(&errs, "set only one of signing_key_env and signing_key_file"), "{errs:?}");
        // In plain mode the named variable need not exist (the sample config names one).
        let plain = format!("{MINIMAL}[tenant]\nmode = \"plain\"\nsigning_key_env = \"SIGNING\"\n");
        assert_eq!(fx.load(&plain, &[]).unwrap().tenant.mode, TenantMode::Plain);
    }

    #[test]
    fn display_prefixes_each_line_with_the_file() {
        let fx = Fixture::new();
        let err = fx.load("[upstream]\n", &[]).unwrap_err();
        let source = fx.source();
        assert_eq!(err.source, source);
        assert_eq!(
            err.to_string(),
            format!(
                "{source}: upstream.database: is required\n\
                 {source}: upstream.user: is required\n\
                 {source}: auth.hs_secret_env: HS algorithms need a secret: set auth.hs_secret_env or auth.hs_secret"
            )
        );
    }

    #[test]
    fn missing_file_and_syntax_errors() {
        let fx = Fixture::new();
        let path = fx.dir.path().join("nope.toml");
        let err = Config::load_with_env(&path, &env(&[])).unwrap_err();
        assert_eq!(err.source, path.display().to_string());
        assert!(err.to_string().starts_with(&format!("{}: cannot read config file", path.display())), "{err}");
        std::fs::write(fx.dir.path().join("proxy.toml"), MINIMAL).unwrap();
        assert!(Config::load_with_env(&fx.dir.path().join("proxy.toml"), &env(&[])).is_ok());
        let err = fx.load("[upstream]\ndatabase = \n", &[]).unwrap_err();
        assert_eq!(err.errors.len(), 1);
        assert!(err.errors[0].message.contains("TOML syntax error at line 2"), "{err}");
    }

    #[test]
    fn upstream_password_sources() {
        let fx = Fixture::new();
        let both = MINIMAL.replace("user = \"app_user\"", "user = \"u\"\npassword = \"p\"\npassword_env = \"DB_PW\"");
        let errs = fx.errors(&both, &[("DB_PW", "x")]);
        assert!(has(&errs, "set at most one of upstream.password and upstream.password_env"), "{errs:?}");
        let via_env = MINIMAL.replace("user = \"app_user\"", "user = \"u\"\npassword_env = \"DB_PW\"");
        for vars in [&[][..], &[("DB_PW", "")][..]] {
            let errs = fx.errors(&via_env, vars);
            assert!(has(&errs, "upstream.password_env: environment variable DB_PW is not set or is empty"), "{errs:?}");
        }
        assert_eq!(fx.load(&via_env, &[("DB_PW", "pw")]).unwrap().upstream.password.as_deref(), Some("pw"));
    }

    #[test]
    fn tls_files_must_pair_and_exist() {
        let fx = Fixture::new();
        let key_only = format!("{MINIMAL}[listen]\ntls_key = \"certs/server.key\"\n");
        assert!(has(&fx.errors(&key_only, &[]), "listen.tls_cert: required when listen.tls_key is set"));
        let missing = format!("{MINIMAL}[listen]\ntls_cert = \"nope.crt\"\ntls_key = \"certs\"\n");
        let errs = fx.errors(&missing, &[]);
        assert!(has(&errs, "listen.tls_cert: ") && has(&errs, "nope.crt cannot be read"), "{errs:?}");
        assert!(has(&errs, "listen.tls_key: ") && has(&errs, "is not a regular file"), "{errs:?}");
        let abs = fx.dir.path().join("certs/server.crt").display().to_string();
        let absolute = format!("{MINIMAL}[listen]\ntls_cert = \"{abs}\"\ntls_key = \"certs/server.key\"\n");
        assert_eq!(fx.load(&absolute, &[]).unwrap().listen.tls.unwrap().cert, PathBuf::from(abs));
        let verify_full = MINIMAL.replace("user = \"app_user\"", "user = \"u\"\ntls = \"verify-full\"");
        let errs = fx.errors(&verify_full, &[]);
        assert_eq!(errs, vec![r#"upstream.tls_ca_file: required when upstream.tls = "verify-full""#]);
    }

    #[test]
    fn auth_key_rules() {
        let fx = Fixture::new();
        let with_auth = |auth: &str| format!("[upstream]\ndatabase = \"a\"\nuser = \"u\"\n[auth]\n{auth}\n");
        let errs = fx.errors(&with_auth("algorithms = [\"HS256\"]"), &[]);
        assert!(has(&errs, "auth.hs_secret_env: HS algorithms need a secret"), "{errs:?}");
        let both = with_auth(&format!("hs_secret = \"{SECRET}\"\nhs_secret_env = \"TEST_JWT_SECRET\""));
        assert!(has(&fx.errors(&both, &[]), "set only one of auth.hs_secret and auth.hs_secret_env"));
        let short = with_auth("hs_secret = \"too-short-secret-value\"");
        let errs = fx.errors(&short, &[]);
        assert_eq!(errs, vec!["auth.hs_secret: the secret is 22 bytes; at least 32 are required"]);
        let direct = fx.load(&with_auth(&format!("hs_secret = \"{SECRET}\"")), &[]).unwrap();
        assert_eq!(direct.auth.key, KeySource::HsSecret(SECRET.as_bytes().to_vec()));
        let errs = fx.errors(&with_auth("algorithms = [\"ES256\"]"), &[]);
        assert!(has(&errs, "auth.public_key_file: required for asymmetric algorithms"), "{errs:?}");
        let errs = fx.errors(&with_auth("algorithms = [\"EdDSA\"]\npublic_key_file = \"missing.pem\""), &[]);
        assert!(has(&errs, "auth.public_key_file: ") && has(&errs, "missing.pem cannot be read"), "{errs:?}");
        let mixed = with_auth(&format!(
            "algorithms = [\"RS256\"]\npublic_key_file = \"jwt.pub.pem\"\nhs_secret = \"{SECRET}\""
        ));
        assert!(has(&fx.errors(&mixed, &[]), "auth.hs_secret: only used with HS algorithms"));
        let stray_pem = with_auth(&format!("hs_secret = \"{SECRET}\"\npublic_key_file = \"jwt.pub.pem\""));
        assert!(has(&fx.errors(&stray_pem, &[]), "auth.public_key_file: only used with asymmetric algorithms"));
        let errs = fx.errors(&with_auth("algorithms = [\"PS256\", \"none\"]"), &[]);
        assert!(has(&errs, r#"auth.algorithms: unsupported algorithm "PS256""#) && has(&errs, r#""none""#), "{errs:?}");
        let errs = fx.errors(&with_auth("algorithms = []\nhs_secret_env = \"TEST_JWT_SECRET\""), &[]);
        assert_eq!(errs, vec!["auth.algorithms: must list at least one algorithm"]);
        let both =
            with_auth("algorithms = [\"RS256\"]\npublic_key_file = \"jwt.pub.pem\"\njwks_url = \"https://x/jwks\"");
        let msg = "auth.public_key_file: set only one of auth.public_key_file, auth.jwks_file and auth.jwks_url";
        assert_eq!(fx.errors(&both, &[]), vec![msg]);
        let errs = fx.errors(
            &with_auth("hs_secret_env = \"TEST_JWT_SECRET\"\ntenant_claim = \"org..tenant\"\ntenant_format = \"int\""),
            &[],
        );
        assert!(
            has(&errs, "auth.tenant_claim: expected a claim name")
                && has(&errs, "auth.tenant_format: expected one of uuid, text")
        );
    }

    #[test]
    fn jwks_sources() {
        let fx = Fixture::new();
        let base = fx.dir.path();
        let with_auth = |auth: &str| format!("[upstream]\ndatabase = \"a\"\nuser = \"u\"\n[auth]\n{auth}\n");
        let rs = "algorithms = [\"RS256\", \"ES256\"]\n";
        let cfg = fx.load(&with_auth(&format!("{rs}jwks_file = \"jwks.json\"")), &[]).unwrap();
        let location = JwksLocation::File(base.join("jwks.json"));
        let want = JwksConfig { location, refresh: Duration::from_secs(300), min_refresh: Duration::from_secs(30) };
        assert_eq!(cfg.auth.key, KeySource::Jwks(want));

        let text = format!(
            "{rs}jwks_url = \"https://idp.example/.well-known/jwks.json\"\njwks_ca_file = \"ca.crt\"\n\
             jwks_refresh_seconds = 60\njwks_min_refresh_seconds = 5"
        );
        let KeySource::Jwks(jwks) = fx.load(&with_auth(&text), &[]).unwrap().auth.key else { panic!("not a JWKS") };
        let url = HttpsUrl::parse("https://idp.example/.well-known/jwks.json").unwrap();
        assert_eq!(jwks.location, JwksLocation::Url { url, ca_file: Some(base.join("ca.crt")) });
        assert_eq!((jwks.refresh, jwks.min_refresh), (Duration::from_secs(60), Duration::from_secs(5)));

        // Every key can come from the environment.
        let vars = [
            ("PGTENANT_AUTH_ALGORITHMS", "ES256"),
            ("PGTENANT_AUTH_JWKS_URL", "https://127.0.0.1:8443/jwks"),
            ("PGTENANT_AUTH_JWKS_CA_FILE", "ca.crt"),
            ("PGTENANT_AUTH_JWKS_REFRESH_SECONDS", "10"),
            ("PGTENANT_AUTH_JWKS_MIN_REFRESH_SECONDS", "2"),
        ];
        let KeySource::Jwks(jwks) = fx.load(&with_auth(""), &vars).unwrap().auth.key else { panic!("not a JWKS") };
        assert!(matches!(&jwks.location, JwksLocation::Url { url, ca_file: Some(_) } if url.port() == 8443));
        assert_eq!((jwks.refresh, jwks.min_refresh), (Duration::from_secs(10), Duration::from_secs(2)));
    }

    #[test]
    fn jwks_rules() {
        let fx = Fixture::new();
        let with_auth = |auth: &str| format!("[upstream]\ndatabase = \"a\"\nuser = \"u\"\n[auth]\n{auth}\n");
        let rs = "algorithms = [\"RS256\"]\n";
        let errs = fx.errors(&with_auth(&format!("{rs}jwks_url = \"http://idp.example/jwks\"")), &[]);
        assert_eq!(errs, vec![r#"auth.jwks_url: must be an https:// URL, got "http://idp.example/jwks""#]);
        let errs = fx.errors(&with_auth(rs), &[("PGTENANT_AUTH_JWKS_URL", "https://user:pw@idp.example/")]);
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(errs[0].starts_with("auth.jwks_url (from PGTENANT_AUTH_JWKS_URL): must not contain user"), "{errs:?}");
        let both = with_auth(&format!("{rs}jwks_file = \"jwks.json\"\njwks_url = \"https://idp.example/\""));
        assert_eq!(fx.errors(&both, &[]), vec!["auth.jwks_url: set only one of auth.jwks_file and auth.jwks_url"]);
        let stray_ca = with_auth(&format!("{rs}jwks_file = \"jwks.json\"\njwks_ca_file = \"ca.crt\""));
        assert_eq!(fx.errors(&stray_ca, &[]), vec!["auth.jwks_ca_file: only used with auth.jwks_url"]);
        let missing = with_auth(&format!("{rs}jwks_file = \"nope.json\""));
        let errs = fx.errors(&missing, &[]);
        assert!(has(&errs, "auth.jwks_file: ") && has(&errs, "nope.json cannot be read"), "{errs:?}");
        let range = with_auth(&format!("{rs}jwks_file = \"jwks.json\"\njwks_refresh_seconds = 0"));
        assert!(has(&fx.errors(&range, &[]), "auth.jwks_refresh_seconds: expected an integer between 1 and 86400"));
        // HS algorithms never go with a JWKS (the HS/RS key-confusion attack).
        let hs = with_auth(&format!("hs_secret = \"{SECRET}\"\njwks_url = \"https://idp.example/jwks\""));
        let errs = fx.errors(&hs, &[]);
        assert_eq!(
            errs,
            vec!["auth.jwks_url: a JWKS only verifies asymmetric algorithms; auth.algorithms lists HS ones"]
        );
        let hs_file =
            with_auth(&format!("algorithms = [\"HS256\"]\nhs_secret = \"{SECRET}\"\njwks_file = \"jwks.json\""));
        assert!(has(&fx.errors(&hs_file, &[]), "auth.jwks_file: a JWKS only verifies asymmetric algorithms"));
        let none = fx.errors(&with_auth(rs), &[]);
        assert!(has(&none, "auth.public_key_file: required for asymmetric algorithms"), "{none:?}");
        assert!(has(&none, "or set auth.jwks_file or auth.jwks_url"), "{none:?}");
    }

    #[test]
    fn secrets_never_echoed() {
        let fx = Fixture::new();
        let text = "[upstream]\ndatabase = \"a\"\nuser = \"u\"\npassword = 12345678\n\
                    [auth]\nhs_secret = \"short-but-secret\"\n";
        let errs = fx.errors(text, &[]).join("\n");
        assert!(errs.contains("upstream.password: expected a string") && !errs.contains("12345678"), "{errs}");
        assert!(errs.contains("auth.hs_secret:") && !errs.contains("short-but-secret"), "{errs}");
    }

    #[test]
    fn debug_redacts_secrets() {
        let text = MINIMAL.replace("user = \"app_user\"", "user = \"u\"\npassword = \"db-password-123\"");
        let cfg = Fixture::new().load(&text, &[]).unwrap();
        let shown = format!("{cfg:?}");
        assert!(!shown.contains("db-password-123") && !shown.contains(SECRET), "{shown}");
        assert!(shown.contains("<redacted>") && shown.contains("HsSecret"), "{shown}");
    }

    #[test]
    fn guc_names() {
        assert_eq!(custom_guc_name("app.current_tenant_id").unwrap(), "app.current_tenant_id");
        assert_eq!(custom_guc_name("APP.Tenant").unwrap(), "app.tenant");
        assert_eq!(custom_guc_name("a.b.c$1").unwrap(), "a.b.c$1");
        assert_eq!(custom_guc_name("_x._y").unwrap(), "_x._y");
        let long = format!("app.{}", "x".repeat(60));
        for bad in
            ["tenant", "app.", ".x", "app..x", "1app.x", "app.$x", "app.te-nant", "app.x'y", "app.x;", "app.é", &long]
        {
            assert!(custom_guc_name(bad).is_err(), "{bad}");
        }
        assert!(custom_guc_name(&format!("app.{}", "x".repeat(59))).is_ok());
    }

    #[test]
    fn http_must_not_share_the_listen_address() {
        let errs = Fixture::new().errors(&format!("{MINIMAL}[http]\naddr = \"127.0.0.1:6432\"\n"), &[]);
        assert_eq!(errs, vec!["http.addr: must differ from listen.addr"]);
    }

    #[test]
    fn empty_override_unsets_optional_values() {
        let fx = Fixture::new();
        let text = format!("{MINIMAL}[listen]\ntls_cert = \"certs/server.crt\"\ntls_key = \"certs/server.key\"\n");
        let vars = [("PGTENANT_LISTEN_TLS_CERT", ""), ("PGTENANT_LISTEN_TLS_KEY", "")];
        assert_eq!(fx.load(&text, &vars).unwrap().listen.tls, None);
    }
}
