"""Settings: defaults, bad values that fail at start naming the variable, and the README table."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from app.config import VARIABLES, ConfigError, Settings

ROOT = Path(__file__).resolve().parent.parent


def test_defaults() -> None:
    settings = Settings.from_env({})
    assert (settings.host, settings.port) == ("127.0.0.1", 8000)
    assert settings.openai_model == "gpt-4o-mini"
    assert (settings.llm_timeout_s, settings.max_message_chars) == (30.0, 5000)
    assert (settings.history_window, settings.max_tokens, settings.temperature) == (10, 500, 0.7)
    assert settings.allowed_origins == ()


def test_lists_are_split_on_commas() -> None:
    settings = Settings.from_env({"ALLOWED_ORIGINS": "https://a.example, https://b.example ,"})
    assert settings.allowed_origins == ("https://a.example", "https://b.example")


@pytest.mark.parametrize("name, value", [
    ("PORT", "eighty"), ("PORT", "70000"), ("LLM_TIMEOUT_S", "-1"), ("TEMPERATURE", "hot"),
    ("MAX_MESSAGE_CHARS", "0"), ("HISTORY_WINDOW", "1.5"), ("DB_POOL_MAX", "0"),
    ("STREAM_TTL_S", "0"), ("STREAM_MAXLEN", "10"), ("ANSWER_LEASE_S", "soon"),
])
def test_a_bad_value_names_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        Settings.from_env({name: value})


def test_the_service_refuses_to_start_with_a_one_line_message() -> None:
    env = {**os.environ, "PORT": "not-a-port"}
    result = subprocess.run([sys.executable, "-m", "app"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "configuration error: PORT must be a whole number, got 'not-a-port'"]


def test_every_variable_is_documented_in_the_readme() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    documented = set(re.findall(r"^\| `([A-Z0-9_]+)` \|", readme, flags=re.MULTILINE))
    assert documented == set(VARIABLES)


@pytest.mark.parametrize("value, message", [
    ("https://shop.example.com/", "ALLOWED_ORIGINS: 'https://shop.example.com/' has a trailing"
     " slash, which a browser's Origin never has; write 'https://shop.example.com'"),
    ("shop.example.com", "ALLOWED_ORIGINS: 'shop.example.com' has no http:// or https://; write"
     " the origin with its scheme, e.g. 'https://shop.example.com'"),
    ("https://a.example, shop.example.com:8080", "ALLOWED_ORIGINS: 'shop.example.com:8080' has no"
     " http:// or https://; write the origin with its scheme, e.g."
     " 'https://shop.example.com:8080'"),
    ("https://shop.example.com/widget", "ALLOWED_ORIGINS: 'https://shop.example.com/widget' has a"
     " path, which a browser's Origin never has; write 'https://shop.example.com'"),
    ("https://shop.example.com:443", "ALLOWED_ORIGINS: 'https://shop.example.com:443' names the"
     " default port, which a browser's Origin leaves out; write 'https://shop.example.com'"),
])
def test_an_origin_no_browser_sends_is_refused_with_the_fix(value: str, message: str) -> None:
    with pytest.raises(ConfigError) as refused:
        Settings.from_env({"ALLOWED_ORIGINS": value})
    assert str(refused.value) == message


def test_origins_are_kept_as_a_browser_writes_them() -> None:
    settings = Settings.from_env(
        {"ALLOWED_ORIGINS": "https://Shop.Example.com, http://localhost:8000, *"})
    assert settings.allowed_origins == ("https://shop.example.com", "http://localhost:8000", "*")


def test_a_base_url_without_a_scheme_is_refused() -> None:
    with pytest.raises(ConfigError) as refused:
        Settings.from_env({"OPENAI_BASE_URL": "localhost:11434"})
    assert str(refused.value) == ("OPENAI_BASE_URL must start with http:// or https://, e.g."
                                  " 'http://localhost:11434', got 'localhost:11434'")
    settings = Settings.from_env({"OPENAI_BASE_URL": "http://localhost:11434/v1"})
    assert settings.openai_base_url == "http://localhost:11434/v1"


@pytest.mark.parametrize("name, value", [
    ("ALLOWED_ORIGINS", "https://shop.example.com/"), ("OPENAI_BASE_URL", "localhost:11434")])
def test_a_misconfiguration_stops_the_service_with_one_line(name: str, value: str) -> None:
    env = {**os.environ, name: value}
    result = subprocess.run([sys.executable, "-m", "app"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"configuration error: {name}")


def test_tests_and_production_start_from_the_same_defaults() -> None:
    # Tests build Settings(...) from the dataclass; production reads the environment.
    assert Settings() == Settings.from_env({})
