"""A throwaway PostgreSQL server of the tests' own, to stop, crash, freeze and start again.

The machine's PostgreSQL (and the suite's database on it) must never be stopped, so the fault
tests run their own: initdb into a temporary folder once per session, a server on a free
loopback port with no unix socket, and durability switched off (nothing here must survive the
machine, only a server restart). Every signal goes to the processes this object started.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import psycopg

SERVER_USER = "postgres"  # PostgreSQL refuses to run as root


def _binary(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    for candidate in sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), reverse=True):
        return str(candidate)
    raise RuntimeError(f"{name} not found: install PostgreSQL's server binaries")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class OwnPostgres:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.data_dir = base / "data"
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self._as_user = SERVER_USER if os.geteuid() == 0 else None

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def init(self) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        if self._as_user:
            shutil.chown(self.base, self._as_user)
        subprocess.run(
            [_binary("initdb"), "-D", str(self.data_dir), "-U", "postgres", "--auth=trust",
             "-E", "UTF8", "--locale=C", "--no-sync"],
            check=True, user=self._as_user, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def start(self) -> float:
        """Start the server; return how long it took to accept connections."""
        started = time.monotonic()
        self.process = subprocess.Popen(
            [_binary("postgres"), "-D", str(self.data_dir), "-p", str(self.port),
             "-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories=",
             "-c", "fsync=off", "-c", "full_page_writes=off", "-c", "max_connections=200",
             "-c", "shared_buffers=16MB"],
            user=self._as_user, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = started + 30
        while True:
            try:
                psycopg.connect(self.url, connect_timeout=1).close()
                return time.monotonic() - started
            except psycopg.OperationalError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise RuntimeError("the throwaway PostgreSQL did not start") from None
                time.sleep(0.05)

    def stop(self, *, crash: bool = False) -> None:
        """A fast shutdown (SIGINT), or with crash=True an immediate one (SIGQUIT): no
        checkpoint, recovery at the next start, as after a crash."""
        assert self.process is not None
        self.process.send_signal(signal.SIGQUIT if crash else signal.SIGINT)
        self.process.wait(30)

    def server_pids(self) -> list[int]:
        """The postmaster and its children (one backend per connection, and the helpers)."""
        assert self.process is not None
        pids = [self.process.pid]
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            # "pid (comm) state ppid ...": comm may hold spaces, so split after the last ")".
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            if parent == self.process.pid:
                pids.append(int(entry.name))
        return pids

    def freeze(self) -> list[int]:
        """SIGSTOP the whole server: the kernel still accepts and acknowledges, nobody answers."""
        pids = self.server_pids()
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        return pids

    def thaw(self, pids: list[int]) -> None:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.thaw(self.server_pids())
            self.stop()
