"""The SSE response: pre-encoded event frames written straight to the ASGI `send`.

This deliberately replaces sse-starlette's EventSourceResponse on the hot path. That response
starts four tasks per connection (the stream, pings, a shutdown listener and a disconnect
listener, in an anyio task group) and wraps every send in an anyio cancel scope; with one
frame per token that was a large share of our CPU per token (bench/RESULTS.md). Here:
- no task of its own: the request's task sends the frames as the event log yields them;
- keep-alive comments come from the event log itself (`eventlog.KEEPALIVE`), which already
  waits for the next event and so knows when the line has been quiet;
- a client that stops reading gets `SEND_TIMEOUT_S` per frame, then the connection is closed;
- a client that leaves is not watched for: uvicorn drops what we send after a disconnect, and
  the stream ends with its answer, whose length the LLM timeout bounds. The answer itself
  never depended on the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping

from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from .eventlog import Event

# A comment at once, so proxies and clients see bytes before the first token.
OPENING = b": ok\n\n"


class EventStreamResponse(StreamingResponse):
    """A StreamingResponse for its headers and type; its own `__call__` does the sending."""

    def __init__(self, events: AsyncIterator[Event], *, headers: Mapping[str, str],
                 send_timeout_s: float) -> None:
        super().__init__((), media_type="text/event-stream", headers=headers)
        self._events = events
        self._send_timeout_s = send_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async with contextlib.aclosing(self._events):  # type: ignore[type-var]
            await send({"type": "http.response.start", "status": self.status_code,
                        "headers": self.raw_headers})
            if scope.get("method") == "HEAD":  # headers only: a HEAD must not open a stream
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                return
            try:
                await self._send_frame(send, OPENING)
                async for event in self._events:
                    await self._send_frame(send, event.frame)
            except TimeoutError:
                # Returning without ending the body makes uvicorn close the connection.
                return
            await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _send_frame(self, send: Send, frame: bytes) -> None:
        async with asyncio.timeout(self._send_timeout_s):
            await send({"type": "http.response.body", "body": frame, "more_body": True})
