"""Settings, read once from the environment into a frozen object.

Each setting is declared once, as a field of `Settings`: its variable, its default (written as it
would be in the environment), its meaning and how its value is read and checked. The dataclass
default, `from_env` and the `VARIABLES` table (which a test holds the README's configuration
table to, so an undocumented setting fails the suite) are all derived from that one line.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from .logs import LogFormat
from .pricing import PriceTable


class ConfigError(Exception):
    """A setting in the environment has a value the service cannot use."""


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")

# (variable name, raw text) -> the value, or ConfigError naming the variable.
Read = Callable[[str, str], Any]


def text(name: str, raw: str) -> str:
    return raw


def split_list(name: str, raw: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in raw.split(",") if item.strip())


def integer(low: int, high: int) -> Read:
    def read(name: str, raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise ConfigError(f"{name} must be a whole number, got {raw!r}") from None
        if not low <= value <= high:
            raise ConfigError(f"{name} must be between {low} and {high}, got {value}")
        return value

    return read


def number(low: float, high: float) -> Read:
    def read(name: str, raw: str) -> float:
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(f"{name} must be a number, got {raw!r}") from None
        if not low <= value <= high:
            raise ConfigError(f"{name} must be between {low} and {high}, got {value}")
        return value

    return read


def choice(options: tuple[str, ...], *, upper: bool = False) -> Read:
    def read(name: str, raw: str) -> str:
        value = raw.upper() if upper else raw.lower()
        if value not in options:
            raise ConfigError(f"{name} must be one of {', '.join(options)}, got {raw!r}")
        return value

    return read


def rate(name: str, raw: str) -> str:
    from .ratelimit import parse_limit

    try:
        parse_limit(name, raw)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return raw


def networks(name: str, raw: str) -> tuple[str, ...]:
    from .clientip import parse_networks

    entries = split_list(name, raw)
    try:
        parse_networks(entries)
    except ValueError as exc:
        raise ConfigError(f"{name}: {exc}") from None
    return entries


def boolean(name: str, raw: str) -> bool:
    lowered = raw.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name} must be true or false, got {lowered!r}")


# -- checks of single variables: each takes the raw text and returns the value or raises ------

_DEFAULT_PORTS = {"http": 80, "https": 443}


def check_origin(entry: str) -> str:
    """One ALLOWED_ORIGINS entry, as a browser writes its Origin header: scheme://host[:port].

    A browser compares the header to the entry byte for byte, so an entry with a slash or a path,
    without a scheme, or with its scheme's default port never matches: every request from the
    store would be refused, which looks like an outage. Refused here instead, with the fix.
    """
    if entry == "*":
        return entry
    url = urlsplit(entry)
    if url.scheme.lower() not in _DEFAULT_PORTS or not url.netloc:
        raise ConfigError(f"ALLOWED_ORIGINS: {entry!r} has no http:// or https://; write the"
                          f" origin with its scheme, e.g. 'https://{entry.split('://')[-1].lstrip('/')}'")
    origin = f"{url.scheme}://{url.netloc}".lower()
    if url.path or url.query or url.fragment:
        what = "a trailing slash" if entry.rstrip("/") == origin else "a path"
        raise ConfigError(f"ALLOWED_ORIGINS: {entry!r} has {what}, which a browser's Origin"
                          f" never has; write {origin!r}")
    try:
        port = url.port
    except ValueError:
        raise ConfigError(f"ALLOWED_ORIGINS: {entry!r} has a port that is not a number") from None
    if url.username is not None or url.password is not None:
        raise ConfigError(f"ALLOWED_ORIGINS: {entry!r} has a user name in it; write just"
                          f" scheme://host[:port]")
    if port == _DEFAULT_PORTS[url.scheme.lower()]:
        plain = origin.rsplit(":", 1)[0]
        raise ConfigError(f"ALLOWED_ORIGINS: {entry!r} names the default port, which a browser's"
                          f" Origin leaves out; write {plain!r}")
    return origin


def allowed_origins(name: str, raw: str) -> tuple[str, ...]:
    return tuple(check_origin(entry) for entry in split_list(name, raw))


def base_url(name: str, raw: str) -> str:
    """Without a scheme the SDK cannot connect, and every answer would quietly fall back."""
    if not raw:
        return raw
    url = urlsplit(raw)
    if url.scheme.lower() not in ("http", "https") or not url.netloc:
        raise ConfigError(f"{name} must start with http:// or https://, e.g."
                          f" 'http://{raw.split('://')[-1].lstrip('/')}', got {raw!r}")
    return raw


def demo_customer(name: str, raw: str) -> str:
    if raw and (":" not in raw or "@" not in raw.split(":", 1)[1]):
        raise ConfigError(f"{name} must look like 'customer-id:email@example.com', got {raw!r}")
    return raw


def smtp_url(name: str, raw: str) -> str:
    """Never quoted back: the URL holds the SMTP password."""
    from .mailer import parse_smtp_url

    if raw:
        try:
            parse_smtp_url(raw)
        except ValueError as exc:
            raise ConfigError(f"{name} {exc}") from None
    return raw


def email_address(name: str, raw: str) -> str:
    if raw and (raw.count("@") != 1 or any(c.isspace() for c in raw)):
        raise ConfigError(f"{name} must be one email address like help@shop.example, got {raw!r}")
    return raw
def model_prices(name: str, raw: str) -> Any:
    from .pricing import parse_prices

    try:
        return parse_prices(raw)
    except ValueError as exc:
        raise ConfigError(f"{name}: {exc}") from None


def percentages(name: str, raw: str) -> tuple[int, ...]:
    try:
        values = sorted({int(part) for part in split_list(name, raw)})
    except ValueError:
        raise ConfigError(f"{name} must be comma-separated whole percentages, e.g. '50,80,100',"
                          f" got {raw!r}") from None
    if any(not 1 <= value <= 1000 for value in values):
        raise ConfigError(f"{name}: each percentage must be between 1 and 1000, got {raw!r}")
    return tuple(values)


def setting(variable: str, default: str, meaning: str, read: Read = text) -> Any:
    """A field of Settings read from `variable`; unset or blank, `default` is read instead."""
    return dataclasses.field(default=read(variable, default),
                             metadata={"variable": variable, "default": default,
                                       "meaning": meaning, "read": read})


@dataclass(frozen=True)
class Settings:
    host: str = setting("HOST", "127.0.0.1", "Address to listen on.")
    port: int = setting("PORT", "8000", "Port to listen on.", integer(1, 65535))
    database_url: str = setting(
        "DATABASE_URL", "", "PostgreSQL URL; unset starts an embedded PostgreSQL with data in .data/.")
    redis_url: str = setting(
        "REDIS_URL", "", "Redis URL for shared limits and resumable streams; unset: per-process memory.")
    openai_api_key: str = setting("OPENAI_API_KEY", "", "API key for the model provider.")
    openai_base_url: str = setting(
        "OPENAI_BASE_URL", "", "Any OpenAI-compatible server (Ollama, vLLM, LiteLLM); unset: OpenAI.",
        base_url)
    openai_model: str = setting("OPENAI_MODEL", "gpt-4o-mini", "Model name sent upstream.")
    llm_timeout_s: float = setting(
        "LLM_TIMEOUT_S", "30", "Seconds to wait for the first chunk, and at most between two chunks.",
        number(0.1, 600))
    max_message_chars: int = setting("MAX_MESSAGE_CHARS", "5000", "Longest shopper message accepted.",
                                     integer(1, 100_000))
    history_window: int = setting(
        "HISTORY_WINDOW", "10", "How many earlier messages of the conversation go into the prompt.",
        integer(0, 200))
    max_tokens: int = setting("MAX_TOKENS", "500", "Longest answer, in tokens.", integer(1, 100_000))
    temperature: float = setting("TEMPERATURE", "0.7", "Sampling temperature.", number(0, 2))
    allowed_origins: tuple[str, ...] = setting(
        "ALLOWED_ORIGINS", "", "Comma-separated origins (scheme://host[:port]) allowed to call the"
        " chat API from a browser (the default site's; other sites have their own).",
        allowed_origins)
    db_pool_max: int = setting("DB_POOL_MAX", "10", "Most database connections per instance.",
                               integer(1, 1000))
    db_pool_lookups: int = setting(
        "DB_POOL_LOOKUPS", "3", "Of DB_POOL_MAX, most connections history, resume and cancel lookups"
        " hold at once; more are refused with 503 and Retry-After.", integer(1, 1000))
    redis_prefix: str = setting(
        "REDIS_PREFIX", "chat", "Prefix of every Redis key, so deployments can share a Redis.")
    rate_limit_enabled: bool = setting(
        "RATE_LIMIT_ENABLED", "true", "false turns every rate limit and the token budget off.",
        boolean)
    rate_limit_ip: str = setting(
        "RATE_LIMIT_IP", "100/15minutes", "Requests per client IP on every endpoint but health checks.",
        rate)
    rate_limit_chat_ip: str = setting("RATE_LIMIT_CHAT_IP", "50/15minutes",
                                      "Chat messages per client IP.", rate)
    rate_limit_chat_ip_daily: str = setting("RATE_LIMIT_CHAT_IP_DAILY", "200/day",
                                            "Chat messages per client IP per day.", rate)
    rate_limit_session: str = setting("RATE_LIMIT_SESSION", "20/15minutes",
                                      "Chat messages per conversation.", rate)
    alert_webhook_url: str = setting(
        "ALERT_WEBHOOK_URL", "", "URL that gets a JSON POST (Slack-compatible `text`) when a"
        " conversation starts waiting for a person; unset: no alerts.")
    smtp_url: str = setting(
        "SMTP_URL", "", "SMTP server for email (alerts, agent invitations):"
        " smtp://user:password@host:587 (STARTTLS when offered) or smtps://...:465; unset: no email.",
        smtp_url)
    smtp_from: str = setting("SMTP_FROM", "support@localhost", "The From address of every email.",
                             email_address)
    alert_email_to: str = setting(
        "ALERT_EMAIL_TO", "", "Address that gets every alert by email (with SMTP_URL), e.g. a"
        " shopper waiting for a person while nobody is online; unset: no alert emails.",
        email_address)
    waiting_alert_after_s: float = setting(
        "WAITING_ALERT_AFTER_S", "600", "Seconds a conversation may wait for a person before one"
        " alert says nobody has taken it (and the widget asks for the shopper's email); 0: never.",
        number(0, 7 * 86400))
    reply_email_delay_s: float = setting(
        "REPLY_EMAIL_DELAY_S", "60", "Seconds an agent's reply to a shopper who has left waits"
        " before it is emailed to them (later replies join it); at most one email per"
        " conversation this often.", number(0.1, 86400))
    rate_limit_admin_ip: str = setting("RATE_LIMIT_ADMIN_IP", "600/15minutes",
                                       "Back-office API requests (/admin/api/...) per client IP.",
                                       rate)
    rate_limit_login_ip: str = setting("RATE_LIMIT_LOGIN_IP", "20/15minutes",
                                       "Back-office sign-in attempts per client IP.", rate)
    rate_limit_login_account: str = setting("RATE_LIMIT_LOGIN_ACCOUNT", "10/15minutes",
                                            "Back-office sign-in attempts per email address.",
                                            rate)
    rate_limit_lookup_ip: str = setting("RATE_LIMIT_LOOKUP_IP", "60/15minutes",
                                        "History, resume and cancel lookups per client IP.", rate)
    daily_token_budget: int = setting(
        "DAILY_TOKEN_BUDGET", "0", "Tokens the whole deployment may spend per day; 0 is no budget.",
        integer(0, 10**12))
    daily_token_budget_fallback_share: float = setting(
        "DAILY_TOKEN_BUDGET_FALLBACK_SHARE", "0.05",
        "Share of DAILY_TOKEN_BUDGET each instance may spend while Redis is unreachable.",
        number(0, 1))
    trusted_proxies: tuple[str, ...] = setting(
        "TRUSTED_PROXIES", "",
        "Comma-separated proxy addresses or CIDRs whose X-Forwarded-For is believed.", networks)
    store_profile: str = setting(
        "STORE_PROFILE", "", "Store profile (TOML): name, tone, policies, hours; unset: the example store.")
    knowledge_dir: str = setting(
        "KNOWLEDGE_DIR", "", "Folder of Markdown help articles, indexed at start; unset: the example's.")
    db_startup_timeout_s: float = setting(
        "DB_STARTUP_TIMEOUT_S", "120", "Seconds to keep retrying an unreachable database at start.",
        number(0, 3600))
    shutdown_grace_s: float = setting(
        "SHUTDOWN_GRACE_S", "20",
        "On SIGTERM, seconds answers get to finish before they are saved as interrupted.",
        number(0, 3600))
    server_header_timeout_s: float = setting(
        "SERVER_HEADER_TIMEOUT_S", "10", "Seconds a client may take to send a request's headers"
        " (and to start one on a new connection).", number(0.1, 3600))
    server_body_timeout_s: float = setting(
        "SERVER_BODY_TIMEOUT_S", "30", "Seconds a client may take to send a request's body.",
        number(0.1, 3600))
    server_max_headers: int = setting(
        "SERVER_MAX_HEADERS", "100", "Most headers in one request; more is refused with 431.",
        integer(10, 10_000))
    server_max_header_bytes: int = setting(
        "SERVER_MAX_HEADER_BYTES", "16384", "Largest request line plus headers, in bytes;"
        " larger is refused with 431.", integer(1024, 1024 * 1024))
    server_max_connections_per_ip: int = setting(
        "SERVER_MAX_CONNECTIONS_PER_IP", "64", "Most open connections from one client address"
        " (TRUSTED_PROXIES are not limited).", integer(1, 1_000_000))
    log_level: str = setting("LOG_LEVEL", "INFO", "DEBUG, INFO, WARNING or ERROR.",
                             choice(LOG_LEVELS, upper=True))
    log_format: LogFormat = setting(
        "LOG_FORMAT", "text", "text (for people) or json (one object per line, for log collectors).",
        choice(("text", "json")))
    metrics_token: str = setting(
        "METRICS_TOKEN", "", "When set, GET /metrics asks for the header Authorization: Bearer <token>.")
    stream_ttl_s: int = setting(
        "STREAM_TTL_S", "3600", "Seconds an answer's events stay in Redis for resume after it ends;"
                                " later resumes are served from PostgreSQL.", integer(1, 30 * 86400))
    stream_maxlen: int = setting("STREAM_MAXLEN", "10000", "Most events kept in Redis per answer.",
                                 integer(100, 1_000_000))
    answer_lease_s: float = setting(
        "ANSWER_LEASE_S", "15", "Seconds after its producer's last heartbeat that other instances"
                                " treat an answer as cut off.", number(1, 300))
    orders_api_url: str = setting(
        "ORDERS_API_URL", "", "The store's order API (README \"The store connector\") for sites that"
                              " set none; empty: no order lookups.", base_url)
    orders_api_token: str = setting(
        "ORDERS_API_TOKEN", "", "Bearer token sent to ORDERS_API_URL.")
    order_number_pattern: str = setting(
        "ORDER_NUMBER_PATTERN", r"#?(\d{4,8})", "Regular expression that finds an order number in"
                                               " a message, for sites that set none.")
    orders_cache_s: float = setting(
        "ORDERS_CACHE_S", "60", "Seconds an order looked up at the store is reused.", number(0, 3600))
    orders_timeout_s: float = setting(
        "ORDERS_TIMEOUT_S", "5", "Seconds one call to the store's order API may take.",
        number(0.1, 60))
    demo_customer: str = setting(
        "DEMO_CUSTOMER", "", "Demo only: 'id:email' of a customer whose signed token the demo page"
                             " (GET /) is given; empty: none. Never set it in production.",
        demo_customer)

    model_prices: PriceTable = setting(
        "MODEL_PRICES", "gpt-4o-mini=0.15/0.60",
        "USD per million prompt/completion tokens per model, for the analytics page's cost:"
        " 'model=prompt/completion', comma-separated.", model_prices)
    spend_alert_thresholds: tuple[int, ...] = setting(
        "SPEND_ALERT_THRESHOLDS", "50,80,100",
        "Percentages of a site's daily token budget whose crossing sends one alert a day each.",
        percentages)
    spend_alert_jump: float = setting(
        "SPEND_ALERT_JUMP", "3",
        "Alert once a day when a site's tokens today pass this many times its average of the"
        " previous 7 days; 0: no such alert.", number(0, 1000))

    @property
    def llm_configured(self) -> bool:
        """Without a key or a server to talk to, answers come from the knowledge base alone."""
        return bool(self.openai_api_key or self.openai_base_url)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read every variable once; a bad value raises ConfigError naming the variable."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for spec in dataclasses.fields(cls):
            variable = spec.metadata["variable"]
            raw = env.get(variable)
            if raw is None or raw.strip() == "":
                raw = spec.metadata["default"]
            values[spec.name] = spec.metadata["read"](variable, raw.strip())
        return cls(**values)


# variable -> (default as written in the environment, one-line meaning): the README's table.
VARIABLES: dict[str, tuple[str, str]] = {
    spec.metadata["variable"]: (spec.metadata["default"], spec.metadata["meaning"])
    for spec in dataclasses.fields(Settings)
}
