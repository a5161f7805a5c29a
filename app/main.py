"""create_app(settings) -> Starlette: the routes list, middleware, error handlers and lifespan."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from sse_starlette.sse import AppStatus
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Route

from . import db, endpoints, openapi
from .access import AccessMiddleware
from .budget import TokenBudget
from .bulkhead import Bulkhead, lookup_slots
from .chat import ChatService, answer_caps
from .clientip import parse_networks
from .config import Settings
from .errors import AppError, app_error_handler, http_error_handler, unexpected_error_handler
from .eventlog import EventLog, MemoryEventLog
from .knowledge import DEFAULT_KNOWLEDGE_DIR, KnowledgeError, sync_knowledge
from .llm import LLM
from .metrics import Metrics, metrics_endpoint
from .middleware import OriginGuard, RequestLimit, SecurityHeaders
from .ratelimit import RateLimits, Rule, parse_limit
from .redis_connection import connect as redis_connect
from .redis_eventlog import RedisEventLog
from .store_profile import DEFAULT_PROFILE_PATH, StoreProfile, load_profile

log = logging.getLogger(__name__)

WEB_DIR = Path(__file__).resolve().parent.parent / "web"


async def demo_page(request: Request) -> Response:
    return FileResponse(WEB_DIR / "index.html", media_type="text/html")


async def widget_script(request: Request) -> Response:
    return FileResponse(WEB_DIR / "widget.js", media_type="text/javascript",
                        headers={"Cache-Control": "public, max-age=300"})


routes = [
    Route("/chat/stream", endpoints.chat_stream, methods=["POST"]),
    Route("/chat/message", endpoints.chat_message, methods=["POST"]),
    Route("/chat/stream/{message_id}", endpoints.resume_stream, methods=["GET"]),
    Route("/chat/messages/{message_id}/cancel", endpoints.cancel_answer, methods=["POST"]),
    Route("/chat/history/{session_id}", endpoints.history, methods=["GET"]),
    Route("/healthz", endpoints.healthz, methods=["GET"]),
    Route("/readyz", endpoints.readyz, methods=["GET"]),
    Route("/metrics", metrics_endpoint, methods=["GET"]),
    Route("/", demo_page, methods=["GET"]),
    Route("/widget.js", widget_script, methods=["GET"]),
    Route("/openapi.json", openapi.openapi_json, methods=["GET"]),
]


def build_llm(settings: Settings, http_client: Any = None) -> LLM:
    return LLM(api_key=settings.openai_api_key, base_url=settings.openai_base_url,
               model=settings.openai_model, timeout_s=settings.llm_timeout_s,
               max_tokens=settings.max_tokens, temperature=settings.temperature,
               http_client=http_client)


def build_event_log(settings: Settings) -> EventLog:
    """Redis Streams when REDIS_URL is set (answers resumable on any instance), else memory."""
    if not settings.redis_url:
        return MemoryEventLog()
    return RedisEventLog(settings.redis_url, key_prefix=settings.redis_prefix,
                         stream_ttl_s=settings.stream_ttl_s, stream_maxlen=settings.stream_maxlen,
                         lease_s=settings.answer_lease_s)


def build_rate_limits(settings: Settings) -> RateLimits:
    return RateLimits(
        enabled=settings.rate_limit_enabled,
        every_request=Rule("ip", parse_limit("RATE_LIMIT_IP", settings.rate_limit_ip), "sliding"),
        chat_rules=(
            Rule("chat_ip", parse_limit("RATE_LIMIT_CHAT_IP", settings.rate_limit_chat_ip),
                 "moving"),
            Rule("chat_ip_daily",
                 parse_limit("RATE_LIMIT_CHAT_IP_DAILY", settings.rate_limit_chat_ip_daily),
                 "sliding"),
        ),
        session_rule=Rule("session", parse_limit("RATE_LIMIT_SESSION", settings.rate_limit_session),
                          "moving"),
        redis_url=settings.redis_url,
        redis_prefix=settings.redis_prefix,
        lookup_rule=Rule("lookup_ip",
                         parse_limit("RATE_LIMIT_LOOKUP_IP", settings.rate_limit_lookup_ip),
                         "moving"),
    )


def build_budget(settings: Settings) -> TokenBudget | None:
    """The daily token budget, or None without one (or with the limits turned off)."""
    if not settings.daily_token_budget or not settings.rate_limit_enabled:
        return None
    return TokenBudget(settings.daily_token_budget, max_tokens=settings.max_tokens,
                       redis=redis_connect(settings.redis_url) if settings.redis_url else None,
                       key_prefix=settings.redis_prefix,
                       fallback_share=settings.daily_token_budget_fallback_share)


def load_store(settings: Settings) -> tuple[StoreProfile, Path]:
    """The store profile and the knowledge folder (the example store's unless configured).

    Raises ProfileError or KnowledgeError with a one-line reason naming the file.
    """
    profile = load_profile(settings.store_profile or DEFAULT_PROFILE_PATH)
    articles_dir = Path(settings.knowledge_dir) if settings.knowledge_dir else DEFAULT_KNOWLEDGE_DIR
    if not articles_dir.is_dir():
        raise KnowledgeError(f"knowledge folder {articles_dir} does not exist or is not a folder")
    return profile, articles_dir


def create_app(settings: Settings, *, llm_http_client: Any = None) -> Starlette:
    """The app; `llm_http_client` lets tests route the model's HTTP calls through respx.

    The store is loaded here, not in the lifespan, so a wrong profile stops the service before
    it serves.
    """
    profile, articles_dir = load_store(settings)
    metrics = Metrics()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await db.wait_until_reachable(settings.database_url, settings.db_startup_timeout_s)
        await db.migrate(settings.database_url)
        pool = db.create_pool(settings.database_url, settings.db_pool_max)
        await pool.open(wait=True, timeout=30)
        metrics.watch_pool(pool.get_stats)
        synced = await sync_knowledge(pool, articles_dir)
        log.info("knowledge base %s: %s", articles_dir, synced.summary())
        llm = build_llm(settings, llm_http_client) if settings.llm_configured else None
        if llm is None:
            log.warning("no OPENAI_API_KEY or OPENAI_BASE_URL: knowledge-only mode, answers "
                        "come from the knowledge base")
        limits = build_rate_limits(settings)
        # Counted where they are decided: the per-IP limit refuses in middleware, the others in
        # the endpoint, and both go through here.
        limits.on_refusal = lambda name: metrics.rate_limit_refusals.labels(limit=name).inc()
        metrics.redis_fallback.set_function(lambda: 1.0 if limits.redis_state == "down" else 0.0)
        budget = build_budget(settings)
        if budget is not None:
            budget.on_refusal = limits.on_refusal
        events = build_event_log(settings)
        await events.open()
        chat = ChatService(pool, events, llm, history_window=settings.history_window,
                           profile=profile, metrics=metrics,
                           answer_cap=answer_caps(settings.max_tokens))
        # An answer left 'streaming' that no instance produces had its producer die: with one
        # instance, with the previous process; with Redis, whichever instance let its lease go.
        interrupted = await chat.interrupt_orphans()
        if interrupted:
            log.warning("marked %d answers from a previous run as interrupted", interrupted)
        app.state.settings = settings
        app.state.pool = pool
        app.state.chat = chat
        app.state.limits = limits
        app.state.budget = budget
        app.state.lookups = Bulkhead(lookup_slots(settings.db_pool_max, settings.db_pool_lookups))
        try:
            yield
        finally:
            await chat.shutdown(settings.shutdown_grace_s)
            await events.aclose()
            if llm is not None:
                await llm.aclose()
            await limits.aclose()
            if budget is not None:
                await budget.aclose()
            metrics.watch_pool(None)
            await pool.close()

    # sse-starlette ends every stream the moment uvicorn sees SIGTERM; our streams end when their
    # answers end, and AppServer gives answers a grace period first.
    AppStatus.disable_automatic_graceful_drain()  # type: ignore[no-untyped-call]
    middleware = [
        # Outermost: it sees every response, CORS refusals included, and times the whole request.
        Middleware(AccessMiddleware, metrics=metrics),
        Middleware(SecurityHeaders),
        # Before CORS, so a disallowed origin's preflight gets our 403 body, not a bare 400.
        Middleware(OriginGuard, allowed_origins=settings.allowed_origins,
                   trusted_proxies=parse_networks(settings.trusted_proxies)),
        Middleware(CORSMiddleware, allow_origins=list(settings.allowed_origins),
                   allow_methods=["GET", "POST"],
                   allow_headers=["content-type", "last-event-id"],
                   expose_headers=["retry-after", "ratelimit-limit", "ratelimit-remaining",
                                   "ratelimit-reset", "ratelimit-policy"],
                   max_age=600),
        Middleware(RequestLimit, trusted_proxies=parse_networks(settings.trusted_proxies)),
    ]
    app = Starlette(
        routes=routes,
        middleware=middleware,
        exception_handlers={
            AppError: app_error_handler,
            HTTPException: http_error_handler,
            Exception: unexpected_error_handler,
        },
        lifespan=lifespan,
    )
    app.state.metrics = metrics
    return app
