"""A small TCP fault proxy, for the faults signals cannot make.

It sits between the app and a server (PostgreSQL, the model) on loopback, forwards bytes both
ways, and on command: delays every chunk, blackholes (keeps connections open, forwards nothing,
like a dead network path), resets every connection (RST, like a crashed peer or a firewall),
closes a connection after N bytes from the server (a cut in the middle of an answer), or lets a
request through and loses its reply (a server that acted, then froze or lost the path).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from types import TracebackType


class FaultProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.delay_s = 0.0
        self.blackholed = False
        # Close each connection once the server has sent this many bytes on it; None: never.
        self.close_after_bytes: int | None = None
        # The same, for the next connection only.
        self.cut_next_after_bytes: int | None = None
        self.accepted = 0
        # See silence_replies_after: the client's requests, in order, that arm the silence.
        self._silence_markers: tuple[bytes, ...] = ()
        self.silenced = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()
        self._sockets: set[asyncio.StreamWriter] = set()
        self._flowing = asyncio.Event()
        self._flowing.set()

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def open_connections(self) -> int:
        """Client connections currently open through the proxy."""
        return len(self._sockets) // 2

    async def __aenter__(self) -> FaultProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        assert self._server is not None
        self._server.close()
        self.heal()
        self.reset_all()
        for task in list(self._pipes):
            task.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)
        await self._server.wait_closed()

    # -- faults -------------------------------------------------------------------------------

    def blackhole(self) -> None:
        """Forward nothing, in either direction, on old and new connections; close none."""
        self.blackholed = True
        self._flowing.clear()

    def silence_replies_after(self, *markers: bytes) -> None:
        """On the next connection whose client sends each of `markers` in turn (in separate
        requests), forward the request with the last marker to the server, then nothing more the
        server says: the server acts on it, and its reply is lost. Once, on one connection."""
        self._silence_markers = markers
        self.silenced.clear()

    def heal(self) -> None:
        self.blackholed = False
        self.delay_s = 0.0
        self.close_after_bytes = None
        self._flowing.set()

    def reset_all(self) -> None:
        """Abort every open connection with a TCP RST (SO_LINGER 0), both sides."""
        for writer in list(self._sockets):
            _abort_with_rst(writer)
        self._sockets.clear()

    # -- forwarding ---------------------------------------------------------------------------

    async def _accept(self, client_reader: asyncio.StreamReader,
                      client_writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        try:
            server_reader, server_writer = await asyncio.open_connection(*self.target)
        except OSError:
            _abort_with_rst(client_writer)
            return
        self._sockets.update((client_writer, server_writer))
        # Per connection: how many silence markers its client has sent, and whether its
        # replies are being dropped.
        progress = {"markers": 0, "muted": False}
        upstream = asyncio.create_task(self._pipe(client_reader, server_writer, limit=None,
                                                  watch=progress))
        limit, self.cut_next_after_bytes = (
            self.cut_next_after_bytes or self.close_after_bytes, None)
        downstream = asyncio.create_task(self._pipe(server_reader, client_writer, limit=limit,
                                                    muted=progress))
        self._pipes.update((upstream, downstream))
        try:
            await asyncio.wait({upstream, downstream}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (upstream, downstream):
                task.cancel()
            await asyncio.gather(upstream, downstream, return_exceptions=True)
            self._pipes.difference_update((upstream, downstream))
            for writer in (client_writer, server_writer):
                self._sockets.discard(writer)
                writer.close()

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
                    limit: int | None, watch: dict[str, int | bool] | None = None,
                    muted: dict[str, int | bool] | None = None) -> None:
        sent = 0
        with contextlib.suppress(ConnectionError, OSError):
            while True:
                chunk = await reader.read(65536)
                if not chunk:
                    return
                if watch is not None:
                    self._watch(chunk, watch)
                if muted is not None and muted["muted"]:
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


def _abort_with_rst(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
