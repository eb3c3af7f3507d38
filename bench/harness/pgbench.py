"""Running pgbench against one target and turning its output and per-transaction log into numbers."""

from __future__ import annotations

import glob
import os
import re
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from .services import DATABASE, TENANT, pgbench_bin
from .util import log


@dataclass
class Target:
    """Where pgbench connects, and as whom."""
    key: str            # direct | pgbouncer | pgtenant | app-side | ...
    label: str
    port: int
    user: str
    password: str
    sslmode: str = "disable"
    database: str = DATABASE


@dataclass
class Result:
    tps: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    mean_ms: float | None = None     # pgbench's "latency average"
    samples: int = 0
    transactions: int = 0
    error: str | None = None
    raw: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None and self.tps is not None


#: Workloads: the pgbench arguments that select the script and the protocol.
WORKLOADS: dict[str, dict] = {
    "select-simple": {"args": ["-S", "-M", "simple"], "title": "select-only, -M simple", "app_side": True},
    "select-extended": {"args": ["-S", "-M", "extended"], "title": "select-only, -M extended", "app_side": True},
    "select-prepared": {"args": ["-S", "-M", "prepared"], "title": "select-only, -M prepared", "app_side": False},
    "tpcb-simple": {"args": ["-M", "simple"], "title": "TPC-B (pgbench default script), -M simple",
                    "app_side": False},
    "tpcb-extended": {"args": ["-M", "extended"], "title": "TPC-B (pgbench default script), -M extended",
                      "app_side": False},
}

#: The reference guide's application-side pattern, run directly against PostgreSQL, simple protocol:
#: four round trips per query where pgtenant needs one.
APP_SIDE_SCRIPT = f"""\
\\set aid random(1, 100000 * :scale)
BEGIN;
SELECT set_config('app.current_tenant_id', '{TENANT}', true);
SELECT abalance FROM pgbench_accounts WHERE aid = :aid;
COMMIT;
"""

_TPS = re.compile(r"^tps = ([0-9.]+) \((without initial connection time|including reconnection times|"
                  r"including connections establishing|excluding connections establishing)\)", re.M)
_LAT = re.compile(r"^latency average = ([0-9.]+) ms", re.M)
_PROCESSED = re.compile(r"^number of transactions actually processed: (\d+)", re.M)
_FAILED = re.compile(r"^number of failed transactions: (\d+)", re.M)
_CONN = re.compile(r"^(?:average connection time|initial connection time) = ([0-9.]+) ms", re.M)


def run_pgbench(target: Target, mode_args: list[str], *, clients: int, jobs: int, duration: float,
                sampling_rate: float | None, workdir: Path, connect_each: bool = False,
                connect_allowance: float = 0.0, extra_env: dict | None = None) -> Result:
    """One pgbench run. `sampling_rate` None = no per-transaction log (login runs).

    pgbench's -T includes the time to open the connections (seconds for 1,000 SCRAM logins), so
    -T is `duration + connect_allowance`: the measured window (tps is "without initial connection
    time") then lasts about `duration` whatever the target.
    """
    seconds = max(1, int(round(duration + connect_allowance)))
    cmd = [pgbench_bin(), "-h", "127.0.0.1", "-p", str(target.port), "-U", target.user, "-n",
           "-T", str(seconds), "-c", str(clients), "-j", str(min(jobs, clients))]
    cmd += mode_args
    if connect_each:
        cmd.append("-C")
    logdir = None
    if sampling_rate is not None:
        logdir = tempfile.mkdtemp(prefix="lat-", dir=workdir)
        cmd += ["-l", "--log-prefix", os.path.join(logdir, "tx")]
        if sampling_rate < 1.0:
            cmd += ["--sampling-rate", f"{sampling_rate:.6f}"]
    cmd.append(target.database)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update({"PGPASSWORD": target.password, "PGSSLMODE": target.sslmode, "PGGSSENCMODE": "disable",
                "PGCONNECT_TIMEOUT": "60"})
    env.update(extra_env or {})
    timeout = seconds * 3 + 120 + clients * 0.2
    try:
        proc = subprocess.run(cmd, env=env, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              stdin=subprocess.DEVNULL, timeout=timeout)
        out = proc.stdout.decode(errors="replace")
        err = proc.stderr.decode(errors="replace")
        code = proc.returncode
    except subprocess.TimeoutExpired:
        out, err, code = "", f"pgbench timed out after {timeout:.0f}s", -1
    res = Result()
    res.raw = {"cmd": " ".join(cmd[1:]), "returncode": code, "stderr_tail": err[-500:]}
    m = _TPS.search(out)
    if m:
        res.tps = float(m.group(1))
    m = _LAT.search(out)
    if m:
        res.mean_ms = float(m.group(1))
    m = _PROCESSED.search(out)
    if m:
        res.transactions = int(m.group(1))
    m = _CONN.search(out)
    if m:
        res.raw["connection_ms"] = float(m.group(1))
    failed = _FAILED.search(out)
    if code != 0 or res.tps is None or (failed and int(failed.group(1)) > 0):
        lines = [ln.strip() for ln in err.splitlines() if ln.strip() and not ln.startswith("pgbench (")]
        interesting = [ln for ln in lines if any(w in ln.lower() for w in ("error", "fatal", "abort", "could not"))]
        if interesting or lines:
            res.error = (interesting or lines)[0][:300]
        elif res.tps is None and res.transactions == 0:
            res.error = (f"no transaction completed in -T {seconds} (opening {clients} connections took "
                         "longer? raise --duration)")
        else:
            res.error = f"pgbench exited {code} without a tps line"
        if failed and int(failed.group(1)) > 0:
            res.error = f"{failed.group(1)} failed transactions: {res.error}"
        res.tps = None if code != 0 else res.tps
    if logdir is not None:
        lat = _read_latencies(logdir)
        res.samples = len(lat)
        if lat:
            res.p50_ms = _percentile(lat, 50) / 1000.0
            res.p99_ms = _percentile(lat, 99) / 1000.0
        for f in glob.glob(os.path.join(logdir, "*")):
            os.unlink(f)
        os.rmdir(logdir)
    return res


def _read_latencies(logdir: str) -> list[int]:
    """Field 3 of pgbench's per-transaction log is the latency in microseconds."""
    lat: list[int] = []
    for path in glob.glob(os.path.join(logdir, "tx.*")):
        with open(path) as f:
            for line in f:
                parts = line.split(None, 3)
                if len(parts) >= 3 and parts[2].isdigit():
                    lat.append(int(parts[2]))
    lat.sort()
    return lat


def _percentile(sorted_values: list[int], pct: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        return float("nan")
    rank = max(1, -(-len(sorted_values) * pct // 100))  # ceil
    return float(sorted_values[int(rank) - 1])


def describe(res: Result) -> str:
    if not res.ok:
        return f"ERROR {res.error}"
    p = f", p50 {res.p50_ms:.3f} ms, p99 {res.p99_ms:.3f} ms ({res.samples} samples)" if res.p50_ms is not None else ""
    return f"{res.tps:,.0f} tps{p}"


def log_result(what: str, res: Result) -> None:
    log(f"  {what}: {describe(res)}")
