"""Processes of a benchmark run: start them pinned to a core, read their CPU and memory.

CPU and memory come straight from /proc (utime+stime, VmRSS) summed over the process and
its descendants, so that a server that forks a worker is measured whole.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def descendants(pid: int) -> list[int]:
    """pid and every process below it."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # The command name is in parentheses and may hold spaces; fields follow the last ")".
        ppid = int(stat[stat.rindex(b")") + 2:].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def cpu_seconds(pid: int) -> float:
    """User plus system CPU of pid and its descendants."""
    total = 0
    for p in descendants(pid):
        try:
            with open(f"/proc/{p}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return total / CLOCK_TICKS


def rss_bytes(pid: int) -> int:
    total = 0
    for p in descendants(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
                        break
        except OSError:
            continue
    return total


def thread_count(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    return 0


@dataclass
class Service:
    """A process the run started; `pid` is the process under measurement."""

    name: str
    argv: Sequence[str]
    env: Mapping[str, str]
    log_path: Path
    cpu: int | None = None
    cwd: Path | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> None:
        argv = list(self.argv)
        if self.cpu is not None:
            # taskset execs the command, so the pid we hold is the server's own.
            argv = ["taskset", "-c", str(self.cpu), *argv]
        log = open(self.log_path, "wb")  # noqa: SIM115  closed with the process
        self.process = subprocess.Popen(argv, env=dict(self.env), stdout=log,
                                        stderr=subprocess.STDOUT, cwd=self.cwd,
                                        start_new_session=True)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        if not self.alive():
            return
        assert self.process is not None
        # Its own session, so the signal reaches only what this service started.
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def wait_http(self, url: str, timeout: float, headers: Mapping[str, str] = {}) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                return False
            try:
                request = urllib.request.Request(url, headers=dict(headers))
                with urllib.request.urlopen(request, timeout=2) as response:
                    if response.status == 200:
                        return True
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.25)
        return False


def get_json(url: str) -> object:
    import json

    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def load_average() -> tuple[float, float, float]:
    return os.getloadavg()
