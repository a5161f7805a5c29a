"""Thin handlers: parse and validate, call the chat service, answer.

Everything that can refuse a request (bad input, unknown ids, a database that is down) happens
before a stream starts, so a refusal is a plain HTTP error and never a half-open stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg_pool import PoolTimeout
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .budget import TokenBudget
from .bulkhead import Bulkhead
from .chat import ChatService
from .clientip import limit_key
from .errors import (
    BadRequest,
    DatabaseUnavailable,
    GatewayTimeout,
    PayloadTooLarge,
    ServiceUnavailable,
    UnsupportedMediaType,
)
from .eventlog import Event
from .sse import AnswerStreamResponse

MAX_BODY_BYTES = 100 * 1024
MESSAGE_TIMEOUT_S = 30.0
HISTORY_PAGE_MAX = 200
# sse-starlette's keep-alive comment interval; proxies drop connections idle for ~60 s.
PING_S = 15
# A client that stops reading must not hold a stream (and its buffers) forever.
SEND_TIMEOUT_S = 30
# /readyz: a moment for a pooled connection, then a connection of its own.
READY_POOL_WAIT_S = 0.5
READY_CONNECT_TIMEOUT_S = 2
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


@dataclass(frozen=True)
class ChatRequest:
    message: str
    session_id: uuid.UUID | None


def whole_number(raw: str, max_digits: int) -> int | None:
    """ASCII digits only, and few of them; None otherwise.

    str.isdigit() alone is not enough: it says yes to "²" (which int() refuses: a 500) and to
    "٣" (which int() reads as 3), and int() refuses more than 4300 digits.
    """
    if not (raw.isascii() and raw.isdigit()) or len(raw) > max_digits:
        return None
    return int(raw)


def parse_uuid(raw: object, name: str) -> uuid.UUID:
    """Only the canonical 36-character form: ids end up in URLs, headers and logs."""
    if not isinstance(raw, str) or len(raw) != 36:
        raise BadRequest(f"{name} must be a UUID.")
    try:
        parsed = uuid.UUID(raw)
    except ValueError:
        raise BadRequest(f"{name} must be a UUID.") from None
    # uuid.UUID() drops hyphens wherever they are and int() takes full-width digits and a
    # trailing newline, so "…567812345678----" or "…56781234567\n" would pass the length check.
    if str(parsed) != raw.lower():
        raise BadRequest(f"{name} must be a UUID.")
    return parsed


async def read_json_body(request: Request) -> Any:
    content_type = request.headers.get("content-type", "")
    if content_type.split(";")[0].strip().lower() != "application/json":
        raise UnsupportedMediaType()
    declared = request.headers.get("content-length")
    declared_bytes = None if declared is None else whole_number(declared, 18)
    if declared_bytes is not None and declared_bytes > MAX_BODY_BYTES:
        raise PayloadTooLarge()
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise PayloadTooLarge()
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        raise BadRequest("The request body is not valid JSON.") from None


def validate_message(raw: object, max_chars: int) -> str:
    if not isinstance(raw, str):
        raise BadRequest("message must be a string.")
    if not raw.strip():
        raise BadRequest("Please type a message.")
    if len(raw) > max_chars:
        raise BadRequest(f"The message is too long (at most {max_chars} characters).")
    # Postgres text cannot hold NUL, so reject it here rather than fail in the INSERT.
    if "\x00" in raw:
        raise BadRequest("The message contains a NUL character.")
    try:
        raw.encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequest("The message contains invalid Unicode.") from None
    return raw


def parse_chat_request(body: Any, max_chars: int) -> ChatRequest:
    if not isinstance(body, dict):
        raise BadRequest('The request body must be a JSON object like {"message": "..."}.')
    message = validate_message(body.get("message"), max_chars)
    raw_session = body.get("sessionId")
    session_id = None if raw_session is None else parse_uuid(raw_session, "sessionId")
    return ChatRequest(message, session_id)


def chat_service(request: Request) -> ChatService:
    service: ChatService = request.app.state.chat
    return service


async def sse_frames(events: AsyncIterator[Event]) -> AsyncIterator[bytes]:
    # A comment at once, so proxies and clients see bytes before the first token.
    yield b": ok\n\n"
    async with contextlib.aclosing(events):  # type: ignore[type-var]
        async for event in events:
            yield event.frame


def event_stream(events: AsyncIterator[Event]) -> AnswerStreamResponse:
    return AnswerStreamResponse(sse_frames(events), ping=PING_S, headers=SSE_HEADERS,
                                send_timeout=SEND_TIMEOUT_S)


async def start_chat(request: Request) -> tuple[ChatService, Any, dict[str, str]]:
    """Validate, apply the limits, then start the answer: every refusal comes before a stream."""
    settings = request.app.state.settings
    chat_request = parse_chat_request(await read_json_body(request), settings.max_message_chars)
    limits = request.app.state.limits
    session_key = None if chat_request.session_id is None else str(chat_request.session_id)
    limit_headers = await limits.check_chat(limit_key(request.state.client_ip), session_key)
    service = chat_service(request)
    budget: TokenBudget | None = request.app.state.budget
    reservation = None
    if budget is not None and service.mode == "llm":
        # Refused here, before a stream: BudgetExhausted (503 budget_exhausted).
        reservation = await budget.reserve(
            budget.answer_estimate(service.reservation_chars(chat_request.message)))
    try:
        started = await service.start_answer(chat_request.message, chat_request.session_id,
                                             reservation)
    except BaseException:
        if reservation is not None:
            await asyncio.shield(reservation.release())
        raise
    return service, started, limit_headers


async def chat_stream(request: Request) -> Response:
    service, started, limit_headers = await start_chat(request)
    response = event_stream(service.new_answer_events(started))
    response.headers.update(limit_headers)
    return response


async def chat_message(request: Request) -> Response:
    """The original JSON API: the whole answer at once."""
    service, started, limit_headers = await start_chat(request)
    events = service.new_answer_events(started)
    try:
        async with asyncio.timeout(MESSAGE_TIMEOUT_S):
            async for event in events:
                if event.kind == "done":
                    return JSONResponse({"reply": event.payload["text"],
                                         "sessionId": str(started.session_id),
                                         "messageId": str(started.answer_id)},
                                        headers=limit_headers)
                if event.kind == "error":
                    raise ServiceUnavailable(event.payload["message"])
    except TimeoutError:
        raise GatewayTimeout() from None
    raise ServiceUnavailable()


def last_event_id(request: Request) -> int:
    """The header, else the query parameter, else 0; either one, when sent, must be valid."""
    values: list[int] = []
    for raw in (request.headers.get("last-event-id"), request.query_params.get("lastEventId")):
        if raw:
            value = whole_number(raw, 12)
            if value is None:
                raise BadRequest("Last-Event-ID must be a whole number.")
            values.append(value)
    return values[0] if values else 0


def session_param(request: Request) -> uuid.UUID:
    return parse_uuid(request.query_params.get("sessionId"), "sessionId")


@contextlib.asynccontextmanager
async def lookup(request: Request) -> AsyncIterator[None]:
    """A history, resume or cancel lookup: its own per-IP limit and its share of the pool."""
    await request.app.state.limits.check_lookup(limit_key(request.state.client_ip))
    bulkhead: Bulkhead = request.app.state.lookups
    async with bulkhead.slot():
        yield


async def resume_stream(request: Request) -> Response:
    answer_id = parse_uuid(request.path_params["message_id"], "messageId")
    session_id = session_param(request)
    after = last_event_id(request)
    async with lookup(request):
        events = await chat_service(request).follow(answer_id, session_id, after)
    request.app.state.metrics.resumes.inc()
    return event_stream(events)


async def cancel_answer(request: Request) -> Response:
    answer_id = parse_uuid(request.path_params["message_id"], "messageId")
    session_id = session_param(request)
    async with lookup(request):
        status = await chat_service(request).cancel(answer_id, session_id)
    return JSONResponse({"messageId": str(answer_id), "status": status})


async def history(request: Request) -> Response:
    session_id = parse_uuid(request.path_params["session_id"], "sessionId")
    limit = whole_number(request.query_params.get("limit", "50"), 3)
    if limit is None or not 1 <= limit <= HISTORY_PAGE_MAX:
        raise BadRequest(f"limit must be a whole number from 1 to {HISTORY_PAGE_MAX}.")
    raw_before = request.query_params.get("before")
    before = None if raw_before is None else parse_uuid(raw_before, "before")
    async with lookup(request):
        page = await chat_service(request).history(session_id, limit, before)
    return JSONResponse({"sessionId": str(page.session_id),
                         "messages": [m.to_json() for m in page.messages],
                         "hasMore": page.has_more})


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    """503 without the database; 200 but "degraded" without Redis (limits count per instance).

    About the database, not the pool: when every pooled connection is busy (answers at full
    load), a connection of its own asks the database instead of failing the instance.
    """
    pool = request.app.state.pool
    try:
        try:
            async with pool.connection(timeout=READY_POOL_WAIT_S) as conn:
                await conn.execute("SELECT 1")
        except PoolTimeout:
            async with await psycopg.AsyncConnection.connect(
                    request.app.state.settings.database_url,
                    connect_timeout=READY_CONNECT_TIMEOUT_S, autocommit=True) as own:
                await own.execute("SELECT 1")
    except Exception:
        raise DatabaseUnavailable("The database is not reachable.") from None
    redis_state = await request.app.state.limits.redis_health()
    status = "degraded" if redis_state == "down" else "ready"
    return JSONResponse({"status": status, "database": "up", "redis": redis_state,
                         "mode": chat_service(request).mode})
