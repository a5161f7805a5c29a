"""A fake OpenAI-compatible /v1/chat/completions server that costs almost no CPU.

It is the floor of the benchmark, so it deliberately differs from a real web framework:
plain asyncio with a hand-rolled minimal HTTP/1.1 (keep-alive, chunked responses), every
chunk's bytes built once at start-up, and the stream driven by loop timers (one `call_at`
callback per token, no coroutine per token).  The timing of a stream can be set per
process (command line) and per request with a path prefix, so one process serves both the
ordinary and the slow streams of a run:

    POST /v1/chat/completions                         defaults: 200 ms, 100 tokens, 20 ms
    POST /ttft=300,tokens=20,gap=2000/v1/chat/completions

or, for a client whose base URL is fixed (our app, LiteLLM), with a marker anywhere in the
request body, e.g. in the user's message: `bench-timing:ttft=300,tokens=20,gap=2000`.

GET /stats answers {"active", "served", "abandoned"} (abandoned: the client left before the
end), which the harness uses to see whether a proxy lets go of the upstream.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import re
import signal
import sys
import time
from dataclasses import dataclass

CREATED = int(time.time())
CHUNK_ID = "chatcmpl-bench"


@dataclass(frozen=True)
class Timing:
    ttft_ms: float = 200.0
    tokens: int = 100
    gap_ms: float = 20.0


def token_text(index: int) -> str:
    """The text of token `index` (0-based); the harness recomputes it to check answers."""
    return f"word{index} "


def expected_answer(tokens: int) -> str:
    return "".join(token_text(i) for i in range(tokens))


def _chunked(payload: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(payload), payload)


def _sse(obj: object) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


def _chunk_obj(model: str, delta: dict[str, str], finish: str | None) -> dict[str, object]:
    return {
        "id": CHUNK_ID,
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }


class ChunkCache:
    """Every byte string a stream writes, built once per (model, token count)."""

    def __init__(self) -> None:
        self._streams: dict[tuple[str, int], tuple[list[bytes], bytes, bytes]] = {}

    def stream(self, model: str, tokens: int) -> tuple[list[bytes], bytes, bytes]:
        """(per-token chunks, closing chunk without usage, closing chunk with usage)."""
        key = (model, tokens)
        cached = self._streams.get(key)
        if cached is None:
            parts = []
            for i in range(tokens):
                delta = {"content": token_text(i)}
                if i == 0:
                    # OpenAI opens with the role; sending it with the first text keeps one write.
                    delta = {"role": "assistant", "content": token_text(i)}
                parts.append(_chunked(_sse(_chunk_obj(model, delta, None))))
            finish = _sse(_chunk_obj(model, {}, "stop"))
            usage = _sse(
                {
                    "id": CHUNK_ID,
                    "object": "chat.completion.chunk",
                    "created": CREATED,
                    "model": model,
                    "choices": [],
                    "usage": {
                        "prompt_tokens": 20,
                        "completion_tokens": tokens,
                        "total_tokens": 20 + tokens,
                    },
                }
            )
            done = b"data: [DONE]\n\n"
            cached = (parts, _chunked(finish + done) + b"0\r\n\r\n",
                      _chunked(finish + usage + done) + b"0\r\n\r\n")
            self._streams[key] = cached
        return cached


class Stats:
    def __init__(self) -> None:
        self.active = 0
        self.served = 0
        self.abandoned = 0


STREAM_HEADERS = (
    b"HTTP/1.1 200 OK\r\n"
    b"Content-Type: text/event-stream\r\n"
    b"Cache-Control: no-cache\r\n"
    b"Transfer-Encoding: chunked\r\n"
    b"\r\n"
)


BODY_TIMING = re.compile(rb"bench-timing:([a-z0-9=,.]+)")


def parse_timing(path: str, body: bytes, default: Timing) -> Timing:
    """Read an optional `/ttft=..,tokens=..,gap=..` path prefix or body marker."""
    first = path.lstrip("/").split("/", 1)[0]
    if "=" not in first:
        marker = BODY_TIMING.search(body)
        if marker is None:
            return default
        first = marker.group(1).decode()
    values = dict(part.split("=", 1) for part in first.strip(",").split(","))
    return Timing(
        ttft_ms=float(values.get("ttft", default.ttft_ms)),
        tokens=int(values.get("tokens", default.tokens)),
        gap_ms=float(values.get("gap", default.gap_ms)),
    )


class StreamDriver:
    """Writes one stream's pre-built chunks from loop timers, then resolves `finished`."""

    __slots__ = ("loop", "writer", "parts", "closing", "gap_s", "index", "finished", "stats",
                 "next_at")

    def __init__(self, loop: asyncio.AbstractEventLoop, writer: asyncio.StreamWriter,
                 parts: list[bytes], closing: bytes, timing: Timing, stats: Stats) -> None:
        self.loop = loop
        self.writer = writer
        self.parts = parts
        self.closing = closing
        self.gap_s = timing.gap_ms / 1000.0
        self.index = 0
        self.finished: asyncio.Future[bool] = loop.create_future()
        self.stats = stats
        # Absolute deadlines, so that a late callback does not push every later token back.
        self.next_at = loop.time() + timing.ttft_ms / 1000.0
        loop.call_at(self.next_at, self.tick)

    def tick(self) -> None:
        if self.writer.transport.is_closing():
            self.stats.abandoned += 1
            self.finished.set_result(False)
            return
        if self.index < len(self.parts):
            self.writer.write(self.parts[self.index])
            self.index += 1
            if self.index < len(self.parts):
                self.next_at += self.gap_s
                self.loop.call_at(self.next_at, self.tick)
                return
        self.writer.write(self.closing)
        self.finished.set_result(True)


class FakeUpstream:
    def __init__(self, timing: Timing) -> None:
        self.timing = timing
        self.cache = ChunkCache()
        self.stats = Stats()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                headers = {}
                for line in lines[1:]:
                    if ":" in line:
                        name, value = line.split(":", 1)
                        headers[name.strip().lower()] = value.strip()
                length = int(headers.get("content-length", "0"))
                body = await reader.readexactly(length) if length else b""
                keep_alive = headers.get("connection", "").lower() != "close"
                if method == "POST" and path.endswith("/chat/completions"):
                    await self.chat(path, body, writer)
                elif method == "GET" and path.endswith("/models"):
                    self.json_response(writer, {"object": "list", "data": [
                        {"id": "bench", "object": "model", "created": CREATED,
                         "owned_by": "bench"}]})
                elif method == "GET" and path == "/stats":
                    self.json_response(writer, {"active": self.stats.active,
                                                "served": self.stats.served,
                                                "abandoned": self.stats.abandoned})
                else:
                    self.json_response(writer, {"error": {"message": "not found"}}, 404)
                if not keep_alive or writer.transport.is_closing():
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            writer.close()

    def json_response(self, writer: asyncio.StreamWriter, obj: object, status: int = 200) -> None:
        payload = json.dumps(obj).encode()
        reason = b"OK" if status == 200 else b"Not Found"
        writer.write(b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (status, reason, len(payload), payload))

    async def chat(self, path: str, body: bytes, writer: asyncio.StreamWriter) -> None:
        request = json.loads(body or b"{}")
        timing = parse_timing(path, body, self.timing)
        model = str(request.get("model", "bench"))
        loop = asyncio.get_running_loop()
        self.stats.active += 1
        try:
            if not request.get("stream"):
                await asyncio.sleep((timing.ttft_ms + timing.gap_ms * (timing.tokens - 1)) / 1000)
                text = expected_answer(timing.tokens)
                self.json_response(writer, {
                    "id": CHUNK_ID, "object": "chat.completion", "created": CREATED,
                    "model": model,
                    "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                                 "message": {"role": "assistant", "content": text}}],
                    "usage": {"prompt_tokens": 20, "completion_tokens": timing.tokens,
                              "total_tokens": 20 + timing.tokens},
                })
                self.stats.served += 1
                return
            include_usage = bool((request.get("stream_options") or {}).get("include_usage"))
            parts, closing_plain, closing_usage = self.cache.stream(model, timing.tokens)
            writer.write(STREAM_HEADERS)
            driver = StreamDriver(loop, writer, parts,
                                  closing_usage if include_usage else closing_plain,
                                  timing, self.stats)
            if await driver.finished:
                self.stats.served += 1
        finally:
            self.stats.active -= 1


async def serve(host: str, port: int, timing: Timing) -> None:
    # A full collection over a heap grown by thousands of streams pauses the loop for tens of
    # ms, which would show up as latency of the floor: freeze what start-up made, collect rarely.
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 50, 1000)
    upstream = FakeUpstream(timing)
    server = await asyncio.start_server(upstream.handle, host, port, backlog=4096)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"fake upstream on http://{host}:{port}/v1 ttft={timing.ttft_ms}ms "
          f"tokens={timing.tokens} gap={timing.gap_ms}ms", flush=True)
    async with server:
        await stop.wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=18001)
    parser.add_argument("--ttft-ms", type=float, default=200.0)
    parser.add_argument("--tokens", type=int, default=100)
    parser.add_argument("--gap-ms", type=float, default=20.0)
    args = parser.parse_args(argv)
    try:
        import uvloop
    except ImportError:  # plain asyncio still works; uvloop just makes the floor cheaper
        uvloop = None
    timing = Timing(args.ttft_ms, args.tokens, args.gap_ms)
    if uvloop is not None:
        uvloop.run(serve(args.host, args.port, timing))
    else:
        asyncio.run(serve(args.host, args.port, timing))


if __name__ == "__main__":
    sys.exit(main())
