"""Small helpers: logging, subprocesses, ports, the process registry that cleanup walks."""

from __future__ import annotations

import os
import pwd
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

_T0 = time.monotonic()


def log(msg: str) -> None:
    """Progress on stderr (stdout carries only the report)."""
    elapsed = time.monotonic() - _T0
    print(f"[{elapsed:7.1f}s] {msg}", file=sys.stderr, flush=True)


class BenchError(Exception):
    """A failure that ends the run with a clear message."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float, proc: subprocess.Popen | None = None, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise BenchError(f"{what} exited with {proc.returncode} before listening on port {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise BenchError(f"{what} did not listen on port {port} within {timeout:.0f}s")


def run(cmd: list[str], *, user: str | None = None, env: dict | None = None, cwd: str | Path | None = None,
        timeout: float | None = 600, check: bool = True, input: bytes | None = None) -> subprocess.CompletedProcess:
    """Runs a command to completion, capturing output; as `user` when given (we are root then)."""
    kwargs = _as_user(user)
    try:
        out = subprocess.run(cmd, env=env, cwd=cwd, timeout=timeout, input=input,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             stdin=None if input is not None else subprocess.DEVNULL, **kwargs)
    except subprocess.TimeoutExpired as e:
        raise BenchError(f"{' '.join(map(str, cmd))} timed out after {timeout}s") from e
    if check and out.returncode != 0:
        raise BenchError(f"{' '.join(map(str, cmd))} failed ({out.returncode}):\n"
                         f"{out.stdout.decode(errors='replace')[-2000:]}\n{out.stderr.decode(errors='replace')[-2000:]}")
    return out


def _as_user(user: str | None) -> dict:
    if user is None or os.geteuid() != 0:
        return {}
    pw = pwd.getpwnam(user)
    return {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}


def spawn(cmd: list[str], *, log_path: Path, user: str | None = None, env: dict | None = None,
          cwd: str | Path | None = None) -> subprocess.Popen:
    """Starts a long-running service in its own session (Ctrl-C reaches us, not it), logging to a file."""
    logf = open(log_path, "ab")
    try:
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf,
                                start_new_session=True, **_as_user(user))
    finally:
        logf.close()
    return proc


def stop_process(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 10) -> None:
    if proc.poll() is not None:
        return
    try:
        proc.send_signal(sig)
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
    except ProcessLookupError:
        pass


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def raise_nofile() -> int:
    """Raises the open-files soft limit to the hard limit (children inherit it); returns it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def rss_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of a process in KiB, from /proc/<pid>/status."""
    rss = hwm = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
            elif line.startswith("VmHWM:"):
                hwm = int(line.split()[1])
    return rss, hwm


def which(name: str) -> str | None:
    return shutil.which(name)


def unprivileged_user() -> str | None:
    """The user to run PostgreSQL and PgBouncer as when we are root (both refuse root)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    raise BenchError("running as root needs a `postgres` or `nobody` user to run PostgreSQL as")


def chown(path: Path, user: str | None) -> None:
    if user is None:
        return
    pw = pwd.getpwnam(user)
    os.chown(path, pw.pw_uid, pw.pw_gid)
