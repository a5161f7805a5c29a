"""Staff accounts: the CLI (password on stdin), the password policy, Argon2id hashes."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from argon2 import PasswordHasher

from app.passwords import PasswordRejected, Passwords, check_new_password
from tests.conftest import ROOT

GOOD_PASSWORD = "correct mule staple 42"


def staff_cli(database_url: str, *args: str, password: str | None = None,
              ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app", "staff", *args], cwd=ROOT, capture_output=True, text=True,
        input=None if password is None else password + "\n", timeout=60,
        env={**os.environ, "DATABASE_URL": database_url, "LOG_LEVEL": "WARNING"})


def default_site_key(query: Callable[..., list[tuple[Any, ...]]]) -> str:
    return str(query("SELECT site_key FROM sites WHERE id = 1")[0][0])


def test_a_password_is_at_least_12_characters_and_not_a_common_one() -> None:
    check_new_password(GOOD_PASSWORD)
    for weak in ("short pass", "password1234", "PASSWORD1234", "aaaaaaaaaaaaaaaa"):
        with pytest.raises(PasswordRejected):
            check_new_password(weak)


def test_hashes_are_argon2id_and_old_parameters_ask_for_a_rehash() -> None:
    passwords = Passwords()
    stored = passwords.hash(GOOD_PASSWORD)
    assert stored.startswith("$argon2id$")
    assert passwords.verify(stored, GOOD_PASSWORD)
    assert not passwords.verify(stored, GOOD_PASSWORD + "x")
    assert not passwords.verify(None, GOOD_PASSWORD)  # an unknown account never matches
    assert not passwords.needs_rehash(stored)
    weaker = PasswordHasher(time_cost=1, memory_cost=8192).hash(GOOD_PASSWORD)
    assert passwords.verify(weaker, GOOD_PASSWORD) and passwords.needs_rehash(weaker)


def test_the_cli_creates_lists_resets_and_disables_staff(
        database_url: str, query: Callable[..., list[tuple[Any, ...]]]) -> None:
    email = f"owner-{uuid.uuid4().hex[:8]}@shop.example"
    key = default_site_key(query)
    created = staff_cli(database_url, "create", "--site", key, "--email", email, "--name", "Olga",
                        "--role", "owner", password=GOOD_PASSWORD)
    assert created.returncode == 0, created.stderr
    assert GOOD_PASSWORD not in created.stdout + created.stderr
    [(stored,)] = query("SELECT password_hash FROM staff WHERE email = %s", email)
    assert stored.startswith("$argon2id$") and GOOD_PASSWORD not in stored

    listed = staff_cli(database_url, "list")
    assert f"{email}\tOlga\towner\t{key}" in listed.stdout

    again = staff_cli(database_url, "create", "--site", key, "--email", email.upper(), "--name",
                      "Olga", "--role", "owner", password=GOOD_PASSWORD)
    assert again.returncode == 2 and "already an account" in again.stderr

    weak = staff_cli(database_url, "reset-password", email, password="password1234")
    assert weak.returncode == 2 and "too common" in weak.stderr
    reset = staff_cli(database_url, "reset-password", email, password=GOOD_PASSWORD + "!")
    assert reset.returncode == 0, reset.stderr
    assert query("SELECT password_hash FROM staff WHERE email = %s", email)[0][0] != stored

    disabled = staff_cli(database_url, "disable", email)
    assert disabled.returncode == 0, disabled.stderr
    assert query("SELECT disabled FROM staff WHERE email = %s", email) == [(True,)]
    assert "disabled" in staff_cli(database_url, "list").stdout


def test_the_cli_refuses_a_short_password_an_unknown_site_and_a_wrong_role(
        database_url: str, query: Callable[..., list[tuple[Any, ...]]]) -> None:
    key = default_site_key(query)
    short = staff_cli(database_url, "create", "--site", key, "--email", "a@b.example", "--name",
                      "A", "--role", "agent", password="too short")
    assert short.returncode == 2 and "at least 12" in short.stderr
    unknown = staff_cli(database_url, "create", "--site", "no-such-site-key-xx", "--email",
                        "a@b.example", "--name", "A", "--role", "agent", password=GOOD_PASSWORD)
    assert unknown.returncode == 2 and unknown.stderr.startswith("error:")
    role = staff_cli(database_url, "create", "--site", key, "--email", "a@b.example", "--name",
                     "A", "--role", "boss", password=GOOD_PASSWORD)
    assert role.returncode == 2 and "role" in role.stderr
    assert query("SELECT count(*) FROM staff WHERE email = 'a@b.example'") == [(0,)]
