"""The upstream model: an OpenAI-compatible chat stream, turned into text deltas.

SDK and transport errors become `UpstreamError` with a stable code and a message a shopper can
read. Retries (the SDK's own) only happen before the first token: once text has been relayed, a
failure is final, because a retry would repeat or contradict what the shopper already saw.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import httpx2
import openai
from openai._httpx2 import request_exceptions, timeout_exceptions
from openai._models import FinalRequestOptions

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True, slots=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # JSON text, as the model wrote it: never trusted for authority


@dataclass(frozen=True, slots=True)
class ToolCalls:
    """The model asked for tools instead of (or after) text: the calls, assembled from deltas."""

    calls: tuple[ToolCall, ...]


class _ToolCallParts:
    """Tool calls arrive in pieces: an index, then its id and name, then the arguments a few
    characters per chunk. Collected by index, in order."""

    def __init__(self) -> None:
        self._parts: dict[int, dict[str, Any]] = {}

    def add(self, deltas: list[Any]) -> None:
        for delta in deltas:
            if not isinstance(delta, dict):
                raise TypeError("a tool call delta that is not a JSON object")
            index = delta.get("index", 0)
            if not isinstance(index, int) or not 0 <= index < 16:
                raise ValueError("a tool call index out of range")
            part = self._parts.setdefault(index, {"id": "", "name": "", "arguments": []})
            if delta.get("id"):
                part["id"] = str(delta["id"])
            function = delta.get("function") or {}
            if function.get("name"):
                part["name"] += str(function["name"])
            if function.get("arguments"):
                part["arguments"].append(str(function["arguments"]))

    def assembled(self) -> ToolCalls | None:
        if not self._parts:
            return None
        return ToolCalls(tuple(
            ToolCall(part["id"] or f"call_{index}", part["name"], "".join(part["arguments"]))
            for index, part in sorted(self._parts.items())))


class UpstreamError(Exception):
    """The model provider failed or could not be reached."""

    def __init__(self, code: str, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retryable = retryable


_BUSY = "The assistant is very busy right now. Please try again in a moment."
_DOWN = "The assistant is temporarily unavailable. Please try again in a moment."
_SLOW = "The assistant took too long to answer. Please try again."


def _classify(exc: BaseException) -> UpstreamError:
    """Map an SDK or transport error to our error; the order matters (subclasses first)."""
    if isinstance(exc, openai.AuthenticationError | openai.PermissionDeniedError):
        # A configuration problem, not a shopper problem: say so loudly in the log.
        log.error("the model provider rejected our credentials (check OPENAI_API_KEY): %s",
                  type(exc).__name__)
        return UpstreamError("upstream_auth", _DOWN, retryable=False)
    if isinstance(exc, openai.RateLimitError):
        return UpstreamError("upstream_rate_limited", _BUSY, retryable=True)
    if isinstance(exc, openai.APITimeoutError | TimeoutError):
        return UpstreamError("upstream_timeout", _SLOW, retryable=True)
    if isinstance(exc, openai.APIConnectionError | httpx.TransportError | OSError):
        return UpstreamError("upstream_unreachable", _DOWN, retryable=True)
    if isinstance(exc, openai.APIStatusError):
        if exc.status_code >= 500:
            return UpstreamError("upstream_error", _DOWN, retryable=True)
        log.error("the model provider refused the request: HTTP %s", exc.status_code)
        return UpstreamError("upstream_rejected", _DOWN, retryable=False)
    if isinstance(exc, json.JSONDecodeError | ValueError | KeyError | TypeError):
        # A malformed chunk surfaces as a JSON or validation error, not as an openai.APIError.
        log.error("the model provider sent a malformed chunk: %s", type(exc).__name__)
        return UpstreamError("upstream_bad_response", _DOWN, retryable=True)
    # openai.APIError without a status: an error payload in the middle of the stream.
    log.warning("upstream error: %s", type(exc).__name__)
    return UpstreamError("upstream_error", _DOWN, retryable=True)


def clean_text(delta: str) -> str:
    """Text PostgreSQL and UTF-8 can hold: no NUL, no lone surrogates (they become U+FFFD)."""
    if "\x00" in delta:
        delta = delta.replace("\x00", "")
    if not delta.isascii():
        delta = delta.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    return delta


# How long the rest of a body after `[DONE]` is read, so that its connection can be reused; the
# SDK's own drain waits as long.
DRAIN_S = 0.1


async def sse_data(pieces: AsyncIterator[bytes]) -> AsyncGenerator[bytes, None]:
    """The data of each server-sent event in a byte stream, as the SDK's decoder reads it:
    lines end in LF, CRLF or CR; an event ends at a blank line, its `data:` lines joined by LF
    (one leading space dropped); events without data, and an unterminated last one, are
    skipped. Bytes, for json.loads: no text decoding per line."""
    pending = b""
    async for piece in pieces:
        pending = pending + piece if pending else piece
        if b"\r" in pending:
            # A CR at the end may be the first half of a CRLF split across two pieces.
            held = pending.endswith(b"\r")
            pending = pending[:-1] if held else pending
            pending = pending.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
            if held:
                pending += b"\r"
        start = 0
        while (end := pending.find(b"\n\n", start)) >= 0:
            block, start = pending[start:end], end + 2
            if block.startswith(b"data: ") and b"\n" not in block:
                yield block[6:]  # the usual event: one data line, nothing else
                continue
            lines = [line[5:] for line in block.split(b"\n") if line.startswith(b"data:")]
            if lines:
                yield b"\n".join(line[1:] if line.startswith(b" ") else line for line in lines)
        pending = pending[start:]


class ChunkStream(openai.AsyncStream[object]):
    """The SDK's stream of chat chunks (cast_to=object: each a parsed JSON dict), read with
    `sse_data` instead of the SDK's line decoder, and drained after `[DONE]` without an anyio
    cancel scope: the two were about a third of the upstream client's CPU per short answer
    (bench/analysis.md). Errors are the SDK's: a read that times out or fails becomes
    APITimeoutError or APIConnectionError, an error payload mid-stream an APIError."""

    async def __stream__(self) -> AsyncIterator[object]:
        response = self.response
        pieces = response.aiter_bytes()
        events = sse_data(pieces)
        try:
            try:
                async for data in events:
                    if data.startswith(b"[DONE]"):
                        if response.http_version == "HTTP/1.1":
                            await _drain(pieces)
                        return
                    chunk = json.loads(data)
                    if isinstance(chunk, dict) and chunk.get("error"):
                        error = chunk["error"]
                        message = error.get("message") if isinstance(error, dict) else None
                        raise openai.APIError(
                            message=message if message and isinstance(message, str)
                            else "An error occurred during streaming",
                            request=response.request, body=error)
                    yield chunk
            except timeout_exceptions() as exc:
                raise openai.APITimeoutError(request=response.request) from exc
            except request_exceptions() as exc:
                raise openai.APIConnectionError(request=response.request) from exc
        finally:
            await events.aclose()
            await response.aclose()


async def _drain(pieces: AsyncIterator[bytes]) -> None:
    """Read what follows `[DONE]` (usually just the body's end) for the connection's reuse."""
    with contextlib.suppress(TimeoutError, *request_exceptions()):
        async with asyncio.timeout(DRAIN_S):
            async for _ in pieces:
                pass


# Far above the streams one worker holds (5,000 open in the benchmark): every answer keeps its
# upstream connection for its whole length, so a pool cap below that queues answers behind
# each other until they time out.
UPSTREAM_MAX_CONNECTIONS = 10_000


def default_http_client() -> Any:
    """openai's aiohttp transport: under many concurrent streams it holds up where the default
    httpx one spends its time in the pool (bench/RESULTS.md)."""
    limits = httpx2.Limits(max_connections=UPSTREAM_MAX_CONNECTIONS,
                           max_keepalive_connections=UPSTREAM_MAX_CONNECTIONS)
    return openai.DefaultAioHttpClient(limits=limits)


class LLM:
    """One client for the life of the app; `stream` yields str deltas, then at most one Usage."""

    def __init__(self, *, api_key: str, base_url: str, model: str, timeout_s: float,
                 max_tokens: int, temperature: float, max_retries: int = 2,
                 http_client: Any = None) -> None:
        self.model = model
        self._timeout_s = timeout_s
        self._max_tokens = max_tokens
        self._temperature = temperature
        self._client = openai.AsyncOpenAI(
            api_key=api_key or "not-needed",
            base_url=base_url or None,
            timeout=timeout_s,
            max_retries=max_retries,
            http_client=http_client if http_client is not None else default_http_client(),
        )
        # What `post()` would build per request: the SDK's options model, whose construction
        # deep-copies its defaults each time (an eighth of the upstream client's CPU per short
        # answer). Each request gets a shallow copy with its body instead.
        self._request = FinalRequestOptions.construct(
            method="post", url=f"{self._client.base_url}chat/completions", json_data={})

    async def aclose(self) -> None:
        await self._client.close()

    async def stream(self, messages: Sequence[dict[str, Any]], *, model: str | None = None,
                     temperature: float | None = None, max_tokens: int | None = None,
                     tools: Sequence[dict[str, Any]] | None = None,
                     ) -> AsyncIterator[str | Usage | ToolCalls]:
        """The answer's deltas, then its usage; a site may override the model's settings.

        With `tools`, the model may ask for them: the calls, assembled from their deltas, come
        as one ToolCalls once the stream ends; the caller runs them and streams again.
        """
        loop = asyncio.get_running_loop()
        body: dict[str, Any] = {
            "model": model or self.model,
            "messages": list(messages),
            "max_tokens": self._max_tokens if max_tokens is None else max_tokens,
            "temperature": self._temperature if temperature is None else temperature,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if tools:
            body["tools"] = list(tools)
        tool_calls = _ToolCallParts()
        try:
            # One timer for the whole answer, pushed forward as chunks arrive: it fires when the
            # first chunk, or the next one, is LLM_TIMEOUT_S late. Rescheduling re-arms a timer
            # handle, so it is done at most every `push_every` seconds rather than per token;
            # the deadline is then at most that much early, a tenth of the timeout.
            push_every = min(1.0, self._timeout_s / 10)
            pushed_at = loop.time()
            async with asyncio.timeout(self._timeout_s) as deadline:
                # The SDK's low-level request with cast_to=object keeps its retries and errors but
                # hands us each chunk as the parsed JSON dict (ChunkStream): building a pydantic
                # ChatCompletionChunk per token (and transforming the request params) was the
                # largest share of our CPU per token (bench/RESULTS.md).
                chunks = await self._client.request(
                    object, self._request.model_copy(update={"json_data": body}),
                    stream=True, stream_cls=ChunkStream)
                finished = False
                try:
                    async for chunk in chunks:
                        now = loop.time()
                        if now - pushed_at >= push_every:
                            deadline.reschedule(now + self._timeout_s)
                            pushed_at = now
                        if not isinstance(chunk, dict):
                            raise TypeError("a stream chunk that is not a JSON object")
                        choices = chunk.get("choices")
                        if choices:
                            delta = choices[0].get("delta") or {}
                            content = delta.get("content")
                            if content:
                                yield clean_text(content)
                            if delta.get("tool_calls"):
                                tool_calls.add(delta["tool_calls"])
                            finished = finished or choices[0].get("finish_reason") is not None
                        usage = chunk.get("usage")
                        if usage:
                            yield Usage(usage["prompt_tokens"], usage["completion_tokens"])
                finally:
                    await chunks.close()
                if not finished:
                    # The SDK ends the stream quietly when a body delimited by closing the
                    # connection is cut: without a finish_reason the answer is not complete.
                    log.warning("the model's stream ended without a finish_reason")
                    raise UpstreamError("upstream_unreachable", _DOWN, retryable=True)
            assembled = tool_calls.assembled()
            if assembled is not None:
                yield assembled
        except asyncio.CancelledError:
            raise
        except UpstreamError:
            raise
        except Exception as exc:  # every other failure is the provider's, and ends this answer
            raise _classify(exc) from exc
