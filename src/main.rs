//! The `pgtenant` command line: parses arguments, loads the configuration,
//! sets up logging and hands over to the library.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use pgtenant::audit::probe::ProbeOptions;
use pgtenant::audit::{AuditError, Catalog, Report, Scope, Target};
use pgtenant::auth::jwt::{mint_hs256, MintClaims};
use pgtenant::auth::tenant::TenantId;
use pgtenant::config::{Config, KeySource};

/// A tenant-aware PostgreSQL proxy: JWT login, transaction pooling, row-level security.
#[derive(Parser)]
#[command(name = "pgtenant", version, about)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy in the foreground.
    Serve {
        /// Configuration file [default: $PGTENANT_CONFIG, then ./proxy.toml]
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Validate a configuration file and print every problem.
    CheckConfig {
        /// Configuration file [default: $PGTENANT_CONFIG, then ./proxy.toml]
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Print a signed HS256 token for development and tests.
    Token {
        /// The tenant the token is for.
        #[arg(long)]
        tenant: String,
        /// Lifetime, e.g. 90s, 30m, 1h, 7d.
        #[arg(long, default_value = "1h", value_parser = parse_ttl)]
        ttl: i64,
        /// Subject claim.
        #[arg(long)]
        sub: Option<String>,
        /// Configuration file [default: $PGTENANT_CONFIG, then ./proxy.toml]
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Start a throwaway PostgreSQL with two tenants behind the proxy and print psql lines; Ctrl-C ends it.
    Demo {
        /// Keep the temp dir (data directory and log) after Ctrl-C.
        #[arg(long)]
        keep: bool,
        /// Proxy port [default: 6432 when free, else any free port]
        #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
        port: Option<u16>,
        /// Directory holding initdb and pg_ctl [default: PATH, then the usual install locations]
        #[arg(long, value_name = "DIR")]
        pg_bin: Option<PathBuf>,
        /// Signed tenant context: the output of `policy --signed`, a fresh key, the proxy in signed mode.
        #[arg(long)]
        signed: bool,
    },
    /// Audit a database's row-level security setup: exit 0 clean, 1 warnings, 2 unsafe.
    ///
    /// With --probe, run live isolation checks through a running proxy instead.
    Doctor(DoctorArgs),
    /// Print idempotent SQL that puts every table with the tenant column under row-level security.
    ///
    /// With --signed, the policies call pgtenant.current_tenant(), which returns the tenant only
    /// when the proof the proxy sets with it (pgtenant.proof) matches a key loaded in
    /// pgtenant.signing_keys: SQL that sets the tenant setting itself (a DO block, a pg_temp
    /// function) then reaches no other tenant's rows.
    Policy(PolicyArgs),
}

/// Who is audited, and what marks a tenant table.
#[derive(Args)]
struct ScopeArgs {
    /// The pooled role the proxy logs in as (upstream.user).
    #[arg(long, default_value = "app_user")]
    role: String,
    /// The tenant column.
    #[arg(long, default_value = "tenant_id")]
    column: String,
    /// The setting the policies read (tenant.setting).
    #[arg(long, default_value = "app.current_tenant_id")]
    setting: String,
}

#[derive(Args)]
struct DoctorArgs {
    /// The database to audit: postgres://user:password@host:port/db?sslmode=... (with --probe: a
    /// direct connection as the pooled role, for the no-tenant check). PGPASSWORD is used when it
    /// has no password. sslmode: disable, prefer (default), require, verify-full (+ sslrootcert).
    #[arg(long, env = "PGTENANT_DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    #[command(flatten)]
    scope: ScopeArgs,
    /// Print the report as JSON (for CI).
    #[arg(long)]
    json: bool,
    /// Run live isolation checks through a running proxy (needs --proxy-url, --token-a, --token-b).
    #[arg(long)]
    probe: bool,
    /// The proxy, e.g. postgres://probe@127.0.0.1:6432/app (the tokens are sent as the password).
    #[arg(long, requires = "probe")]
    proxy_url: Option<String>,
    /// A token for tenant A (e.g. from `pgtenant token`).
    #[arg(long, env = "PGTENANT_TOKEN_A", hide_env_values = true)]
    token_a: Option<String>,
    /// A token for another tenant, B.
    #[arg(long, env = "PGTENANT_TOKEN_B", hide_env_values = true)]
    token_b: Option<String>,
    /// The table the probe writes its marker rows to [default: the first tenant table that takes one].
    #[arg(long, requires = "probe")]
    table: Option<String>,
    /// Expect the signed tenant context (`policy --signed`): its absence is unsafe.
    ///
    /// Its checks (signed.*) run anyway whenever pgtenant.current_tenant() or
    /// pgtenant.signing_keys exists.
    #[arg(long, conflicts_with = "probe")]
    signed: bool,
}

#[derive(Args)]
struct PolicyArgs {
    /// The database: postgres://user:password@host:port/db?sslmode=... (see `doctor --help`).
    #[arg(long, env = "PGTENANT_DATABASE_URL", hide_env_values = true)]
    database_url: String,
    #[command(flatten)]
    scope: ScopeArgs,
    /// Also print the database hardening of SECURITY.md (revokes the ways around the proxy).
    #[arg(long)]
    harden: bool,
    /// For tenant.mode = "signed": policies call pgtenant.current_tenant(), which checks the proof.
    ///
    /// Also creates the key-holder role (--key-owner), schema pgtenant with pgcrypto, the key
    /// table pgtenant.signing_keys, the function and the helpers pgtenant.add_signing_key(key) /
    /// pgtenant.remove_signing_key(kid), and keeps bound parameters (the proof) out of the
    /// server log. Apply the output as a superuser, then load the proxies' key: the output ends
    /// with how (it never contains a key). Until a key is loaded, every policy matches no rows.
    #[arg(long)]
    signed: bool,
    /// With --signed: the NOLOGIN role that owns the keys and the function (created if missing).
    #[arg(long, requires = "signed", default_value = pgtenant::audit::signed::DEFAULT_KEY_OWNER)]
    key_owner: String,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match cli.command {
        Command::Serve { config } => serve(config),
        Command::CheckConfig { config } => check_config(config),
        Command::Token { tenant, ttl, sub, config } => token(config, &tenant, ttl, sub),
        Command::Demo { keep, port, pg_bin, signed } => demo(pgtenant::demo::Options { keep, port, pg_bin, signed }),
        Command::Doctor(args) => doctor(args),
        Command::Policy(args) => policy(args),
    }
}

fn demo(options: pgtenant::demo::Options) -> ExitCode {
    match pgtenant::demo::run(options) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Not eprintln!: stderr may be closed (Ctrl-C on `pgtenant demo 2>&1 | tee ...`).
            let _ = writeln!(std::io::stderr(), "pgtenant demo: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn config_path(arg: Option<PathBuf>) -> PathBuf {
    arg.or_else(|| std::env::var_os("PGTENANT_CONFIG").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("proxy.toml"))
}

fn load(arg: Option<PathBuf>) -> Result<Config, ExitCode> {
    Config::load(&config_path(arg)).map_err(|errors| {
        eprintln!("{errors}");
        ExitCode::from(2)
    })
}

fn serve(config: Option<PathBuf>) -> ExitCode {
    let path = config_path(config.clone());
    let config = match load(config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    match runtime.block_on(pgtenant::server::run(config, Some(path))) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::from(1)
        }
    }
}

fn check_config(config: Option<PathBuf>) -> ExitCode {
    let path = config_path(config);
    match Config::load(&path) {
        Ok(_) => {
            println!("{}: ok", path.display());
            ExitCode::SUCCESS
        }
        Err(errors) => {
            eprintln!("{errors}");
            ExitCode::from(2)
        }
    }
}

fn token(config: Option<PathBuf>, tenant: &str, ttl: i64, sub: Option<String>) -> ExitCode {
    let config = match load(config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let KeySource::HsSecret(secret) = &config.auth.key else {
        eprintln!("auth: `pgtenant token` needs an HS secret (auth.hs_secret or auth.hs_secret_env)");
        return ExitCode::from(2);
    };
    if let Err(e) = TenantId::parse(tenant, config.auth.tenant_format) {
        eprintln!("--tenant: {e}");
        return ExitCode::from(2);
    }
    let claims = MintClaims {
        tenant_claim: config.auth.tenant_claim.clone(),
        tenant: tenant.to_string(),
        ttl_seconds: ttl,
        subject: sub,
        issuer: config.auth.issuer.clone(),
        audience: config.auth.audience.clone(),
    };
    println!("{}", mint_hs256(secret, &claims));
    ExitCode::SUCCESS
}

/// Runs `future` on a single-threaded runtime.
fn block_on<T>(future: impl std::future::Future<Output = T>) -> T {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
    runtime.block_on(future)
}

/// Prints an audit error and returns its exit code (2 bad usage, 1 anything else).
fn audit_failure(command: &str, e: &AuditError) -> ExitCode {
    eprintln!("pgtenant {command}: {e}");
    ExitCode::from(e.exit_code())
}

fn scope(args: &ScopeArgs) -> Result<Scope, AuditError> {
    let setting =
        pgtenant::config::custom_guc_name(&args.setting).map_err(|e| AuditError::Usage(format!("--setting: {e}")))?;
    Ok(Scope { role: args.role.clone(), column: args.column.clone(), setting })
}

fn doctor(args: DoctorArgs) -> ExitCode {
    let report = match block_on(run_doctor(&args)) {
        Ok(report) => report,
        Err(e) => return audit_failure("doctor", &e),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report.to_json()).expect("JSON"));
    } else {
        print!("{}", report.to_human());
    }
    ExitCode::from(report.exit_code())
}

async fn run_doctor(args: &DoctorArgs) -> Result<Report, AuditError> {
    let scope = scope(&args.scope)?;
    let database = args.database_url.as_deref().map(Target::parse).transpose()?;
    if !args.probe {
        let target = database.ok_or_else(|| AuditError::Usage("--database-url URL is required".into()))?;
        let catalog = Catalog::read(&target, &scope).await?;
        return Ok(pgtenant::audit::checks::run(&catalog, &scope, args.signed));
    }
    let missing = |flag: &str| AuditError::Usage(format!("--probe needs {flag}"));
    let options = ProbeOptions {
        proxy: Target::parse(args.proxy_url.as_deref().ok_or_else(|| missing("--proxy-url URL"))?)?,
        token_a: args.token_a.clone().ok_or_else(|| missing("--token-a TOKEN (or PGTENANT_TOKEN_A)"))?,
        token_b: args.token_b.clone().ok_or_else(|| missing("--token-b TOKEN (or PGTENANT_TOKEN_B)"))?,
        direct: database,
        column: scope.column,
        setting: scope.setting,
        table: args.table.clone(),
    };
    pgtenant::audit::probe::run(&options).await
}

fn policy(args: PolicyArgs) -> ExitCode {
    let run = async {
        let scope = scope(&args.scope)?;
        if args.signed && scope.setting == pgtenant::auth::signing::PROOF_SETTING {
            return Err(AuditError::Usage("--setting: the tenant setting cannot be the proof's own".into()));
        }
        let signed = match args.signed {
            true => Some(
                pgtenant::audit::signed::key_owner_ident(&args.key_owner, &scope.role)
                    .map_err(|e| AuditError::Usage(format!("--key-owner: {e}")))?,
            ),
            false => None,
        };
        let target = Target::parse(&args.database_url)?;
        let catalog = Catalog::read(&target, &scope).await?;
        let options = pgtenant::audit::policy::Options { harden: args.harden, signed };
        Ok::<_, AuditError>(pgtenant::audit::policy::generate(&catalog, &scope, &options))
    };
    match block_on(run) {
        Ok(sql) => {
            print!("{sql}");
            ExitCode::SUCCESS
        }
        Err(e) => audit_failure("policy", &e),
    }
}

/// Parses `90`, `90s`, `30m`, `1h`, `7d` into seconds.
fn parse_ttl(s: &str) -> Result<i64, String> {
    let (digits, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: i64 = digits.parse().map_err(|_| format!("invalid duration {s:?}: use e.g. 90s, 30m, 1h, 7d"))?;
    let factor = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("invalid duration unit in {s:?}: use s, m, h or d")),
    };
    Ok(n * factor)
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
