"""uvicorn's Server, with a shutdown that drains answers before it waits for connections.

uvicorn waits for open connections to close before it runs the lifespan shutdown, and our SSE
connections only close when their answers end. So on SIGTERM the answers' grace period has to
start here, at once, not in the lifespan: answers get `grace_s` to finish, the rest are saved
as 'interrupted' and their streams end with a retryable `error` event.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import uvicorn
from starlette.applications import Starlette

from .services import services_of


def server_config(app: Starlette, host: str, port: int, grace_s: float,
                  **options: Any) -> uvicorn.Config:
    """The one uvicorn configuration, for `python -m app` and the tests alike."""
    # proxy_headers off: uvicorn would take the client address from the left-most
    # X-Forwarded-For entry, which the client writes; app/clientip.py does it safely.
    # The graceful-shutdown timeout is a backstop behind the answers' own grace period.
    return uvicorn.Config(app, host=host, port=port, proxy_headers=False, lifespan="on",
                          timeout_graceful_shutdown=int(grace_s) + 15, **options)


class AppServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, app: Starlette, grace_s: float) -> None:
        super().__init__(config)
        self._services = services_of(app)
        # uvicorn keeps its open connections here; the app's responses abort a stalled one
        # through the same registry (app/sse.py).
        self.server_state = self._services.connections.server_state
        self._grace_s = grace_s
        self._drain: asyncio.Task[None] | None = None

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        running = self._services.running
        if running is not None:
            # A hard reference: the loop keeps only weak ones to tasks.
            self._drain = asyncio.create_task(running.chat.shutdown(self._grace_s))
        await super().shutdown(sockets)
