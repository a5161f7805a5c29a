"""sse-starlette's EventSourceResponse, with one deliberate difference: a stalled client is cut off.

sse-starlette ends a stream whose send has waited `send_timeout` (a client that stopped reading:
a phone in a tunnel, a half-open TCP connection) by raising SendTimeoutError out of the ASGI
app. uvicorn then logs a traceback and *closes* the transport, and close() waits to flush the
buffered bytes to a client that never reads: the connection and its buffers stay forever. Here
the response asks the server to *abort* that connection instead (`Connections.abort`), and logs
one line. The answer itself is not affected: it belongs to the app and is saved.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterable, Mapping
from typing import Any

from sse_starlette import EventSourceResponse
from sse_starlette.sse import SendTimeoutError
from starlette.types import Receive, Scope, Send
from uvicorn.server import ServerState

log = logging.getLogger(__name__)


class Connections:
    """The open connections of the server that serves this app, so a response can abort one.

    The app owns the registry and app/server.py's AppServer adopts it as uvicorn's own server
    state (uvicorn's protocols add and remove themselves there), so nothing is patched in after
    the app is built. Under another server the registry stays empty and `abort` says False.
    """

    def __init__(self) -> None:
        self.server_state = ServerState()

    def abort(self, client: tuple[str, int]) -> bool:
        """Drop the connection from `client` at once, unsent bytes and all (close() would wait
        to send them to a client that does not read)."""
        for protocol in self.server_state.connections:
            if getattr(protocol, "client", None) == client:
                protocol.transport.abort()
                return True
        return False


class AnswerStreamResponse(EventSourceResponse):
    def __init__(self, content: AsyncIterable[bytes], *, connections: Connections,
                 ping: int, headers: Mapping[str, str], send_timeout: float) -> None:
        super().__init__(content, ping=ping, headers=headers, send_timeout=send_timeout)
        self._connections = connections

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        except* SendTimeoutError:
            client: Any = scope.get("client")
            if client is None or not self._connections.abort(tuple(client)):
                raise  # another server: let it close the connection its own way
            log.info("a client stopped reading for %ss: its stream was cut off",
                     self.send_timeout)
            # Let the server see the connection lost before this response returns, so it does
            # not report a response that ended without completing.
            await asyncio.sleep(0)
