"""The one fake model: an OpenAI-compatible /v1/chat/completions server on loopback.

Tests whose app runs in the test's own process mock the model with respx (tests/conftest.py);
this server is for everything respx cannot reach: an app started with `python -m app`, an app
behind nginx or a fault proxy, a browser test, and the benchmark, where it is the floor.

A stream is chosen per request, first match wins:

- a timing, for the benchmark: a path prefix `/ttft=300,tokens=20,gap=2000/v1/...`, or the
  marker `bench-timing:ttft=300,tokens=20,gap=2000` anywhere in the request body (our app and
  LiteLLM have a fixed base URL, so the marker rides in the user's message);
- the next queued script (`queue`), then the script for the question (`answer`), then the
  default (a script, or a timing for the benchmark).

A script is tokens with a delay between them; held (`held=True`), each token waits for the test
to `release()` it, so a test can prove that nothing between the model and it holds tokens back
without measuring time; and it may end in a fault (a stall, a cut connection, an HTTP error).
Timed streams deliberately differ from scripted ones: every chunk's bytes are built once and
written from loop timers (one `call_at` per token, no coroutine), so the floor costs almost no
CPU. `GET /stats` answers {"active", "served", "abandoned"} (abandoned: the client left before
the end), which the benchmark uses to see whether a proxy lets go of the upstream.

The server runs on an event loop in its own thread (`with FakeModel() as model:` or `async
with`), so it serves app processes across the tests of a module whatever loop each test runs
in; `python -m tests.fake_model` runs it in the foreground, as the benchmark does.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import re
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any
from urllib.parse import parse_qsl

CREATED = int(time.time())
CHUNK_ID = "chatcmpl-fake"
# A held token nobody releases ends its stream after this long, so a failed test cannot leave a
# handler waiting forever.
HOLD_TIMEOUT_S = 60.0
DEFAULT_TOKENS = ("Hello", "!", " How", " can", " I", " help", "?")
DONE_LINE = b"data: [DONE]\n\n"


# -- the chunk encoder: OpenAI's chat.completion.chunk SSE, and HTTP chunked framing ------------


def chunk_line(content: str | None = None, *, usage: dict[str, int] | None = None,
               finish: str | None = None, role: bool = False, model: str = "fake") -> bytes:
    """One `data:` line of an OpenAI chat.completion.chunk stream."""
    delta: dict[str, str] = {} if content is None else {"content": content}
    if role:  # OpenAI opens with the role; sending it with the first text keeps one write
        delta = {"role": "assistant", **delta}
    choices = [] if usage is not None else [
        {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]
    body: dict[str, Any] = {"id": CHUNK_ID, "object": "chat.completion.chunk",
                            "created": CREATED, "model": model, "choices": choices}
    if usage is not None:
        body["usage"] = usage
    return b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"


def chunked(payload: bytes) -> bytes:
    """One chunk of an HTTP/1.1 chunked body."""
    return b"%x\r\n%s\r\n" % (len(payload), payload)


LAST_CHUNK = b"0\r\n\r\n"


def usage_of(completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": 20, "completion_tokens": completion_tokens,
            "total_tokens": 20 + completion_tokens}


# -- what a request is answered with ------------------------------------------------------------


@dataclass
class Script:
    """One scripted answer. `released` is how many tokens may go out; None means all of them."""

    tokens: list[str] = field(default_factory=lambda: list(DEFAULT_TOKENS))
    delay: float = 0.0  # seconds between tokens
    released: int | None = None
    # Faults, after the tokens: hang with the connection open; or drop the connection.
    stall_after_tokens: bool = False
    cut_after_tokens: bool = False
    # An HTTP error instead of a stream.
    status: int = 200
    _waiting: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = field(
        default_factory=set, repr=False, compare=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    @property
    def text(self) -> str:
        return "".join(self.tokens)

    def release(self, count: int = 1) -> None:
        """Let `count` more tokens of a held answer go out (from any thread)."""
        assert self.released is not None, "only a held answer is released"
        self.released += count
        self._wake()

    def release_all(self) -> None:
        if self.released is not None:
            self.released = len(self.tokens)
            self._wake()

    def _wake(self) -> None:
        with self._lock:
            waiting = list(self._waiting)
        for loop, event in waiting:
            with contextlib.suppress(RuntimeError):  # that loop has closed
                loop.call_soon_threadsafe(event.set)

    async def wait_for_release(self, index: int) -> bool:
        """Until token `index` may go out: False if nobody released it in HOLD_TIMEOUT_S."""
        event = asyncio.Event()
        entry = (asyncio.get_running_loop(), event)
        with self._lock:
            self._waiting.add(entry)
        try:
            # Checked after registering, so a release between the two is not missed.
            while self.released is not None and index >= self.released:
                try:
                    await asyncio.wait_for(event.wait(), HOLD_TIMEOUT_S)
                except TimeoutError:
                    return False
                event.clear()
            return True
        finally:
            with self._lock:
                self._waiting.discard(entry)


@dataclass(frozen=True)
class Timing:
    """A benchmark stream: the first token after `ttft_ms`, then one every `gap_ms`."""

    ttft_ms: float = 200.0
    tokens: int = 100
    gap_ms: float = 20.0


def token_text(index: int) -> str:
    """The text of timed token `index` (0-based); the benchmark recomputes it to check answers."""
    return f"word{index} "


def expected_answer(tokens: int) -> str:
    return "".join(token_text(i) for i in range(tokens))


BODY_TIMING = re.compile(rb"bench-timing:([a-z0-9=,.]+)")


def parse_timing(path: str, body: bytes, base: Timing) -> Timing | None:
    """The timing a `/ttft=..,tokens=..,gap=..` path prefix or body marker asks for (values it
    leaves out taken from `base`), or None without one."""
    first = path.lstrip("/").split("/", 1)[0]
    if "=" not in first:
        marker = BODY_TIMING.search(body)
        if marker is None:
            return None
        first = marker.group(1).decode()
    values = dict(part.split("=", 1) for part in first.strip(",").split(","))
    return Timing(ttft_ms=float(values.get("ttft", base.ttft_ms)),
                  tokens=int(values.get("tokens", base.tokens)),
                  gap_ms=float(values.get("gap", base.gap_ms)))


class ChunkCache:
    """Every byte string a timed stream writes, built once per (model, token count)."""

    def __init__(self) -> None:
        self._streams: dict[tuple[str, int], tuple[list[bytes], bytes, bytes]] = {}

    def stream(self, model: str, tokens: int) -> tuple[list[bytes], bytes, bytes]:
        """(per-token chunks, closing chunk without usage, closing chunk with usage)."""
        key = (model, tokens)
        cached = self._streams.get(key)
        if cached is None:
            parts = [chunked(chunk_line(token_text(i), role=i == 0, model=model))
                     for i in range(tokens)]
            finish = chunk_line(finish="stop", model=model)
            usage = chunk_line(usage=usage_of(tokens), model=model)
            cached = (parts, chunked(finish + DONE_LINE) + LAST_CHUNK,
                      chunked(finish + usage + DONE_LINE) + LAST_CHUNK)
            self._streams[key] = cached
        return cached


class TimedStream:
    """Writes one timed stream's pre-built chunks from loop timers, then resolves `finished`."""

    __slots__ = ("loop", "writer", "parts", "closing", "gap_s", "index", "finished", "next_at")

    def __init__(self, loop: asyncio.AbstractEventLoop, writer: asyncio.StreamWriter,
                 parts: list[bytes], closing: bytes, timing: Timing) -> None:
        self.loop = loop
        self.writer = writer
        self.parts = parts
        self.closing = closing
        self.gap_s = timing.gap_ms / 1000.0
        self.index = 0
        self.finished: asyncio.Future[bool] = loop.create_future()
        # Absolute deadlines, so that a late callback does not push every later token back.
        self.next_at = loop.time() + timing.ttft_ms / 1000.0
        loop.call_at(self.next_at, self.tick)

    def tick(self) -> None:
        if self.writer.transport.is_closing():
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


STREAM_HEAD = (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
               b"cache-control: no-cache\r\n")


# -- the server ---------------------------------------------------------------------------------


class FakeModel:
    """POST /v1/chat/completions answered by script or timing; records every request.

    `chunked=False` answers with a body ended by closing the connection (as some compatible
    servers do) instead of the chunked encoding OpenAI uses.
    """

    def __init__(self, default: Script | Timing | None = None, *, chunked: bool = True,
                 host: str = "127.0.0.1", port: int = 0, record: bool = True) -> None:
        self.default: Script | Timing = default if default is not None else Script()
        self.chunked = chunked
        # The benchmark serves hundreds of thousands of requests: it keeps none of them.
        self.record = record
        self.scripts: dict[str, Script] = {}
        self.queued: list[Script] = []
        self.requests: list[dict[str, Any]] = []
        # GET pages on the model's own origin (path -> the query's parameters -> HTML): a store
        # page that embeds the widget from another origin than the app's.
        self.pages: dict[str, Callable[[dict[str, str]], str]] = {}
        self.open_connections = 0
        self.busy = 0  # responses being written
        self.active = self.served = self.abandoned = 0
        self._address = (host, port)
        self._cache = ChunkCache()
        self._server: asyncio.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._stopping: asyncio.Event | None = None

    # -- what the test sets and reads -----------------------------------------------------------

    def answer(self, question: str, *tokens: str, held: bool = False,
               delay: float = 0.0) -> Script:
        """Answer `question` (the last message's text) with `tokens`; held: one per release."""
        script = Script(list(tokens), delay=delay, released=0 if held else None)
        self.scripts[question] = script
        return script

    def queue(self, *scripts: Script) -> None:
        """Answer the next requests with these, in order, whatever they ask."""
        self.queued.extend(scripts)

    def hold_default(self, tokens: list[str] | None = None) -> Script:
        """From now on every request is answered with one held script: release its tokens."""
        script = Script(list(tokens) if tokens else list(DEFAULT_TOKENS), released=0)
        self.default = script
        return script

    @property
    def questions(self) -> list[str]:
        """The last message of every request, in order."""
        return [_question(request) for request in self.requests]

    @property
    def port(self) -> int:
        assert self._server is not None, "the model is not running"
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        """What OPENAI_BASE_URL is set to."""
        return f"{self.url}/v1"

    # -- running --------------------------------------------------------------------------------

    async def start(self) -> None:
        """Listen on the running loop (the benchmark's foreground process)."""
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        self._server = await asyncio.start_server(self._accept, *self._address, backlog=4096)

    async def stop(self) -> None:
        for script in [*self.scripts.values(), *self.queued, self.default]:
            if isinstance(script, Script):
                script.release_all()  # held answers end, so their streams close
        assert self._server is not None and self._stopping is not None
        self._stopping.set()  # stalled answers end
        self._server.close()
        # Cut rather than cancel: a handler whose connection is gone ends by itself.
        for writer in list(self._writers):
            writer.transport.abort()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        await self._server.wait_closed()

    def __enter__(self) -> FakeModel:
        loop = asyncio.new_event_loop()
        listening = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.run_until_complete(self.start())
            listening.set()
            loop.run_forever()
            loop.close()

        self._thread = threading.Thread(target=run, name="fake-model", daemon=True)
        self._thread.start()
        assert listening.wait(10), "the fake model did not start"
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        assert self._loop is not None and self._thread is not None
        asyncio.run_coroutine_threadsafe(self.stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    async def __aenter__(self) -> FakeModel:
        return self.__enter__()

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await asyncio.to_thread(self.__exit__, exc_type, exc, tb)

    # -- serving --------------------------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self._writers.add(writer)
        self.open_connections += 1
        try:
            while True:  # keep-alive: the SDK's pool reuses connections
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                headers = {}
                for line in lines[1:]:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
                length = int(headers.get("content-length", "0"))
                body = await reader.readexactly(length) if length else b""
                keep_alive = await self._respond(method, path, body, writer)
                if not keep_alive or headers.get("connection", "").lower() == "close" \
                        or writer.transport.is_closing():
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.open_connections -= 1
            self._handlers.discard(task)
            self._writers.discard(writer)
            writer.close()

    async def _respond(self, method: str, path: str, body: bytes,
                       writer: asyncio.StreamWriter) -> bool:
        """Answer one request; False when the connection must close after it."""
        if method == "POST" and path.endswith("/chat/completions"):
            return await self._completions(path, body, writer)
        page_path, _, query = path.partition("?")
        if method == "GET" and page_path in self.pages:
            html = self.pages[page_path](dict(parse_qsl(query, keep_blank_values=True))).encode()
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/html; charset=utf-8\r\n"
                         b"content-length: %d\r\n\r\n%s" % (len(html), html))
            return True
        if method == "GET" and path.endswith("/models"):
            self._json(writer, {"object": "list", "data": [
                {"id": "fake", "object": "model", "created": CREATED, "owned_by": "fake"}]})
        elif method == "GET" and path == "/stats":
            self._json(writer, {"active": self.active, "served": self.served,
                                "abandoned": self.abandoned})
        else:
            self._json(writer, {"error": {"message": "not found"}}, 404)
        return True

    def _json(self, writer: asyncio.StreamWriter, obj: object, status: int = 200) -> None:
        payload = json.dumps(obj).encode()
        writer.write(b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\n"
                     b"content-length: %d\r\n\r\n%s"
                     % (status, b"OK" if status == 200 else b"Error", len(payload), payload))

    def _choose(self, path: str, body: bytes, request: dict[str, Any]) -> Script | Timing:
        base = self.default if isinstance(self.default, Timing) else Timing()
        timing = parse_timing(path, body, base)
        if timing is not None:
            return timing
        if self.queued:
            return self.queued.pop(0)
        return self.scripts.get(_question(request), self.default)

    async def _completions(self, path: str, body: bytes, writer: asyncio.StreamWriter) -> bool:
        request = json.loads(body or b"{}")
        if self.record:
            self.requests.append(request)
        answer = self._choose(path, body, request)
        model = str(request.get("model", "fake"))
        self.active += 1
        self.busy += 1
        try:
            if isinstance(answer, Timing):
                finished = await self._timed(answer, model, request, writer)
            else:
                finished = await self._scripted(answer, model, writer)
        finally:
            self.active -= 1
            self.busy -= 1
        if finished:
            self.served += 1
        else:
            self.abandoned += 1
        return finished and self.chunked

    async def _timed(self, timing: Timing, model: str, request: dict[str, Any],
                     writer: asyncio.StreamWriter) -> bool:
        if not request.get("stream"):
            await asyncio.sleep((timing.ttft_ms + timing.gap_ms * (timing.tokens - 1)) / 1000)
            self._json(writer, {
                "id": CHUNK_ID, "object": "chat.completion", "created": CREATED, "model": model,
                "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None, "message": {
                    "role": "assistant", "content": expected_answer(timing.tokens)}}],
                "usage": usage_of(timing.tokens)})
            return True
        include_usage = bool((request.get("stream_options") or {}).get("include_usage"))
        parts, closing_plain, closing_usage = self._cache.stream(model, timing.tokens)
        writer.write(STREAM_HEAD + b"transfer-encoding: chunked\r\n\r\n")
        return await TimedStream(asyncio.get_running_loop(), writer, parts,
                                 closing_usage if include_usage else closing_plain,
                                 timing).finished

    async def _scripted(self, script: Script, model: str, writer: asyncio.StreamWriter) -> bool:
        if script.status != 200:
            self._json(writer, {"error": {"message": "upstream failure", "type": "fake"}},
                       script.status)
            return True
        frame: Callable[[bytes], bytes] = chunked if self.chunked else bytes
        writer.write(STREAM_HEAD + (b"transfer-encoding: chunked\r\n\r\n" if self.chunked
                                    else b"connection: close\r\n\r\n"))
        for index, token in enumerate(script.tokens):
            if index and script.delay:
                await asyncio.sleep(script.delay)
            if not await script.wait_for_release(index):
                return False
            writer.write(frame(chunk_line(token, role=index == 0, model=model)))
            await writer.drain()
        if script.cut_after_tokens:
            writer.transport.abort()
            return False
        if script.stall_after_tokens:
            assert self._stopping is not None
            await self._stopping.wait()
            return False
        writer.write(frame(chunk_line(finish="stop", model=model)
                           + chunk_line(usage=usage_of(len(script.tokens)), model=model)
                           + DONE_LINE) + (LAST_CHUNK if self.chunked else b""))
        await writer.drain()
        return True


def _question(request: dict[str, Any]) -> str:
    messages = request.get("messages") or [{}]
    content = messages[-1].get("content", "")
    return content if isinstance(content, str) else json.dumps(content)


# -- the benchmark's floor, in the foreground ---------------------------------------------------


async def serve(host: str, port: int, timing: Timing) -> None:
    # A full collection over a heap grown by thousands of streams pauses the loop for tens of
    # ms, which would show up as latency of the floor: freeze what start-up made, collect rarely.
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 50, 1000)
    model = FakeModel(timing, host=host, port=port, record=False)
    await model.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"fake model on http://{host}:{model.port}/v1 ttft={timing.ttft_ms}ms "
          f"tokens={timing.tokens} gap={timing.gap_ms}ms", flush=True)
    await stop.wait()
    await model.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=18001)
    parser.add_argument("--ttft-ms", type=float, default=200.0)
    parser.add_argument("--tokens", type=int, default=100)
    parser.add_argument("--gap-ms", type=float, default=20.0)
    args = parser.parse_args(argv)
    timing = Timing(args.ttft_ms, args.tokens, args.gap_ms)
    try:
        import uvloop
    except ImportError:  # plain asyncio still works; uvloop just makes the floor cheaper
        asyncio.run(serve(args.host, args.port, timing))
    else:
        uvloop.run(serve(args.host, args.port, timing))


if __name__ == "__main__":
    main()
