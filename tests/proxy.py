"""Debian's nginx started with the project's own proxy configuration, for tests on loopback.

Only the listen port and the upstream servers are substituted, so a test that passes through
this nginx passes through the configuration docker-compose.yml mounts.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

NGINX_CONF = Path(__file__).resolve().parent.parent / "app" / "deploy" / "nginx.conf"

_UPSTREAM_SERVERS = re.compile(r"^(\s*)server app:8000;\n", re.MULTILINE)
_LISTEN = re.compile(r"^(\s*)listen 8080;", re.MULTILINE)


def nginx_binary() -> str:
    """Debian's nginx (`apt-get install -y nginx`; .ci/run installs it when missing)."""
    # /usr/sbin is not on every user's PATH.
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin")
    assert found is not None, "install Debian's nginx: apt-get install -y nginx"
    return found


def nginx_conf_for(
    listen_port: int, upstreams: Sequence[str], directory: Path | None = None
) -> Path:
    """Write the project's nginx.conf with loopback ports and upstreams; return its path."""
    conf = NGINX_CONF.read_text()
    conf, servers_found = _UPSTREAM_SERVERS.subn(
        lambda match: "".join(f"{match[1]}server {address};\n" for address in upstreams), conf
    )
    conf, listens_found = _LISTEN.subn(rf"\g<1>listen 127.0.0.1:{listen_port};", conf)
    assert (servers_found, listens_found) == (1, 1), "nginx.conf no longer has the expected shape"
    if directory is None:
        directory = Path(tempfile.mkdtemp(prefix="nginx-test-"))
    path = directory / "nginx.conf"
    path.write_text(conf)
    return path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def wait_for_port(port: int, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@contextmanager
def running_nginx(upstreams: Sequence[str], directory: Path) -> Iterator[int]:
    """nginx in the foreground in front of `upstreams`; yields the port it listens on."""
    nginx = nginx_binary()
    port = free_port()
    conf = nginx_conf_for(port, upstreams, directory)
    log = (directory / "nginx.log").open("wb")
    process = subprocess.Popen(
        [
            nginx,
            "-e",
            "stderr",
            "-p",
            str(directory),
            "-c",
            str(conf),
            "-g",
            f"daemon off; pid {directory / 'nginx.pid'};",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for_port(port)
        yield port
    finally:
        process.terminate()
        process.wait(timeout=10)
        log.close()
