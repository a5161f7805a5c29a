"""sse-starlette's EventSourceResponse, with one deliberate difference: a stalled client is cut off.

sse-starlette ends a stream whose send has waited `send_timeout` (a client that stopped reading:
a phone in a tunnel, a half-open TCP connection) by raising SendTimeoutError out of the ASGI
app. uvicorn then logs a traceback and *closes* the transport, and close() waits to flush the
buffered bytes to a client that never reads: the connection and its buffers stay forever. Here
the response asks the server to *abort* that connection instead (AppServer.abort_connection),
and logs one line. The answer itself is not affected: it belongs to the app and is saved.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from sse_starlette import EventSourceResponse
from sse_starlette.sse import SendTimeoutError
from starlette.types import Receive, Scope, Send

log = logging.getLogger(__name__)

AbortConnection = Callable[[tuple[str, int]], bool]


class AnswerStreamResponse(EventSourceResponse):
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        except* SendTimeoutError:
            abort: AbortConnection | None = getattr(scope["app"].state, "abort_connection", None)
            client = scope.get("client")
            if abort is None or client is None or not abort(tuple(client)):
                raise  # another server: let it close the connection its own way
            log.info("a client stopped reading for %ss: its stream was cut off",
                     self.send_timeout)
            # Let the server see the connection lost before this response returns, so it does
            # not report a response that ended without completing.
            await asyncio.sleep(0)
