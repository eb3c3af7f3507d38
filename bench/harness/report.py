"""The Markdown report: machine header, one table per workload, targets, login cost, memory."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
from dataclasses import dataclass, field

from .pgbench import WORKLOADS, Result

TARGET_LABELS = {"direct": "direct", "pgbouncer": "PgBouncer", "pgtenant": "pgtenant", "app-side": "app-side"}


def median(values):
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


@dataclass
class Cell:
    """The repeats of one (workload, target, clients) measurement."""
    runs: list[Result] = field(default_factory=list)
    na: str | None = None   # why this cell is not applicable

    @property
    def ok_runs(self) -> list[Result]:
        return [r for r in self.runs if r.ok]

    @property
    def errors(self) -> list[str]:
        return [r.error for r in self.runs if not r.ok]

    @property
    def tps(self):
        return median(r.tps for r in self.ok_runs)

    @property
    def p50(self):
        return median(r.p50_ms for r in self.ok_runs)

    @property
    def p99(self):
        return median(r.p99_ms for r in self.ok_runs)

    @property
    def mean_ms(self):
        return median(r.mean_ms for r in self.ok_runs)


def fmt_tps(v) -> str:
    return "–" if v is None else f"{v:,.0f}"


def fmt_ms(v) -> str:
    if v is None:
        return "–"
    return f"{v:.2f}" if v >= 1 else f"{v:.3f}"


def fmt_ratio(a, b) -> str:
    return "–" if a is None or b is None or b == 0 else f"{a / b:.2f}×"


def ratio(a, b):
    return None if a is None or b is None or b == 0 else a / b


def machine_info() -> dict:
    info = {}
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info["cpu"] = cpu
    info["cores"] = os.cpu_count()
    try:
        with open("/proc/meminfo") as f:
            kb = int(next(ln for ln in f if ln.startswith("MemTotal")).split()[1])
        info["ram"] = f"{kb / 1024 / 1024:.1f} GiB"
    except (OSError, StopIteration):
        info["ram"] = "unknown"
    info["kernel"] = platform.release()
    osname = "unknown"
    try:
        with open("/etc/os-release") as f:
            for line in f:
                if line.startswith("PRETTY_NAME="):
                    osname = line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    info["os"] = osname
    try:
        info["rustc"] = subprocess.run(["rustc", "--version"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                       check=False).stdout.decode().strip() or "unknown"
    except OSError:
        info["rustc"] = "unknown"
    return info


def loadavg() -> str:
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "?"


class Report:
    def __init__(self, header: dict, settings: dict):
        self.header = header
        self.settings = settings
        self.cells: dict[tuple[str, str, int], Cell] = {}
        self.workloads: list[str] = []
        self.clients: list[int] = []
        self.login: list[dict] = []
        self.memory: list[dict] = []
        self.notes: list[str] = []
        self.profiles: list[str] = []
        self.signed: dict | None = None     # the signed phase's setup and checks (cells are in `cells`)

    def cell(self, workload: str, target: str, clients: int) -> Cell:
        return self.cells.setdefault((workload, target, clients), Cell())

    def get(self, workload: str, target: str, clients: int) -> Cell | None:
        return self.cells.get((workload, target, clients))

    # -------------------------------------------------------------------------------------------
    def render(self) -> str:
        out: list[str] = []
        h, s = self.header, self.settings
        out.append(f"# pgtenant benchmark, {h['date']}")
        out.append("")
        if s.get("quick"):
            out.append("> **Quick validation run** (`--quick`): short cells, one repeat. Not a result.")
            out.append("")
        out.append("| | |")
        out.append("|---|---|")
        out.append(f"| machine | {h['cpu']}, {h['cores']} cores, {h['ram']} RAM |")
        out.append(f"| OS / kernel | {h['os']} / {h['kernel']} |")
        out.append(f"| PostgreSQL | {h.get('postgres', '?')} |")
        out.append(f"| PgBouncer | {h.get('pgbouncer', '?')} |")
        out.append(f"| pgbench | {h.get('pgbench', '?')} |")
        out.append(f"| pgtenant | commit {h.get('commit', '?')}, {h.get('rustc', '?')} |")
        out.append(f"| load average | {h.get('load_start', '?')} at start, {h.get('load_end', '?')} at end |")
        out.append(f"| settings | {s['summary']} |")
        out.append("")
        if self.workloads:
            out += self._throughput()
        if self.workloads or self.memory:
            out += self._targets()
        if self.signed:
            out += self._signed()
        if self.login:
            out += self._login()
        if self.memory:
            out += self._memory()
        if self.notes:
            out.append("## Notes")
            out.append("")
            out += [f"- {n}" for n in self.notes]
            out.append("")
        return "\n".join(out).rstrip() + "\n"

    def _throughput(self) -> list[str]:
        out = ["## Throughput and latency", "",
               "TPS = median over repeats of pgbench's `tps` (without initial connection time); "
               "p50 / p99 = medians over repeats of the per-transaction latency percentiles, in ms. "
               "pgtenant/x = ratio of TPS.", ""]
        for w in self.workloads:
            if w == "app-side":
                continue
            spec = WORKLOADS[w]
            targets = ["direct", "pgbouncer", "pgtenant"] + (["app-side"] if spec["app_side"] else [])
            out.append(f"### {spec['title']}")
            out.append("")
            head = ["clients"]
            for t in targets:
                head += [f"{TARGET_LABELS[t]} TPS", f"{TARGET_LABELS[t]} p50 / p99"]
            head += ["pgtenant/PgBouncer", "pgtenant/direct"] + (["pgtenant/app-side"] if spec["app_side"] else [])
            out.append("| " + " | ".join(head) + " |")
            out.append("|" + "|".join(["---:"] * len(head)) + "|")
            foot: list[str] = []
            for c in self.clients:
                row = [str(c)]
                tps = {}
                for t in targets:
                    cell = self.get("app-side" if t == "app-side" else w, t, c)
                    if cell is None:
                        row += ["–", "–"]
                    elif cell.na:
                        row += ["n/a", "n/a"]
                        if cell.na not in foot:
                            foot.append(cell.na)
                    elif not cell.ok_runs:
                        row += ["error", "–"]
                        foot.append(f"{TARGET_LABELS[t]}, {c} clients: {cell.errors[0] if cell.errors else '?'}")
                    else:
                        tps[t] = cell.tps
                        err = f" ({len(cell.errors)} of {len(cell.runs)} runs failed)" if cell.errors else ""
                        row += [fmt_tps(cell.tps) + err, f"{fmt_ms(cell.p50)} / {fmt_ms(cell.p99)}"]
                        if cell.errors:
                            foot.append(f"{TARGET_LABELS[t]}, {c} clients: {cell.errors[0]}")
                row.append(fmt_ratio(tps.get("pgtenant"), tps.get("pgbouncer")))
                row.append(fmt_ratio(tps.get("pgtenant"), tps.get("direct")))
                if spec["app_side"]:
                    row.append(fmt_ratio(tps.get("pgtenant"), tps.get("app-side")))
                out.append("| " + " | ".join(row) + " |")
            out.append("")
            for f in foot:
                out.append(f"- {f}")
            if foot:
                out.append("")
            if spec["app_side"]:
                out.append("app-side = `BEGIN; SELECT set_config('app.current_tenant_id', ..., true); SELECT ...; "
                           "COMMIT;` directly against PostgreSQL with one connection per client, `-M simple` "
                           "(the same measurement appears in both select-only tables).")
                out.append("")
        return out

    # -------------------------------------------------------------------------------------------
    def target_results(self) -> list[tuple[str, str, str]]:
        """(target, verdict, detail) for each target of the issue."""
        res = []
        if not self.workloads:
            return self._memory_targets()

        def tps(w, t, c):
            cell = self.get(w, t, c)
            return cell.tps if cell and cell.ok_runs else None

        for w in ("select-simple", "select-extended"):
            r = ratio(tps(w, "pgtenant", 32), tps(w, "pgbouncer", 32))
            res.append((f"{w}, 32 clients: pgtenant ≥ 1.10× PgBouncer TPS", *_verdict(r, 1.10)))
        for w in ("select-simple", "select-extended"):
            r = ratio(tps(w, "pgtenant", 32), tps("app-side", "app-side", 32))
            res.append((f"{w}, 32 clients: pgtenant ≥ 2.5× the application-side pattern", *_verdict(r, 2.5)))
        for w in ("select-simple", "select-extended"):
            d, b, t = (self.get(w, x, 1) for x in ("direct", "pgbouncer", "pgtenant"))
            name = f"{w}, 1 client: pgtenant's added latency over direct ≤ PgBouncer's"
            if not all(x is not None and x.ok_runs for x in (d, b, t)):
                res.append((name, "not measured", ""))
                continue
            add_t, add_b = t.p50 - d.p50, b.p50 - d.p50
            mean_t = 1000 / t.tps - 1000 / d.tps
            mean_b = 1000 / b.tps - 1000 / d.tps
            met = add_t <= add_b
            res.append((name, "met" if met else "NOT met",
                        f"added p50 latency: pgtenant {add_t * 1000:+.0f} µs, PgBouncer {add_b * 1000:+.0f} µs; "
                        f"added mean latency (1/TPS): pgtenant {mean_t * 1000:+.0f} µs, "
                        f"PgBouncer {mean_b * 1000:+.0f} µs"))
        for w in self.workloads:
            if w == "app-side":
                continue
            r = ratio(tps(w, "pgtenant", 1000), tps(w, "direct", 1000))
            res.append((f"{w}, 1,000 clients on a pool of {self.settings['pool_size']}: pgtenant ≥ direct "
                        "PostgreSQL with 1,000 connections", *_verdict(r, 1.0)))
        return res + self._memory_targets()

    def _memory_targets(self) -> list[tuple[str, str, str]]:
        res = []
        for m in self.memory:
            if m["proxy"] == "pgtenant" and not m["tls"] and m.get("bytes_per_client") is not None:
                b = m["bytes_per_client"]
                res.append((f"memory: ≤ 16 KiB per idle plain client ({m['opened']:,} clients)",
                            "met" if b <= 16384 else "NOT met", f"{b / 1024:.1f} KiB per client"))
        return res

    def _targets(self) -> list[str]:
        out = ["## Targets", "", "| target | verdict | measured |", "|---|---|---|"]
        for name, verdict, detail in self.target_results():
            v = f"**{verdict}**" if verdict == "NOT met" else verdict
            out.append(f"| {name} | {v} | {detail} |")
        out.append("")
        return out

    def signed_summary(self) -> list[dict]:
        """signed/plain per workload and client count (medians), for the report and the raw JSON."""
        rows = []
        for w in self.signed["workloads"]:
            for c in self.signed["clients"]:
                p, s = self.get(f"signed:{w}", "plain", c), self.get(f"signed:{w}", "signed", c)
                ok = p is not None and s is not None and p.ok_runs and s.ok_runs
                cpu = {}
                for k, cell in (("plain", p), ("signed", s)):
                    cpu[k] = median(r.raw.get("proxy_cpu_us_per_tx") for r in cell.ok_runs) if cell else None
                rows.append({"workload": w, "clients": c,
                             "plain_tps": p.tps if ok else None, "signed_tps": s.tps if ok else None,
                             "ratio": ratio(s.tps, p.tps) if ok else None,
                             "plain_p50_ms": p.p50 if ok else None, "signed_p50_ms": s.p50 if ok else None,
                             "plain_cpu_us": cpu["plain"], "signed_cpu_us": cpu["signed"],
                             "errors": (p.errors if p else ["not run"]) + (s.errors if s else ["not run"])})
        return rows

    def _signed(self) -> list[str]:
        from .signed import COST_SENTENCE, PLAIN_DB, SIGNED_DB   # the phase's constants
        g = self.signed
        out = ["## Signed mode vs plain mode", "",
               f"Two pgtenant instances (pool size {g['pool_size']} each), one per database on the same PostgreSQL: "
               f"`{PLAIN_DB}` with the plain policies of `pgtenant policy` (`tenant_id = (SELECT "
               "NULLIF(current_setting('app.current_tenant_id', true), '')::uuid)`) behind `tenant.mode = \"plain\"`, "
               f"`{SIGNED_DB}` behind `tenant.mode = \"signed\"` (key id `{g['key_id']}`), set up with "
               f"{g['setup']}. Both databases are copies of one template: `tenant_items (tenant_id uuid, id "
               f"int, balance int, PRIMARY KEY (tenant_id, id))` with {g['rows_per_tenant']:,} rows for the "
               "benchmark tenant and as many for another, and pgbench_accounts at scale "
               f"{g['accounts_scale']} (no policy). Workloads: `\\set id random(1, {g['rows_per_tenant']})` / "
               "`SELECT balance FROM tenant_items WHERE id = :id` in the three protocol modes, and "
               "pgbench's `-S -M simple` on pgbench_accounts. "
               f"{g['duration']:g} s per run, {g['repeats']} repeat(s), plain and signed runs alternating "
               "(the order flips every repeat); TPS and p50 are medians over the repeats. Load average "
               f"{g['load_start']} at the phase's start, {g['load_end']} at its end ({g['minutes']:.1f} min).", "",
               "Checked before measuring:", ""]
        out += [f"- {c}" for c in g.get("checks", [])]
        out.append("")
        rows = self.signed_summary()
        for w in g["workloads"]:
            out.append(f"### {g['titles'][w]}")
            out.append("")
            out.append("| clients | plain TPS | signed TPS | signed/plain | plain p50 (ms) | signed p50 (ms) "
                       "| p50 added (µs) | pgtenant CPU per tx, plain / signed (µs) |")
            out.append("|---:|---:|---:|---:|---:|---:|---:|---:|")
            foot = []
            for r in (r for r in rows if r["workload"] == w):
                if r["ratio"] is None:
                    out.append(f"| {r['clients']} | error | error | – | – | – | – | – |")
                    foot.append(f"{r['clients']} clients: {r['errors'][0] if r['errors'] else '?'}")
                    continue
                added = (r["signed_p50_ms"] - r["plain_p50_ms"]) * 1000 \
                    if r["signed_p50_ms"] is not None and r["plain_p50_ms"] is not None else None
                cpu = " / ".join("–" if v is None else f"{v:.1f}" for v in (r["plain_cpu_us"], r["signed_cpu_us"]))
                out.append(f"| {r['clients']} | {fmt_tps(r['plain_tps'])} | {fmt_tps(r['signed_tps'])} | "
                           f"{r['ratio']:.2f}× | {fmt_ms(r['plain_p50_ms'])} | {fmt_ms(r['signed_p50_ms'])} | "
                           f"{'–' if added is None else f'{added:+.0f}'} | {cpu} |")
                if r["errors"]:
                    foot.append(f"{r['clients']} clients: {len(r['errors'])} run(s) failed, first: {r['errors'][0]}")
            out.append("")
            out += [f"- {f}" for f in foot]
            if foot:
                out.append("")
        out.append(COST_SENTENCE + " pgtenant CPU per tx = the proxy process's user + system CPU time during the "
                   "run (connection setup included) / transactions.")
        out.append("")
        return out

    def _login(self) -> list[str]:
        out = ["## Login cost", "",
               f"`pgbench -C -S -c {self.settings['login_clients']}`: a new connection (TLS handshake, "
               "authentication, one select-only transaction, disconnect) per transaction. "
               "connections/s = median over repeats of pgbench's `tps` (including reconnection times).", "",
               "| target | authentication | TLS | connections/s | average connection time (ms) |",
               "|---|---|---|---:|---:|"]
        for r in self.login:
            cell: Cell = r["cell"]
            if cell.ok_runs:
                conn = median(x.raw.get("connection_ms") for x in cell.ok_runs)
                out.append(f"| {r['target']} | {r['auth']} | {r['tls']} | {fmt_tps(cell.tps)} | {fmt_ms(conn)} |")
            else:
                out.append(f"| {r['target']} | {r['auth']} | {r['tls']} | error: {cell.errors[0] if cell.errors else '?'} | |")
        out.append("")
        return out

    def _memory(self) -> list[str]:
        out = ["## Memory of idle clients", "",
               "Idle client connections that completed startup and authentication, held open; "
               "bytes per client = (VmRSS with them − VmRSS before) / clients, from /proc/<pid>/status.", "",
               "| proxy | TLS | clients | RSS before | RSS with clients | bytes per idle client | logins took | failed logins |",
               "|---|---|---:|---:|---:|---:|---:|---:|"]
        for m in self.memory:
            if m.get("error"):
                out.append(f"| {m['proxy']} | {'yes' if m['tls'] else 'no'} | {m['clients']:,} | error: {m['error']} | | | | |")
                continue
            bpc = m["bytes_per_client"]
            out.append(f"| {m['proxy']} | {'yes' if m['tls'] else 'no'} | {m['opened']:,} | "
                       f"{m['rss_before_kib'] / 1024:.1f} MiB | {m['rss_after_kib'] / 1024:.1f} MiB | "
                       f"{bpc:,.0f} B ({bpc / 1024:.1f} KiB) | {m['seconds']:.1f} s | {m['errors']} |")
        out.append("")
        return out


def _verdict(r, threshold) -> tuple[str, str]:
    if r is None:
        return "not measured", ""
    return ("met" if r >= threshold else "NOT met"), f"{r:.2f}×"
