"""The app's services in one typed container, instead of attributes on `app.state`.

`create_app` builds what needs no I/O (settings, metrics, the Redis owner, the rate limits, the
token budget, the lookups' bulkhead, the connection registry, the site directory that the
lifespan then fills); the lifespan adds what has to be opened or read first (the database pool,
the chat service) with `started()`. Handlers reach it with `services(request)`.
"""

from __future__ import annotations

from dataclasses import dataclass

from psycopg_pool import AsyncConnectionPool
from starlette.applications import Starlette
from starlette.requests import Request

from .alerts import Alerts
from .budget import TokenBudget
from .bulkhead import Bulkhead
from .chat import ChatService
from .config import Settings
from .conversation_events import Feeds
from .mailer import Mailer
from .messages import ConversationDesk
from .metrics import Metrics
from .middleware import RefusedOrigins
from .passwords import Passwords
from .ratelimit import RateLimits
from .redis_connection import SharedRedis
from .shopper_email import ShopperEmails
from .sites import SiteDirectory
from .sse import Connections
from .staff import StaffStore


class NotStarted(RuntimeError):
    """A service that the lifespan opens was asked for before the app started."""


@dataclass(frozen=True)
class Running:
    pool: AsyncConnectionPool
    chat: ChatService
    staff: StaffStore
    desk: ConversationDesk


@dataclass
class Services:
    settings: Settings
    metrics: Metrics
    redis: SharedRedis | None  # None: no REDIS_URL, every use counts in this process's memory
    limits: RateLimits
    connections: Connections
    # Every site, in memory (loaded and refreshed by the lifespan): resolving a request's site
    # costs no database round trip.
    sites: SiteDirectory
    refused_origins: RefusedOrigins
    # History, resume and cancel: their share of the database pool (app/bulkhead.py).
    lookups: Bulkhead
    passwords: Passwords
    # The conversations' and sites' live events (message, status, typing).
    feeds: Feeds
    alerts: Alerts | None = None  # None: neither ALERT_WEBHOOK_URL nor SMTP_URL+ALERT_EMAIL_TO
    mailer: Mailer | None = None  # None: no SMTP_URL
    budget: TokenBudget | None = None  # None: the limits turned off
    running: Running | None = None
    # The shopper's email and the replies sent to it (app/shopper_email.py): set in the lifespan.
    shopper_emails: ShopperEmails | None = None

    def started(self, pool: AsyncConnectionPool, chat: ChatService) -> None:
        self.running = Running(pool, chat, StaffStore(pool), ConversationDesk(pool))

    def stopped(self) -> None:
        self.running = None

    def _running(self) -> Running:
        if self.running is None:
            raise NotStarted("the app's lifespan has not started")
        return self.running

    @property
    def pool(self) -> AsyncConnectionPool:
        return self._running().pool

    @property
    def chat(self) -> ChatService:
        return self._running().chat

    @property
    def staff(self) -> StaffStore:
        return self._running().staff

    @property
    def desk(self) -> ConversationDesk:
        return self._running().desk


def services_of(app: Starlette) -> Services:
    found: Services = app.state.services
    return found


def services(request: Request) -> Services:
    """The one lookup of the app's services from a request."""
    return services_of(request.app)
