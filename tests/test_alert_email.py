"""Alerts by email: a real SMTP server (aiosmtpd) on loopback, with a login, receives the
store's email when a shopper asks for a person and nobody is available; the password never
reaches the log."""

from __future__ import annotations

import asyncio
import email
import email.policy
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any

import psycopg
import pytest
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from app import alerts
from app.config import ConfigError, Settings
from tests.conftest import FakeUpstream, RunningApp, stream_chat

WAIT_S = 15.0
SMTP_USER = "alerts"
SMTP_PASSWORD = "smtp-secret-pa55word"


@dataclass
class Mailbox:
    """What a loopback SMTP server received; its first `failures` messages get a 451."""

    url: str = ""
    failures: int = 0
    messages: list[EmailMessage] = field(default_factory=list)
    recipients: list[list[str]] = field(default_factory=list)
    logins: list[str] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.failures:
            self.failures -= 1
            return "451 try again later"
        raw = envelope.original_content or b""
        message = email.message_from_bytes(raw, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        self.messages.append(message)
        self.recipients.append(list(envelope.rcpt_tos))
        self.arrived.set()
        return "250 OK"

    def authenticate(self, server: SMTP, session: Session, envelope: Envelope, mechanism: str,
                     auth_data: Any) -> AuthResult:
        assert isinstance(auth_data, LoginPassword)
        ok = auth_data.login == SMTP_USER.encode() and auth_data.password == SMTP_PASSWORD.encode()
        if ok:
            self.logins.append(auth_data.login.decode())
        return AuthResult(success=ok)


async def serve_mailbox(mailbox: Mailbox) -> asyncio.Server:
    loop = asyncio.get_running_loop()
    # Plain SMTP on loopback only: the login is allowed without TLS here, never elsewhere.
    server = await loop.create_server(
        lambda: SMTP(mailbox, authenticator=mailbox.authenticate, auth_require_tls=False,
                     hostname="mail.test"), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    mailbox.url = f"smtp://{SMTP_USER}:{SMTP_PASSWORD}@127.0.0.1:{port}"
    return server


@pytest.fixture
async def mailbox() -> AsyncIterator[Mailbox]:
    box = Mailbox(failures=1)
    server = await serve_mailbox(box)
    yield box
    server.close()
    await server.wait_closed()


async def test_a_shopper_waiting_while_nobody_is_available_emails_the_store(
        start_app: Callable[..., Any], upstream: FakeUpstream, mailbox: Mailbox,
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        database_url: str) -> None:
    monkeypatch.setattr(alerts, "FIRST_RETRY_S", 0.05)  # the SMTP 451 is retried, quickly
    # Nobody is online: earlier tests of the run may have signed staff of this site in.
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("UPDATE staff_sessions SET last_seen_at = now() - interval '1 hour'")
    app: RunningApp = await start_app(smtp_url=mailbox.url, smtp_from="chat@shop.example",
                                      alert_email_to="owner@shop.example")
    async with app.client() as shopper:
        session_id = (await stream_chat(shopper, {"message": "My parcel is damaged"})
                      )[0].data["sessionId"]
        handoff = await shopper.post(f"/chat/conversations/{session_id}/handoff")
        assert handoff.status_code == 200  # answered before the email went anywhere
        async with asyncio.timeout(WAIT_S):
            await mailbox.arrived.wait()
    [message] = mailbox.messages
    assert mailbox.recipients == [["owner@shop.example"]] and set(mailbox.logins) == {SMTP_USER}
    assert message["From"] == "chat@shop.example" and message["To"] == "owner@shop.example"
    assert message["Subject"] == ("A shopper on Default is waiting for a person"
                                  " (nobody is available)")
    body = message.get_content()
    assert f"/admin#{session_id}" in body
    assert "Nobody is available" in body
    assert SMTP_PASSWORD not in caplog.text


def test_a_bad_smtp_url_is_refused_at_start_without_quoting_its_password() -> None:
    with pytest.raises(ConfigError) as refused:
        Settings.from_env({"SMTP_URL": f"http://user:{SMTP_PASSWORD}@mail.example"})
    assert "SMTP_URL" in str(refused.value) and SMTP_PASSWORD not in str(refused.value)
