"""An OpenAI-compatible streaming server in a thread, whose tokens the test can hold back.

With `gated` on, the server sends each token only once the test calls `release()`: a test that
releases token n+1 only after it has received token n proves that nothing between the model and
the test (the app, nginx) holds tokens back, without measuring any time. Being a thread, it
serves app processes across tests of a module, whatever event loop each test runs in.
"""

from __future__ import annotations

import contextlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

GATE_TIMEOUT_S = 60.0


def _chunk(body: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(body).encode() + b"\n\n"


class ScriptedModel:
    """POST /v1/chat/completions streams `tokens`; with `gated`, one per `release()`."""

    def __init__(self, tokens: list[str] | None = None) -> None:
        self.tokens = tokens or ["Returns", " are", " free", " within", " 30", " days."]
        self.gated = False
        self._released = threading.Semaphore(0)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def release(self, count: int = 1) -> None:
        """Let `count` more tokens go out (only matters while `gated`)."""
        self._released.release(count)

    def reset(self, *, gated: bool) -> None:
        self.gated = gated
        self._released = threading.Semaphore(0)

    def __enter__(self) -> ScriptedModel:
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._released.release(10_000)  # no handler thread stays parked on the gate
        self._server.shutdown()
        self._server.server_close()

    def _stream(self, write: Any) -> None:
        base = {"id": "chatcmpl-scripted", "object": "chat.completion.chunk", "created": 1,
                "model": "scripted"}
        for token in self.tokens:
            if self.gated and not self._released.acquire(timeout=GATE_TIMEOUT_S):
                return
            write(_chunk({**base, "choices": [
                {"index": 0, "delta": {"content": token}, "finish_reason": None}]}))
        write(_chunk({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}))
        write(_chunk({**base, "choices": [], "usage": {
            "prompt_tokens": 10, "completion_tokens": len(self.tokens),
            "total_tokens": 10 + len(self.tokens)}}))
        write(b"data: [DONE]\n\n")

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        model = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                self.rfile.read(int(self.headers.get("content-length", "0")))
                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
                self.send_header("connection", "close")
                self.end_headers()

                def write(data: bytes) -> None:
                    self.wfile.write(data)
                    self.wfile.flush()

                # The app hangs up when it cancels an answer.
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    model._stream(write)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler
