"""Settings, read once from the environment into a frozen object.

Every variable is listed in `VARIABLES` with its default and meaning; a test holds the README's
configuration table to this list, so an undocumented setting fails the suite.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from .logs import LogFormat


class ConfigError(Exception):
    """A setting in the environment has a value the service cannot use."""


# name -> (default, one-line meaning). The README's configuration table mirrors this.
VARIABLES: dict[str, tuple[str, str]] = {
    "HOST": ("127.0.0.1", "Address to listen on."),
    "PORT": ("8000", "Port to listen on."),
    "DATABASE_URL": ("", "PostgreSQL URL; unset starts an embedded PostgreSQL with data in .data/."),
    "REDIS_URL": ("", "Redis URL for shared limits and resumable streams; unset: per-process memory."),
    "OPENAI_API_KEY": ("", "API key for the model provider."),
    "OPENAI_BASE_URL": ("", "Any OpenAI-compatible server (Ollama, vLLM, LiteLLM); unset: OpenAI."),
    "OPENAI_MODEL": ("gpt-4o-mini", "Model name sent upstream."),
    "LLM_TIMEOUT_S": ("30", "Seconds to wait for the first chunk, and at most between two chunks."),
    "MAX_MESSAGE_CHARS": ("5000", "Longest shopper message accepted."),
    "HISTORY_WINDOW": ("10", "How many earlier messages of the conversation go into the prompt."),
    "MAX_TOKENS": ("500", "Longest answer, in tokens."),
    "TEMPERATURE": ("0.7", "Sampling temperature."),
    "ALLOWED_ORIGINS": ("", "Comma-separated origins allowed to call the chat API from a browser."),
    "DB_POOL_MAX": ("10", "Most database connections per instance."),
    "DB_POOL_LOOKUPS": ("3", "Of DB_POOL_MAX, most connections history, resume and cancel lookups"
                             " hold at once; more are refused with 503 and Retry-After."),
    "REDIS_PREFIX": ("chat", "Prefix of every Redis key, so deployments can share a Redis."),
    "RATE_LIMIT_ENABLED": ("true", "false turns every rate limit and the token budget off."),
    "RATE_LIMIT_IP": ("100/15minutes", "Requests per client IP on every endpoint but health checks."),
    "RATE_LIMIT_CHAT_IP": ("50/15minutes", "Chat messages per client IP."),
    "RATE_LIMIT_CHAT_IP_DAILY": ("200/day", "Chat messages per client IP per day."),
    "RATE_LIMIT_LOOKUP_IP": ("60/15minutes", "History, resume and cancel lookups per client IP."),
    "RATE_LIMIT_SESSION": ("20/15minutes", "Chat messages per conversation."),
    "DAILY_TOKEN_BUDGET": ("0", "Tokens the whole deployment may spend per day; 0 is no budget."),
    "DAILY_TOKEN_BUDGET_FALLBACK_SHARE": ("0.05", "Share of DAILY_TOKEN_BUDGET each instance may"
                                                  " spend while Redis is unreachable."),
    "STORE_PROFILE": ("", "Store profile (TOML): name, tone, policies, hours; unset: the example store."),
    "KNOWLEDGE_DIR": ("", "Folder of Markdown help articles, indexed at start; unset: the example's."),
    "TRUSTED_PROXIES": ("", "Comma-separated proxy addresses or CIDRs whose X-Forwarded-For is believed."),
    "DB_STARTUP_TIMEOUT_S": ("120", "Seconds to keep retrying an unreachable database at start."),
    "SHUTDOWN_GRACE_S": ("20",
                         "On SIGTERM, seconds answers get to finish before they are saved as interrupted."),
    "SERVER_HEADER_TIMEOUT_S": ("10", "Seconds a client may take to send a request's headers"
                                      " (and to start one on a new connection)."),
    "SERVER_BODY_TIMEOUT_S": ("30", "Seconds a client may take to send a request's body."),
    "SERVER_MAX_HEADERS": ("100", "Most headers in one request; more is refused with 431."),
    "SERVER_MAX_HEADER_BYTES": ("16384", "Largest request line plus headers, in bytes;"
                                         " larger is refused with 431."),
    "SERVER_MAX_CONNECTIONS_PER_IP": ("64", "Most open connections from one client address"
                                            " (TRUSTED_PROXIES are not limited)."),
    "LOG_LEVEL": ("INFO", "DEBUG, INFO, WARNING or ERROR."),
    "LOG_FORMAT": ("text", "text (for people) or json (one object per line, for log collectors)."),
    "METRICS_TOKEN": ("", "When set, GET /metrics asks for the header Authorization: Bearer <token>."),
    "STREAM_TTL_S": ("3600", "Seconds an answer's events stay in Redis for resume after it ends;"
                             " later resumes are served from PostgreSQL."),
    "STREAM_MAXLEN": ("10000", "Most events kept in Redis per answer."),
    "ANSWER_LEASE_S": ("15", "Seconds after its producer's last heartbeat that other instances"
                             " treat an answer as cut off."),
}

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def _split_list(raw: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in raw.split(",") if item.strip())


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8000
    database_url: str = ""
    redis_url: str = ""
    openai_api_key: str = ""
    openai_base_url: str = ""
    openai_model: str = "gpt-4o-mini"
    llm_timeout_s: float = 30.0
    max_message_chars: int = 5000
    history_window: int = 10
    max_tokens: int = 500
    temperature: float = 0.7
    allowed_origins: tuple[str, ...] = field(default_factory=tuple)
    db_pool_max: int = 10
    db_pool_lookups: int = 3
    redis_prefix: str = "chat"
    rate_limit_enabled: bool = True
    rate_limit_ip: str = "100/15minutes"
    rate_limit_chat_ip: str = "50/15minutes"
    rate_limit_chat_ip_daily: str = "200/day"
    rate_limit_session: str = "20/15minutes"
    rate_limit_lookup_ip: str = "60/15minutes"
    daily_token_budget: int = 0
    daily_token_budget_fallback_share: float = 0.05
    trusted_proxies: tuple[str, ...] = field(default_factory=tuple)
    store_profile: str = ""
    knowledge_dir: str = ""
    db_startup_timeout_s: float = 120.0
    shutdown_grace_s: float = 20.0
    server_header_timeout_s: float = 10.0
    server_body_timeout_s: float = 30.0
    server_max_headers: int = 100
    server_max_header_bytes: int = 16384
    server_max_connections_per_ip: int = 64
    log_level: str = "INFO"
    log_format: LogFormat = "text"
    metrics_token: str = ""
    stream_ttl_s: int = 3600
    stream_maxlen: int = 10000
    answer_lease_s: float = 15.0

    @property
    def llm_configured(self) -> bool:
        """Without a key or a server to talk to, answers come from the knowledge base alone."""
        return bool(self.openai_api_key or self.openai_base_url)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read every variable once; a bad value raises ConfigError naming the variable."""
        env = os.environ if environ is None else environ
        reader = _Reader(env)
        return cls(
            host=reader.text("HOST"),
            port=reader.integer("PORT", low=1, high=65535),
            database_url=reader.text("DATABASE_URL"),
            redis_url=reader.text("REDIS_URL"),
            openai_api_key=reader.text("OPENAI_API_KEY"),
            openai_base_url=reader.text("OPENAI_BASE_URL"),
            openai_model=reader.text("OPENAI_MODEL"),
            llm_timeout_s=reader.number("LLM_TIMEOUT_S", low=0.1, high=600),
            max_message_chars=reader.integer("MAX_MESSAGE_CHARS", low=1, high=100_000),
            history_window=reader.integer("HISTORY_WINDOW", low=0, high=200),
            max_tokens=reader.integer("MAX_TOKENS", low=1, high=100_000),
            temperature=reader.number("TEMPERATURE", low=0, high=2),
            allowed_origins=_split_list(reader.text("ALLOWED_ORIGINS")),
            db_pool_max=reader.integer("DB_POOL_MAX", low=1, high=1000),
            db_pool_lookups=reader.integer("DB_POOL_LOOKUPS", low=1, high=1000),
            redis_prefix=reader.text("REDIS_PREFIX"),
            rate_limit_enabled=reader.boolean("RATE_LIMIT_ENABLED"),
            rate_limit_ip=reader.rate("RATE_LIMIT_IP"),
            rate_limit_chat_ip=reader.rate("RATE_LIMIT_CHAT_IP"),
            rate_limit_chat_ip_daily=reader.rate("RATE_LIMIT_CHAT_IP_DAILY"),
            rate_limit_session=reader.rate("RATE_LIMIT_SESSION"),
            rate_limit_lookup_ip=reader.rate("RATE_LIMIT_LOOKUP_IP"),
            daily_token_budget=reader.integer("DAILY_TOKEN_BUDGET", low=0, high=10**12),
            daily_token_budget_fallback_share=reader.number("DAILY_TOKEN_BUDGET_FALLBACK_SHARE",
                                                            low=0, high=1),
            trusted_proxies=reader.networks("TRUSTED_PROXIES"),
            store_profile=reader.text("STORE_PROFILE"),
            knowledge_dir=reader.text("KNOWLEDGE_DIR"),
            db_startup_timeout_s=reader.number("DB_STARTUP_TIMEOUT_S", low=0, high=3600),
            shutdown_grace_s=reader.number("SHUTDOWN_GRACE_S", low=0, high=3600),
            server_header_timeout_s=reader.number("SERVER_HEADER_TIMEOUT_S", low=0.1, high=3600),
            server_body_timeout_s=reader.number("SERVER_BODY_TIMEOUT_S", low=0.1, high=3600),
            server_max_headers=reader.integer("SERVER_MAX_HEADERS", low=10, high=10_000),
            server_max_header_bytes=reader.integer("SERVER_MAX_HEADER_BYTES", low=1024,
                                                   high=1024 * 1024),
            server_max_connections_per_ip=reader.integer("SERVER_MAX_CONNECTIONS_PER_IP", low=1,
                                                         high=1_000_000),
            log_level=reader.choice("LOG_LEVEL", LOG_LEVELS, upper=True),
            log_format="json" if reader.choice("LOG_FORMAT", ("text", "json")) == "json" else "text",
            metrics_token=reader.text("METRICS_TOKEN"),
            stream_ttl_s=reader.integer("STREAM_TTL_S", low=1, high=30 * 86400),
            stream_maxlen=reader.integer("STREAM_MAXLEN", low=100, high=1_000_000),
            answer_lease_s=reader.number("ANSWER_LEASE_S", low=1, high=300),
        )


class _Reader:
    """Reads variables with their documented defaults and checks their ranges."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = env

    def text(self, name: str) -> str:
        value = self._env.get(name)
        if value is None or value.strip() == "":
            return VARIABLES[name][0]
        return value.strip()

    def integer(self, name: str, *, low: int, high: int) -> int:
        raw = self.text(name)
        try:
            value = int(raw)
        except ValueError:
            raise ConfigError(f"{name} must be a whole number, got {raw!r}") from None
        if not low <= value <= high:
            raise ConfigError(f"{name} must be between {low} and {high}, got {value}")
        return value

    def number(self, name: str, *, low: float, high: float) -> float:
        raw = self.text(name)
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(f"{name} must be a number, got {raw!r}") from None
        if not low <= value <= high:
            raise ConfigError(f"{name} must be between {low} and {high}, got {value}")
        return value

    def choice(self, name: str, options: tuple[str, ...], *, upper: bool = False) -> str:
        raw = self.text(name)
        value = raw.upper() if upper else raw.lower()
        if value not in options:
            raise ConfigError(f"{name} must be one of {', '.join(options)}, got {raw!r}")
        return value

    def rate(self, name: str) -> str:
        from .ratelimit import parse_limit

        raw = self.text(name)
        try:
            parse_limit(name, raw)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        return raw

    def networks(self, name: str) -> tuple[str, ...]:
        from .clientip import parse_networks

        entries = _split_list(self.text(name))
        try:
            parse_networks(entries)
        except ValueError as exc:
            raise ConfigError(f"{name}: {exc}") from None
        return entries

    def boolean(self, name: str) -> bool:
        raw = self.text(name).lower()
        if raw in ("1", "true", "yes", "on"):
            return True
        if raw in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{name} must be true or false, got {raw!r}")
