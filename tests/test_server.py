"""Bare uvicorn is safe to expose: raw sockets on loopback against the server's own limits."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import Any

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from app.clientip import parse_networks
from app.server import ConnectionLimits, server_config

# Short deadlines, so a test waits a second rather than the production ten.
LIMITS = ConnectionLimits(header_timeout_s=0.5, body_timeout_s=1.0, max_headers=20,
                          max_header_bytes=4096, max_connections_per_ip=3,
                          trusted_proxies=parse_networks(["127.0.0.3"]))
GUARD_S = 15  # a guard against a hang, not a measurement


async def echo(request: Request) -> Response:
    return PlainTextResponse(f"read {len(await request.body())} bytes")


@pytest.fixture
def limits() -> ConnectionLimits:
    return LIMITS


@pytest.fixture
async def server_port(limits: ConnectionLimits) -> AsyncIterator[int]:
    app = Starlette(routes=[Route("/", echo, methods=["GET", "POST"])])
    # uvicorn's own Server: the limits are in the config's protocol, and this bare app has no
    # answers for AppServer to drain.
    server = uvicorn.Server(server_config(app, "127.0.0.1", 0, grace_s=1.0, limits=limits,
                                          lifespan="off", log_level="warning"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    yield int(server.servers[0].sockets[0].getsockname()[1])
    server.should_exit = True
    await task


Connect = Callable[..., Any]


@pytest.fixture
def connect(server_port: int) -> Connect:
    async def open_from(source: str = "127.0.0.1") -> tuple[asyncio.StreamReader,
                                                            asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", server_port, local_addr=(source, 0))

    return open_from


async def answer_and_close(reader: asyncio.StreamReader) -> bytes:
    """Everything the server sends until it closes the connection."""
    async with asyncio.timeout(GUARD_S):
        with contextlib.suppress(ConnectionResetError):
            return await reader.read(-1)
    return b""


async def test_an_ordinary_request_and_a_kept_alive_one_are_served(connect: Connect) -> None:
    reader, writer = await connect()
    for _ in range(2):
        writer.write(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello")
        async with asyncio.timeout(GUARD_S):
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200")
            assert await reader.readexactly(len(b"read 5 bytes")) == b"read 5 bytes"
    writer.close()


async def test_headers_that_trickle_in_are_cut_off(connect: Connect) -> None:
    reader, writer = await connect()
    writer.write(b"GET / HTTP/1.1\r\nHost: t\r\nX-Slow: a")  # and then nothing more
    assert (await answer_and_close(reader)).startswith(b"HTTP/1.1 408")
    writer.close()


async def test_a_connection_that_never_sends_a_request_is_closed(connect: Connect) -> None:
    reader, writer = await connect()
    assert (await answer_and_close(reader)).startswith(b"HTTP/1.1 408")
    writer.close()


async def test_a_body_that_trickles_in_is_cut_off(connect: Connect) -> None:
    reader, writer = await connect()
    writer.write(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\nonly ten b")
    assert (await answer_and_close(reader)).startswith(b"HTTP/1.1 408")
    writer.close()


async def test_too_many_headers_are_refused(connect: Connect) -> None:
    reader, writer = await connect()
    headers = b"".join(b"X-H%d: v\r\n" % n for n in range(LIMITS.max_headers + 1))
    writer.write(b"GET / HTTP/1.1\r\nHost: t\r\n" + headers + b"\r\n")
    assert (await answer_and_close(reader)).startswith(b"HTTP/1.1 431")
    writer.close()


async def test_a_huge_header_is_refused_without_reading_it_whole(connect: Connect) -> None:
    reader, writer = await connect()
    writer.write(b"GET / HTTP/1.1\r\nHost: t\r\nX-Big: ")
    with contextlib.suppress(ConnectionError):
        for _ in range(1024):  # up to 8 MB, in 8 KB pieces: the server stops after a few
            writer.write(b"a" * 8192)
            await writer.drain()
    assert (await answer_and_close(reader)).startswith(b"HTTP/1.1 431")
    writer.close()


# Idle connections held for the whole test: the header deadline must not close them first.
@pytest.mark.parametrize("limits", [replace(LIMITS, header_timeout_s=60)])
async def test_one_address_holds_only_so_many_connections(connect: Connect) -> None:
    held = [await connect("127.0.0.2") for _ in range(LIMITS.max_connections_per_ip)]
    extra_reader, extra_writer = await connect("127.0.0.2")
    # Refused at once, before a byte is read.
    assert await answer_and_close(extra_reader) == b""
    # Another address is not affected, nor is our own proxy, whoever it carries.
    other_reader, other_writer = await connect("127.0.0.4")
    proxy = [await connect("127.0.0.3") for _ in range(LIMITS.max_connections_per_ip + 2)]
    for reader, writer in [(other_reader, other_writer), proxy[-1]]:
        writer.write(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        async with asyncio.timeout(GUARD_S):
            assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
    # A connection that closes gives its place back.
    held[0][1].close()
    await held[0][1].wait_closed()
    for _ in range(200):  # the server sees the close a moment later
        reader, writer = await connect("127.0.0.2")
        writer.write(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        try:
            async with asyncio.timeout(GUARD_S):
                head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionResetError):
            writer.close()
            await asyncio.sleep(0.02)
            continue
        assert head.startswith(b"HTTP/1.1 200")
        writer.close()
        break
    else:
        raise AssertionError("the closed connection never gave its place back")
    for _, writer in [*held, *proxy, (extra_reader, extra_writer), (other_reader, other_writer)]:
        writer.close()
