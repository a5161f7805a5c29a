"""`python -m app` as a real process on a loopback port, for tests of signals and of the proxy."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from tests.proxy import free_port

ROOT = Path(__file__).resolve().parent.parent


class AppProcess:
    """One app instance; its stderr (JSON logs) goes to a file the test can read."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        # The child writes to its own copy of the descriptor; ours is closed at once.
        with log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "app"], cwd=ROOT,
                env={**os.environ, "LOG_FORMAT": "json", **env, "HOST": "127.0.0.1",
                     "PORT": str(self.port)},
                stdout=log, stderr=subprocess.STDOUT)

    def wait_healthy(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            if self.process.poll() is not None:
                raise AssertionError(f"the app exited ({self.process.returncode}):\n{self.output()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"the app never became healthy:\n{self.output()}")
            time.sleep(0.1)

    def terminate(self) -> None:
        self.process.send_signal(signal.SIGTERM)

    def wait(self, timeout_s: float = 60.0) -> int:
        return self.process.wait(timeout=timeout_s)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.terminate()
            try:
                self.process.wait(timeout=40)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_lines(self) -> list[dict[str, Any]]:
        """The JSON log lines written so far (anything else on stderr is skipped)."""
        lines = []
        for line in self.output().splitlines():
            if line.startswith("{"):
                lines.append(json.loads(line))
        return lines
