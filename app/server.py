"""uvicorn's Server, with a shutdown that drains answers before it waits for connections.

uvicorn waits for open connections to close before it runs the lifespan shutdown, and our SSE
connections only close when their answers end. So on SIGTERM the answers' grace period has to
start here, at once, not in the lifespan: answers get `grace_s` to finish, the rest are saved
as 'interrupted' and their streams end with a retryable `error` event.
"""

from __future__ import annotations

import asyncio
import socket

import uvicorn
from starlette.applications import Starlette


class AppServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, app: Starlette, grace_s: float) -> None:
        super().__init__(config)
        self._app = app
        self._grace_s = grace_s
        self._drain: asyncio.Task[None] | None = None

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        chat = getattr(self._app.state, "chat", None)
        if chat is not None:
            # A hard reference: the loop keeps only weak ones to tasks.
            self._drain = asyncio.create_task(chat.shutdown(self._grace_s))
        await super().shutdown(sockets)
