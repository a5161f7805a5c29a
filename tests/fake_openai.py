"""A small OpenAI-compatible streaming server on loopback, for app instances in other processes.

respx only reaches the model client inside the test process; an app started with `python -m app`
talks to this instead, through OPENAI_BASE_URL.
"""

from __future__ import annotations

import asyncio
import json
from types import TracebackType


def _chunk(body: dict[str, object]) -> bytes:
    return b"data: " + json.dumps(body).encode() + b"\n\n"


class FakeOpenAI:
    """POST /v1/chat/completions answers `tokens`, `delay` seconds apart, then usage and [DONE]."""

    def __init__(self, tokens: list[str] | None = None, delay: float = 0.0) -> None:
        self.tokens = tokens or ["Hello", " from", " the", " fake", " model."]
        self.delay = delay
        self.requests: list[dict[str, object]] = []
        self._server: asyncio.Server | None = None

    @property
    def base_url(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/v1"

    async def __aenter__(self) -> FakeOpenAI:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.decode("latin-1").split("\r\n"):
                if line.lower().startswith("content-length:"):
                    length = int(line.split(":", 1)[1])
            self.requests.append(json.loads(await reader.readexactly(length)))
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                         b"connection: close\r\n\r\n")
            base = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1,
                    "model": "fake"}
            for index, token in enumerate(self.tokens):
                if index and self.delay:
                    await asyncio.sleep(self.delay)
                writer.write(_chunk({**base, "choices": [
                    {"index": 0, "delta": {"content": token}, "finish_reason": None}]}))
                await writer.drain()
            writer.write(_chunk({**base, "choices": [
                {"index": 0, "delta": {}, "finish_reason": "stop"}]}))
            writer.write(_chunk({**base, "choices": [], "usage": {
                "prompt_tokens": 10, "completion_tokens": len(self.tokens),
                "total_tokens": 10 + len(self.tokens)}}))
            writer.write(b"data: [DONE]\n\n")
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
