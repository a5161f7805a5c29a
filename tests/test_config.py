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


def test_tests_and_production_start_from_the_same_defaults() -> None:
    # Tests build Settings(...) from the dataclass; production reads the environment.
    assert Settings() == Settings.from_env({})
