"""uvicorn's Server, safe to expose bare, with a shutdown that drains answers first.

uvicorn waits for open connections to close before it runs the lifespan shutdown, and our SSE
connections only close when their answers end. So on SIGTERM the answers' grace period has to
start here, at once, not in the lifespan: answers get `grace_s` to finish, the rest are saved
as 'interrupted' and their streams end with a retryable `error` event.

uvicorn's HTTP protocol bounds neither the time a client takes to send its headers or its body,
nor how many headers it sends or how large they are, nor how many connections one address holds
(uvicorn 0.54's httptools protocol): a thousand connections trickling a byte
every fifteen seconds stay open for good, and an 8 MB header is read whole. GuardedProtocol adds
those bounds to uvicorn's httptools protocol, through the parser's own callbacks; nginx, in front
of it in production, keeps its own.
"""

from __future__ import annotations

import asyncio
import socket
from collections import Counter
from dataclasses import dataclass
from typing import Any, ClassVar

import uvicorn
from starlette.applications import Starlette
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .clientip import Network, is_trusted_address, limit_key, parse_networks
from .config import Settings
from .services import services_of


@dataclass(frozen=True)
class ConnectionLimits:
    """What one client connection may take (SERVER_* settings)."""

    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    max_headers: int = 100
    max_header_bytes: int = 16 * 1024
    max_connections_per_ip: int = 64
    # Our own proxies hold every shopper's connection: never limited per address.
    trusted_proxies: tuple[Network, ...] = ()


_STATUS_LINES = {408: b"HTTP/1.1 408 Request Timeout\r\n",
                 431: b"HTTP/1.1 431 Request Header Fields Too Large\r\n"}


# After a refusal, how long the rest of what the client sends is read and dropped: closing with
# unread bytes makes the kernel send a reset, and the client would lose the refusal itself.
LINGER_S = 2.0


class _HeadersTooLarge(Exception):
    """The request's headers passed ConnectionLimits (raised inside the parser's callback)."""


class GuardedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with deadlines for headers and body, header bounds, and a
    cap on connections per client address. Configured by subclassing (see `guarded_protocol`)."""

    limits: ClassVar[ConnectionLimits] = ConnectionLimits()
    # Open connections per client address (limit_key: an IPv6 /64 is one client).
    open_per_ip: ClassVar[Counter[str]]

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._deadline: asyncio.TimerHandle | None = None
        self._header_count = 0
        self._header_bytes = 0
        self._headers_too_large = False
        # Bytes received since the request began, while its headers are not complete: the
        # parser hands a header over only once it is whole, so an endless one is caught here.
        self._header_phase = True
        self._header_phase_bytes = 0
        self._lingering = False
        self._ip_key: str | None = None
        address = self.client[0] if self.client else None
        if address and not is_trusted_address(address, self.limits.trusted_proxies):
            key = limit_key(address)
            if self.open_per_ip[key] >= self.limits.max_connections_per_ip:
                transport.abort()  # no byte read: nothing to answer
                return
            self.open_per_ip[key] += 1
            self._ip_key = key
        self._arm(self.limits.header_timeout_s)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self._ip_key is not None:
            self.open_per_ip[self._ip_key] -= 1
            if self.open_per_ip[self._ip_key] <= 0:
                del self.open_per_ip[self._ip_key]
            self._ip_key = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._lingering:
            return
        if self._header_phase:
            self._header_phase_bytes += len(data)
        super().data_received(data)
        if (self._header_phase and self._header_phase_bytes > self.limits.max_header_bytes
                and not self.transport.is_closing()):
            self._refuse(431, "Request headers too large.")

    # -- the parser's callbacks ----------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._header_count = 0
        self._header_bytes = 0
        if self._deadline is None:  # the next request on a kept-alive connection
            self._arm(self.limits.header_timeout_s)

    def on_url(self, url: bytes) -> None:
        self._count_header_bytes(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        self._count_header_bytes(len(name) + len(value))
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._header_phase = False
        self._arm(self.limits.body_timeout_s)
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._disarm()
        self._header_phase, self._header_phase_bytes = True, 0
        super().on_message_complete()

    def _count_header_bytes(self, size: int) -> None:
        self._header_bytes += size
        if (self._header_count > self.limits.max_headers
                or self._header_bytes > self.limits.max_header_bytes):
            self._headers_too_large = True
            raise _HeadersTooLarge()  # httptools stops parsing: send_400_response runs next

    def send_400_response(self, msg: str) -> None:
        if self._headers_too_large:
            self._refuse(431, "Request headers too large.")
        else:
            super().send_400_response(msg)

    # -- deadlines -----------------------------------------------------------------------------

    def _arm(self, seconds: float) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, self._too_slow)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _too_slow(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        cycle = self.cycle
        if cycle is None or cycle.response_complete or not cycle.response_started:
            self._refuse(408, "The request took too long to arrive.")
        else:
            # The app already answers (it reads the body as it goes): just end the connection.
            self.transport.close()

    def _refuse(self, status: int, text: str) -> None:
        body = text.encode("ascii")
        self.transport.write(b"".join([
            _STATUS_LINES[status], b"content-type: text/plain; charset=utf-8\r\n",
            b"content-length: ", str(len(body)).encode("ascii"), b"\r\n",
            b"connection: close\r\n\r\n", body]))
        if not self.transport.can_write_eof():
            self.transport.close()
            return
        # Send the refusal and a FIN, then drop what still comes until the client closes too.
        self.transport.write_eof()
        self._lingering = True
        self._disarm()
        self._deadline = self.loop.call_later(LINGER_S, self.transport.close)

    def eof_received(self) -> None:
        if self._lingering:
            self.transport.close()
        super().eof_received()


def connection_limits(settings: Settings) -> ConnectionLimits:
    return ConnectionLimits(header_timeout_s=settings.server_header_timeout_s,
                            body_timeout_s=settings.server_body_timeout_s,
                            max_headers=settings.server_max_headers,
                            max_header_bytes=settings.server_max_header_bytes,
                            max_connections_per_ip=settings.server_max_connections_per_ip,
                            trusted_proxies=parse_networks(settings.trusted_proxies))


def guarded_protocol(limits: ConnectionLimits) -> type[GuardedProtocol]:
    """A protocol class for one server: its limits, and its own count of connections per IP."""
    return type("GuardedProtocol", (GuardedProtocol,),
                {"limits": limits, "open_per_ip": Counter()})


def server_config(app: Starlette, host: str, port: int, grace_s: float,
                  limits: ConnectionLimits | None = None, **options: Any) -> uvicorn.Config:
    """The one uvicorn configuration, for `python -m app` and the tests alike."""
    # proxy_headers off: uvicorn would take the client address from the left-most
    # X-Forwarded-For entry, which the client writes; app/clientip.py does it safely.
    # The graceful-shutdown timeout is a backstop behind the answers' own grace period.
    options = {"lifespan": "on", **options}
    return uvicorn.Config(app, host=host, port=port, proxy_headers=False,
                          http=guarded_protocol(limits or ConnectionLimits()),
                          timeout_graceful_shutdown=int(grace_s) + 15, **options)


class AppServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, app: Starlette, grace_s: float) -> None:
        super().__init__(config)
        self._services = services_of(app)
        # uvicorn keeps its open connections here; the app's responses abort a stalled one
        # through the same registry (app/sse.py).
        self.server_state = self._services.connections.server_state
        self._grace_s = grace_s
        self._drain: asyncio.Task[None] | None = None

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        running = self._services.running
        if running is not None:
            # A hard reference: the loop keeps only weak ones to tasks.
            self._drain = asyncio.create_task(running.chat.shutdown(self._grace_s))
        await super().shutdown(sockets)
