"""What the local launchers (kafka.py, cluster.py, registry.py, services.py) share: a background
process with a pid file, waited for until it answers, stopped with SIGTERM then SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path


def running_pid(pid_file: Path) -> int | None:
    """The pid in ``pid_file`` if that process is alive."""
    try:
        pid = int(pid_file.read_text())
        os.kill(pid, 0)
        return pid
    except (FileNotFoundError, ValueError, ProcessLookupError, PermissionError):
        return None


def resident_mb(pid: int | None) -> int | None:
    """A process's resident memory in MB (from /proc), None if it is not running."""
    try:
        status = Path(f"/proc/{pid}/status").read_text() if pid else ""
    except OSError:
        return None
    kb = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), None)
    return None if kb is None else kb // 1024


def wait_until_ready(proc: subprocess.Popen[bytes], ready: Callable[[], bool], timeout_s: float, what: str,
                     logs: Path, poll_s: float = 0.5) -> None:
    """Return once ``ready()``; exit with a pointer to the logs if the process dies or times out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"[{what}] exited with {proc.returncode}; see {logs}")
        if ready():
            return
        time.sleep(poll_s)
    sys.exit(f"[{what}] not ready within {timeout_s:.0f}s; see {logs}")


def stop(pid_file: Path, grace_s: float = 30.0, group: bool = False) -> int | None:
    """SIGTERM the process in ``pid_file`` (its whole process group with ``group``), SIGKILL it after
    ``grace_s``, remove the pid file; the pid stopped, or None if nothing ran."""
    pid = running_pid(pid_file)
    if pid is None:
        pid_file.unlink(missing_ok=True)
        return None
    kill = os.killpg if group else os.kill
    kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while running_pid(pid_file) is not None and time.monotonic() < deadline:
        time.sleep(0.1)
    if running_pid(pid_file) is not None:
        kill(pid, signal.SIGKILL)
    pid_file.unlink(missing_ok=True)
    return pid
