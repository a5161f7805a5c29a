"""Thin handlers: parse and validate, call the chat service, answer.

Everything that can refuse a request (bad input, unknown ids, a database that is down) happens
before a stream starts, so a refusal is a plain HTTP error and never a half-open stream.

A request names its site with `siteKey` (in the JSON body of POST /chat/stream and
/chat/message, in the query string of the others; none: the default site). Every id is then
looked up within that site, so another site's conversation is a 404 exactly like an unknown one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg_pool import PoolTimeout
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from . import db
from .chat import ChatService, StartedAnswer
from .clientip import limit_key
from .conversation_events import conversation_key, site_key, typing_payload, without_stale_typing
from .errors import (
    BadRequest,
    DatabaseUnavailable,
    GatewayTimeout,
    NotFoundError,
    PayloadTooLarge,
    ServiceUnavailable,
    StoreUnavailable,
    Unauthorized,
    UnsupportedMediaType,
)
from .eventlog import REPLAYED_END_ID, Event
from .feedback import FeedbackStore
from .identity import verify_customer_token
from .messages import ConversationSummary, StatusConflict
from .metrics import bearer_token_matches
from .middleware import check_origin
from .ratelimit import site_budget
from .services import services
from .sites import Site
from .sse import AnswerStreamResponse, Connections
from .support_hours import hours_status, read_hours

MAX_BODY_BYTES = 100 * 1024
MESSAGE_TIMEOUT_S = 30.0
HISTORY_PAGE_MAX = 200
# The keep-alive comment interval on an idle stream; proxies drop connections idle for ~60 s.
PING_S = 15
# A client that stops reading must not hold a stream (and its buffers) forever.
SEND_TIMEOUT_S = 30
LAST_EVENT_ID_DIGITS = len(str(REPLAYED_END_ID))
# /readyz: a moment for a pooled connection, then a connection of its own.
READY_POOL_WAIT_S = 0.5
READY_CONNECT_TIMEOUT_S = 2
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


@dataclass(frozen=True)
class ChatRequest:
    message: str
    session_id: uuid.UUID | None
    site_key: str | None = None
    customer_token: object = None  # checked once the site is known (app/identity.py)


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
    raw_site = body.get("siteKey")
    if raw_site is not None and not isinstance(raw_site, str):
        raise BadRequest("siteKey must be a string.")
    return ChatRequest(message, session_id, raw_site, body.get("customerToken"))


def request_site(request: Request, site_key: str | None) -> Site:
    """The site a request names (none: the default site): an unknown key is a 404, and a page
    on an origin the site does not allow is refused like any foreign origin."""
    app_services = services(request)
    site = app_services.sites.resolve(site_key)
    where = ("ALLOWED_ORIGINS" if site.is_default else
             f"the origins of site {site.key} (python -m app sites update {site.key} --origin ...)")
    check_origin(request.scope, site.allowed_origins, app_services.refused_origins, where)
    return site


def site_param(request: Request) -> Site:
    return request_site(request, request.query_params.get("siteKey"))


def chat_service(request: Request) -> ChatService:
    return services(request).chat


async def sse_frames(events: AsyncIterator[Event]) -> AsyncIterator[bytes]:
    # A comment at once, so proxies and clients see bytes before the first token.
    yield b": ok\n\n"
    async with contextlib.aclosing(events):  # type: ignore[type-var]
        async for event in events:
            yield event.frame


def event_stream(events: AsyncIterator[Event], connections: Connections) -> AnswerStreamResponse:
    return AnswerStreamResponse(sse_frames(events), connections=connections, ping_s=PING_S,
                                headers=SSE_HEADERS, send_timeout_s=SEND_TIMEOUT_S)


async def start_chat(request: Request) -> tuple[ChatService, StartedAnswer, dict[str, str]]:
    """Validate, apply the limits, then start the answer: every refusal comes before a stream."""
    app_services = services(request)
    chat_request = parse_chat_request(await read_json_body(request),
                                      app_services.settings.max_message_chars)
    site = request_site(request, chat_request.site_key)
    customer = (None if chat_request.customer_token is None
                else verify_customer_token(chat_request.customer_token, site))
    limits = app_services.limits
    session_key = None if chat_request.session_id is None else str(chat_request.session_id)
    limit_headers = await limits.check_chat(limit_key(request.state.client_ip), session_key, site)
    service = app_services.chat
    budget = app_services.budget
    reservation = None
    if budget is not None and service.mode == "llm":
        key_part, daily_tokens = site_budget(site, budget.daily_tokens)
        if daily_tokens:
            # Refused here, before a stream: BudgetExhausted (503 budget_exhausted).
            reservation = await budget.reserve(
                budget.answer_estimate(service.reservation_chars(chat_request.message, site),
                                       site.max_tokens),
                key_part, limit=daily_tokens)
    try:
        started = await service.start_answer(chat_request.message, chat_request.session_id,
                                             site, customer, reservation)
    except BaseException:
        if reservation is not None:
            await asyncio.shield(reservation.release())
        raise
    if started.forwarded and reservation is not None:
        await reservation.release()  # a person answers: no model call
    # Told in the background: the answer's first token does not wait for the inbox.
    in_background(tell_followers(request, site.id, started.session_id, {
        "id": str(started.user_message_id), "sender": "user", "text": chat_request.message}))
    return service, started, limit_headers


# Keep a hard reference to each task: the event loop only keeps weak ones
# (https://docs.python.org/3/library/asyncio-task.html#asyncio.create_task).
_BACKGROUND: set[asyncio.Task[None]] = set()


def in_background(work: Coroutine[Any, Any, None]) -> None:
    task = asyncio.create_task(work)
    _BACKGROUND.add(task)
    task.add_done_callback(_BACKGROUND.discard)


async def announce(request: Request, site_id: int, conversation_id: uuid.UUID, kind: str,
                   payload: Any) -> None:
    """Tell the conversation's followers (the widget, agents) and the site's inbox."""
    app_services = services(request)
    await app_services.feeds.publish(conversation_key(site_id, conversation_id), kind, payload)
    try:
        summary = await app_services.desk.summary(conversation_id, [site_id])
    except (NotFoundError, StoreUnavailable):
        return
    await app_services.feeds.publish(site_key(site_id), "conversation", summary.to_json())


async def tell_followers(request: Request, site_id: int, conversation_id: uuid.UUID,
                         message: dict[str, Any]) -> None:
    """A shopper's message, to the conversation's followers and the site's inbox. No database
    read: a burst of shoppers must not take the pool's connections from their own answers."""
    feeds = services(request).feeds
    await feeds.publish(conversation_key(site_id, conversation_id), "message", message)
    await feeds.publish(site_key(site_id), "conversation",
                        {"id": str(conversation_id), "siteId": site_id, "lastMessage": message})


async def chat_stream(request: Request) -> Response:
    service, started, limit_headers = await start_chat(request)
    response = event_stream(service.new_answer_events(started), services(request).connections)
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
            value = whole_number(raw, LAST_EVENT_ID_DIGITS)
            if value is None:
                raise BadRequest("Last-Event-ID must be a whole number.")
            values.append(value)
    return values[0] if values else 0


def session_param(request: Request) -> uuid.UUID:
    return parse_uuid(request.query_params.get("sessionId"), "sessionId")


@contextlib.asynccontextmanager
async def lookup(request: Request, *, limited: bool = True) -> AsyncIterator[None]:
    """A history, resume or cancel lookup: its own per-IP limit and its share of the pool.

    The conversation's own reads (its live stream's check, typing, handoff) share the pool's
    share but not the per-IP lookup limit: a shopper typing to a person sends one every 3 s."""
    app_services = services(request)
    if limited:
        await app_services.limits.check_lookup(limit_key(request.state.client_ip))
    async with app_services.lookups.slot():
        yield


async def resume_stream(request: Request) -> Response:
    answer_id = parse_uuid(request.path_params["message_id"], "messageId")
    session_id = session_param(request)
    site = site_param(request)
    after = last_event_id(request)
    app_services = services(request)
    async with lookup(request):
        events = await app_services.chat.follow(answer_id, session_id, after, site.id)
    if events is None:
        # The client has the answer's end (an EventSource reconnecting after `done`): 204 is
        # what stops an EventSource for good (WHATWG HTML, "server-sent events").
        return Response(status_code=204, headers={"Cache-Control": "no-cache"})
    app_services.metrics.resumes.inc()
    return event_stream(events, app_services.connections)


async def cancel_answer(request: Request) -> Response:
    answer_id = parse_uuid(request.path_params["message_id"], "messageId")
    session_id = session_param(request)
    site = site_param(request)
    async with lookup(request):
        status = await chat_service(request).cancel(answer_id, session_id, site.id)
    return JSONResponse({"messageId": str(answer_id), "status": status})


async def history(request: Request) -> Response:
    session_id = parse_uuid(request.path_params["session_id"], "sessionId")
    limit = whole_number(request.query_params.get("limit", "50"), 3)
    if limit is None or not 1 <= limit <= HISTORY_PAGE_MAX:
        raise BadRequest(f"limit must be a whole number from 1 to {HISTORY_PAGE_MAX}.")
    raw_before = request.query_params.get("before")
    before = None if raw_before is None else parse_uuid(raw_before, "before")
    site = site_param(request)
    async with lookup(request):
        # Read before the history, so the stream resumed from here misses nothing written meanwhile
        # (a message in both is shown once: the widget knows messages by id).
        stream_id = await services(request).feeds.last_id(conversation_key(site.id, session_id))
        page = await chat_service(request).history(session_id, limit, before, site.id)
        ask_email = False
        if page.status == "waiting" and before is None:  # a reload while waiting: the form again
            summary = await services(request).desk.summary(session_id, [site.id])
            ask_email = offers_email(request, summary, await nobody_available(request, site))
    return JSONResponse({"sessionId": str(page.session_id),
                         "messages": [m.to_json() for m in page.messages],
                         "hasMore": page.has_more, "status": page.status,
                         "streamEventId": stream_id, "askEmail": ask_email})


async def handoff(request: Request) -> Response:
    """The shopper asks for a person: the conversation waits for one (already waiting or with a
    person: unchanged). The site's support hours are in the answer, for the widget to say."""
    session_id = parse_uuid(request.path_params["session_id"], "sessionId")
    site = site_param(request)
    desk = services(request).desk
    why = await nobody_available(request, site)
    emails = services(request).shopper_emails
    try:
        async with lookup(request, limited=False):
            summary = await desk.move(session_id, [site.id], "handoff", None)
    except StatusConflict:
        async with lookup(request, limited=False):
            summary = await desk.summary(session_id, [site.id])
    else:
        if emails is not None:
            await emails.waiting(session_id, str(request.url_for("inbox_page")))
        # The question before it is one the knowledge base did not answer (a knowledge gap).
        await FeedbackStore(services(request).pool).mark_handoff(session_id, site.id)
        await announce(request, site.id, session_id, "status", status_payload(summary))
        alerts = services(request).alerts
        if alerts is not None:
            last = summary.last_text if summary.last_sender == "user" else None
            alerts.conversation_waiting(site.name, session_id, last,
                                        str(request.url_for("inbox_page")), why)
    ask_email = offers_email(request, summary, why)
    return JSONResponse({"sessionId": str(session_id), "status": summary.status,
                         "supportHours": site.profile.support_hours or None,
                         "askEmail": ask_email})


async def nobody_available(request: Request, site: Site) -> str | None:
    """Why no person may see a waiting shopper soon (for the alert), or None."""
    profile = site.profile
    hours = read_hours(profile.support_hours, profile.time_zone)
    if hours is not None and not hours.is_open(datetime.now(UTC)):
        return "outside support hours"
    if not await services(request).staff.anyone_online(site.id):
        return "nobody is signed in"
    return None


def offers_email(request: Request, summary: ConversationSummary, why: str | None) -> bool:
    """Whether the widget offers to email the reply (app/shopper_email.py): nobody may reply
    soon (`why`), the shopper waits and has left no address, and replies can be emailed."""
    emails = services(request).shopper_emails
    return (why is not None and emails is not None and emails.mailer is not None
            and summary.status == "waiting" and summary.shopper_email is None)


def status_payload(summary: ConversationSummary) -> dict[str, Any]:
    return {"status": summary.status, "agentName": summary.agent_name}


async def conversation_stream(request: Request) -> Response:
    """The shopper's view of a conversation, live: messages, status changes, typing. The widget
    holds it while its panel is open or a person is involved; Last-Event-ID resumes it."""
    session_id = parse_uuid(request.path_params["session_id"], "sessionId")
    site = site_param(request)
    after = last_event_id(request)
    app_services = services(request)
    async with lookup(request, limited=False):
        await app_services.desk.summary(session_id, [site.id])  # another site's id: a 404
    events = without_stale_typing(
        app_services.feeds.follow(conversation_key(site.id, session_id), after))
    if app_services.shopper_emails is not None:  # the shopper is present while it is open
        events = app_services.shopper_emails.following(session_id, events)
    return event_stream(events, app_services.connections)


async def shopper_typing(request: Request) -> Response:
    session_id = parse_uuid(request.path_params["session_id"], "sessionId")
    site = site_param(request)
    app_services = services(request)
    async with lookup(request, limited=False):
        await app_services.desk.summary(session_id, [site.id])
    await app_services.feeds.publish(conversation_key(site.id, session_id), "typing",
                                     typing_payload("user"))
    return Response(status_code=204)


async def support_hours(request: Request) -> Response:
    """Whether a person can reply now, and from when: the site's profile's hours, read as a
    weekly schedule (app/support_hours.py). The widget shows it in the shopper's time zone."""
    profile = site_param(request).profile
    hours = read_hours(profile.support_hours, profile.time_zone)
    return JSONResponse(hours_status(hours, datetime.now(UTC)),
                        headers={"Cache-Control": "no-store"})


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    """503 without the database; 200 but "degraded" while Redis is down or any of its uses
    (rate limits, event log, token budget) still falls back to this instance's memory.

    About the database, not the pool: when every pooled connection is busy (answers at full
    load), a connection of its own asks the database instead of failing the instance.
    """
    app_services = services(request)
    try:
        try:
            async with app_services.pool.connection(timeout=READY_POOL_WAIT_S) as conn:
                await conn.execute("SELECT 1")
        except PoolTimeout:
            async with await psycopg.AsyncConnection.connect(
                    app_services.settings.database_url,
                    connect_timeout=READY_CONNECT_TIMEOUT_S, autocommit=True,
                    application_name=db.application_name(app_services.settings.database_url),
            ) as own:
                await own.execute("SELECT 1")
    except Exception:
        raise DatabaseUnavailable("The database is not reachable.") from None
    body: dict[str, Any] = {"status": "ready", "database": "up", "redis": "off",
                            "mode": app_services.chat.mode}
    redis = app_services.redis
    if redis is not None:
        body["redis"] = await redis.ping()
        body["redisUses"] = redis.uses()
        if body["redis"] == "down" or "down" in body["redisUses"].values():
            body["status"] = "degraded"
    return JSONResponse(body)


async def metrics(request: Request) -> Response:
    """GET /metrics: the Prometheus text format; asks for a bearer token when METRICS_TOKEN is set."""
    app_services = services(request)
    expected = app_services.settings.metrics_token
    if expected and not bearer_token_matches(request.headers.get("authorization"), expected):
        raise Unauthorized()
    body, content_type = app_services.metrics.exposition()
    return Response(body, media_type=content_type)
