//! A throwaway PostgreSQL cluster for `pgtenant demo`: finds the server
//! binaries, runs initdb into a temp dir, starts the server on a free port,
//! loads the schema and stops and deletes it all when dropped.
//!
//! PostgreSQL refuses to run as root, so when this process is root, initdb
//! and pg_ctl run as the `postgres` user through `runuser` and the temp dir
//! belongs to that user.

use std::fmt;
use std::io::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{bail, Context as _};

use super::say;

/// How often the server is started on a new port when the chosen one was taken meanwhile.
const START_ATTEMPTS: usize = 5;

/// Environment variables that could point our PostgreSQL tools elsewhere.
const PG_ENV: &[&str] = &[
    "PGHOST",
    "PGHOSTADDR",
    "PGPORT",
    "PGUSER",
    "PGPASSWORD",
    "PGPASSFILE",
    "PGDATABASE",
    "PGSERVICE",
    "PGSERVICEFILE",
    "PGOPTIONS",
    "PGDATA",
    "PGSSLMODE",
    "PGTZ",
    "PGCLIENTENCODING",
];

const SERVER_BINARIES: &str = "PostgreSQL server binaries (initdb, pg_ctl)";

/// The PostgreSQL programs the demo runs.
#[derive(Debug, Clone)]
pub struct PgBinaries {
    /// Directory of `initdb`, `pg_ctl` and `postgres`.
    pub bin_dir: PathBuf,
    /// `psql`: beside the server binaries, else from PATH.
    pub psql: PathBuf,
}

/// The server binaries (or psql) were not found; the message says how to install them.
#[derive(Debug)]
pub struct NotFound {
    /// What is missing.
    pub what: &'static str,
    /// Where it was looked for.
    pub searched: String,
}

impl fmt::Display for NotFound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} not found ({}); install them with:\n\
             \x20   sudo apt-get install postgresql        (Debian/Ubuntu)\n\
             \x20   sudo dnf install postgresql-server     (Fedora/RHEL)\n\
             \x20   brew install postgresql                (macOS)\n\
             or pass --pg-bin DIR, the directory holding initdb and pg_ctl",
            self.what, self.searched
        )
    }
}

impl std::error::Error for NotFound {}

impl PgBinaries {
    /// Finds the binaries: in `explicit` (`--pg-bin`) when given, else `initdb` on PATH,
    /// else the usual install locations (highest version first).
    pub fn find(explicit: Option<&Path>) -> Result<PgBinaries, NotFound> {
        let bin_dir = match explicit {
            Some(dir) => has_server_binaries(dir).then(|| dir.to_path_buf()).ok_or_else(|| NotFound {
                what: SERVER_BINARIES,
                searched: format!("--pg-bin {} has no initdb and pg_ctl", dir.display()),
            })?,
            None => on_path("initdb")
                .map(|initdb| std::fs::canonicalize(&initdb).unwrap_or(initdb))
                .and_then(|initdb| initdb.parent().map(Path::to_path_buf))
                .filter(|dir| has_server_binaries(dir))
                .or_else(usual_locations)
                .ok_or_else(|| NotFound {
                    what: SERVER_BINARIES,
                    searched: "not on PATH nor in /usr/lib/postgresql/*/bin, /usr/pgsql-*/bin, \
                               /usr/local/pgsql/bin or Homebrew's directories"
                        .into(),
                })?,
        };
        let psql = Some(bin_dir.join("psql")).filter(|p| p.is_file()).or_else(|| on_path("psql"));
        let psql = psql.ok_or_else(|| NotFound {
            what: "psql, PostgreSQL's client,",
            searched: format!("neither in {} nor on PATH", bin_dir.display()),
        })?;
        Ok(PgBinaries { bin_dir, psql })
    }

    /// `initdb --version`, e.g. `initdb (PostgreSQL) 16.4`, reduced to `PostgreSQL 16.4`.
    pub fn version(&self) -> String {
        let out = Command::new(self.bin_dir.join("initdb")).arg("--version").stdin(Stdio::null()).output();
        let text = out.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string()).unwrap_or_default();
        match text.split_once("(PostgreSQL) ") {
            Some((_, version)) => format!("PostgreSQL {version}"),
            None => "PostgreSQL".to_string(),
        }
    }
}

fn has_server_binaries(dir: &Path) -> bool {
    ["initdb", "pg_ctl"].iter().all(|name| dir.join(name).is_file())
}

fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(name)).find(|candidate| candidate.is_file())
}

/// `/usr/lib/postgresql/<v>/bin` (Debian), `/usr/pgsql-<v>/bin` (PGDG RPMs), Homebrew's
/// `postgresql@<v>`, `/usr/local/pgsql/bin` (source builds), Postgres.app.
fn usual_locations() -> Option<PathBuf> {
    let versioned: [(&str, &str, &str); 4] = [
        ("/usr/lib/postgresql", "", "bin"),
        ("/usr", "pgsql-", "bin"),
        ("/opt/homebrew/opt", "postgresql@", "bin"),
        ("/usr/local/opt", "postgresql@", "bin"),
    ];
    let mut found: Vec<(f64, PathBuf)> = Vec::new();
    for (parent, prefix, bin) in versioned {
        let Ok(entries) = std::fs::read_dir(parent) else { continue };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(version) = name.to_str().and_then(|n| n.strip_prefix(prefix)) else { continue };
            let Ok(version) = version.parse::<f64>() else { continue };
            let dir = entry.path().join(bin);
            if has_server_binaries(&dir) {
                found.push((version, dir));
            }
        }
    }
    if let Some((_, dir)) = found.into_iter().max_by(|a, b| a.0.total_cmp(&b.0)) {
        return Some(dir);
    }
    [
        "/opt/homebrew/opt/postgresql/bin",
        "/usr/local/opt/postgresql/bin",
        "/opt/homebrew/bin",
        "/usr/local/pgsql/bin",
        "/Applications/Postgres.app/Contents/Versions/latest/bin",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|dir| has_server_binaries(dir))
}

/// What the cluster is set up with.
pub struct Setup<'a> {
    /// The binaries to use.
    pub bins: PgBinaries,
    /// Password of `app_user`.
    pub app_password: &'a str,
    /// The two demo tenants, seeded by `seed.sql`.
    pub tenants: [&'a str; 2],
    /// Keep the temp dir when the cluster is dropped.
    pub keep: bool,
}

/// A running PostgreSQL cluster in a temp dir: stopped (and the dir deleted,
/// unless kept) when dropped, also when setup failed halfway.
pub struct Cluster {
    dir: PathBuf,
    bins: PgBinaries,
    run_as: Option<&'static str>,
    port: u16,
    running: bool,
    keep: bool,
}

/// The setup was interrupted (Ctrl-C); what was built so far is cleaned up.
#[derive(Debug)]
pub struct Interrupted;

impl fmt::Display for Interrupted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("interrupted")
    }
}

impl std::error::Error for Interrupted {}

impl Cluster {
    /// Creates, starts and sets up a cluster; checks `stop` between steps and
    /// gives up with [`Interrupted`] once it is set. Blocking.
    pub fn create(setup: &Setup<'_>, stop: &AtomicBool) -> anyhow::Result<Cluster> {
        let check = || match stop.load(Ordering::Acquire) {
            true => Err(anyhow::Error::new(Interrupted)),
            false => Ok(()),
        };
        let run_as = run_as()?;
        let dir = make_temp_dir(run_as)?;
        let mut cluster = Cluster { dir, bins: setup.bins.clone(), run_as, port: 0, running: false, keep: setup.keep };
        say(format_args!("initdb in {} ({})", cluster.dir.display(), setup.bins.version()));
        cluster.initdb()?;
        check()?;
        cluster.start()?;
        check()?;
        cluster.load_schema(setup)?;
        check()?;
        Ok(cluster)
    }

    /// The temp dir: `data/` (the data directory), `postgres.log`, and the socket.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The server's TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The user the server runs as, when this process is root.
    pub fn run_as(&self) -> Option<&'static str> {
        self.run_as
    }

    /// Path of the `pg_ctl` in use.
    pub fn pg_ctl_path(&self) -> PathBuf {
        self.bins.bin_dir.join("pg_ctl")
    }

    /// The data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("postgres.log")
    }

    /// Stops the server (`pg_ctl stop -m fast`) and deletes the temp dir unless
    /// it is kept; reports what it did on stderr.
    pub fn shutdown(mut self) -> anyhow::Result<()> {
        self.stop()?;
        if self.keep {
            return Ok(());
        }
        self.keep = true; // Drop must not try again.
        std::fs::remove_dir_all(&self.dir).with_context(|| format!("removing {}", self.dir.display()))?;
        say(format_args!("removed {}", self.dir.display()));
        Ok(())
    }

    fn stop(&mut self) -> anyhow::Result<()> {
        if !self.running {
            return Ok(());
        }
        let out = self.pg_ctl(&["-m", "fast", "-w", "-t", "30", "stop"])?;
        if !out.status.success() {
            // Last resort, so that no server outlives the demo.
            let _ = self.pg_ctl(&["-m", "immediate", "-w", "-t", "30", "stop"]);
            return Err(failure("pg_ctl stop", &out, &self.log_path()));
        }
        self.running = false;
        say("PostgreSQL stopped");
        Ok(())
    }

    fn initdb(&self) -> anyhow::Result<()> {
        let out = self
            .command(&self.bins.bin_dir.join("initdb"))
            .arg("-D")
            .arg(self.data_dir())
            .args(["-U", "postgres", "-E", "UTF8", "--locale=C", "--auth-local=trust", "--auth-host=scram-sha-256"])
            .arg("--no-sync")
            .output()
            .context("running initdb")?;
        if !out.status.success() {
            return Err(failure("initdb", &out, &self.log_path()));
        }
        // Superuser only over the socket (in a directory only its owner can
        // enter); over TCP only app_user with a password.
        let hba = "local all postgres trust\nhost app app_user 127.0.0.1/32 scram-sha-256\n";
        std::fs::write(self.data_dir().join("pg_hba.conf"), hba).context("writing pg_hba.conf")?;
        Ok(())
    }

    /// Starts the server on a free port, trying another when it was taken meanwhile.
    fn start(&mut self) -> anyhow::Result<()> {
        for attempt in 1..=START_ATTEMPTS {
            self.port = free_port()?;
            self.write_config()?;
            let log_len = std::fs::metadata(self.log_path()).map(|m| m.len()).unwrap_or(0);
            let out = self.pg_ctl(&["-w", "-t", "60", "start"])?;
            if out.status.success() {
                self.running = true;
                say(format_args!("PostgreSQL listening on 127.0.0.1:{}", self.port));
                return Ok(());
            }
            let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
            let new = log.get(log_len as usize..).unwrap_or_default();
            let port_taken = new.contains("could not bind") || new.contains("Address already in use");
            if !port_taken || attempt == START_ATTEMPTS {
                return Err(failure("pg_ctl start", &out, &self.log_path()));
            }
        }
        unreachable!("the last attempt returns")
    }

    fn write_config(&self) -> anyhow::Result<()> {
        let settings = format!(
            "\n# pgtenant demo\n\
             listen_addresses = '127.0.0.1'\n\
             port = {port}\n\
             unix_socket_directories = '{dir}'\n\
             password_encryption = 'scram-sha-256'\n\
             fsync = off\n\
             synchronous_commit = off\n\
             max_connections = 50\n",
            port = self.port,
            dir = self.dir.display(),
        );
        let conf = self.data_dir().join("postgresql.conf");
        let mut base = std::fs::read_to_string(&conf).context("reading postgresql.conf")?;
        if let Some(at) = base.find("\n# pgtenant demo\n") {
            base.truncate(at);
        }
        std::fs::write(&conf, base + &settings).context("writing postgresql.conf")
    }

    /// Runs `schema.sql` and `seed.sql` through psql over the socket as `postgres`.
    fn load_schema(&self, setup: &Setup<'_>) -> anyhow::Result<()> {
        let script = format!(
            "\\set app_password '{}'\n\\set tenant_a '{}'\n\\set tenant_b '{}'\n{}\n{}",
            setup.app_password,
            setup.tenants[0],
            setup.tenants[1],
            include_str!("schema.sql"),
            include_str!("seed.sql"),
        );
        let mut cmd = Command::new(&self.bins.psql);
        cmd.args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(&self.dir)
            .arg("-p")
            .arg(self.port.to_string())
            .args(["-U", "postgres", "-d", "postgres", "-f", "-"]);
        for var in PG_ENV {
            cmd.env_remove(var);
        }
        let mut child = cmd
            .current_dir(&self.dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("running {}", self.bins.psql.display()))?;
        let mut stdin = child.stdin.take().expect("piped stdin");
        let written = stdin.write_all(script.as_bytes());
        drop(stdin);
        let out = child.wait_with_output().context("waiting for psql")?;
        written.context("writing the schema to psql")?;
        if !out.status.success() {
            return Err(failure("creating the schema (psql)", &out, &self.log_path()));
        }
        Ok(())
    }

    fn pg_ctl(&self, args: &[&str]) -> anyhow::Result<Output> {
        self.command(&self.bins.bin_dir.join("pg_ctl"))
            .arg("-D")
            .arg(self.data_dir())
            .arg("-l")
            .arg(self.log_path())
            .args(args)
            .output()
            .context("running pg_ctl")
    }

    /// A command for a PostgreSQL server program, run as [`Cluster::run_as`] when root.
    fn command(&self, program: &Path) -> Command {
        let mut cmd = match self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(program);
                c
            }
            None => Command::new(program),
        };
        for var in PG_ENV {
            cmd.env_remove(var);
        }
        // Our working directory may not be readable by the postgres user.
        cmd.current_dir(&self.dir).stdin(Stdio::null());
        cmd
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            say(format_args!("{e:#}"));
        }
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// An error for a failed PostgreSQL command, with its output and the server log's tail.
fn failure(what: &str, out: &Output, log: &Path) -> anyhow::Error {
    let log = std::fs::read_to_string(log).unwrap_or_default();
    let tail: Vec<&str> = log.lines().rev().take(20).collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    anyhow::anyhow!(
        "{what} failed ({})\n{}{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        if tail.is_empty() { String::new() } else { format!("--- PostgreSQL log ---\n{}", tail.join("\n")) }
    )
}

/// When root: the user PostgreSQL runs as (`postgres`), checking that it and runuser exist.
fn run_as() -> anyhow::Result<Option<&'static str>> {
    if effective_uid()? != 0 {
        return Ok(None);
    }
    let has_user = Command::new("id").args(["-u", "postgres"]).output().is_ok_and(|o| o.status.success());
    if !has_user {
        bail!(
            "running as root: PostgreSQL refuses to run as root and there is no `postgres` user to run it as; \
             create one (useradd --system postgres) or run pgtenant demo as a normal user"
        );
    }
    let runuser = Command::new("runuser").arg("--version").stdin(Stdio::null()).output();
    if !runuser.is_ok_and(|o| o.status.success()) {
        bail!(
            "running as root: PostgreSQL must run as the postgres user, which needs `runuser` \
             (apt-get install util-linux), or run pgtenant demo as a normal user"
        );
    }
    Ok(Some("postgres"))
}

/// This process's effective uid: the owner of `/proc/self`, else `id -u`.
fn effective_uid() -> anyhow::Result<u32> {
    use std::os::unix::fs::MetadataExt;
    if let Ok(meta) = std::fs::metadata("/proc/self") {
        return Ok(meta.uid());
    }
    let out = Command::new("id").arg("-u").output().context("running id -u")?;
    String::from_utf8_lossy(&out.stdout).trim().parse().context("parsing the output of id -u")
}

/// A new directory `pgtenant-demo-XXXXXX` under `/tmp` (short, for the socket path, and
/// reachable by the postgres user), mode 0700, owned by `run_as` when given.
fn make_temp_dir(run_as: Option<&str>) -> anyhow::Result<PathBuf> {
    use rand::Rng as _;
    use std::os::unix::fs::DirBuilderExt;
    let tmp = Path::new("/tmp");
    let base = if tmp.is_dir() { tmp.to_path_buf() } else { std::env::temp_dir() };
    let mut rng = rand::thread_rng();
    for _ in 0..100 {
        let suffix: String =
            (0..6).map(|_| char::from(b"abcdefghijklmnopqrstuvwxyz0123456789"[rng.gen_range(0..36)])).collect();
        let dir = base.join(format!("pgtenant-demo-{suffix}"));
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => {
                if let Some(user) = run_as {
                    let status = Command::new("chown").arg(format!("{user}:")).arg(&dir).status();
                    if !status.is_ok_and(|s| s.success()) {
                        let _ = std::fs::remove_dir(&dir);
                        bail!("chown {user}: {} failed", dir.display());
                    }
                }
                return Ok(dir);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e).with_context(|| format!("creating {}", dir.display())),
        }
    }
    bail!("could not create a temp dir under {}", base.display())
}

/// A free TCP port on 127.0.0.1 (free now: another process may take it before it is bound).
pub fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr().context("finding a free port")?.port())
}
