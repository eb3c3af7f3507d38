//! The `pgtenant` command line: parses arguments, loads the configuration,
//! sets up logging and hands over to the library.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
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
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match cli.command {
        Command::Serve { config } => serve(config),
        Command::CheckConfig { config } => check_config(config),
        Command::Token { tenant, ttl, sub, config } => token(config, &tenant, ttl, sub),
        Command::Demo { keep, port, pg_bin } => demo(pgtenant::demo::Options { keep, port, pg_bin }),
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
