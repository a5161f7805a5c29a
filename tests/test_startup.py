"""Start-up with the database down: wait and retry with backoff, say what for, then give up."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from app import db
from tests.proxy import free_port
from tests.tcp_proxy import TcpProxy, Upstream

ROOT = Path(__file__).resolve().parent.parent


def waiting_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records
            if record.getMessage().startswith("waiting for the database")]


def database_server(conninfo: str) -> Upstream:
    """The server of `conninfo`: TCP, or the Unix socket of a host that is a directory (the
    embedded PostgreSQL of a run without DATABASE_URL listens only there)."""
    params = conninfo_to_dict(conninfo)
    host, port = params.get("host") or "localhost", params.get("port") or "5432"
    if host.startswith("/"):
        return Upstream(unix_path=f"{host}/.s.PGSQL.{port}")
    return Upstream(host, int(port))


async def test_waits_for_a_database_that_comes_up(
        database_url: str, caplog: pytest.LogCaptureFixture) -> None:
    # The real server may be on TCP (DATABASE_URL) or a Unix socket (the embedded one): the
    # service is pointed at a loopback port either way, where the relay brings it up later.
    port = free_port()
    late_url = make_conninfo(database_url, host="127.0.0.1", port=str(port))

    with caplog.at_level(logging.INFO, logger="app.db"):
        waiting = asyncio.create_task(db.wait_until_reachable(late_url, timeout_s=60))
        # The database comes up only once the service has said it is waiting for it.
        for _ in range(600):
            if waiting_lines(caplog):
                break
            await asyncio.sleep(0.05)
        assert not waiting.done()
        # The database 'comes up' on `port`: the proxy relays to the real server.
        async with TcpProxy(lambda _: database_server(database_url), port):
            await asyncio.wait_for(waiting, 30)

    first = waiting_lines(caplog)[0]
    assert f"127.0.0.1:{port}/" in first and "attempt 1" in first
    assert "password" not in first
    assert any("is reachable" in record.getMessage() for record in caplog.records)


async def test_a_refusal_from_the_server_is_not_waited_for(
        database_url: str, caplog: pytest.LogCaptureFixture) -> None:
    wrong_role = make_conninfo(database_url, user="no_such_role_here")
    with caplog.at_level(logging.INFO, logger="app.db"), pytest.raises(psycopg.OperationalError):
        await db.wait_until_reachable(wrong_role, timeout_s=60)
    assert waiting_lines(caplog) == []


def test_the_service_gives_up_after_the_startup_timeout_and_exits_non_zero() -> None:
    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        dead_port = closed.getsockname()[1]
    env = {"PATH": "/usr/bin:/bin", "DATABASE_URL": f"postgresql://chat:pw@127.0.0.1:{dead_port}/chat",
           "DB_STARTUP_TIMEOUT_S": "1.5", "LOG_FORMAT": "text", "PORT": str(free_port())}
    result = subprocess.run([sys.executable, "-m", "app"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60, check=False)
    # uvicorn's status for a failed start-up, so a supervisor restarts the service.
    assert result.returncode == 3, result.stderr
    waits = [line for line in result.stderr.splitlines() if "waiting for the database" in line]
    assert len(waits) >= 2
    assert f"127.0.0.1:{dead_port}/chat" in waits[0] and "pw" not in result.stderr
    assert "cannot reach the database" in result.stderr


def run_without_a_database(cwd: Path) -> subprocess.CompletedProcess[str]:
    """`python -m app migrate` as a newcomer runs it: no DATABASE_URL, the embedded PostgreSQL
    in `cwd`/.data, and no XDG_RUNTIME_DIR (as under sudo, cron or in a container)."""
    env = {"PATH": "/usr/bin:/bin", "LOG_FORMAT": "text", "LOG_LEVEL": "INFO",
           "HOME": str(cwd)}
    return subprocess.run([sys.executable, "-m", "app", "migrate"], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120, check=False)


def test_the_embedded_postgres_starts_without_its_setup_chatter(tmp_path: Path) -> None:
    result = run_without_a_database(tmp_path)
    assert result.returncode == 0, result.stderr
    assert "applied" in result.stdout
    lines = result.stderr.splitlines()
    # The app's own lines only: initdb's output and every command embedded-postgres runs were
    # logged at INFO, and platformdirs warned about XDG_RUNTIME_DIR.
    assert any("using the embedded PostgreSQL" in line for line in lines), result.stderr
    assert not [line for line in lines if "embedded_postgres" in line], result.stderr
    assert "XDG_RUNTIME_DIR" not in result.stderr
    assert "initdb" not in result.stderr and "Success." not in result.stderr
    assert len(lines) <= 10, result.stderr


def test_an_embedded_postgres_that_cannot_start_still_says_why(tmp_path: Path) -> None:
    (tmp_path / ".data").mkdir()
    (tmp_path / ".data" / "postgres").write_text("not a data directory")
    result = run_without_a_database(tmp_path)
    assert result.returncode != 0
    assert "ERROR" in result.stderr and "Failed postgres command" in result.stderr
    assert "Not a directory" in result.stderr  # initdb's own reason


def test_sigterm_stops_the_embedded_postgres_even_after_a_killed_run(tmp_path: Path) -> None:
    """`make run` stopped by SIGTERM (a closed terminal, `kill`) stops its PostgreSQL too, also
    when an earlier run was killed before it could say it was done with the server."""
    assert run_without_a_database(tmp_path).returncode == 0  # creates .data/postgres
    data = tmp_path / ".data" / "postgres"
    gone = subprocess.Popen(["true"])
    gone.wait()
    (data / ".handle_pids.json").write_text(f"[{gone.pid}]")  # a run killed by SIGKILL
    port = free_port()
    env = {"PATH": "/usr/bin:/bin", "LOG_FORMAT": "text", "LOG_LEVEL": "INFO",
           "HOME": str(tmp_path), "PORT": str(port)}
    log = tmp_path / "serve.log"
    with log.open("w") as output:
        serving = subprocess.Popen([sys.executable, "-m", "app"], cwd=tmp_path, env=env,
                                   stdout=output, stderr=subprocess.STDOUT)
    try:
        for _ in range(600):  # up to a minute for the first start on a loaded machine
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            assert serving.poll() is None, log.read_text()
            time.sleep(0.1)
        assert (data / "postmaster.pid").exists()
        serving.send_signal(signal.SIGTERM)
        # Still "stopped by SIGTERM" for a supervisor.
        assert serving.wait(timeout=60) == -signal.SIGTERM, log.read_text()
    finally:
        if serving.poll() is None:
            serving.kill()
    postmaster = data / "postmaster.pid"
    left_running = postmaster.exists()
    if left_running:  # never leave it behind, even when the test fails
        with contextlib.suppress(OSError, ValueError):
            os.kill(int(postmaster.read_text().split()[0]), signal.SIGTERM)
    assert not left_running, "the embedded PostgreSQL is still running"
