"""Customer tokens: what is accepted and what is refused (each red-team case), the secret and
its rotation through the CLI, and the 401 on POST /chat/stream and /chat/message."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from app import db
from app.identity import CustomerTokenRefused, sign_customer_token, verify_customer_token
from app.sites import Site
from app.store_profile import DEFAULT_PROFILE_PATH, load_profile
from tests.conftest import FakeUpstream, RunningApp, parse_sse
from tests.test_sites import cli, rows
from tests.test_sites_http import create_site

SECRET = "a" * 64
PROFILE = load_profile(DEFAULT_PROFILE_PATH)


def site(secret: str = SECRET, key: str = "site-a-key-0123456789", **fields: Any) -> Site:
    return Site(id=2, key=key, name="A", allowed_origins=(), profile=PROFILE, own_profile=False,
                knowledge_dir=None, identity_secret=secret, **fields)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hand_made(header: dict[str, Any], claims: dict[str, Any], key: bytes = b"") -> str:
    """A token built by hand, as an attacker would: any header, any signature."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    signature = hmac.new(key, signing_input.encode(), hashlib.sha256).digest() if key else b""
    return f"{signing_input}.{b64(signature)}"


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"sub": "cust-1", "email": "Ana@Example.com", "iat": now, "exp": now + 600,
            **overrides}


def refused(token: object, target: Site | None = None) -> str:
    with pytest.raises(CustomerTokenRefused) as caught:
        verify_customer_token(token, target or site())
    return caught.value.reason


def test_a_valid_token_names_the_customer() -> None:
    customer = verify_customer_token(sign_customer_token(SECRET, "cust-1", "Ana@Example.com"),
                                     site())
    assert (customer.id, customer.email) == ("cust-1", "ana@example.com")


def test_an_expired_token_is_refused() -> None:
    token = jwt.encode(claims(iat=int(time.time()) - 7200, exp=int(time.time()) - 3600), SECRET)
    assert refused(token) == "expired"


def test_a_token_issued_in_the_future_is_refused() -> None:
    later = int(time.time()) + 3600
    assert refused(jwt.encode(claims(iat=later, exp=later + 600), SECRET)) == \
        "issued in the future"


def test_a_token_living_longer_than_a_day_is_refused() -> None:
    now = int(time.time())
    assert refused(jwt.encode(claims(exp=now + 25 * 3600), SECRET)) == \
        "lives longer than 24 hours"


def test_a_token_signed_with_another_secret_is_refused() -> None:
    assert refused(jwt.encode(claims(), "b" * 64)).startswith("bad signature")


def test_alg_none_is_refused() -> None:
    token = hand_made({"alg": "none", "typ": "JWT"}, claims())
    assert "is not HS256" in refused(token)
    # Also with the header's case changed, and with a signature attached.
    assert "is not HS256" in refused(hand_made({"alg": "None"}, claims(), SECRET.encode()))


def test_algorithm_confusion_is_refused() -> None:
    # HS512 with the right secret, and RS256 whose "public key" is the HMAC secret.
    assert "is not HS256" in refused(jwt.encode(claims(), SECRET, algorithm="HS512"))
    assert "is not HS256" in refused(hand_made({"alg": "RS256"}, claims(), SECRET.encode()))


def test_a_token_of_site_a_is_refused_on_site_b() -> None:
    site_a, site_b = site(), site("c" * 64, key="site-b-key-0123456789")
    token = sign_customer_token(site_a.identity_secret, "cust-1", "ana@example.com")
    assert verify_customer_token(token, site_a).id == "cust-1"
    assert refused(token, site_b).startswith("bad signature")
    # A token that names its site is refused elsewhere even if the secrets were the same.
    named = sign_customer_token(SECRET, "cust-1", "ana@example.com", aud=site_a.key)
    assert refused(named, site(key="site-b-key-0123456789")) == "issued for another site"


def test_rotation_keeps_the_previous_secret_only_during_the_overlap() -> None:
    old_token = sign_customer_token(SECRET, "cust-1", "ana@example.com")
    now = datetime.now(UTC)
    rotated = site("d" * 64, identity_secret_previous=SECRET,
                   identity_previous_until=now + timedelta(hours=2))
    assert verify_customer_token(old_token, rotated).id == "cust-1"
    assert verify_customer_token(sign_customer_token("d" * 64, "c", "c@x.example"), rotated)
    ended = site("d" * 64, identity_secret_previous=SECRET,
                 identity_previous_until=now - timedelta(seconds=1))
    assert refused(old_token, ended).startswith("bad signature")


@pytest.mark.parametrize("token", ["", "x", "a.b.c", 42, ["token"], "e" * 5000])
def test_garbage_is_refused(token: object) -> None:
    refused(token)


def test_missing_claims_are_refused() -> None:
    for missing in ("sub", "email", "exp", "iat"):
        body = claims()
        del body[missing]
        assert refused(jwt.encode(body, SECRET)).startswith("invalid")
    assert refused(jwt.encode(claims(email="not-an-address"), SECRET)) == \
        "email must be an email address"


@pytest.fixture
def migrated_database(admin_database_url: str) -> Iterator[str]:
    name = f"chat_identity_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_database_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = make_conninfo(admin_database_url, dbname=name)
    asyncio.run(db.migrate(url))
    yield url
    with psycopg.connect(admin_database_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_the_cli_prints_the_secret_and_rotates_it_with_an_overlap(migrated_database: str) -> None:
    created = cli(migrated_database, "sites", "create", "--name", "Shop",
                  "--origin", "https://shop.example")
    key = created.stdout.splitlines()[-1]
    shown = cli(migrated_database, "sites", "secret", key)
    assert shown.returncode == 0, shown.stderr
    secret = shown.stdout.splitlines()[-1]
    assert len(secret) == 64
    assert cli(migrated_database, "sites", "secret", key).stdout.splitlines()[-1] == secret
    rotated = cli(migrated_database, "sites", "secret", key, "--rotate", "--overlap-hours", "6")
    assert rotated.returncode == 0, rotated.stderr
    new_secret = rotated.stdout.splitlines()[-1]
    assert new_secret != secret and len(new_secret) == 64
    [(previous, hours)] = rows(
        migrated_database, "SELECT identity_secret_previous,"
        " extract(epoch FROM identity_previous_until - now()) / 3600 FROM sites"
        " WHERE site_key = %s", key)
    assert previous == secret and 5.9 < float(hours) <= 6
    assert "secret" not in cli(migrated_database, "sites", "show", key).stdout.replace(
        "orders api token", "")


# -- over HTTP --------------------------------------------------------------------------------


async def site_secret(database_url: str, key: str) -> str:
    [(secret,)] = rows(database_url, "SELECT identity_secret FROM sites WHERE site_key = %s", key)
    return str(secret)


async def test_a_refused_token_is_a_401_with_the_canonical_body_and_only_the_reason_logged(
        start_app: Callable[..., Any], upstream: FakeUpstream, database_url: str,
        caplog: pytest.LogCaptureFixture) -> None:
    key = await create_site(database_url, "Shop", "https://shop.example")
    chat_app: RunningApp = await start_app()
    token = jwt.encode(claims(), "wrong-secret-" * 4)
    async with chat_app.client() as http:
        with caplog.at_level(logging.INFO, logger="app.identity"):
            for path in ("/chat/stream", "/chat/message"):
                response = await http.post(path, json={"message": "hi", "siteKey": key,
                                                       "customerToken": token})
                assert response.status_code == 401
                assert response.json() == {"error": {
                    "code": "invalid_customer_token",
                    "message": "The customer token is not valid. Please sign in again."}}
    assert "bad signature" in caplog.text
    assert token not in caplog.text and token.split(".")[1] not in caplog.text


async def test_a_verified_customer_is_kept_on_the_conversation(
        start_app: Callable[..., Any], upstream: FakeUpstream, database_url: str) -> None:
    key = await create_site(database_url, "Shop", "https://shop.example")
    chat_app: RunningApp = await start_app()
    token = sign_customer_token(await site_secret(database_url, key), "cust-7",
                                "Bo@Example.com")
    async with chat_app.client() as http:
        response = await http.post("/chat/stream", json={"message": "hi", "siteKey": key,
                                                         "customerToken": token})
        assert response.status_code == 200, response.text
        session_id = parse_sse(response.text)[0].data["sessionId"]
    assert rows(database_url, "SELECT customer_id, customer_email FROM conversations"
                              " WHERE id = %s", session_id) == [("cust-7", "bo@example.com")]
