"""The `signed` phase: what pgtenant's signed mode costs against plain mode, measured in one run.

Two databases on the same PostgreSQL, copied from one template so their data and layout are the
same: `tenant_plain` with the plain policies of `pgtenant policy`, `tenant_signed` with the signed
setup of `pgtenant policy --signed` and a key loaded with `pgtenant.add_signing_key`. Two pgtenant
instances with the same pool size, one per database, the second with `tenant.mode = "signed"`.
Before measuring, the phase checks that both serve the tenant's rows and nothing else, and that
the signed database ignores a tenant setting that comes without a valid proof.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import time
from pathlib import Path

from .pgbench import Target, log_result, run_pgbench
from .report import Report, loadavg
from .services import APP_USER, TENANT, Pgtenant, Postgres, psql_bin
from .util import BenchError, log, run

#: The databases (pgtenant serves only its `upstream.database`, so each instance gets its own).
BASE_DB = "tenant_base"
PLAIN_DB = "tenant_plain"
SIGNED_DB = "tenant_signed"
#: A second tenant with as many rows, so that a policy that lets everything through shows.
OTHER_TENANT = "d2a4e6f8-1b3c-4d5e-8f70-9a1b2c3d4e5f"
#: tenant_items rows per tenant.
ROWS = 100_000
#: pgbench_accounts in the phase's databases: scale 1 = 100,000 accounts, so both tables of the
#: phase fit in shared_buffers twice over (the point is the proxy, not the buffer cache).
ACCOUNTS_SCALE = 1
#: The setting the plain policies read and the signed function checks (pgtenant's default).
SETTING = "app.current_tenant_id"

POINT_SCRIPT = f"""\
\\set id random(1, {ROWS})
SELECT balance FROM tenant_items WHERE id = :id;
"""

#: Fails the transaction (22P02, with the count in the message) unless the tenant sees exactly its
#: own rows. The CAST of a text that is not a number is the failure: no constant to fold early.
CHECK_SCRIPT = f"""\
SELECT CAST(CASE WHEN count(*) = {ROWS} THEN '1' ELSE 'tenant_items count ' || count(*) || ', expected {ROWS}' END AS int) FROM tenant_items;
"""

WORKLOADS: dict[str, dict] = {
    "rls-simple": {"mode": "simple", "script": True,
                   "title": "RLS point select on tenant_items, -M simple"},
    "rls-extended": {"mode": "extended", "script": True,
                     "title": "RLS point select on tenant_items, -M extended"},
    "rls-prepared": {"mode": "prepared", "script": True,
                     "title": "RLS point select on tenant_items, -M prepared"},
    "select-simple": {"mode": "simple", "script": False,
                      "title": "select-only on pgbench_accounts (no RLS), -S -M simple"},
}

#: What the difference consists of (the report prints it under the tables).
COST_SENTENCE = (
    "Signed mode's cost has two parts: on the wire and in the proxy, the tenant statement becomes the "
    "bound two-parameter `SELECT set_config(<tenant>), set_config('pgtenant.proof', ...)` run in a named "
    "portal (Bind/Execute/Close; for a simple Query also a hidden Sync whose extra ReadyForQuery the proxy "
    "drops, where plain mode prefixes `SET LOCAL` to the Query text), which the select-only rows measure "
    "alone because pgbench_accounts has no policy; and in the database, `pgtenant.current_tenant()` "
    "recomputing the HMAC-SHA256 with pgcrypto once per query, which the RLS rows add on top."
)


def key_id(key: str) -> str:
    """The proof's key id: the first 8 hex digits of SHA-256 of the key (README, *Signed tenant context*)."""
    return hashlib.sha256(key.encode()).hexdigest()[:8]


def estimate_seconds(a, clients: list[int]) -> float:
    runs = len(WORKLOADS) * len(clients) * a.repeats * 2
    return runs * (a.duration + 2) + 4 * (a.warmup + 2) + 60


# ---------------------------------------------------------------------------------------------
# Setup
# ---------------------------------------------------------------------------------------------

def _has_policy_signed(binary: Path) -> bool:
    out = run([str(binary), "policy", "--help"], check=False)
    return b"--signed" in out.stdout + out.stderr


def _policy_sql(binary: Path, pg: Postgres, db: str, signed: bool) -> str:
    cmd = [str(binary), "policy"] + (["--signed"] if signed else []) + ["--database-url", pg.url(db)]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "RUST_LOG"))}
    out = run(cmd, env=env, check=False)
    if out.returncode != 0:
        raise BenchError(f"`pgtenant policy{' --signed' if signed else ''}` failed ({out.returncode}):\n"
                         f"{out.stderr.decode(errors='replace')[-2000:]}")
    return out.stdout.decode()


def setup_databases(pg: Postgres, binary: Path, key: str, ws_dir: Path) -> dict:
    """Creates and fills the two databases; returns what was done, for the report."""
    log(f"signed: creating {BASE_DB} (pgbench -i -s {ACCOUNTS_SCALE}, tenant_items with {ROWS:,} rows for each of "
        "two tenants)")
    pg.psql(f"CREATE DATABASE {BASE_DB}", db="postgres")
    pg.init_pgbench(ACCOUNTS_SCALE, db=BASE_DB)
    pg.psql(
        "CREATE TABLE tenant_items (tenant_id uuid NOT NULL, id int NOT NULL, balance int NOT NULL, "
        "PRIMARY KEY (tenant_id, id)); "
        "INSERT INTO tenant_items SELECT t.id, g, (g * 7919) % 100000 "
        f"FROM (VALUES ('{TENANT}'::uuid), ('{OTHER_TENANT}'::uuid)) AS t(id), generate_series(1, {ROWS}) AS g; "
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON tenant_items TO {APP_USER}; "
        # Fail closed from the start: no policy = no rows, until a policy script adds them.
        "ALTER TABLE tenant_items ENABLE ROW LEVEL SECURITY", db=BASE_DB)
    pg.psql("VACUUM ANALYZE tenant_items", db=BASE_DB)
    for db in (PLAIN_DB, SIGNED_DB):
        pg.psql(f"CREATE DATABASE {db} TEMPLATE {BASE_DB}", db="postgres")
    pg.psql(f"DROP DATABASE {BASE_DB}", db="postgres")

    info: dict = {"rows_per_tenant": ROWS, "accounts_scale": ACCOUNTS_SCALE, "key_id": key_id(key)}
    log(f"signed: {PLAIN_DB}: applying `pgtenant policy`")
    plain_sql = _policy_sql(binary, pg, PLAIN_DB, signed=False)
    (ws_dir / "policy-plain.sql").write_text(plain_sql)
    pg.psql_script(plain_sql, db=PLAIN_DB)

    if not _has_policy_signed(binary):
        raise BenchError(f"{binary} has no `policy --signed`: the signed phase needs a pgtenant that has it")
    log(f"signed: {SIGNED_DB}: applying `pgtenant policy --signed`, then pgtenant.add_signing_key")
    signed_sql = _policy_sql(binary, pg, SIGNED_DB, signed=True)
    (ws_dir / "policy-signed.sql").write_text(signed_sql)
    pg.psql_script(signed_sql, db=SIGNED_DB)
    kid = pg.psql_script(f"SELECT pgtenant.add_signing_key('{key}');", db=SIGNED_DB).strip()
    if kid != key_id(key):
        raise BenchError(f"pgtenant.add_signing_key returned key id {kid!r}, expected {key_id(key)!r}")
    info["setup"] = "`pgtenant policy --signed`, then `SELECT pgtenant.add_signing_key(<key>)`"
    for db in (PLAIN_DB, SIGNED_DB):
        pg.psql("CHECKPOINT", db=db)
    info["policies"] = {PLAIN_DB: _check_policies(pg, PLAIN_DB, signed=False),
                        SIGNED_DB: _check_policies(pg, SIGNED_DB, signed=True)}
    return info


def _check_policies(pg: Postgres, db: str, signed: bool) -> list[dict]:
    """The policies on tenant_items: in the signed database all call pgtenant.current_tenant() and
    none reads the setting (policies are OR-ed: one that reads it would accept a forged setting)."""
    sep = "\x1f"
    rows = pg.psql("SELECT concat_ws(E'\\x1f', policyname, cmd, coalesce(qual, ''), coalesce(with_check, '')) "
                   "FROM pg_policies WHERE tablename = 'tenant_items' ORDER BY policyname", db=db)
    rls = pg.psql("SELECT relrowsecurity FROM pg_class WHERE oid = 'public.tenant_items'::regclass", db=db)
    if rls != "t":
        raise BenchError(f"{db}: row-level security is not enabled on tenant_items")
    policies = []
    for line in filter(None, rows.splitlines()):
        name, cmd, qual, check = (line.split(sep) + ["", "", ""])[:4]
        policies.append({"name": name, "cmd": cmd, "qual": qual, "with_check": check})
        text = qual + " " + check
        if signed and ("current_setting" in text or "current_tenant()" not in text):
            raise BenchError(f"{db}: policy {name} on tenant_items does not go through pgtenant.current_tenant() "
                             f"only: {text.strip()}")
        if not signed and "current_setting" not in text:
            raise BenchError(f"{db}: policy {name} on tenant_items does not read the setting: {text.strip()}")
    if not policies:
        raise BenchError(f"{db}: no policy on tenant_items after the policy script")
    return policies


# ---------------------------------------------------------------------------------------------
# Correctness, before anything is measured
# ---------------------------------------------------------------------------------------------

def _psql_count(port: int, user: str, password: str, db: str, *sql: str) -> str:
    """The last line psql prints for these statements (each its own -c, one session)."""
    cmd = [psql_bin(), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p", str(port),
           "-U", user, "-d", db]
    for s in sql:
        cmd += ["-c", s]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update({"PGPASSWORD": password, "PGSSLMODE": "disable", "PGGSSENCMODE": "disable", "PGCONNECT_TIMEOUT": "30"})
    out = run(cmd, env=env, check=False, timeout=60)
    if out.returncode != 0:
        raise BenchError(f"psql as {user} on port {port}, database {db}: {' '.join(sql)}\n"
                         f"{out.stderr.decode(errors='replace')[-1500:]}")
    lines = out.stdout.decode().strip().splitlines()
    return lines[-1].strip() if lines else ""


def verify(pg: Postgres, key: str, targets: dict[str, Target], ws_dir: Path, jobs: int) -> list[str]:
    """Fails loudly unless both proxies show the tenant exactly its rows, in the three protocol modes,
    and the signed database refuses a forged setting. Returns what was checked, for the report."""
    done = []
    count = "SELECT count(*) FROM tenant_items"
    for key_, t in targets.items():
        n = _psql_count(t.port, t.user, t.password, t.database, count)
        if n != str(ROWS):
            raise BenchError(f"correctness: through the {key_} proxy `{count}` returned {n!r}, expected {ROWS} "
                             f"(the tenant's rows){' — the proof did not verify?' if key_ == 'signed' else ''}")
        done.append(f"through the {key_} proxy (psql, simple protocol): `{count}` = {ROWS:,}, the tenant's rows")
    check = ws_dir / "signed-check.sql"
    check.write_text(CHECK_SCRIPT)
    for key_, t in targets.items():
        for mode in ("simple", "extended", "prepared"):
            res = run_pgbench(t, ["-M", mode, "-f", str(check)], clients=1, jobs=jobs, duration=1,
                              sampling_rate=None, workdir=ws_dir)
            if not res.ok or res.transactions < 1:
                raise BenchError(f"correctness: through the {key_} proxy, pgbench -M {mode} with the count check "
                                 f"failed: {res.error or 'no transaction'} ({res.raw.get('stderr_tail', '')})")
        done.append(f"through the {key_} proxy, pgbench `-M simple`, `-M extended`, `-M prepared` (1 s each, "
                    f"every transaction checks `count(*) = {ROWS:,}`)")
    # Directly as the application role, with a forged setting: the signed database must not believe it.
    forge = f"SELECT set_config('{SETTING}', '{TENANT}', false)"
    bad_proof = f"SELECT set_config('pgtenant.proof', 'v1:{key_id(key)}:{'0' * 64}', false)"
    for db, expected in ((PLAIN_DB, str(ROWS)), (SIGNED_DB, "0")):
        for extra, what in (((), "the setting alone"), ((bad_proof,), "the setting and a wrong proof")):
            if db == PLAIN_DB and extra:
                continue
            n = _psql_count(pg.port, APP_USER, pg.app_password, db, forge, *extra, count)
            if n != expected:
                raise BenchError(f"correctness: directly as {APP_USER} in {db}, with {what} forged, `{count}` "
                                 f"returned {n!r}, expected {expected}")
            done.append(f"directly as {APP_USER} in {db}, {what} forged by SQL: {int(n):,} rows"
                        + (" (plain policies believe the setting)" if db == PLAIN_DB else " (refused)"))
    for line in done:
        log(f"signed: ok: {line}")
    return done


# ---------------------------------------------------------------------------------------------
# The phase
# ---------------------------------------------------------------------------------------------

def _cpu_ticks(pid: int) -> int | None:
    """utime + stime of the whole process (all threads), in clock ticks."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])
    except (OSError, IndexError, ValueError):
        return None


def run_phase(a, ws, pg: Postgres, binary: Path, report: Report, clients: list[int]) -> None:
    started_load = loadavg()
    t0 = time.monotonic()
    signing_key = secrets.token_hex(32)     # 64 bytes of text; pgtenant wants at least 32
    info = setup_databases(pg, binary, signing_key, ws.dir)
    max_conn = max(2000, max(clients) + 100)
    plain = Pgtenant(ws, pg, binary, a.pool_size, max_conn, tag="pgtenant-plain", database=PLAIN_DB)
    signed = Pgtenant(ws, pg, binary, a.pool_size, max_conn, tag="pgtenant-signed", database=SIGNED_DB,
                      signing_key=signing_key)
    plain.start()
    signed.start()
    services = {"plain": plain, "signed": signed}
    targets = {
        "plain": Target("plain", "pgtenant plain", plain.port, "bench", plain.token(), database=PLAIN_DB),
        "signed": Target("signed", "pgtenant signed", signed.port, "bench", signed.token(), database=SIGNED_DB),
    }
    info["checks"] = verify(pg, signing_key, targets, ws.dir, a.jobs)

    script = ws.write("signed-point.sql", POINT_SCRIPT)

    def args(w: str) -> list[str]:
        spec = WORKLOADS[w]
        if spec["script"]:
            return ["-M", spec["mode"], "-f", str(script)]
        return ["-S", "-M", spec["mode"]]

    warm = min(32, max(clients))
    log(f"signed: warm-up: {a.warmup:.0f} s each of the RLS point select and select-only with {warm} clients "
        "per proxy")
    for t in targets.values():
        for w in ("rls-simple", "select-simple"):
            res = run_pgbench(t, args(w), clients=warm, jobs=a.jobs, duration=a.warmup, sampling_rate=None,
                              workdir=ws.dir)
            if not res.ok:
                raise BenchError(f"signed: warm-up {w} through {t.label} failed: {res.error}\n"
                                 f"(logs in {ws.dir}; rerun with --keep to keep them)")

    last_tps: dict[tuple, float] = {}
    conn_seconds: dict[tuple, float] = {}
    clk = os.sysconf("SC_CLK_TCK")

    def measure(w: str, key: str, c: int, rep: int) -> None:
        t = targets[key]
        est = last_tps.get((w, key, c)) or last_tps.get((w, key))
        rate = min(1.0, a.latency_samples / (est * a.duration)) if est else 1.0
        seen = conn_seconds.get((key, c))
        allowance = 1.5 * seen + 1 if seen is not None else 1 + c * 0.002
        cpu0 = _cpu_ticks(services[key].pid)
        res = run_pgbench(t, args(w), clients=c, jobs=a.jobs, duration=a.duration, sampling_rate=rate,
                          workdir=ws.dir, connect_allowance=allowance)
        cpu1 = _cpu_ticks(services[key].pid)
        if cpu0 is not None and cpu1 is not None and res.transactions:
            res.raw["proxy_cpu_us_per_tx"] = (cpu1 - cpu0) / clk * 1e6 / res.transactions
        if res.raw.get("connection_ms") is not None:
            conn_seconds[(key, c)] = res.raw["connection_ms"] / 1000
        report.cell(f"signed:{w}", key, c).runs.append(res)
        log_result(f"signed {w} {t.label} c={c} #{rep + 1}", res)
        if res.ok:
            last_tps[(w, key, c)] = last_tps[(w, key)] = res.tps
        time.sleep(1)

    for w, spec in WORKLOADS.items():
        log(f"signed: workload {w}: {spec['title']}")
        for c in clients:
            for rep in range(a.repeats):
                order = ["plain", "signed"]
                order = order[rep % 2:] + order[:rep % 2]   # alternate which runs first
                for key in order:
                    measure(w, key, c, rep)
    plain.stop()
    signed.stop()
    info.update(workloads=list(WORKLOADS), titles={w: s["title"] for w, s in WORKLOADS.items()}, clients=clients,
                load_start=started_load, load_end=loadavg(), minutes=(time.monotonic() - t0) / 60,
                pool_size=a.pool_size, duration=a.duration, repeats=a.repeats)
    report.signed = info
