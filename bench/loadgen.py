"""An open-loop SSE load generator: Poisson arrivals, one connection per stream.

Open loop: each stream starts at its own randomly drawn arrival time whatever the state of
the others, so a slow server meets a growing queue (as it would in production) instead of
slowing the generator down, which is what a closed loop of N users measures.

Deliberately raw asyncio (one `asyncio.Protocol` per stream, a minimal HTTP/1.1 response
and chunked-encoding parser, SSE split on blank lines) rather than aiohttp: the generator
shares a core with the fake upstream, and every microsecond it spends per event is a
microsecond the harness can no longer measure.

Per stream it records the time from the scheduled arrival to the first event carrying text
(not the first byte: our app sends its headers and a `: ok` comment before the first token,
LiteLLM does not), the largest gap between two text events, the whole stream time, the
number of text events, and an error if the stream did not end cleanly.

Two kinds of target:
  app     POST /chat/stream {"message": ...}; text is `event: token`, the end `event: done`
  openai  POST /v1/chat/completions stream=true; text is a chunk with non-empty
          delta content, the end `data: [DONE]` (the fake upstream itself, LiteLLM)
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import random
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

NON_EMPTY_CONTENT = re.compile(rb'"content": ?"[^"]')
MESSAGE_ID = re.compile(rb'"messageId": ?"([^"]+)"')


@dataclass(frozen=True)
class Target:
    name: str
    kind: str  # "app" or "openai"
    host: str
    port: int
    path: str
    headers: tuple[tuple[str, str], ...] = ()
    model: str = "bench"
    message: str = "Where is my order #1234? It was due yesterday."

    def request_bytes(self) -> bytes:
        if self.kind == "app":
            body = json.dumps({"message": self.message}).encode()
        else:
            body = json.dumps({
                "model": self.model,
                "messages": [{"role": "user", "content": self.message}],
                "stream": True,
            }).encode()
        head = [
            f"POST {self.path} HTTP/1.1",
            f"Host: {self.host}:{self.port}",
            "Content-Type: application/json",
            "Accept: text/event-stream",
            f"Content-Length: {len(body)}",
            "Connection: close",
        ]
        head += [f"{k}: {v}" for k, v in self.headers]
        return ("\r\n".join(head) + "\r\n\r\n").encode() + body


@dataclass
class StreamResult:
    scheduled: float  # perf_counter seconds
    start_lag: float = 0.0  # generator lateness in starting the connection
    status: int = 0
    ttft: float | None = None  # seconds from the scheduled arrival to the first text event
    max_gap: float = 0.0
    total: float | None = None
    tokens: int = 0
    done: bool = False
    left: bool = False  # we hung up on purpose (disconnect storm)
    error: str | None = None
    message_id: str | None = None


def event_name(event: bytes) -> bytes:
    """The `event:` field of one SSE event ("" when absent); data lines are one-line JSON,
    so a line start is never inside data."""
    if event.startswith(b"event: "):
        start = 7
    else:
        start = event.find(b"\nevent: ")
        if start < 0:
            return b""
        start += 8
    end = event.find(b"\n", start)
    return event[start:] if end < 0 else event[start:end]


class SseStream(asyncio.Protocol):
    """One request and its streamed answer; resolves `finished` exactly once."""

    def __init__(self, request: bytes, kind: str, result: StreamResult,
                 finished: asyncio.Future[None], leave_after_tokens: int | None) -> None:
        self.request = request
        self.app_kind = kind == "app"
        self.result = result
        self.finished = finished
        self.leave_after = leave_after_tokens
        self.transport: asyncio.Transport | None = None
        self.head = b""
        self.headers_done = False
        self.chunked = False
        self.raw = b""  # undecoded body bytes (chunked framing)
        self.chunk_left = 0  # bytes left in the current chunk, -1 while reading a size line
        self.events = b""  # decoded, not yet complete SSE text
        self.last_token = 0.0

    # -- asyncio.Protocol -------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        transport.write(self.request)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.finished.done():
            if self.result.left:
                pass
            elif self.result.error is None:
                self.result.error = "truncated" if self.headers_done else "closed"
            self.finish()

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        if not self.headers_done:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            head, data = self.head[:end], self.head[end + 4:]
            self.head = b""
            self.headers_done = True
            status_line, _, rest = head.partition(b"\r\n")
            self.result.status = int(status_line.split(b" ", 2)[1])
            self.chunked = b"transfer-encoding: chunked" in rest.lower()
            self.chunk_left = -1
            if self.result.status != 200:
                self.result.error = f"http {self.result.status}"
                self.close()
                return
        if self.chunked:
            data = self.dechunk(data)
        if data:
            self.feed_events(data, now)

    # -- parsing ----------------------------------------------------------------------
    def dechunk(self, data: bytes) -> bytes:
        raw = self.raw + data if self.raw else data
        out = []
        pos = 0
        n = len(raw)
        while pos < n:
            if self.chunk_left < 0:  # at a size line
                eol = raw.find(b"\r\n", pos)
                if eol < 0:
                    break
                size = int(raw[pos:eol].split(b";", 1)[0], 16)
                pos = eol + 2
                if size == 0:
                    pos = n
                    break
                self.chunk_left = size
            if self.chunk_left > 0:
                take = min(self.chunk_left, n - pos)
                out.append(raw[pos:pos + take])
                pos += take
                self.chunk_left -= take
                if self.chunk_left:
                    break
            # the CRLF that closes a chunk's data
            if n - pos < 2:
                break
            pos += 2
            self.chunk_left = -1
        self.raw = raw[pos:]
        return b"".join(out)

    def feed_events(self, data: bytes, now: float) -> None:
        buf = (self.events + data).replace(b"\r\n", b"\n")
        *complete, self.events = buf.split(b"\n\n")
        result = self.result
        for event in complete:
            event = event.strip(b"\n")
            if not event or event[0] == 58:  # b":" a comment: sse pings, ": ok"
                continue
            if self.app_kind:
                name = event_name(event)
                if name != b"token":
                    if name == b"done":
                        self.end_ok(now)
                        return
                    if name == b"meta":
                        found = MESSAGE_ID.search(event)
                        if found:
                            result.message_id = found.group(1).decode()
                    elif name == b"error":
                        result.error = "error event: " + event[-200:].decode(errors="replace")
                        self.close()
                        return
                    continue
            elif NON_EMPTY_CONTENT.search(event) is None:
                if event.startswith(b"data: [DONE]"):
                    self.end_ok(now)
                    return
                if b'"error"' in event:
                    result.error = "error chunk: " + event[-200:].decode(errors="replace")
                    self.close()
                    return
                continue
            if result.tokens == 0:
                result.ttft = now - result.scheduled
            else:
                gap = now - self.last_token
                if gap > result.max_gap:
                    result.max_gap = gap
            self.last_token = now
            result.tokens += 1
            if self.leave_after is not None and result.tokens >= self.leave_after:
                result.left = True
                self.close()
                return

    # -- ending -----------------------------------------------------------------------
    def end_ok(self, now: float) -> None:
        self.result.done = True
        self.result.total = now - self.result.scheduled
        self.close()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
        self.finish()

    def finish(self) -> None:
        if not self.finished.done():
            self.finished.set_result(None)


@dataclass
class Load:
    """One open-loop run against one target; `open_streams` can be watched while it runs."""

    target: Target
    rate: float
    duration_s: float | None = None
    count: int | None = None
    seed: int = 1
    leave_after_tokens: int | None = None
    stream_timeout_s: float = 30.0
    results: list[StreamResult] = field(default_factory=list)
    opened: int = 0
    finished_count: int = 0
    cpu_s: float = 0.0  # the generator's own CPU during the run
    wall_s: float = 0.0

    @property
    def open_streams(self) -> int:
        return self.opened - self.finished_count

    async def run(self) -> list[StreamResult]:
        loop = asyncio.get_running_loop()
        rng = random.Random(self.seed)
        request = self.target.request_bytes()
        offsets = []
        t = 0.0
        while True:
            t += rng.expovariate(self.rate)
            if self.duration_s is not None and t > self.duration_s:
                break
            offsets.append(t)
            if self.count is not None and len(offsets) >= self.count:
                break
        waiting: list[asyncio.Future[None]] = []
        protocols: list[SseStream] = []
        tasks: set[asyncio.Task[None]] = set()
        cpu0 = time.process_time()
        perf0 = time.perf_counter() + 0.05
        loop0 = loop.time() + 0.05

        async def start(result: StreamResult, finished: asyncio.Future[None]) -> None:
            result.start_lag = time.perf_counter() - result.scheduled
            proto = SseStream(request, self.target.kind, result, finished,
                              self.leave_after_tokens)
            protocols.append(proto)
            try:
                await loop.create_connection(lambda: proto, self.target.host, self.target.port)
                self.opened += 1
                finished.add_done_callback(self._count_finished)
            except OSError as exc:
                result.error = f"connect: {exc.__class__.__name__}"
                if not finished.done():
                    finished.set_result(None)

        def launch(result: StreamResult, finished: asyncio.Future[None]) -> None:
            task = loop.create_task(start(result, finished))
            # Keep a reference: the loop holds only weak ones to tasks.
            tasks.add(task)
            task.add_done_callback(tasks.discard)

        for offset in offsets:
            result = StreamResult(scheduled=perf0 + offset)
            finished: asyncio.Future[None] = loop.create_future()
            self.results.append(result)
            waiting.append(finished)
            loop.call_at(loop0 + offset, launch, result, finished)

        last = offsets[-1] if offsets else 0.0
        gc_was_enabled = gc.isenabled()
        gc.disable()  # a collection pause inside a run would show up as server latency
        try:
            if waiting:
                await asyncio.wait(waiting, timeout=last + 0.05 + self.stream_timeout_s)
        finally:
            if gc_was_enabled:
                gc.enable()
        for proto in protocols:
            if not proto.finished.done():
                proto.result.error = proto.result.error or "timeout"
                if proto.transport is not None:
                    proto.transport.abort()
                proto.finish()
        for result, fut in zip(self.results, waiting, strict=True):
            if not fut.done():
                result.error = result.error or "not started"
                fut.set_result(None)
        self.cpu_s = time.process_time() - cpu0
        self.wall_s = time.perf_counter() - perf0
        return self.results

    def _count_finished(self, _fut: asyncio.Future[None]) -> None:
        self.finished_count += 1


async def one_stream(target: Target, timeout_s: float = 30.0) -> StreamResult:
    """One request, start to end, timed from just before its connection is opened."""
    loop = asyncio.get_running_loop()
    finished: asyncio.Future[None] = loop.create_future()
    result = StreamResult(scheduled=time.perf_counter())
    proto = SseStream(target.request_bytes(), target.kind, result, finished, None)
    try:
        await loop.create_connection(lambda: proto, target.host, target.port)
    except OSError as exc:
        result.error = f"connect: {exc.__class__.__name__}"
        return result
    try:
        await asyncio.wait_for(asyncio.shield(finished), timeout_s)
    except TimeoutError:
        result.error = result.error or "timeout"
        if proto.transport is not None:
            proto.transport.abort()
        proto.finish()
    return result


async def sequential(targets: list[Target], timeout_s: float = 30.0) -> list[StreamResult]:
    """The requests one after another: each starts when the previous one has ended."""
    results = []
    for target in targets:
        results.append(await one_stream(target, timeout_s))
    return results


async def closed_loop(make_target: Callable[[int], Target], clients: int, duration_s: float,
                      timeout_s: float = 30.0) -> tuple[list[StreamResult], float]:
    """`clients` users, each asking again the moment its answer ends, for `duration_s`;
    the answers in flight then are waited for. Returns the results and the wall time."""
    started = time.perf_counter()
    deadline = started + duration_s
    results: list[StreamResult] = []
    counter = iter(range(10**9))

    async def client() -> None:
        while time.perf_counter() < deadline:
            results.append(await one_stream(make_target(next(counter)), timeout_s))

    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        await asyncio.gather(*(client() for _ in range(clients)))
    finally:
        if gc_was_enabled:
            gc.enable()
    return results, time.perf_counter() - started


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


@dataclass
class Summary:
    streams: int
    errors: int
    short: int
    ttft_p50_ms: float | None
    ttft_p99_ms: float | None
    max_gap_p99_ms: float | None
    total_p50_ms: float | None
    tokens: int
    start_lag_p99_ms: float | None
    error_kinds: dict[str, int]


def summarise(results: list[StreamResult], expected_tokens: int) -> Summary:
    ok = [r for r in results if r.error is None and not r.left]
    errors = [r for r in results if r.error is not None]
    kinds: dict[str, int] = {}
    for r in errors:
        key = (r.error or "")[:60]
        kinds[key] = kinds.get(key, 0) + 1
    ttfts = [r.ttft * 1000 for r in results if r.ttft is not None and r.error is None]
    return Summary(
        streams=len(results),
        errors=len(errors),
        short=sum(1 for r in ok if r.done and r.tokens < expected_tokens),
        ttft_p50_ms=percentile(ttfts, 50),
        ttft_p99_ms=percentile(ttfts, 99),
        max_gap_p99_ms=percentile([r.max_gap * 1000 for r in ok if r.tokens > 1], 99),
        total_p50_ms=percentile([r.total * 1000 for r in ok if r.total is not None], 50),
        tokens=sum(r.tokens for r in results),
        start_lag_p99_ms=percentile([r.start_lag * 1000 for r in results], 99),
        error_kinds=kinds,
    )


def install_fast_loop() -> None:
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def raise_open_files_limit() -> int:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="open-loop SSE load generator")
    parser.add_argument("url", help="e.g. http://127.0.0.1:18002/chat/stream")
    parser.add_argument("--kind", choices=["app", "openai"], default="openai")
    parser.add_argument("--rate", type=float, default=5.0, help="streams per second")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of arrivals")
    parser.add_argument("--tokens", type=int, default=100, help="expected tokens per answer")
    parser.add_argument("--bearer", default=None, help="Authorization: Bearer token")
    parser.add_argument("--model", default="bench")
    parser.add_argument("--cpu", type=int, default=None, help="pin the generator to this core")
    args = parser.parse_args(argv)
    from urllib.parse import urlsplit

    url = urlsplit(args.url)
    headers = (("Authorization", f"Bearer {args.bearer}"),) if args.bearer else ()
    target = Target("cli", args.kind, url.hostname or "127.0.0.1", url.port or 80,
                    url.path, headers, args.model)
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    raise_open_files_limit()
    install_fast_loop()
    load = Load(target, args.rate, duration_s=args.duration)
    results = asyncio.run(load.run())
    summary = summarise(results, args.tokens)
    print(json.dumps(summary.__dict__, indent=2))
    print(f"generator cpu {load.cpu_s:.2f}s over {load.wall_s:.1f}s "
          f"({100 * load.cpu_s / max(load.wall_s, 1e-9):.0f}%)")


if __name__ == "__main__":
    sys.exit(main())
