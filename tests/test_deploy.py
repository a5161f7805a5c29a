"""The docker compose stack's structure, and the nginx configuration it mounts.

No Docker engine runs where this project is built, so the stack itself is proven piece by piece:
this file checks that docker-compose.yml wires the services as the README says and mounts the
nginx configuration that tests/test_proxy.py runs with a real nginx; the Dockerfile's promises
(non-root, health check, `python -m app`) are read from the file.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.proxy import NGINX_CONF, nginx_binary, nginx_conf_for

ROOT = Path(__file__).resolve().parent.parent


def compose() -> dict[str, Any]:
    loaded = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert isinstance(loaded, dict)
    return loaded


def test_services_and_what_they_wait_for() -> None:
    services = compose()["services"]
    assert set(services) == {"postgres", "redis", "app", "nginx"}
    app = services["app"]
    assert app["depends_on"]["postgres"] == {"condition": "service_healthy"}
    assert services["nginx"]["depends_on"]["app"] == {"condition": "service_healthy"}
    assert app["deploy"]["replicas"] == 2
    assert app["build"] == "."


def test_every_service_but_the_proxy_and_app_has_a_healthcheck() -> None:
    services = compose()["services"]
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    assert services["redis"]["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
    # The app's health check lives in its image (Dockerfile HEALTHCHECK on /healthz).
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^HEALTHCHECK .*/healthz", dockerfile, re.MULTILINE | re.DOTALL)


def test_only_nginx_publishes_a_port() -> None:
    services = compose()["services"]
    assert services["nginx"]["ports"] == ["8080:8080"]
    assert [name for name, service in services.items() if "ports" in service] == ["nginx"]
    assert re.search(r"^\s*listen 8080;", NGINX_CONF.read_text(), re.MULTILINE)


def test_nginx_mounts_the_tested_config() -> None:
    volumes = compose()["services"]["nginx"]["volumes"]
    assert volumes == ["./app/deploy/nginx.conf:/etc/nginx/nginx.conf:ro"]
    assert (ROOT / "app/deploy/nginx.conf").resolve() == NGINX_CONF.resolve()


def test_app_environment_points_at_the_stack() -> None:
    stack = compose()
    app = stack["services"]["app"]
    environment = app["environment"]
    assert environment["DATABASE_URL"].startswith("postgresql://chat:chat@postgres:5432/")
    assert environment["REDIS_URL"].startswith("redis://redis:6379")
    nginx_address = stack["services"]["nginx"]["networks"]["default"]["ipv4_address"]
    assert environment["TRUSTED_PROXIES"] == nginx_address
    # The key comes from an optional .env, never from the compose file itself.
    assert app["env_file"] == [{"path": ".env", "required": False}]
    assert "OPENAI_API_KEY" not in environment
    # Docker's SIGKILL must come after the app's own shutdown grace.
    grace = int(environment["SHUTDOWN_GRACE_S"])
    assert int(app["stop_grace_period"].removesuffix("s")) > grace


def test_image_runs_as_non_root_and_starts_the_app() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert dockerfile.startswith("# ") and "FROM python:3.11-slim" in dockerfile
    user_lines = re.findall(r"^USER (\S+)", dockerfile, re.MULTILINE)
    assert user_lines and user_lines[-1] not in {"root", "0"}
    assert 'CMD ["python", "-m", "app"]' in dockerfile
    assert "HOST=0.0.0.0" in dockerfile


def test_nginx_accepts_the_config() -> None:
    nginx = nginx_binary()
    conf = nginx_conf_for(listen_port=18080, upstreams=["127.0.0.1:18001"])
    result = subprocess.run(
        [
            nginx,
            "-t",
            "-e",
            "stderr",
            "-p",
            str(conf.parent),
            "-c",
            str(conf),
            "-g",
            f"pid {conf.parent / 'nginx.pid'};",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_compose_and_env_example_name_only_real_settings() -> None:
    from app.config import VARIABLES

    environment = compose()["services"]["app"]["environment"]
    assert set(environment) <= set(VARIABLES)
    example = (ROOT / "app/deploy/.env.example").read_text()
    named = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", example, re.MULTILINE))
    assert "OPENAI_API_KEY" in named and named <= set(VARIABLES)


def docker_ignored(path: str) -> bool:
    """Whether .dockerignore keeps `path` out of the build context (its patterns: plain paths,
    globs and `**/` prefixes; a directory's pattern covers what is inside it)."""
    import fnmatch

    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    parts = path.split("/")
    prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    for pattern in patterns:
        if pattern.startswith("**/"):
            if any(fnmatch.fnmatch(part, pattern[3:]) for part in parts):
                return True
        elif any(fnmatch.fnmatch(prefix, pattern) for prefix in prefixes):
            return True
    return False


def test_the_build_context_leaves_out_local_state_but_not_what_the_image_copies() -> None:
    for local in (".venv/bin/python", ".data/postgres/PG_VERSION", "test-artifacts/page.png",
                  "app/__pycache__/main.cpython-311.pyc", ".pytest_cache/v", ".mypy_cache/x",
                  ".ruff_cache/x", ".hypothesis/examples", ".schemathesis/x", ".env", ".git/HEAD"):
        assert docker_ignored(local), local
    copied = re.findall(r"^COPY (\S+)", (ROOT / "Dockerfile").read_text(), re.MULTILINE)
    assert {"pyproject.toml", "app", "sql", "web"} <= set(copied)
    for path in [*copied, "app/main.py", "sql/0001_create_conversations.sql", "web/widget.js"]:
        assert not docker_ignored(path), path


def test_git_ignores_the_test_tools_caches() -> None:
    paths = [".schemathesis/x", ".hypothesis/examples/x", ".data/x", "test-artifacts/x"]
    result = subprocess.run(["git", "check-ignore", "--no-index", *paths], cwd=ROOT,
                            capture_output=True, text=True, check=False)
    assert result.stdout.split() == paths
