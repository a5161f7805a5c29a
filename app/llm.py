"""The upstream model: an OpenAI-compatible chat stream, turned into text deltas.

SDK and transport errors become `UpstreamError` with a stable code and a message a shopper can
read. Retries (the SDK's own) only happen before the first token: once text has been relayed, a
failure is final, because a retry would repeat or contradict what the shopper already saw.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import httpx2
import openai

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int


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

    async def aclose(self) -> None:
        await self._client.close()

    async def stream(self, messages: Sequence[dict[str, str]], *, model: str | None = None,
                     temperature: float | None = None, max_tokens: int | None = None
                     ) -> AsyncIterator[str | Usage]:
        """The answer's deltas, then its usage; a site may override the model's settings."""
        loop = asyncio.get_running_loop()
        body = {
            "model": model or self.model,
            "messages": list(messages),
            "max_tokens": self._max_tokens if max_tokens is None else max_tokens,
            "temperature": self._temperature if temperature is None else temperature,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        try:
            # One timer for the whole answer, pushed forward as chunks arrive: it fires when the
            # first chunk, or the next one, is LLM_TIMEOUT_S late. Rescheduling re-arms a timer
            # handle, so it is done at most every `push_every` seconds rather than per token;
            # the deadline is then at most that much early, a tenth of the timeout.
            push_every = min(1.0, self._timeout_s / 10)
            pushed_at = loop.time()
            async with asyncio.timeout(self._timeout_s) as deadline:
                # The SDK's low-level post with cast_to=object keeps its retries, errors and SSE
                # decoding but hands us each chunk as the parsed JSON dict: building a pydantic
                # ChatCompletionChunk per token (and transforming the request params) was the
                # largest share of our CPU per token (bench/RESULTS.md).
                chunks = await self._client.post(
                    "/chat/completions", body=body, cast_to=object, stream=True,
                    stream_cls=openai.AsyncStream[object],
                )
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
                            delta = (choices[0].get("delta") or {}).get("content")
                            if delta:
                                yield clean_text(delta)
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
        except asyncio.CancelledError:
            raise
        except UpstreamError:
            raise
        except Exception as exc:  # every other failure is the provider's, and ends this answer
            raise _classify(exc) from exc
