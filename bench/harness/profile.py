"""Optional CPU profiles (`--perf`): `perf record` on a proxy during an extra, unrecorded pgbench run."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

from .util import log, which


def available() -> bool:
    return which("perf") is not None


class PerfRecording:
    """`perf record -p PID` until `stop()`, which writes a flat text report and deletes perf.data."""

    def __init__(self, pid: int, data: Path, frequency: int = 999):
        self.data = data
        self.proc = subprocess.Popen(["perf", "record", "-F", str(frequency), "-p", str(pid), "-o", str(data)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                     start_new_session=True)

    def stop(self, report: Path, title: str) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        try:
            out = subprocess.run(["perf", "report", "-i", str(self.data), "--stdio", "--no-children",
                                  "--fields", "overhead,dso,sym", "--percent-limit", "0.3", "-g", "none"],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=600)
            lines = [ln.rstrip() for ln in out.stdout.decode(errors="replace").splitlines()
                     if ln.strip() and not ln.startswith("# To display") and ln.strip() != "#"]
            text = "\n".join(lines[:150])
        except (OSError, subprocess.TimeoutExpired) as e:
            text = f"perf report failed: {e}"
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text(f"# {title}\n# perf record -F 999 -p <pid>; perf report --no-children "
                          f"--fields overhead,dso,sym (self time)\n\n{text}\n")
        self.data.unlink(missing_ok=True)
        log(f"  profile written to {report}")
