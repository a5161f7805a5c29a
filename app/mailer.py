"""Email through SMTP (SMTP_URL): the store's alerts and the invitations of agents.

`smtp://user:password@host:587` talks plain SMTP and upgrades with STARTTLS when the server
offers it; `smtps://user:password@host:465` is TLS from the first byte. smtplib is blocking, so
each send runs in a worker thread; nothing here is ever on an answer's path.

The URL holds a password: only its host and port ever reach a log or an error message, and a
refused login is reported by its SMTP code alone (a server may quote what it was sent).
"""

from __future__ import annotations

import asyncio
import smtplib
import ssl
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import make_msgid
from urllib.parse import unquote, urlsplit

TIMEOUT_S = 10.0
SCHEMES = {"smtp": 25, "smtps": 465}


class MailError(Exception):
    """The mail could not be handed to the SMTP server; `retryable` says whether trying again
    later may work (a network fault or a 4xx), as opposed to a refusal (a 5xx, a bad login)."""

    def __init__(self, reason: str, *, retryable: bool) -> None:
        super().__init__(reason)
        self.retryable = retryable


@dataclass(frozen=True)
class SmtpServer:
    scheme: str
    host: str
    port: int
    username: str
    password: str

    @property
    def where(self) -> str:
        """What a log may say about the server: never the credentials."""
        return f"{self.host}:{self.port}"

    def __repr__(self) -> str:  # a stray repr in a log must not carry the password either
        return f"SmtpServer({self.scheme}://{self.where})"


def parse_smtp_url(raw: str) -> SmtpServer:
    """ValueError (saying what is wrong, never quoting the URL) for an unusable SMTP_URL."""
    url = urlsplit(raw)
    scheme = url.scheme.lower()
    if scheme not in SCHEMES or not url.hostname:
        raise ValueError("must look like smtp://user:password@host:587 or smtps://host:465")
    try:
        port = url.port or SCHEMES[scheme]
    except ValueError:
        raise ValueError("has a port that is not a number") from None
    return SmtpServer(scheme, url.hostname, port, unquote(url.username or ""),
                      unquote(url.password or ""))


class Mailer:
    def __init__(self, server: SmtpServer, sender: str) -> None:
        self.server = server
        self.sender = sender

    async def send(self, to: str, subject: str, body: str) -> None:
        message = EmailMessage()
        message["From"] = self.sender
        message["To"] = to
        message["Subject"] = subject
        message["Message-ID"] = make_msgid(domain=self.sender.rpartition("@")[2] or None)
        message.set_content(body)
        await asyncio.to_thread(self._deliver, message)

    def _deliver(self, message: EmailMessage) -> None:
        server = self.server
        try:
            if server.scheme == "smtps":
                client: smtplib.SMTP = smtplib.SMTP_SSL(server.host, server.port,
                                                        timeout=TIMEOUT_S,
                                                        context=ssl.create_default_context())
            else:
                client = smtplib.SMTP(server.host, server.port, timeout=TIMEOUT_S)
            with client:
                client.ehlo()
                if server.scheme == "smtp" and client.has_extn("starttls"):
                    client.starttls(context=ssl.create_default_context())
                    client.ehlo()
                if server.username:
                    client.login(server.username, server.password)
                client.send_message(message)
        except smtplib.SMTPAuthenticationError as exc:
            raise MailError(f"login refused (SMTP {exc.smtp_code})", retryable=False) from None
        except smtplib.SMTPResponseException as exc:
            raise MailError(f"SMTP {exc.smtp_code}", retryable=400 <= exc.smtp_code < 500) \
                from None
        except smtplib.SMTPRecipientsRefused:
            raise MailError("the recipient was refused", retryable=False) from None
        except (smtplib.SMTPException, OSError) as exc:
            raise MailError(type(exc).__name__, retryable=True) from None
