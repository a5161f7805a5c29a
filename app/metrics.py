"""The service's Prometheus metrics, served on GET /metrics.

Each app owns a `Metrics` with a registry of its own rather than prometheus-client's global
default registry, so that tests (and anything else) can build several apps in one process without
"Duplicated timeseries" errors, and one app's figures never leak into another's.

Label values are kept to small fixed sets (route templates, not paths; status words, not
messages) so that the number of series stays bounded whatever the traffic.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Iterable, Mapping

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

# Seconds from the shopper's message to the first token: dominated by the LLM's own latency.
TIME_TO_FIRST_TOKEN_BUCKETS = (0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 8.0, 13.0, 20.0, 30.0)
# Seconds from the shopper's message to the answer's final status.
ANSWER_DURATION_BUCKETS = (0.5, 1.0, 2.0, 3.0, 5.0, 8.0, 13.0, 20.0, 30.0, 45.0, 60.0, 120.0)
# Seconds per HTTP request; an SSE request lasts as long as its stream.
REQUEST_DURATION_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)

# The `*_created` timestamp series double the output and no dashboard reads them. (The switch is
# process-wide in prometheus-client; nothing else in this process exports metrics.)
disable_created_metrics()  # type: ignore[no-untyped-call]

UNMATCHED_ROUTE = "unmatched"
"""The route label of requests that matched no route, so that random paths add no series."""

PoolStats = Callable[[], Mapping[str, int]]
"""psycopg_pool's `AsyncConnectionPool.get_stats`, or anything shaped like it."""


class Metrics:
    """Every metric the app records, registered on one registry per app."""

    def __init__(self, pool_stats: PoolStats | None = None, *,
                 redis_fallback: Callable[[], float] | None = None) -> None:
        """`redis_fallback` reads the `chat_redis_fallback` gauge at each scrape."""
        self.registry = CollectorRegistry()
        registry = self.registry
        self.requests = Counter(
            "chat_http_requests",
            "HTTP requests by route template, method and response status.",
            ["route", "method", "status"],
            registry=registry,
        )
        self.request_duration = Histogram(
            "chat_http_request_duration_seconds",
            "HTTP request duration by route template; an SSE request lasts as long as its stream.",
            ["route"],
            buckets=REQUEST_DURATION_BUCKETS,
            registry=registry,
        )
        self.time_to_first_token = Histogram(
            "chat_time_to_first_token_seconds",
            "Seconds from the start of an answer to its first token.",
            buckets=TIME_TO_FIRST_TOKEN_BUCKETS,
            registry=registry,
        )
        self.answer_duration = Histogram(
            "chat_answer_duration_seconds",
            "Seconds from the start of an answer to its final status.",
            buckets=ANSWER_DURATION_BUCKETS,
            registry=registry,
        )
        self.tokens = Counter(
            "chat_llm_tokens",
            "LLM tokens: direction=in for the prompt, direction=out for the completion.",
            ["direction"],
            registry=registry,
        )
        self.active_streams = Gauge(
            "chat_active_streams",
            "SSE streams open right now on this instance (new answers and resumes).",
            registry=registry,
        )
        self.answers = Counter(
            "chat_answers",
            "Finished answers by final status (complete, cancelled, error, interrupted).",
            ["status"],
            registry=registry,
        )
        self.upstream_errors = Counter(
            "chat_upstream_errors",
            "Errors from the LLM provider by kind (timeout, rate_limited, unavailable, ...).",
            ["kind"],
            registry=registry,
        )
        self.questions = Counter(
            "chat_questions",
            "Shoppers' questions saved, by the language they were written in (ISO 639-1).",
            ["language"],
            registry=registry,
        )
        self.rate_limit_refusals = Counter(
            "chat_rate_limit_refusals",
            "Requests refused with 429, by the limit that refused them.",
            ["limit"],
            registry=registry,
        )
        self.resumes = Counter(
            "chat_resumes",
            "Answer streams resumed with GET /chat/stream/{messageId}.",
            registry=registry,
        )
        self.redis_fallback = Gauge(
            "chat_redis_fallback",
            "1 while Redis is unreachable and this instance uses its in-memory fallback (for the"
            " rate limits or the event log), else 0.",
            registry=registry,
        )
        if redis_fallback is not None:
            self.redis_fallback.set_function(redis_fallback)
        self._pool_collector = PoolCollector(pool_stats)
        registry.register(self._pool_collector)

    def watch_pool(self, pool_stats: PoolStats | None) -> None:
        """Collect the database pool's figures from `pool_stats` at every scrape (None: stop)."""
        self._pool_collector.pool_stats = pool_stats

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(route=route, method=method, status=str(status)).inc()
        self.request_duration.labels(route=route).observe(seconds)

    def observe_answer(
        self,
        status: str,
        seconds: float,
        first_token_seconds: float | None,
        tokens_in: int,
        tokens_out: int,
    ) -> None:
        """Record one finished answer; `first_token_seconds` is None when no token came."""
        self.answers.labels(status=status).inc()
        self.answer_duration.observe(seconds)
        if first_token_seconds is not None:
            self.time_to_first_token.observe(first_token_seconds)
        if tokens_in:
            self.tokens.labels(direction="in").inc(tokens_in)
        if tokens_out:
            self.tokens.labels(direction="out").inc(tokens_out)

    def exposition(self) -> tuple[bytes, str]:
        """The current figures in the Prometheus text format, with their content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


# (key in psycopg_pool's stats, metric name, help). Gauges are levels read at scrape time.
_POOL_GAUGES = (
    ("pool_min", "chat_db_pool_min_connections", "The pool's minimum size."),
    ("pool_max", "chat_db_pool_max_connections", "The pool's maximum size (DB_POOL_MAX)."),
    ("pool_size", "chat_db_pool_connections", "Connections the pool holds, in use or idle."),
    ("pool_available", "chat_db_pool_available_connections", "Idle connections in the pool."),
    ("requests_waiting", "chat_db_pool_requests_waiting", "Requests waiting for a connection."),
)
# Counters since the pool opened (get_stats never resets them; only pop_stats would).
_POOL_COUNTERS = (
    ("requests_num", "chat_db_pool_requests", "Connections asked of the pool."),
    ("requests_queued", "chat_db_pool_requests_queued", "Requests that had to wait."),
    ("requests_errors", "chat_db_pool_requests_errors", "Requests that got no connection."),
    ("connections_errors", "chat_db_pool_connection_errors", "Failed connection attempts."),
    ("connections_lost", "chat_db_pool_connections_lost", "Connections found broken."),
)


class PoolCollector:
    """Reads the database pool's own statistics at scrape time, so nothing is polled in between."""

    def __init__(self, pool_stats: PoolStats | None) -> None:
        self.pool_stats = pool_stats

    def collect(self) -> Iterable[Metric]:
        if self.pool_stats is None:
            return []
        # The pool leaves a counter out of its stats until it is first counted.
        stats = self.pool_stats()
        metrics: list[Metric] = []
        for key, name, help_text in _POOL_GAUGES:
            metrics.append(GaugeMetricFamily(name, help_text, value=stats.get(key, 0)))
        for key, name, help_text in _POOL_COUNTERS:
            metrics.append(CounterMetricFamily(name, help_text, value=stats.get(key, 0)))
        wait_seconds = stats.get("requests_wait_ms", 0) / 1000
        metrics.append(
            CounterMetricFamily(
                "chat_db_pool_requests_wait_seconds",
                "Seconds requests spent waiting for a connection, in all.",
                value=wait_seconds,
            )
        )
        return metrics


def bearer_token_matches(authorization: str | None, expected: str) -> bool:
    """Whether an Authorization header carries `expected`, compared in constant time."""
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(token.strip().encode(), expected.encode())
