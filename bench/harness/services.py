"""The processes under test: a throwaway PostgreSQL, PgBouncer and pgtenant, plus keys and certificates."""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from .util import (BenchError, chown, free_port, log, run, spawn, stop_process, tail, unprivileged_user,
                   wait_for_port, which)

#: The tenant every benchmark client runs as (one tenant: see bench/README.md, "Decisions").
TENANT = "7b1f0c1e-8a52-4b43-9d1f-3c5a8d2e9f10"
#: Database name: pgtenant only serves `upstream.database`, so the bench database is called this.
DATABASE = "app"
#: The pooled, non-superuser role PgBouncer and pgtenant log in as, and direct runs use too.
APP_USER = "app_user"
PGBENCH_TABLES = "pgbench_accounts, pgbench_branches, pgbench_tellers, pgbench_history"


class Workspace:
    """A temp dir for one run, owned by the unprivileged user, and every service started in it.

    `close()` stops everything (newest first) and deletes the dir; it is safe to call twice.
    """

    def __init__(self, keep: bool = False):
        self.run_as = unprivileged_user()
        base = _temp_base()
        self.dir = Path(tempfile.mkdtemp(prefix="pgtenant-bench-", dir=base))
        os.chmod(self.dir, 0o755)
        chown(self.dir, self.run_as)
        self.keep = keep
        self.services: list = []
        self._closed = False

    def path(self, name: str) -> Path:
        return self.dir / name

    def write(self, name: str, text: str | bytes, mode: int = 0o644) -> Path:
        p = self.path(name)
        if isinstance(text, str):
            p.write_text(text)
        else:
            p.write_bytes(text)
        os.chmod(p, mode)
        chown(p, self.run_as)
        return p

    def register(self, service) -> None:
        self.services.append(service)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for service in reversed(self.services):
            try:
                service.stop(fast=True)
            except Exception as e:  # cleanup must go on
                log(f"cleanup: stopping {service.name} failed: {e}")
        if self.keep:
            log(f"kept the work dir {self.dir}")
        else:
            shutil.rmtree(self.dir, ignore_errors=True)


def _temp_base() -> str:
    """/dev/shm when it has 4 GiB free (a short path PostgreSQL's user can reach), else /tmp."""
    try:
        st = os.statvfs("/dev/shm")
        if st.f_bavail * st.f_frsize >= 4 << 30:
            return "/dev/shm"
    except OSError:
        pass
    return "/tmp"


# ---------------------------------------------------------------------------------------------
# PostgreSQL
# ---------------------------------------------------------------------------------------------

def pg_bin_dir() -> Path:
    """`initdb` on PATH (symlinks resolved), else the highest /usr/lib/postgresql/<v>/bin."""
    found = which("initdb")
    if found:
        return Path(os.path.realpath(found)).parent
    best = None
    base = Path("/usr/lib/postgresql")
    if base.is_dir():
        for entry in base.iterdir():
            try:
                v = float(entry.name)
            except ValueError:
                continue
            if (entry / "bin" / "initdb").is_file() and (best is None or v > best[0]):
                best = (v, entry / "bin")
    if best is None:
        raise BenchError("PostgreSQL server binaries not found; install them with: "
                         "apt-get install -y postgresql postgresql-contrib")
    return best[1]


def pgbench_bin() -> str:
    beside = pg_bin_dir() / "pgbench"
    if beside.is_file():
        return str(beside)
    found = which("pgbench")
    if not found:
        raise BenchError("pgbench not found (it comes with the postgresql packages)")
    return found


def psql_bin() -> str:
    beside = pg_bin_dir() / "psql"
    return str(beside) if beside.is_file() else (which("psql") or "psql")


HBA = """\
local all all trust
host all postgres 127.0.0.1/32 trust
host all all 127.0.0.1/32 scram-sha-256
"""


class Postgres:
    name = "PostgreSQL"

    def __init__(self, ws: Workspace, max_connections: int, shared_buffers: str = "256MB"):
        self.ws = ws
        self.bin = pg_bin_dir()
        self.data = ws.path("pgdata")
        self.logfile = ws.path("postgres.log")
        self.sockdir = ws.dir
        self.port = 0
        self.max_connections = max_connections
        self.shared_buffers = shared_buffers
        self.app_password = secrets.token_hex(16)
        self.started = False

    def _cmd(self, name: str) -> str:
        return str(self.bin / name)

    def start(self) -> None:
        log(f"PostgreSQL: initdb ({self.bin})")
        run([self._cmd("initdb"), "-D", str(self.data), "--auth=trust", "-U", "postgres", "-E", "UTF8",
             "--locale=C", "--no-sync"], user=self.ws.run_as, cwd=self.ws.dir)
        (self.data / "pg_hba.conf").write_text(HBA)
        with open(self.data / "postgresql.conf", "a") as f:
            f.write("\ninclude 'bench.conf'\n")
        self.ws.register(self)
        for attempt in range(8):
            self.port = free_port()
            self.ws.write("pgdata/bench.conf", self._conf(), 0o600)
            out = run([self._cmd("pg_ctl"), "-D", str(self.data), "-l", str(self.logfile), "-w", "-t", "120",
                       "start"], user=self.ws.run_as, cwd=self.ws.dir, check=False)
            if out.returncode == 0:
                self.started = True
                break
            if "could not bind" not in tail(self.logfile, 20) or attempt == 7:
                raise BenchError(f"pg_ctl start failed:\n{out.stderr.decode(errors='replace')}\n"
                                 f"{tail(self.logfile)}")
        log(f"PostgreSQL: listening on 127.0.0.1:{self.port} (max_connections {self.max_connections})")
        self.psql(f"CREATE DATABASE {DATABASE}", db="postgres")
        self.psql(f"CREATE ROLE {APP_USER} LOGIN PASSWORD '{self.app_password}' NOSUPERUSER NOBYPASSRLS")

    def _conf(self) -> str:
        return (
            "listen_addresses = '127.0.0.1'\n"
            f"port = {self.port}\n"
            f"unix_socket_directories = '{self.sockdir}'\n"
            f"max_connections = {self.max_connections}\n"
            f"shared_buffers = {self.shared_buffers}\n"
            "password_encryption = 'scram-sha-256'\n"
            "# A proxy benchmark, not a durability one: no fsync (see bench/README.md).\n"
            "fsync = off\n"
            "synchronous_commit = off\n"
            "full_page_writes = off\n"
            "max_wal_size = 4GB\n"
            "checkpoint_timeout = 30min\n"
            "# Vacuum runs between cells, not in the middle of one.\n"
            "autovacuum = off\n"
            "log_min_messages = warning\n"
        )

    def psql(self, sql: str, db: str = DATABASE) -> str:
        out = run([psql_bin(), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p",
                   str(self.port), "-U", "postgres", "-d", db, "-c", sql],
                  env=_pg_env(), timeout=1800)
        return out.stdout.decode().strip()

    def psql_script(self, script: str, db: str = DATABASE) -> str:
        """A multi-statement script (e.g. `pgtenant policy` output) on psql's stdin, as superuser."""
        out = run([psql_bin(), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p",
                   str(self.port), "-U", "postgres", "-d", db, "-f", "-"],
                  env=_pg_env(), timeout=1800, input=script.encode())
        return out.stdout.decode().strip()

    def url(self, db: str = DATABASE) -> str:
        """Superuser URL for `pgtenant policy` / `doctor` (trusted on 127.0.0.1 for postgres)."""
        return f"postgres://postgres@127.0.0.1:{self.port}/{db}?sslmode=disable"

    def init_pgbench(self, scale: int, db: str = DATABASE) -> None:
        log(f"PostgreSQL: pgbench -i -s {scale} ({db})")
        run([pgbench_bin(), "-i", "-s", str(scale), "-q", "-h", "127.0.0.1", "-p", str(self.port), "-U",
             "postgres", db], env=_pg_env(), timeout=3600)
        self.psql(f"GRANT CONNECT ON DATABASE {db} TO {APP_USER}; "
                  f"GRANT USAGE ON SCHEMA public TO {APP_USER}; "
                  f"GRANT SELECT, INSERT, UPDATE ON {PGBENCH_TABLES} TO {APP_USER}; "
                  f"GRANT TRUNCATE ON pgbench_history TO {APP_USER}", db=db)
        self.vacuum(full=True, db=db)

    def vacuum(self, full: bool = False, db: str = DATABASE) -> None:
        """Between cells: empty the history, vacuum the small hot tables (everything when `full`)."""
        self.psql("TRUNCATE pgbench_history", db=db)
        if full:
            self.psql("VACUUM ANALYZE", db=db)
        else:
            self.psql("VACUUM pgbench_branches, pgbench_tellers", db=db)
        self.psql("CHECKPOINT", db=db)

    def version(self) -> str:
        return run([self._cmd("postgres"), "--version"]).stdout.decode().strip()

    def stop(self, fast: bool = False) -> None:
        if not self.started:
            return
        self.started = False
        run([self._cmd("pg_ctl"), "-D", str(self.data), "-m", "immediate" if fast else "fast", "-w", "-t", "60",
             "stop"], user=self.ws.run_as, cwd=self.ws.dir, check=False)


def _pg_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update({"PGSSLMODE": "disable", "PGGSSENCMODE": "disable", "PGCONNECT_TIMEOUT": "30"})
    env.update(extra)
    return env


# ---------------------------------------------------------------------------------------------
# TLS certificates and JWT keys
# ---------------------------------------------------------------------------------------------

class Tls:
    """A CA and a leaf certificate for 127.0.0.1/localhost (rustls refuses a self-signed CA as the
    server certificate). RSA 2048, the common default: its signature dominates handshake cost."""

    def __init__(self, ws: Workspace):
        d = ws.path("tls")
        d.mkdir()
        chown(d, ws.run_as)
        self.ca = d / "ca.crt"
        self.cert = d / "server.crt"
        self.key = d / "server.key"
        ca_key = d / "ca.key"
        csr = d / "server.csr"
        ext = d / "leaf.ext"
        ext.write_text("basicConstraints = critical, CA:FALSE\n"
                       "keyUsage = critical, digitalSignature, keyEncipherment\n"
                       "extendedKeyUsage = serverAuth\n"
                       "subjectAltName = DNS:localhost, IP:127.0.0.1\n")
        run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca_key), "-out",
             str(self.ca), "-days", "7", "-subj", "/CN=pgtenant bench CA",
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"])
        run(["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(self.key), "-out", str(csr),
             "-subj", "/CN=localhost"])
        run(["openssl", "x509", "-req", "-in", str(csr), "-CA", str(self.ca), "-CAkey", str(ca_key),
             "-CAcreateserial", "-out", str(self.cert), "-days", "7", "-extfile", str(ext)])
        for p in (self.cert, self.key, self.ca):
            os.chmod(p, 0o600)
            chown(p, ws.run_as)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class RsaJwtKey:
    """An RSA 2048 key pair; tokens are signed with `openssl dgst -sha256 -sign` (RS256 = PKCS#1 v1.5)."""

    def __init__(self, ws: Workspace):
        self.key = ws.path("jwt-rs.key")
        self.pub = ws.path("jwt-rs.pub.pem")
        run(["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", str(self.key)])
        run(["openssl", "pkey", "-in", str(self.key), "-pubout", "-out", str(self.pub)])

    def token(self, tenant: str, ttl: int = 2 * 86400) -> str:
        now = int(time.time())
        header = b64url(json.dumps({"alg": "RS256", "typ": "JWT"}, separators=(",", ":")).encode())
        claims = {"tenant_id": tenant, "sub": "bench", "iat": now, "exp": now + ttl}
        payload = b64url(json.dumps(claims, separators=(",", ":")).encode())
        signing_input = f"{header}.{payload}".encode()
        sig = run(["openssl", "dgst", "-sha256", "-sign", str(self.key)], input=signing_input).stdout
        return f"{header}.{payload}.{b64url(sig)}"


# ---------------------------------------------------------------------------------------------
# PgBouncer
# ---------------------------------------------------------------------------------------------

def pgbouncer_bin() -> str | None:
    return which("pgbouncer") or (("/usr/sbin/pgbouncer") if os.path.exists("/usr/sbin/pgbouncer") else None)


def ensure_pgbouncer() -> str:
    """PgBouncer from the distribution's package, installed with apt-get when missing."""
    found = pgbouncer_bin()
    if found:
        return found
    if os.geteuid() != 0 or not which("apt-get"):
        raise BenchError("pgbouncer is not installed; install it with: apt-get install -y pgbouncer")
    log("installing pgbouncer (apt-get)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    out = run(["apt-get", "install", "-y", "--no-install-recommends", "pgbouncer"], env=env, check=False, timeout=900)
    if out.returncode != 0:
        run(["apt-get", "update"], env=env, timeout=900)
        run(["apt-get", "install", "-y", "--no-install-recommends", "pgbouncer"], env=env, timeout=900)
    # The package may start its own service on 6432; ours uses other ports, so it is left alone.
    found = pgbouncer_bin()
    if not found:
        raise BenchError("apt-get installed pgbouncer but the binary was not found")
    return found


def pgbouncer_version() -> tuple[str, tuple[int, ...]]:
    text = run([ensure_pgbouncer(), "--version"]).stdout.decode()
    first = text.splitlines()[0].strip() if text else "PgBouncer ?"
    m = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", first)
    nums = tuple(int(x) for x in m.groups() if x is not None) if m else (0,)
    return first, nums


def pgbouncer_supports_prepared() -> bool:
    """Protocol-level prepared statements in transaction mode arrived in PgBouncer 1.21."""
    return pgbouncer_version()[1] >= (1, 21)


class PgBouncer:
    name = "PgBouncer"

    def __init__(self, ws: Workspace, pg: Postgres, pool_size: int, max_client_conn: int, tls: Tls | None = None,
                 tag: str = "pgbouncer"):
        self.ws, self.pg, self.tag = ws, pg, tag
        self.pool_size, self.max_client_conn, self.tls = pool_size, max_client_conn, tls
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self.logfile = ws.path(f"{tag}.log")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def start(self) -> None:
        binary = ensure_pgbouncer()
        userlist = self.ws.write(f"{self.tag}.users", f'"{APP_USER}" "{self.pg.app_password}"\n', 0o600)
        self.ws.register(self)
        for attempt in range(4):
            self.port = free_port()
            extra = ""
            if pgbouncer_supports_prepared():
                # 1.21+: protocol-level prepared statements in transaction mode (off by default in 1.21).
                extra += "max_prepared_statements = 200\n"
            if self.tls:
                extra += (f"client_tls_sslmode = allow\nclient_tls_cert_file = {self.tls.cert}\n"
                          f"client_tls_key_file = {self.tls.key}\n")
            conf = (
                "[databases]\n"
                f"{DATABASE} = host=127.0.0.1 port={self.pg.port} dbname={DATABASE}\n"
                "[pgbouncer]\n"
                "listen_addr = 127.0.0.1\n"
                f"listen_port = {self.port}\n"
                "unix_socket_dir =\n"
                "auth_type = scram-sha-256\n"
                f"auth_file = {userlist}\n"
                "pool_mode = transaction\n"
                f"default_pool_size = {self.pool_size}\n"
                "min_pool_size = 0\n"
                "reserve_pool_size = 0\n"
                f"max_client_conn = {self.max_client_conn}\n"
                "server_tls_sslmode = disable\n"
                "query_wait_timeout = 120\n"
                f"{extra}"
            )
            ini = self.ws.write(f"{self.tag}.ini", conf, 0o600)
            # Not daemonized, PgBouncer logs to stderr: that is its log file (no `logfile`, no double log).
            self.proc = spawn([binary, str(ini)], log_path=self.logfile,
                              user=self.ws.run_as, cwd=self.ws.dir)
            try:
                wait_for_port(self.port, 30, self.proc, "pgbouncer")
                log(f"{self.tag}: listening on 127.0.0.1:{self.port} (pid {self.pid}, pool {self.pool_size}"
                    f"{', TLS' if self.tls else ''})")
                return
            except BenchError as e:
                stop_process(self.proc, timeout=5)
                if attempt == 3:
                    raise BenchError(f"{e}\n{tail(self.logfile)}")

    def stop(self, fast: bool = False) -> None:
        if self.proc is not None:
            import signal
            # SIGINT = "safe shutdown" waits for clients; SIGTERM = immediate shutdown.
            stop_process(self.proc, signal.SIGTERM, timeout=5)
            self.proc = None


# ---------------------------------------------------------------------------------------------
# pgtenant
# ---------------------------------------------------------------------------------------------

def build_pgtenant(repo: Path) -> Path:
    log("building pgtenant (cargo build --release)")
    cargo = which("cargo") or os.path.expanduser("~/.cargo/bin/cargo")
    out = subprocess.run([cargo, "build", "--release", "--locked"], cwd=repo, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT)
    if out.returncode != 0:
        raise BenchError("cargo build --release failed:\n" + out.stdout.decode(errors="replace")[-4000:])
    target = Path(os.environ.get("CARGO_TARGET_DIR", repo / "target"))
    binary = target / "release" / "pgtenant"
    if not binary.is_file():
        raise BenchError(f"built, but {binary} is missing")
    return binary


class Pgtenant:
    name = "pgtenant"

    def __init__(self, ws: Workspace, pg: Postgres, binary: Path, pool_size: int, max_client_conn: int,
                 algorithm: str = "HS256", rsa: RsaJwtKey | None = None, tls: Tls | None = None,
                 tag: str = "pgtenant", database: str = DATABASE, signing_key: str | None = None):
        """`signing_key` given: `tenant.mode = "signed"` with the key in `signing_key_env`."""
        self.ws, self.pg, self.binary, self.tag = ws, pg, binary, tag
        self.pool_size, self.max_client_conn = pool_size, max_client_conn
        self.algorithm, self.rsa, self.tls = algorithm, rsa, tls
        self.database, self.signing_key = database, signing_key
        self.secret = secrets.token_hex(32)
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self.config = ws.path(f"{tag}.toml")
        self.logfile = ws.path(f"{tag}.log")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def env(self) -> dict:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PGTENANT_")}
        env["PGTENANT_JWT_SECRET"] = self.secret
        env["BENCH_APP_PASSWORD"] = self.pg.app_password
        if self.signing_key is not None:
            env["PGTENANT_SIGNING_KEY"] = self.signing_key
        env.setdefault("RUST_LOG", "info")
        return env

    def _toml(self, http_port: int) -> str:
        tls = f'tls_cert = "{self.tls.cert}"\ntls_key = "{self.tls.key}"\n' if self.tls else ""
        if self.algorithm == "HS256":
            auth = 'algorithms = ["HS256"]\nhs_secret_env = "PGTENANT_JWT_SECRET"\n'
        else:
            auth = f'algorithms = ["{self.algorithm}"]\npublic_key_file = "{self.rsa.pub}"\n'
        tenant = ""
        if self.signing_key is not None:
            tenant = '[tenant]\nmode = "signed"\nsigning_key_env = "PGTENANT_SIGNING_KEY"\n'
        return (
            "[listen]\n"
            f'addr = "127.0.0.1:{self.port}"\n'
            f"max_client_conn = {self.max_client_conn}\n"
            "startup_timeout_seconds = 60\n"
            f"{tls}"
            "[upstream]\n"
            'host = "127.0.0.1"\n'
            f"port = {self.pg.port}\n"
            f'database = "{self.database}"\n'
            f'user = "{APP_USER}"\n'
            'password_env = "BENCH_APP_PASSWORD"\n'
            f"pool_size = {self.pool_size}\n"
            "# One tenant drives the whole benchmark: let it use the whole pool, as PgBouncer does.\n"
            f"max_connections_per_tenant = {self.pool_size}\n"
            "# Same as PgBouncer's query_wait_timeout; PgBouncer talks to PostgreSQL without TLS too.\n"
            "pool_timeout_seconds = 120\n"
            'tls = "disable"\n'
            "[auth]\n"
            f"{auth}"
            'tenant_claim = "tenant_id"\n'
            'tenant_format = "uuid"\n'
            f"{tenant}"
            "[http]\n"
            f'addr = "127.0.0.1:{http_port}"\n'
        )

    def start(self) -> None:
        self.ws.register(self)
        for attempt in range(4):
            self.port = free_port()
            self.config.write_text(self._toml(free_port()))
            self.proc = spawn([str(self.binary), "serve", "--config", str(self.config)], log_path=self.logfile,
                              env=self.env(), cwd=self.ws.dir)
            try:
                wait_for_port(self.port, 30, self.proc, "pgtenant")
                log(f"{self.tag}: listening on 127.0.0.1:{self.port} (pid {self.pid}, pool {self.pool_size}, "
                    f"{self.algorithm}{', TLS' if self.tls else ''}{', signed' if self.signing_key else ''}, "
                    f"database {self.database})")
                return
            except BenchError as e:
                stop_process(self.proc, timeout=5)
                if attempt == 3:
                    raise BenchError(f"{e}\n{tail(self.logfile)}")

    def token(self, tenant: str = TENANT) -> str:
        if self.algorithm != "HS256":
            return self.rsa.token(tenant)
        out = run([str(self.binary), "token", "--tenant", tenant, "--ttl", "2d", "--sub", "bench", "--config",
                   str(self.config)], env=self.env())
        return out.stdout.decode().strip()

    def stop(self, fast: bool = False) -> None:
        if self.proc is not None:
            import signal
            # SIGTERM drains; idle clients are cut at once, so this is quick. A second signal would cut.
            stop_process(self.proc, signal.SIGTERM, timeout=15)
            self.proc = None


def git_commit(repo: Path) -> str:
    try:
        sha = run(["git", "rev-parse", "--short=12", "HEAD"], cwd=repo).stdout.decode().strip()
        dirty = run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo).stdout.decode().strip()
        return sha + (" (with uncommitted changes)" if dirty else "")
    except BenchError:
        return "unknown"
