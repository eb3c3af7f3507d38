#!/usr/bin/env python3
"""pgtenant benchmark: PostgreSQL direct vs PgBouncer vs pgtenant (vs the application-side pattern).

One command, run as root on a quiet machine from the repository root:

    sudo python3 bench/run.py                 # everything (see bench/README.md for how long)
    sudo python3 bench/run.py --quick         # a few minutes: checks that every code path works
    sudo python3 bench/run.py memory          # only the idle-client memory measurement
    sudo python3 bench/run.py login           # only the login cost (pgbench -C)
    sudo python3 bench/run.py signed          # only signed mode vs plain mode (RLS point select, select-only)
    sudo python3 bench/run.py pgbench --only select-simple,select-extended --clients 1,32

It starts a throwaway PostgreSQL (temp dir), PgBouncer (the distribution's package, installed with
apt-get when missing) and pgtenant (cargo build --release), runs pgbench against each, prints a
Markdown report and writes it to bench/results/<timestamp>.md. Everything it starts is stopped
and its temp dir removed on success, failure and Ctrl-C. Python 3.11 standard library only.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import idle, profile, signed  # noqa: E402
from harness.pgbench import (APP_SIDE_SCRIPT, WORKLOADS, Result, Target, describe, log_result,  # noqa: E402
                             run_pgbench)
from harness.report import Cell, Report, loadavg, machine_info  # noqa: E402
from harness.services import (APP_USER, DATABASE, PgBouncer, Pgtenant, Postgres, RsaJwtKey, Tls,  # noqa: E402
                              Workspace, build_pgtenant, ensure_pgbouncer, git_commit, pgbench_bin, pgbouncer_bin,
                              pgbouncer_supports_prepared, pgbouncer_version)
from harness.util import BenchError, log, raise_nofile, rss_kib, run  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
PHASES = ("pgbench", "login", "memory", "signed")
DEFAULT_WORKLOADS = ["select-simple", "select-extended", "select-prepared", "tpcb-simple", "tpcb-extended"]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("phase", nargs="?", default="all", choices=("all",) + PHASES,
                   help="what to run (default: all four phases)")
    p.add_argument("--quick", action="store_true",
                   help="validation mode: 3 s cells, 1 repeat, clients 1,32, 500 idle clients")
    p.add_argument("--duration", type=float, help="seconds per pgbench run (default 20; quick 3)")
    p.add_argument("--repeats", type=int, help="runs per cell; the report gives medians (default 3; quick 1)")
    p.add_argument("--clients", help="client counts, comma-separated (default 1,32,256,1000; quick 1,32; "
                                      "the signed phase: 1,32 unless given)")
    p.add_argument("--only", help="workloads, comma-separated, from: " + ", ".join(WORKLOADS)
                   + " (the application-side baseline runs with the select-only simple/extended ones)")
    p.add_argument("--pool-size", type=int, default=20, help="PgBouncer default_pool_size = pgtenant pool_size")
    p.add_argument("--scale", type=int, default=10, help="pgbench -i scale factor (default 10)")
    p.add_argument("--jobs", type=int, help="pgbench -j upper bound (default: CPU count, at most 4)")
    p.add_argument("--latency-samples", type=int, default=200_000,
                   help="about this many per-transaction latencies are logged per run (--sampling-rate)")
    p.add_argument("--warmup", type=float, help="seconds of warm-up per target (default 5; quick 1)")
    p.add_argument("--idle-clients", type=int, help="idle connections in the memory phase (default 10000; quick 500)")
    p.add_argument("--login-duration", type=float, help="seconds per pgbench -C run (default 15; quick 3)")
    p.add_argument("--login-clients", type=int, default=8, help="pgbench -C clients (default 8)")
    p.add_argument("--no-pgbouncer-memory", action="store_true", help="skip PgBouncer in the memory phase")
    p.add_argument("--out", help="report path (default bench/results/<UTC timestamp>[-quick].md)")
    p.add_argument("--pgtenant-bin", help="use this pgtenant binary instead of cargo build --release")
    p.add_argument("--perf", nargs="?", const="select-simple:32,select-extended:32,select-simple:1",
                   metavar="WORKLOAD:CLIENTS,...",
                   help="after a cell's repeats, one extra unrecorded run each with `perf record` on pgtenant and "
                        "on PgBouncer; flat profiles go to <report>-perf/ (default cells: the targets' "
                        "select-simple:32, select-extended:32, select-simple:1)")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (logs, configs) for debugging")
    a = p.parse_args(argv)
    q = a.quick
    a.signed_clients = [int(x) for x in (a.clients or "1,32").split(",") if x.strip()]
    a.duration = a.duration if a.duration is not None else (3.0 if q else 20.0)
    a.repeats = a.repeats if a.repeats is not None else (1 if q else 3)
    a.clients = [int(x) for x in (a.clients or ("1,32" if q else "1,32,256,1000")).split(",") if x.strip()]
    a.warmup = a.warmup if a.warmup is not None else (1.0 if q else 5.0)
    a.idle_clients = a.idle_clients if a.idle_clients is not None else (500 if q else 10_000)
    a.login_duration = a.login_duration if a.login_duration is not None else (3.0 if q else 15.0)
    a.jobs = a.jobs or min(4, os.cpu_count() or 2)
    a.workloads = [w.strip() for w in (a.only or ",".join(DEFAULT_WORKLOADS)).split(",") if w.strip()]
    unknown = [w for w in a.workloads if w not in WORKLOADS]
    if unknown:
        p.error(f"unknown workload(s) {', '.join(unknown)}; choose from {', '.join(WORKLOADS)}")
    a.phases = PHASES if a.phase == "all" else (a.phase,)
    a.perf_cells = set()
    if a.perf:
        for item in a.perf.split(","):
            w, _, c = item.strip().partition(":")
            if w not in WORKLOADS or not c.isdigit():
                p.error(f"--perf: {item!r} is not WORKLOAD:CLIENTS")
            a.perf_cells.add((w, int(c)))
    return a


def estimate_seconds(a) -> float:
    """Rough wall time: each pgbench run costs its duration plus ~2 s (connect, settle, vacuum)."""
    total = 0.0
    if "pgbench" in a.phases:
        runs = 0
        app_side = any(WORKLOADS[w]["app_side"] for w in a.workloads)
        for w in a.workloads:
            targets = 2 if (w == "select-prepared" and not pgbouncer_supports_prepared_cached()) else 3
            runs += targets * len(a.clients) * a.repeats
        if app_side:
            runs += len(a.clients) * a.repeats
        total += runs * (a.duration + 2) + 3 * (a.warmup + 3) + 30
        if max(a.clients) >= 500:   # logging 1,000 clients in (SCRAM for direct and PgBouncer)
            total += a.repeats * len(a.workloads) * 3 * 8
    if "login" in a.phases:
        total += 7 * a.repeats * (a.login_duration + 1) + 20
    if "memory" in a.phases:
        total += 4 * (a.idle_clients / 250 + 10)   # SCRAM logins to PgBouncer are the slow part
    if "signed" in a.phases:
        total += signed.estimate_seconds(a, a.signed_clients)
    return total


def pgbouncer_supports_prepared_cached() -> bool:
    """For the estimate only: without installing anything (not installed = Debian's 1.18)."""
    if pgbouncer_bin() is None:
        return False
    try:
        return pgbouncer_supports_prepared()
    except BenchError:
        return False


# ---------------------------------------------------------------------------------------------
# Phase 1: throughput and latency
# ---------------------------------------------------------------------------------------------

def phase_pgbench(a, ws: Workspace, pg: Postgres, binary: Path, report: Report, perf_dir: Path) -> None:
    max_clients = max(a.clients)
    pgb = PgBouncer(ws, pg, a.pool_size, max(2000, max_clients + 100))
    pgb.start()
    pgt = Pgtenant(ws, pg, binary, a.pool_size, 20_000)
    pgt.start()
    token = pgt.token()
    targets = {
        "direct": Target("direct", "direct PostgreSQL", pg.port, APP_USER, pg.app_password),
        "pgbouncer": Target("pgbouncer", "PgBouncer", pgb.port, APP_USER, pg.app_password),
        "pgtenant": Target("pgtenant", "pgtenant", pgt.port, "bench", token),
    }
    app_script = ws.write("app-side.sql", APP_SIDE_SCRIPT)
    app_args = ["-M", "simple", "-f", str(app_script), "-s", str(a.scale)]
    prepared_ok = pgbouncer_supports_prepared()
    pgb_name = pgbouncer_version()[0]
    report.workloads = list(a.workloads)
    report.clients = list(a.clients)

    warm_clients = min(32, max_clients)
    log(f"warm-up: {a.warmup:.0f} s of select-only with {warm_clients} clients per target")
    for t in targets.values():
        res = run_pgbench(t, ["-S", "-M", "simple"], clients=warm_clients, jobs=a.jobs, duration=a.warmup,
                          sampling_rate=None, workdir=ws.dir)
        if not res.ok:
            raise BenchError(f"warm-up against {t.label} failed: {res.error}\n"
                             f"(logs in {ws.dir}; rerun with --keep to keep them)")

    last_tps: dict[tuple, float] = {}
    conn_seconds: dict[tuple, float] = {}

    def allowance(target: str, clients: int) -> float:
        """Extra -T seconds for opening the connections: 1.5× the last observed, else a guess."""
        seen = conn_seconds.get((target, clients))
        if seen is not None:
            return 1.5 * seen + 1
        return 1 + clients * (0.01 if target in ("direct", "app-side", "pgbouncer") else 0.002)

    def sampling(workload: str, target: str, clients: int) -> float:
        est = last_tps.get((workload, target, clients)) or last_tps.get((workload, target)) or last_tps.get(target)
        if not est:
            return 1.0
        return min(1.0, a.latency_samples / (est * a.duration))

    def measure(workload: str, target: Target, mode_args: list[str], clients: int, rep: int) -> None:
        rate = sampling(workload, target.key, clients)
        res = run_pgbench(target, mode_args, clients=clients, jobs=a.jobs, duration=a.duration,
                          sampling_rate=rate, workdir=ws.dir, connect_allowance=allowance(target.key, clients))
        if res.raw.get("connection_ms") is not None:
            conn_seconds[(target.key, clients)] = res.raw["connection_ms"] / 1000
        report.cell(workload, target.key, clients).runs.append(res)
        log_result(f"{workload} {target.label} c={clients} #{rep + 1}", res)
        if res.ok:
            for k in ((workload, target.key, clients), (workload, target.key), target.key):
                last_tps[k] = res.tps
        time.sleep(1)

    app_done: set[tuple[int, int]] = set()
    for w in a.workloads:
        spec = WORKLOADS[w]
        tpcb = w.startswith("tpcb")
        log(f"workload {w}: {spec['title']}")
        pg.vacuum(full=True)
        for c in a.clients:
            for rep in range(a.repeats):
                order = ["direct", "pgbouncer", "pgtenant"]
                order = order[rep % 3:] + order[:rep % 3]   # rotate so no target always runs first
                for key in order:
                    if key == "pgbouncer" and w == "select-prepared" and not prepared_ok:
                        report.cell(w, key, c).na = (f"PgBouncer -M prepared: n/a ({pgb_name} has no prepared "
                                                     "statements in transaction mode; they came in 1.21)")
                        continue
                    if tpcb:
                        pg.vacuum()
                    measure(w, targets[key], spec["args"], c, rep)
                if spec["app_side"] and (c, rep) not in app_done:
                    app_done.add((c, rep))
                    app = Target("app-side", "app-side (direct)", pg.port, APP_USER, pg.app_password)
                    measure("app-side", app, app_args, c, rep)
            if (w, c) in a.perf_cells:
                for key, svc in (("pgtenant", pgt), ("pgbouncer", pgb)):
                    if key == "pgbouncer" and w == "select-prepared" and not prepared_ok:
                        continue
                    if tpcb:
                        pg.vacuum()
                    rec = profile.PerfRecording(svc.pid, ws.path(f"perf-{key}.data"))
                    res = run_pgbench(targets[key], spec["args"], clients=c, jobs=a.jobs, duration=a.duration,
                                      sampling_rate=None, workdir=ws.dir, connect_allowance=allowance(key, c))
                    rec.stop(perf_dir / f"{w}-c{c}-{key}.txt",
                             f"{key}, {spec['title']}, {c} clients: {describe(res)} (under perf; not in the table)")
                    report.profiles.append(f"{w}-c{c}-{key}.txt")
                    time.sleep(1)
    pgt.stop()
    pgb.stop()


# ---------------------------------------------------------------------------------------------
# Phase 2: login cost
# ---------------------------------------------------------------------------------------------

def phase_login(a, ws: Workspace, pg: Postgres, binary: Path, tls: Tls, rsa: RsaJwtKey, report: Report) -> None:
    mode = ["-S", "-M", "simple"]

    def measure(label: str, auth: str, target: Target, sslmode: str) -> None:
        cell = Cell()
        t = Target(target.key, target.label, target.port, target.user, target.password, sslmode)
        for rep in range(a.repeats):
            res = run_pgbench(t, mode, clients=a.login_clients, jobs=min(a.jobs, 2), duration=a.login_duration,
                              sampling_rate=None, workdir=ws.dir, connect_each=True)
            cell.runs.append(res)
            log_result(f"login {label} {auth} sslmode={sslmode} #{rep + 1}", res)
            time.sleep(1)
        report.login.append({"target": label, "auth": auth, "tls": "yes" if sslmode == "require" else "no",
                             "cell": cell})

    log("login cost: pgbench -C")
    direct = Target("direct", "direct PostgreSQL", pg.port, APP_USER, pg.app_password)
    measure("direct PostgreSQL", "SCRAM-SHA-256", direct, "disable")

    pgb = PgBouncer(ws, pg, a.pool_size, 2000, tls=tls, tag="pgbouncer-login")
    pgb.start()
    t = Target("pgbouncer", "PgBouncer", pgb.port, APP_USER, pg.app_password)
    measure("PgBouncer", "SCRAM-SHA-256", t, "disable")
    measure("PgBouncer", "SCRAM-SHA-256", t, "require")
    pgb.stop()

    for alg in ("HS256", "RS256"):
        pgt = Pgtenant(ws, pg, binary, a.pool_size, 20_000, algorithm=alg, rsa=rsa, tls=tls,
                       tag=f"pgtenant-login-{alg.lower()}")
        pgt.start()
        t = Target("pgtenant", "pgtenant", pgt.port, "bench", pgt.token())
        measure("pgtenant", f"JWT {alg}", t, "disable")
        measure("pgtenant", f"JWT {alg}", t, "require")
        pgt.stop()


# ---------------------------------------------------------------------------------------------
# Phase 3: memory per idle client
# ---------------------------------------------------------------------------------------------

def phase_memory(a, ws: Workspace, pg: Postgres, binary: Path, tls: Tls, report: Report, nofile: int) -> None:
    n = a.idle_clients
    if n > nofile - 200:
        n = max(1, nofile - 200)
        report.notes.append(f"idle clients capped at {n:,} by the open-files limit ({nofile}); raise the hard "
                            "limit (ulimit -Hn) for more")
        log(f"memory: only {n} idle clients fit under the open-files limit {nofile}")
    ctx = idle.tls_context(tls.ca)
    runs = [("pgtenant", False), ("pgtenant", True)]
    if not a.no_pgbouncer_memory:
        runs += [("PgBouncer", False), ("PgBouncer", True)]
    for proxy, use_tls in runs:
        tag = f"{proxy.lower()}-mem-{'tls' if use_tls else 'plain'}"
        if proxy == "pgtenant":
            svc = Pgtenant(ws, pg, binary, a.pool_size, n + 1000, tls=tls, tag=tag)
            svc.start()
            user, password = "bench", svc.token()
        else:
            svc = PgBouncer(ws, pg, a.pool_size, n + 1000, tls=tls, tag=tag)
            svc.start()
            user, password = APP_USER, pg.app_password
        kw = dict(host="127.0.0.1", port=svc.port, user=user, database=DATABASE, password=password,
                  tls=ctx if use_tls else None)
        entry = {"proxy": proxy, "tls": use_tls, "clients": n}
        try:
            # Warm-up: a few logins, so one-time initialisation is in the baseline, not in the clients.
            warm = idle.hold_idle(20, lambda: None, settle=0.5, **kw)
            if warm["errors"]:
                raise BenchError(f"warm-up logins failed: {warm['first_error']}")
            time.sleep(1)
            before = rss_kib(svc.pid)[0]
            log(f"memory: {proxy} {'TLS' if use_tls else 'plain'}: RSS {before / 1024:.1f} MiB, opening {n} idle "
                "clients")
            r = idle.hold_idle(n, lambda: rss_kib(svc.pid), settle=3.0, **kw)
            after, hwm = r["measure"]
            entry.update(opened=r["opened"], errors=r["errors"], seconds=r["seconds"], rss_before_kib=before,
                         rss_after_kib=after, hwm_kib=hwm, closed_by_server=r["closed_by_server"],
                         first_error=r["first_error"])
            entry["bytes_per_client"] = (after - before) * 1024 / max(1, r["opened"])
            log(f"memory: {proxy} {'TLS' if use_tls else 'plain'}: {r['opened']} open ({r['errors']} failed, "
                f"{r['closed_by_server']} closed by the server), RSS {after / 1024:.1f} MiB, "
                f"{entry['bytes_per_client']:,.0f} bytes per client")
            if r["errors"]:
                report.notes.append(f"memory, {proxy} {'TLS' if use_tls else 'plain'}: {r['errors']} logins failed, "
                                    f"first: {r['first_error']}")
            if r["closed_by_server"]:
                report.notes.append(f"memory, {proxy} {'TLS' if use_tls else 'plain'}: {r['closed_by_server']} "
                                    "connections were closed by the server before the measurement")
        except BenchError as e:
            entry["error"] = str(e)[:200]
            log(f"memory: {proxy}: {e}")
        report.memory.append(entry)
        svc.stop()


# ---------------------------------------------------------------------------------------------

def main(argv=None) -> int:
    a = parse_args(argv)
    if os.geteuid() != 0:
        log("note: not root; PgBouncer must already be installed, and PostgreSQL runs as this user")
    nofile = raise_nofile()
    clients = [c for ph, cs in (("pgbench", a.clients), ("signed", a.signed_clients)) if ph in a.phases for c in cs]
    need = max(max(clients or [1]) * 2 + 200, a.idle_clients + 200 if "memory" in a.phases else 0)
    if nofile < need:
        log(f"warning: open-files limit {nofile} is below the ~{need} this run wants")

    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    # SIGINT too: a shell that starts us in the background sets it to "ignore", and Ctrl-C must
    # still clean up whatever way we were started.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)

    est = estimate_seconds(a)
    log(f"phases: {', '.join(a.phases)}; estimated time: {est / 60:.0f} min")
    started = dt.datetime.now(dt.timezone.utc)
    ws = None
    try:
        binary = Path(a.pgtenant_bin) if a.pgtenant_bin else build_pgtenant(REPO)
        ensure_pgbouncer()
        ws = Workspace(keep=a.keep)
        log(f"work dir {ws.dir}")
        pg = Postgres(ws, max_connections=max(1100, max(clients or [1]) + 2 * a.pool_size + 100))
        pg.start()
        if set(a.phases) - {"signed"}:   # the signed phase has its own databases
            pg.init_pgbench(a.scale)

        header = machine_info()
        header.update(date=started.strftime("%Y-%m-%d %H:%M UTC"), postgres=pg.version(),
                      pgbouncer=pgbouncer_version()[0],
                      pgbench=run([pgbench_bin(), "--version"]).stdout.decode().strip(),
                      commit=git_commit(REPO), load_start=loadavg())
        only_signed = a.phases == ("signed",)
        scale = f"scale {a.scale}" if not only_signed else ""
        if "signed" in a.phases:
            scale += (", " if scale else "") + (f"signed phase: scale {signed.ACCOUNTS_SCALE}, clients "
                                                f"{','.join(map(str, a.signed_clients))}")
        shown = a.signed_clients if only_signed else a.clients
        summary = (f"{a.duration:g} s per run, {a.repeats} repeat(s) (medians), clients {','.join(map(str, shown))}, "
                   f"pgbench -j ≤ {a.jobs}, pool size {a.pool_size} (PgBouncer default_pool_size = pgtenant "
                   f"pool_size), {scale}, one tenant; PostgreSQL with fsync=off and data on "
                   f"{'tmpfs' if str(ws.dir).startswith('/dev/shm') else 'disk'}; everything on 127.0.0.1 TCP")
        report = Report(header, {"summary": summary, "pool_size": a.pool_size, "quick": a.quick,
                                 "login_clients": a.login_clients})
        tls = rsa = None
        if "login" in a.phases or "memory" in a.phases:
            tls = Tls(ws)
        out = Path(a.out) if a.out else REPO / "bench" / "results" / (
            started.strftime("%Y%m%dT%H%M%SZ") + ("-quick" if a.quick else "") + ".md")
        perf_dir = out.with_name(out.stem + "-perf")
        if a.perf_cells and not profile.available():
            log("--perf: `perf` not found (apt-get install linux-perf); no profiles")
            a.perf_cells = set()
        if "pgbench" in a.phases:
            phase_pgbench(a, ws, pg, binary, report, perf_dir)
            if report.profiles:
                report.notes.append(f"CPU profiles (perf, self time, one extra run per cell): "
                                    f"{perf_dir.name}/ " + ", ".join(report.profiles))
        if "login" in a.phases:
            rsa = RsaJwtKey(ws)
            phase_login(a, ws, pg, binary, tls, rsa, report)
        if "memory" in a.phases:
            phase_memory(a, ws, pg, binary, tls, report, nofile)
        if "signed" in a.phases:
            signed.run_phase(a, ws, pg, binary, report, a.signed_clients)
        report.header["load_end"] = loadavg()
        text = report.render()
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        out.with_suffix(".json").write_text(json.dumps(_raw(report), indent=1, default=str))
        print(text)
        log(f"report written to {out} (raw numbers in {out.with_suffix('.json').name}); took "
            f"{(dt.datetime.now(dt.timezone.utc) - started).total_seconds() / 60:.1f} min")
        return 0
    except BenchError as e:
        log(f"FAILED: {e}")
        return 1
    except KeyboardInterrupt as e:
        log(f"interrupted ({e or 'Ctrl-C'}); cleaning up")
        return 130
    finally:
        if ws is not None:
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                signal.signal(sig, signal.SIG_IGN)   # let cleanup finish
            ws.close()


def _raw(report: Report) -> dict:
    def res(r: Result) -> dict:
        return {"tps": r.tps, "p50_ms": r.p50_ms, "p99_ms": r.p99_ms, "mean_ms": r.mean_ms, "samples": r.samples,
                "error": r.error, **r.raw}
    return {
        "header": report.header, "settings": report.settings,
        "cells": [{"workload": w, "target": t, "clients": c, "na": cell.na, "runs": [res(r) for r in cell.runs]}
                  for (w, t, c), cell in report.cells.items()],
        "login": [{k: v for k, v in x.items() if k != "cell"} | {"runs": [res(r) for r in x["cell"].runs]}
                  for x in report.login],
        "memory": report.memory,
        "signed": (report.signed | {"summary": report.signed_summary()}) if report.signed else None,
        "targets": report.target_results(),
    }


if __name__ == "__main__":
    sys.exit(main())
