"""The SSE response of an answer: sse-starlette's behaviour at a fraction of its cost.

sse-starlette's EventSourceResponse runs every connection in an anyio task group of four tasks
(the stream, a ping loop, a shutdown watcher and a disconnect listener) and wraps every send in
an anyio cancel scope for its send timeout. For a 20-token answer that machinery cost more CPU
than relaying the tokens (bench/RESULTS.md, short answers). This response keeps what we used
it for, and differs deliberately:

- One task besides the request's own: a disconnect listener that cancels the stream when the
  client goes, so a subscriber never outlives its client (uvicorn's `send` returns quietly to a
  client that has gone, so sending alone would not notice).
- One timer per connection instead of a ping task and a cancel scope per send. It fires every
  WATCH_S (at most every half ping interval) and (a) cuts off a client whose send has waited
  `send_timeout_s` and (b) sends a keep-alive comment when nothing was sent for `ping_s`: a
  ping is due only on an idle stream, not every `ping_s` whatever the traffic.
- A stalled client is *aborted* (`Connections.abort`), not closed: uvicorn's close()
  waits to flush the buffered bytes to a client that never reads, so the connection and its
  buffers would stay forever. One log line, no traceback. The answer itself is not affected:
  it belongs to the app and is saved.
- No shutdown watcher: our streams end when their answers end, and AppServer gives answers a
  grace period first (sse-starlette would end every stream the moment uvicorn sees SIGTERM).

The wire is the same: the same headers (sse-starlette's Connection and X-Accel-Buffering, and
Cache-Control no-store unless the caller sets it), the frames as given, keep-alives as
`: ping - <time>` comments, HEAD answered with headers and no body.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import AsyncIterator, Mapping
from typing import Any

from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send
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


def ping_frame() -> bytes:
    """sse-starlette's keep-alive comment, byte for byte."""
    return f": ping - {dt.datetime.now(dt.UTC)}\r\n\r\n".encode()


class AnswerStreamResponse(Response):
    media_type = "text/event-stream"

    def __init__(self, frames: AsyncIterator[bytes], *, connections: Connections, ping_s: float,
                 send_timeout_s: float, headers: Mapping[str, str] | None = None) -> None:
        self.frames = frames
        self.connections = connections
        self.status_code = 200
        self.background = None
        self.ping_s = ping_s
        self.send_timeout_s = send_timeout_s
        merged = {"Cache-Control": "no-store", **(headers or {}),
                  "Connection": "keep-alive", "X-Accel-Buffering": "no"}
        self.init_headers(merged)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        start: Message = {"type": "http.response.start", "status": self.status_code,
                          "headers": self.raw_headers}
        if scope["method"] == "HEAD":
            await send(start)
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            aclose = getattr(self.frames, "aclose", None)
            if aclose is not None:
                await aclose()
            return
        await _Stream(self, scope, receive, send).run(start)


class _Stream:
    """One connection's stream: its frames, its disconnect listener and its watchdog timer."""

    __slots__ = ("response", "scope", "receive", "send", "loop", "task", "sending_since",
                 "last_sent", "watchdog", "pinger", "ended_by", "cancels")

    def __init__(self, response: AnswerStreamResponse, scope: Scope, receive: Receive,
                 send: Send) -> None:
        self.response = response
        self.scope = scope
        self.receive = receive
        self.send = send
        self.loop = asyncio.get_running_loop()
        self.task = asyncio.current_task()
        self.sending_since: float | None = None
        self.last_sent = self.loop.time()
        self.watchdog: asyncio.TimerHandle | None = None
        self.pinger: asyncio.Task[None] | None = None
        # Why this stream stopped early ("disconnect", "stalled"), if it did.
        self.ended_by: str | None = None
        self.cancels = 0

    @property
    def watch_s(self) -> float:
        return min(self.response.ping_s, self.response.send_timeout_s) / 2

    async def run(self, start: Message) -> None:
        frames = self.response.frames
        await self.send(start)
        listener = self.loop.create_task(self._listen_for_disconnect())
        self.watchdog = self.loop.call_later(self.watch_s, self._watch)
        try:
            async with contextlib.aclosing(frames):  # type: ignore[type-var]
                async for frame in frames:
                    await self._send_body(frame)
            self._stop_pinging()
            await self.send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            if self.ended_by is None or self.task is None:
                raise
            # Our own cancel (the client left, or stopped reading): a normal end, not an error.
            for _ in range(self.cancels):
                self.task.uncancel()
        finally:
            self.watchdog.cancel()
            listener.cancel()
            self._stop_pinging()
        if self.ended_by == "stalled":
            # Let the server see the connection lost before this response returns, so it does
            # not report a response that ended without completing.
            await asyncio.sleep(0)

    async def _send_body(self, body: bytes) -> None:
        self.sending_since = self.loop.time()
        try:
            await self.send({"type": "http.response.body", "body": body, "more_body": True})
        finally:
            self.sending_since = None
            self.last_sent = self.loop.time()

    def _end(self, reason: str) -> None:
        if self.ended_by is None and self.task is not None:
            self.ended_by = reason
            self.cancels += 1
            self.task.cancel()

    async def _listen_for_disconnect(self) -> None:
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                self._end("disconnect")
                return

    def _watch(self) -> None:
        now = self.loop.time()
        response = self.response
        if self.sending_since is not None and now - self.sending_since >= response.send_timeout_s:
            self._cut_off()
            return
        if (self.sending_since is None and self.pinger is None
                and now - self.last_sent >= response.ping_s):
            self.pinger = self.loop.create_task(self._ping())
        self.watchdog = self.loop.call_later(self.watch_s, self._watch)

    async def _ping(self) -> None:
        try:
            await self._send_body(ping_frame())
        finally:
            self.pinger = None

    def _stop_pinging(self) -> None:
        if self.pinger is not None:
            self.pinger.cancel()
            self.pinger = None

    def _cut_off(self) -> None:
        """A client that stopped reading: drop its connection, unsent bytes and all."""
        client: Any = self.scope.get("client")
        if client is not None and self.response.connections.abort(tuple(client)):
            log.info("a client stopped reading for %ss: its stream was cut off",
                     self.response.send_timeout_s)
        else:
            # Another server: end the response; the server closes the connection its own way.
            log.info("a client stopped reading for %ss: its stream was ended",
                     self.response.send_timeout_s)
        self._end("stalled")
