"""create_app(settings) -> Starlette: the routes list, middleware, error handlers and lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import html
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import psycopg
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, Response
from starlette.routing import Route

from . import (
    db,
    endpoints,
    endpoints_admin,
    endpoints_analytics,
    endpoints_feedback,
    endpoints_shopper_email,
    endpoints_team,
    openapi,
)
from .access import AccessMiddleware
from .alerts import build_alerts
from .analytics import Analytics, roll_up_every
from .budget import TokenBudget
from .bulkhead import Bulkhead, lookup_slots
from .chat import ChatService, answer_caps
from .clientip import parse_networks
from .config import Settings
from .conversation_events import build_feeds, site_key
from .errors import (
    AppError,
    NotFoundError,
    StoreUnavailable,
    app_error_handler,
    domain_error_handler,
    http_error_handler,
    unexpected_error_handler,
)
from .eventlog import EventLog, MemoryEventLog
from .identity import sign_customer_token
from .knowledge import DEFAULT_KNOWLEDGE_DIR, KnowledgeError, sync_knowledge
from .knowledge_search import SiteSearches
from .llm import LLM
from .mailer import Mailer, parse_smtp_url
from .metrics import Metrics
from .middleware import (
    OriginGuard,
    RefusedOrigins,
    RequestLimit,
    SecurityHeaders,
    SiteCORS,
)
from .orders import OrdersClient
from .passwords import Passwords
from .ratelimit import RateLimits, Rule, parse_limit
from .redis_connection import SharedRedis
from .redis_eventlog import RedisEventLog
from .services import Services, services_of
from .shopper_email import ShopperEmails
from .sites import SiteDirectory, SiteStore, ensure_default_site
from .spend_alerts import SpendAlerts
from .sse import Connections
from .store_profile import DEFAULT_PROFILE_PATH, StoreProfile, load_profile
from .waiting_alerts import WaitingAlerts

log = logging.getLogger(__name__)

WEB_DIR = Path(__file__).resolve().parent.parent / "web"


async def demo_page(request: Request) -> Response:
    """The demo store page; with DEMO_CUSTOMER set, as if that customer had signed in: the
    page carries a customer token made here, as a store's own server would make it."""
    app_services = services_of(request.app)
    demo = app_services.settings.demo_customer
    if not demo:
        return FileResponse(WEB_DIR / "index.html", media_type="text/html")
    customer_id, email = demo.split(":", 1)
    token = sign_customer_token(app_services.sites.default.identity_secret, customer_id, email)
    page = (WEB_DIR / "index.html").read_text(encoding="utf-8").replace(
        '<script src="/widget.js" defer></script>',
        f'<script src="/widget.js" defer data-customer-token="{html.escape(token)}"></script>', 1
    ).replace("</footer>", f" You are signed in as {html.escape(email)} (demo).</footer>", 1)
    return HTMLResponse(page, headers={"Cache-Control": "no-store"})


async def favicon(request: Request) -> Response:
    # One SVG for the demo page's <link rel=icon> and for /favicon.ico, which browsers ask for
    # on their own; current browsers read an icon by its content type, not its name.
    return FileResponse(WEB_DIR / "favicon.svg", media_type="image/svg+xml",
                        headers={"Cache-Control": "public, max-age=86400"})


async def widget_script(request: Request) -> Response:
    return FileResponse(WEB_DIR / "widget.js", media_type="text/javascript",
                        headers={"Cache-Control": "public, max-age=300"})


# The widget's string catalogues: one small file per language, fetched by the widget only for
# the language in use (web/locales/<language>.json). The name is checked against the files
# there, so a path never reaches the file system.
LOCALES = frozenset(path.stem for path in (WEB_DIR / "locales").glob("*.json"))


async def widget_locale(request: Request) -> Response:
    language = request.path_params["language"]
    if language not in LOCALES:
        raise NotFoundError("locale")
    return FileResponse(WEB_DIR / "locales" / f"{language}.json", media_type="application/json",
                        headers={"Cache-Control": "public, max-age=300"})


# The pages and scripts every store page loads go out gzip-compressed when the client accepts it
# (widget.js: about a third of its size). Only these routes: the SSE streams must never pass
# through a compressor, which would hold tokens back until its buffer fills, and the API's JSON
# is small. Level 6, gzip's own default: nearly level 9's size for a fraction of its CPU.
STATIC_GZIP = [Middleware(GZipMiddleware, minimum_size=500, compresslevel=6)]

routes = [
    Route("/chat/stream", endpoints.chat_stream, methods=["POST"]),
    Route("/chat/message", endpoints.chat_message, methods=["POST"]),
    Route("/chat/stream/{message_id}", endpoints.resume_stream, methods=["GET"]),
    Route("/chat/messages/{message_id}/cancel", endpoints.cancel_answer, methods=["POST"]),
    Route("/chat/history/{session_id}", endpoints.history, methods=["GET"]),
    Route("/chat/hours", endpoints.support_hours, methods=["GET"]),
    Route("/chat/conversations/{session_id}/handoff", endpoints.handoff, methods=["POST"]),
    Route("/chat/conversations/{session_id}/stream", endpoints.conversation_stream,
          methods=["GET"]),
    Route("/chat/conversations/{session_id}/typing", endpoints.shopper_typing, methods=["POST"]),
    Route("/chat/conversations/{session_id}/email", endpoints_shopper_email.leave_email,
          methods=["POST"]),
    Route("/chat/reopen", endpoints_shopper_email.reopen, methods=["POST"]),
    Route("/chat/messages/{message_id}/feedback", endpoints_feedback.message_feedback,
          methods=["POST"]),
    Route("/chat/conversations/{session_id}/csat", endpoints_feedback.conversation_csat,
          methods=["POST"]),
    Route("/admin/api/stream", endpoints_admin.site_stream, methods=["GET"]),
    Route("/admin/api/conversations/{conversation_id}/stream",
          endpoints_admin.conversation_stream, methods=["GET"]),
    Route("/admin", endpoints_admin.inbox_page, methods=["GET"]),
    Route("/admin/login", endpoints_admin.login_form, methods=["GET"]),
    Route("/admin/login", endpoints_admin.login, methods=["POST"]),
    Route("/admin/logout", endpoints_admin.logout, methods=["POST"]),
    Route("/admin/logout-everywhere", endpoints_admin.logout_everywhere, methods=["POST"]),
    Route("/admin/gaps", endpoints_feedback.gaps_page, methods=["GET"]),
    Route("/admin/assets/gaps.js", endpoints_feedback.gaps_script, methods=["GET"]),
    Route("/admin/api/gaps", endpoints_feedback.knowledge_gaps, methods=["GET"]),
    Route("/admin/api/curated-answers", endpoints_feedback.curated_answers, methods=["GET"]),
    Route("/admin/api/curated-answers", endpoints_feedback.publish_curated_answer,
          methods=["POST"]),
    Route("/admin/api/curated-answers/{answer_id}", endpoints_feedback.edit_curated_answer,
          methods=["PUT"]),
    Route("/admin/api/curated-answers/{answer_id}", endpoints_feedback.withdraw_curated_answer,
          methods=["DELETE"]),
    Route("/admin/assets/{name}", endpoints_admin.admin_asset, methods=["GET"]),
    Route("/admin/api/me", endpoints_admin.me, methods=["GET"]),
    Route("/admin/analytics", endpoints_analytics.analytics_page, methods=["GET"]),
    Route("/admin/api/sites/{site_id}/analytics", endpoints_analytics.analytics_json,
          methods=["GET"]),
    Route("/admin/api/sites/{site_id}/analytics.csv", endpoints_analytics.analytics_csv,
          methods=["GET"]),
    Route("/admin/api/conversations", endpoints_admin.conversations, methods=["GET"]),
    Route("/admin/api/conversations/{conversation_id}", endpoints_admin.conversation,
          methods=["GET"]),
    Route("/admin/api/conversations/{conversation_id}/messages", endpoints_admin.agent_message,
          methods=["POST"]),
    Route("/admin/api/conversations/{conversation_id}/notes", endpoints_team.add_note,
          methods=["POST"]),
    Route("/admin/api/invites", endpoints_team.create_invite, methods=["POST"]),
    Route("/admin/invite/{token}", endpoints_team.invite_page, methods=["GET"], name="invite_page"),
    Route("/admin/invite/{token}", endpoints_team.accept_invite, methods=["POST"]),
    Route("/admin/api/conversations/{conversation_id}/{action}",
          endpoints_admin.conversation_action, methods=["POST"]),
    Route("/healthz", endpoints.healthz, methods=["GET"]),
    Route("/readyz", endpoints.readyz, methods=["GET"]),
    Route("/metrics", endpoints.metrics, methods=["GET"]),
    Route("/", demo_page, methods=["GET"], middleware=STATIC_GZIP),
    Route("/widget.js", widget_script, methods=["GET"], middleware=STATIC_GZIP),
    Route("/locales/{language}.json", widget_locale, methods=["GET"], middleware=STATIC_GZIP),
    Route("/favicon.svg", favicon, methods=["GET"]),
    Route("/favicon.ico", favicon, methods=["GET"]),
    Route("/openapi.json", openapi.openapi_json, methods=["GET"], middleware=STATIC_GZIP),
]


def build_llm(settings: Settings, http_client: Any = None) -> LLM:
    return LLM(api_key=settings.openai_api_key, base_url=settings.openai_base_url,
               model=settings.openai_model, timeout_s=settings.llm_timeout_s,
               max_tokens=settings.max_tokens, temperature=settings.temperature,
               http_client=http_client)


def build_event_log(settings: Settings, redis: SharedRedis | None) -> EventLog:
    """Redis Streams when REDIS_URL is set (answers resumable on any instance), else memory."""
    if redis is None:
        return MemoryEventLog()
    return RedisEventLog(redis, key_prefix=settings.redis_prefix,
                         stream_ttl_s=settings.stream_ttl_s, stream_maxlen=settings.stream_maxlen,
                         lease_s=settings.answer_lease_s)


def build_rate_limits(settings: Settings, redis: SharedRedis | None,
                      on_refusal: Callable[[str], None] | None = None) -> RateLimits:
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
        redis=redis,
        redis_prefix=settings.redis_prefix,
        on_refusal=on_refusal,
        login_rules=(
            Rule("login_ip", parse_limit("RATE_LIMIT_LOGIN_IP", settings.rate_limit_login_ip),
                 "moving"),
            Rule("login_account",
                 parse_limit("RATE_LIMIT_LOGIN_ACCOUNT", settings.rate_limit_login_account),
                 "moving"),
        ),
        admin_rule=Rule("admin_ip", parse_limit("RATE_LIMIT_ADMIN_IP",
                                                settings.rate_limit_admin_ip), "moving"),
        lookup_rule=Rule("lookup_ip",
                         parse_limit("RATE_LIMIT_LOOKUP_IP", settings.rate_limit_lookup_ip),
                         "moving"),
    )


def build_budget(settings: Settings, redis: SharedRedis | None,
                 on_refusal: Callable[[str], None] | None = None) -> TokenBudget | None:
    """The daily token budgets (the deployment's DAILY_TOKEN_BUDGET, 0: none, and the sites'
    own), or None with the limits turned off."""
    if not settings.rate_limit_enabled:
        return None
    budget = TokenBudget(settings.daily_token_budget, max_tokens=settings.max_tokens,
                         redis=redis, key_prefix=settings.redis_prefix,
                         fallback_share=settings.daily_token_budget_fallback_share)
    budget.on_refusal = on_refusal
    return budget


def load_store(settings: Settings) -> tuple[StoreProfile, Path]:
    """The store profile and the knowledge folder (the example store's unless configured).

    Raises ProfileError or KnowledgeError with a one-line reason naming the file.
    """
    profile = load_profile(settings.store_profile or DEFAULT_PROFILE_PATH)
    articles_dir = Path(settings.knowledge_dir) if settings.knowledge_dir else DEFAULT_KNOWLEDGE_DIR
    if not articles_dir.is_dir():
        raise KnowledgeError(f"knowledge folder {articles_dir} does not exist or is not a folder")
    return profile, articles_dir


def start_spend_alerts(services: Services, pool: Any) -> asyncio.Task[None] | None:
    """The every-minute spend check (app/spend_alerts.py), when alerts have somewhere to go."""
    if services.alerts is None:
        return None
    settings = services.settings
    watch = SpendAlerts(pool, services.sites, services.alerts,
                        thresholds=settings.spend_alert_thresholds, jump=settings.spend_alert_jump,
                        default_budget=settings.daily_token_budget, prices=settings.model_prices)
    return asyncio.create_task(watch.run(), name="spend-alerts")


async def warm_up_search(knowledge: SiteSearches) -> None:
    """Load the default site's vocabulary and the world's place names now: the first question
    would otherwise pay for them (about 0.5 s, several seconds on a busy machine). Best effort:
    a database too slow for it now must not stop the start, the first question loads them."""
    try:
        await knowledge.for_site().search("Do you ship to Germany?")
    except (psycopg.Error, TimeoutError) as exc:  # PoolTimeout is a psycopg.Error
        log.warning("the knowledge search was not warmed up (%s): the first question loads it",
                    type(exc).__name__)


def start_waiting_alerts(services: Services, pool: Any) -> asyncio.Task[None] | None:
    """The "nobody took it" check (app/waiting_alerts.py), unless it is off or has no effect."""
    settings = services.settings
    if not settings.waiting_alert_after_s or (services.alerts is None and services.mailer is None):
        return None
    watch = WaitingAlerts(pool, services.sites, services.alerts, services.feeds,
                          after_s=settings.waiting_alert_after_s,
                          ask_email=services.mailer is not None)
    return asyncio.create_task(watch.run(), name="waiting-alerts")


def create_app(settings: Settings, *, llm_http_client: Any = None) -> Starlette:
    """The app; `llm_http_client` lets tests route the model's HTTP calls through respx.

    The store is loaded here, not in the lifespan, so a wrong profile stops the service before
    it serves.
    """
    profile, articles_dir = load_store(settings)
    redis = SharedRedis(settings.redis_url) if settings.redis_url else None
    metrics = Metrics(redis_fallback=redis.fallback_level if redis is not None else None)
    # Counted where they are decided: the per-IP limit refuses in middleware, the others in
    # the endpoint, and both go through here.
    def count_refusal(name: str) -> None:
        metrics.rate_limit_refusals.labels(limit=name).inc()

    limits = build_rate_limits(settings, redis, on_refusal=count_refusal)
    budget = build_budget(settings, redis, on_refusal=count_refusal)
    # Filled in the lifespan; the origin checks below read it on every request.
    sites = SiteDirectory()
    refused_origins = RefusedOrigins()
    mailer = (Mailer(parse_smtp_url(settings.smtp_url), settings.smtp_from)
              if settings.smtp_url else None)
    services = Services(settings=settings, metrics=metrics, redis=redis, limits=limits,
                        connections=Connections(), sites=sites, refused_origins=refused_origins,
                        passwords=Passwords(),
                        feeds=build_feeds(redis, settings.redis_prefix),
                        mailer=mailer,
                        alerts=build_alerts(settings.alert_webhook_url, mailer,
                                            settings.alert_email_to),
                        lookups=Bulkhead(lookup_slots(settings.db_pool_max,
                                                      settings.db_pool_lookups)),
                        budget=budget)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await db.wait_until_reachable(settings.database_url, settings.db_startup_timeout_s)
        await db.migrate(settings.database_url)
        pool = db.create_pool(settings.database_url, settings.db_pool_max)
        await pool.open(wait=True, timeout=30)
        metrics.watch_pool(pool.get_stats)
        # The default site mirrors the deployment's settings; every site is then in memory.
        await ensure_default_site(pool, profile, str(articles_dir), settings.allowed_origins)
        await sites.open(SiteStore(pool))
        synced = await sync_knowledge(pool, articles_dir)
        log.info("knowledge base %s: %s", articles_dir, synced.summary())
        llm = build_llm(settings, llm_http_client) if settings.llm_configured else None
        if llm is None:
            log.warning("no OPENAI_API_KEY or OPENAI_BASE_URL: knowledge-only mode, answers "
                        "come from the knowledge base")
        events = build_event_log(settings, redis)
        orders_http = httpx.AsyncClient()
        orders = OrdersClient(orders_http, default_url=settings.orders_api_url,
                              default_token=settings.orders_api_token,
                              default_pattern=settings.order_number_pattern,
                              cache_s=settings.orders_cache_s, timeout_s=settings.orders_timeout_s)
        # One search per site, made on the site's first question: each caches its site's
        # vocabulary, synonyms and typo fixes for the app's lifetime.
        knowledge = SiteSearches(pool, profile)

        async def tell_inbox_answered(site_id: int, conversation_id: uuid.UUID,
                                      message: dict[str, Any]) -> None:
            # An agent with the conversation open sees the assistant's answer once it ends
            # (the inbox reads the conversation again on this event), not only on the next one.
            await services.feeds.publish(site_key(site_id), "conversation", {
                "id": str(conversation_id), "siteId": site_id, "lastMessage": message})
        await warm_up_search(knowledge)
        chat = ChatService(pool, events, llm, history_window=settings.history_window,
                           profile=profile, knowledge=knowledge, metrics=metrics, orders=orders,
                           answer_cap=answer_caps(settings.max_tokens),
                           answered=tell_inbox_answered)
        await events.open(on_cancel_request=chat.cancel_running)
        # An answer left 'streaming' that no instance produces had its producer die: with one
        # instance, with the previous process; with Redis, whichever instance let its lease go.
        interrupted = await chat.interrupt_orphans()
        if interrupted:
            log.warning("marked %d answers from a previous run as interrupted", interrupted)
        services.started(pool, chat)
        spend_watch = start_spend_alerts(services, pool)
        shopper_emails = services.shopper_emails = ShopperEmails(
            pool, sites, mailer, settings.reply_email_delay_s)
        reply_sender = (asyncio.create_task(shopper_emails.run(), name="reply-emails")
                        if mailer is not None else None)
        waiting_watch = start_waiting_alerts(services, pool)
        roll_ups = asyncio.create_task(
            roll_up_every(Analytics(pool, settings.model_prices), sites), name="analytics")
        try:
            yield
        finally:
            for background in (spend_watch, roll_ups, reply_sender, waiting_watch):
                if background is not None:
                    background.cancel()
                    await asyncio.gather(background, return_exceptions=True)
            await sites.aclose()
            await chat.shutdown(settings.shutdown_grace_s)
            services.stopped()
            await events.aclose()
            if services.alerts is not None:
                await services.alerts.aclose()
            await shopper_emails.aclose()
            await orders_http.aclose()
            if llm is not None:
                await llm.aclose()
            if budget is not None:
                await budget.aclose()
            if redis is not None:
                await redis.aclose()
            metrics.watch_pool(None)
            await pool.close()

    middleware = [
        # Outermost: it sees every response, CORS refusals included, and times the whole request.
        Middleware(AccessMiddleware, metrics=metrics),
        Middleware(SecurityHeaders),
        # Before CORS, so a disallowed origin's preflight gets our 403 body, not a bare 400.
        Middleware(OriginGuard, allowed_origins=lambda: sites.every_origin,
                   refusals=refused_origins,
                   trusted_proxies=parse_networks(settings.trusted_proxies)),
        Middleware(SiteCORS, allowed_origins=lambda: sites.every_origin,
                   allow_methods=["GET", "POST"],
                   allow_headers=["content-type", "last-event-id"],
                   expose_headers=["retry-after", "ratelimit-limit", "ratelimit-remaining",
                                   "ratelimit-reset", "ratelimit-policy"],
                   max_age=600),
        Middleware(RequestLimit, trusted_proxies=parse_networks(settings.trusted_proxies),
                   limits=limits),
    ]
    app = Starlette(
        routes=routes,
        middleware=middleware,
        exception_handlers={
            NotFoundError: domain_error_handler,
            StoreUnavailable: domain_error_handler,
            AppError: app_error_handler,
            HTTPException: http_error_handler,
            Exception: unexpected_error_handler,
        },
        lifespan=lifespan,
    )
    app.state.services = services  # the one entry on app.state: app/services.py reads it
    return app
