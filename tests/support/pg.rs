//! Throwaway PostgreSQL clusters from the system's own binaries, with the reference RLS schema.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use tempfile::TempDir;
use tokio_postgres::{Client, Config, NoTls};

use super::util::{free_port, random_string, read_log, tail};

/// A fixed tenant used throughout the tests.
pub const TENANT_A: &str = "aaaaaaaa-0000-4000-8000-00000000000a";
/// A second fixed tenant, distinct from [`TENANT_A`].
pub const TENANT_B: &str = "bbbbbbbb-0000-4000-8000-00000000000b";

/// The tables of the reference schema, each with a `tenant_id uuid` column under RLS.
pub const TENANT_TABLES: [&str; 3] = ["tool_calls", "tool_events", "tenant_config"];

/// How often `start` picks a new port when the chosen one was taken meanwhile.
const START_ATTEMPTS: usize = 8;

const INSTALL_HINT: &str = "apt-get update && apt-get install -y --no-install-recommends \
                            postgresql postgresql-contrib";

/// A running PostgreSQL cluster in a temp dir, stopped and deleted on drop.
///
/// Superuser `postgres` (trust over TCP and the socket), database `app` with the reference
/// schema, role `app_user` (SCRAM) and role `md5_user` (md5), both under RLS.
pub struct PgCluster {
    dir: TempDir,
    bin_dir: PathBuf,
    run_as: Option<&'static str>,
    port: u16,
    app_password: String,
    md5_password: String,
}

impl PgCluster {
    /// Creates, starts and sets up a new cluster on a free port.
    pub async fn start() -> PgCluster {
        let cluster = match tokio::task::spawn_blocking(Self::init_and_start).await {
            Ok(cluster) => cluster,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => panic!("PgCluster::start: {e}"),
        };
        cluster.setup_schema().await;
        cluster
    }

    /// TCP port the server listens on (on 127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Host the server listens on.
    pub fn host(&self) -> &'static str {
        "127.0.0.1"
    }

    /// Password of `app_user` (stored as SCRAM).
    pub fn app_password(&self) -> &str {
        &self.app_password
    }

    /// Password of `md5_user` (stored as md5).
    pub fn md5_password(&self) -> &str {
        &self.md5_password
    }

    /// Directory holding the server's Unix socket `.s.PGSQL.<port>`.
    pub fn socket_dir(&self) -> &Path {
        self.dir.path()
    }

    /// The cluster's data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Directory of the PostgreSQL binaries in use.
    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }

    /// Everything the server logged so far.
    pub fn log(&self) -> String {
        read_log(&self.log_path())
    }

    /// Connects as superuser `postgres` to database `app` over TCP.
    pub async fn superuser(&self) -> Client {
        self.connect_as("postgres", "", "app").await
    }

    /// Connects directly (not through the proxy) as `app_user` to database `app`.
    pub async fn connect_as_app_user(&self) -> Client {
        self.connect_as("app_user", &self.app_password, "app").await
    }

    /// Connects over TCP as `user`, panicking with the server log on failure.
    pub async fn connect_as(&self, user: &str, password: &str, dbname: &str) -> Client {
        let mut config = Config::new();
        config.host(self.host()).port(self.port).user(user).dbname(dbname).connect_timeout(Duration::from_secs(10));
        if !password.is_empty() {
            config.password(password);
        }
        match config.connect(NoTls).await {
            Ok((client, connection)) => {
                tokio::spawn(async move {
                    let _ = connection.await;
                });
                client
            }
            Err(e) => panic!(
                "connecting to PostgreSQL on port {} as {user} failed: {e:?}\n\
                 --- PostgreSQL log ---\n{}",
                self.port,
                tail(&self.log(), 50)
            ),
        }
    }

    /// Puts the cluster in signed mode: the output of `pgtenant policy --signed`
    /// applied, the reference schema's own policies (which read the setting
    /// directly, and would be OR-ed with the signed ones) dropped, and `keys` loaded.
    pub async fn make_signed(&self, keys: &[&str]) {
        let url = format!("postgres://postgres@127.0.0.1:{}/app?sslmode=disable", self.port());
        let out = super::proxy::run_cli(&["policy", "--signed", "--database-url", &url]);
        let sql = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "policy --signed failed: {stderr}");
        let su = self.superuser().await;
        su.batch_execute(&sql).await.unwrap_or_else(|e| panic!("applying policy --signed: {e:?}\n{sql}"));
        for t in TENANT_TABLES {
            for cmd in ["select", "insert", "update", "delete"] {
                su.batch_execute(&format!("DROP POLICY IF EXISTS {t}_{cmd} ON {t}")).await.unwrap();
            }
        }
        for key in keys {
            su.query_one("SELECT pgtenant.add_signing_key($1)", &[key]).await.expect("add signing key");
        }
    }

    /// Inserts `n` rows into `tool_calls` for `tenant` as superuser; returns their ids.
    pub async fn seed_tool_calls(&self, tenant: &str, n: usize) -> Vec<i64> {
        let client = self.superuser().await;
        let n = i32::try_from(n).expect("n fits in i32");
        let rows = client
            .query(
                "INSERT INTO tool_calls (tenant_id, tool_name, payload) \
                 SELECT $1::text::uuid, 'seed-' || g, jsonb_build_object('n', g) \
                 FROM generate_series(1, $2::int) AS g RETURNING id",
                &[&tenant, &n],
            )
            .await
            .expect("seed tool_calls");
        rows.iter().map(|r| r.get(0)).collect()
    }

    /// Counts the rows of `table` that belong to `tenant`, as superuser (ignoring RLS).
    pub async fn count_rows(&self, table: &str, tenant: &str) -> i64 {
        let client = self.superuser().await;
        let sql = format!("SELECT count(*) FROM {table} WHERE tenant_id = $1::text::uuid");
        client.query_one(&sql, &[&tenant]).await.expect("count rows").get(0)
    }

    /// Restarts the server (`pg_ctl -m fast restart`) on the same port; also starts a stopped one.
    pub fn restart(&self) {
        let log_len = self.log().len();
        let out = self.pg_ctl(&["-m", "fast", "-w", "-t", "60", "restart"]);
        if out.status.success() {
            return;
        }
        // The port may have been taken while the server was down: try starting a few times.
        for _ in 0..20 {
            if !bind_failed(self.log().get(log_len..).unwrap_or_default()) {
                break;
            }
            std::thread::sleep(Duration::from_millis(250));
            if self.try_start().is_ok() {
                return;
            }
        }
        self.fail("pg_ctl restart", &out);
    }

    /// Stops the server (`pg_ctl -m fast stop`); [`PgCluster::restart`] starts it again.
    pub fn stop(&self) {
        let out = self.pg_ctl(&["-m", "fast", "-w", "-t", "60", "stop"]);
        if !out.status.success() {
            self.fail("pg_ctl stop", &out);
        }
    }

    /// initdb, configuration and start, retried on a new port when the port was taken.
    fn init_and_start() -> PgCluster {
        let run_as = unprivileged_user();
        let dir = make_temp_dir(run_as);
        let mut cluster = PgCluster {
            dir,
            bin_dir: bin_dir().to_path_buf(),
            run_as,
            port: 0,
            app_password: random_string(32),
            md5_password: random_string(32),
        };
        cluster.initdb();
        for attempt in 1..=START_ATTEMPTS {
            cluster.port = free_port();
            cluster.write_config();
            let log_len = cluster.log().len();
            match cluster.try_start() {
                Ok(()) => return cluster,
                Err(out) => {
                    let retry = bind_failed(cluster.log().get(log_len..).unwrap_or_default());
                    if !retry || attempt == START_ATTEMPTS {
                        cluster.fail("pg_ctl start", &out);
                    }
                }
            }
        }
        unreachable!("the last attempt either returns or panics")
    }

    fn initdb(&self) {
        let data = self.data_dir();
        let out = self
            .command("initdb")
            .arg("-D")
            .arg(&data)
            .args(["--auth=trust", "-U", "postgres", "-E", "UTF8", "--locale=C"])
            .arg("--no-sync")
            .output()
            .expect("run initdb");
        if !out.status.success() {
            self.fail("initdb", &out);
        }
        let conf = data.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf).expect("read postgresql.conf");
        text.push_str("\ninclude 'pgtenant-test.conf'\n");
        std::fs::write(&conf, text).expect("write postgresql.conf");
        std::fs::write(data.join("pg_hba.conf"), HBA_CONF).expect("write pg_hba.conf");
    }

    /// Writes the settings this harness needs, including the current port.
    fn write_config(&self) {
        let text = format!(
            "listen_addresses = '127.0.0.1'\n\
             port = {port}\n\
             unix_socket_directories = '{socket}'\n\
             password_encryption = 'scram-sha-256'\n\
             fsync = off\n\
             synchronous_commit = off\n\
             full_page_writes = off\n\
             max_connections = 400\n\
             shared_buffers = 32MB\n",
            port = self.port,
            socket = self.socket_dir().display(),
        );
        std::fs::write(self.data_dir().join("pgtenant-test.conf"), text).expect("write pgtenant-test.conf");
    }

    fn try_start(&self) -> Result<(), Output> {
        let out = self.pg_ctl(&["-w", "-t", "60", "start"]);
        if out.status.success() {
            Ok(())
        } else {
            Err(out)
        }
    }

    /// Creates database `app`, the schema, the roles, the grants and the policies.
    async fn setup_schema(&self) {
        let admin = self.connect_as("postgres", "", "postgres").await;
        admin.batch_execute("CREATE DATABASE app").await.expect("CREATE DATABASE app");
        let app = self.superuser().await;
        let sql = schema_sql(&self.app_password, &self.md5_password);
        if let Err(e) = app.batch_execute(&sql).await {
            panic!("schema setup failed: {e:?}\n--- SQL ---\n{sql}");
        }
    }

    /// Runs `pg_ctl <args>` on this cluster, with the server log going to the log file.
    fn pg_ctl(&self, args: &[&str]) -> Output {
        self.command("pg_ctl")
            .arg("-D")
            .arg(self.data_dir())
            .arg("-l")
            .arg(self.log_path())
            .args(args)
            .output()
            .expect("run pg_ctl")
    }

    /// A command for PostgreSQL binary `name`, run as the unprivileged user when root.
    fn command(&self, name: &str) -> Command {
        let program = self.bin_dir.join(name);
        let mut cmd = match self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(program);
                c
            }
            None => Command::new(program),
        };
        // The test's working directory may not be readable by the unprivileged user.
        cmd.current_dir(self.dir.path()).stdin(Stdio::null());
        cmd
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    fn fail(&self, what: &str, out: &Output) -> ! {
        panic!(
            "{what} failed ({}) for cluster in {}\n--- stdout ---\n{}\n--- stderr ---\n{}\n\
             --- PostgreSQL log ---\n{}",
            out.status,
            self.dir.path().display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            tail(&self.log(), 50)
        )
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- PostgreSQL log (port {}) ---\n{}", self.port, tail(&self.log(), 100));
        }
        // Errors are ignored: the server may already be stopped, or never have started.
        let _ = self.pg_ctl(&["-m", "immediate", "-w", "stop"]);
    }
}

const HBA_CONF: &str = "\
local all all trust
host all postgres 127.0.0.1/32 trust
host all app_user 127.0.0.1/32 scram-sha-256
host all md5_user 127.0.0.1/32 md5
host all all 127.0.0.1/32 scram-sha-256
";

/// The tenant expression of every policy; `NULLIF` makes an unset context match no rows.
const TENANT_EXPR: &str = "tenant_id = NULLIF(current_setting('app.current_tenant_id', true), '')::uuid";

/// SQL for the reference schema, run as superuser in database `app`.
fn schema_sql(app_password: &str, md5_password: &str) -> String {
    let mut sql = format!(
        "CREATE TABLE tool_calls (
             id bigserial PRIMARY KEY,
             tenant_id uuid NOT NULL,
             tool_name text NOT NULL,
             called_at timestamptz NOT NULL DEFAULT now(),
             success boolean NOT NULL DEFAULT true,
             payload jsonb);
         CREATE TABLE tool_events (
             id bigserial PRIMARY KEY,
             tenant_id uuid NOT NULL,
             call_id bigint,
             kind text NOT NULL,
             at timestamptz NOT NULL DEFAULT now());
         CREATE TABLE tenant_config (
             tenant_id uuid NOT NULL,
             key text NOT NULL,
             value text,
             PRIMARY KEY (tenant_id, key));
         CREATE ROLE app_user LOGIN PASSWORD '{app_password}' NOSUPERUSER NOBYPASSRLS;
         SET password_encryption = 'md5';
         CREATE ROLE md5_user LOGIN PASSWORD '{md5_password}' NOSUPERUSER NOBYPASSRLS;
         RESET password_encryption;
         GRANT CONNECT ON DATABASE app TO app_user, md5_user;
         GRANT USAGE ON SCHEMA public TO app_user, md5_user;
         GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO app_user, md5_user;
"
    );
    for table in TENANT_TABLES {
        sql.push_str(&table_rls_sql(table));
    }
    sql
}

/// Index, RLS switches, grants and the four policies of one tenant table.
fn table_rls_sql(t: &str) -> String {
    let roles = "app_user, md5_user";
    let e = TENANT_EXPR;
    format!(
        "CREATE INDEX {t}_tenant_id_idx ON {t} (tenant_id);
         ALTER TABLE {t} ENABLE ROW LEVEL SECURITY;
         ALTER TABLE {t} FORCE ROW LEVEL SECURITY;
         GRANT SELECT, INSERT, UPDATE, DELETE ON {t} TO {roles};
         CREATE POLICY {t}_select ON {t} FOR SELECT TO {roles} USING ({e});
         CREATE POLICY {t}_insert ON {t} FOR INSERT TO {roles} WITH CHECK ({e});
         CREATE POLICY {t}_update ON {t} FOR UPDATE TO {roles} USING ({e}) WITH CHECK ({e});
         CREATE POLICY {t}_delete ON {t} FOR DELETE TO {roles} USING ({e});
"
    )
}

/// Whether a server log excerpt says the listen port was already taken.
fn bind_failed(log: &str) -> bool {
    log.contains("could not bind")
        || log.contains("Address already in use")
        || log.contains("could not create any TCP/IP sockets")
}

/// The temp dir of a cluster, owned by the user the server runs as.
fn make_temp_dir(run_as: Option<&str>) -> TempDir {
    let dir = tempfile::Builder::new()
        .prefix("pgtenant-pg-")
        .tempdir_in(cluster_base_dir())
        .expect("create temp dir for PostgreSQL");
    if let Some(user) = run_as {
        let status = Command::new("chown").arg(format!("{user}:")).arg(dir.path()).status().expect("run chown");
        assert!(status.success(), "chown {user}: {} failed", dir.path().display());
    }
    dir
}

/// Where cluster temp dirs go: `/dev/shm` when it has room, else `/tmp`.
///
/// A short path (the socket path limit is 107 bytes) that the unprivileged user can reach,
/// so not `$TMPDIR`. tmpfs because on this project's machines the disk slows down badly
/// after many clusters were created and deleted (initdb 0.5 s on tmpfs, up to 1.7 s on disk).
fn cluster_base_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let shm = Path::new("/dev/shm");
        if available_kib(shm).is_some_and(|kib| kib >= TMPFS_MIN_FREE_KIB) {
            shm.to_path_buf()
        } else if Path::new("/tmp").is_dir() {
            PathBuf::from("/tmp")
        } else {
            std::env::temp_dir()
        }
    })
}

/// Free space `/dev/shm` needs for clusters to go there (2 GiB).
const TMPFS_MIN_FREE_KIB: u64 = 2 << 20;

/// Free space under `dir` in KiB, per `df -Pk`.
fn available_kib(dir: &Path) -> Option<u64> {
    let out = Command::new("df").arg("-Pk").arg(dir).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines().nth(1)?.split_whitespace().nth(3)?.parse().ok()
}

/// `pgbench` next to the server binaries the harness uses, else on PATH.
pub fn pgbench_bin() -> PathBuf {
    let beside = bin_dir().join("pgbench");
    if beside.is_file() {
        return beside;
    }
    let on_path = std::process::Command::new("pgbench").arg("--version").output();
    if on_path.is_ok_and(|o| o.status.success()) {
        return PathBuf::from("pgbench");
    }
    panic!(
        "pgbench not found beside {} nor on PATH; it comes with the PostgreSQL server \
         packages: apt-get install -y postgresql postgresql-contrib",
        bin_dir().display()
    );
}

/// The directory of `initdb`, `pg_ctl` and `postgres`: `initdb` on PATH (symlinks
/// resolved), else the highest `/usr/lib/postgresql/<version>/bin`.
pub fn bin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        initdb_on_path().or_else(highest_debian_bin_dir).unwrap_or_else(|| {
            panic!(
                "PostgreSQL server binaries not found: no `initdb` on PATH nor in \
                     /usr/lib/postgresql/*/bin. Install them with:\n    {INSTALL_HINT}"
            )
        })
    })
}

fn initdb_on_path() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("initdb"))
        .find(|candidate| candidate.is_file())
        .map(|initdb| std::fs::canonicalize(&initdb).unwrap_or(initdb))
        .and_then(|initdb| initdb.parent().map(Path::to_path_buf))
}

fn highest_debian_bin_dir() -> Option<PathBuf> {
    std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|entry| entry.ok())
        .filter_map(|entry| {
            let version: f64 = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, bin)| bin)
}

/// When running as root: the user to run PostgreSQL as (`postgres` if it exists, else
/// `nobody`), since PostgreSQL refuses to run as root. `None` otherwise.
fn unprivileged_user() -> Option<&'static str> {
    static USER: OnceLock<Option<&'static str>> = OnceLock::new();
    *USER.get_or_init(|| {
        if effective_uid() != 0 {
            return None;
        }
        let runuser = Command::new("runuser").arg("--version").output();
        assert!(
            runuser.is_ok_and(|o| o.status.success()),
            "running as root needs `runuser` to start PostgreSQL as an unprivileged user; \
             install it with: apt-get install -y util-linux"
        );
        let has_postgres = Command::new("id").args(["-u", "postgres"]).output().is_ok_and(|o| o.status.success());
        Some(if has_postgres { "postgres" } else { "nobody" })
    })
}

/// This process's effective uid: the owner of `/proc/self`, else `id -u`.
fn effective_uid() -> u32 {
    use std::os::unix::fs::MetadataExt;
    if let Ok(meta) = std::fs::metadata("/proc/self") {
        return meta.uid();
    }
    let out = Command::new("id").arg("-u").output().expect("run id -u");
    String::from_utf8_lossy(&out.stdout).trim().parse().expect("parse id -u")
}
