"""GET /metrics figures: one registry per app, and the pool's stats read at scrape time."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families
from psycopg_pool import AsyncConnectionPool

from app.metrics import Metrics

POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def scrape(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    body, content_type = metrics.exposition()
    assert content_type.startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def test_two_apps_keep_separate_figures() -> None:
    first, second = Metrics(), Metrics()
    first.observe_request("/chat/stream", "POST", 200, 0.5)
    first.observe_request("/chat/stream", "POST", 200, 0.7)
    second.observe_request("/healthz", "GET", 200, 0.001)

    first_samples = scrape(first)
    labels = (("method", "POST"), ("route", "/chat/stream"), ("status", "200"))
    assert first_samples[("chat_http_requests_total", labels)] == 2
    assert ("chat_http_requests_total", labels) not in scrape(second)


def test_a_finished_answer_counts_status_tokens_and_timings() -> None:
    metrics = Metrics()
    metrics.observe_answer("complete", 2.5, 0.4, tokens_in=120, tokens_out=80)
    metrics.observe_answer("error", 1.0, None, tokens_in=0, tokens_out=0)

    samples = scrape(metrics)
    assert samples[("chat_answers_total", (("status", "complete"),))] == 1
    assert samples[("chat_answers_total", (("status", "error"),))] == 1
    assert samples[("chat_llm_tokens_total", (("direction", "in"),))] == 120
    assert samples[("chat_llm_tokens_total", (("direction", "out"),))] == 80
    # Both answers have a duration; only the one that produced a token has a first-token time.
    assert samples[("chat_answer_duration_seconds_count", ())] == 2
    assert samples[("chat_time_to_first_token_seconds_count", ())] == 1
    assert samples[("chat_time_to_first_token_seconds_bucket", (("le", "0.5"),))] == 1


def test_the_other_figures_are_exposed_with_their_labels() -> None:
    metrics = Metrics()
    metrics.active_streams.inc()
    metrics.upstream_errors.labels(kind="timeout").inc()
    metrics.rate_limit_refusals.labels(limit="ip_minute").inc()
    metrics.resumes.inc()
    metrics.redis_fallback.set(1)

    samples = scrape(metrics)
    assert samples[("chat_active_streams", ())] == 1
    assert samples[("chat_upstream_errors_total", (("kind", "timeout"),))] == 1
    assert samples[("chat_rate_limit_refusals_total", (("limit", "ip_minute"),))] == 1
    assert samples[("chat_resumes_total", ())] == 1
    assert samples[("chat_redis_fallback", ())] == 1


async def test_database_pool_use_is_read_from_the_pool_at_scrape_time() -> None:
    metrics = Metrics()
    assert not any(name.startswith("chat_db_pool") for name, _ in scrape(metrics))

    async with AsyncConnectionPool(POSTGRES_URL, min_size=1, max_size=3, open=False) as pool:
        await pool.open(wait=True)
        metrics.watch_pool(pool.get_stats)
        async with pool.connection() as held:
            await held.execute("SELECT 1")
            samples = scrape(metrics)
            assert samples[("chat_db_pool_max_connections", ())] == 3
            assert samples[("chat_db_pool_available_connections", ())] == 0
            assert samples[("chat_db_pool_requests_total", ())] == 1
        assert scrape(metrics)[("chat_db_pool_available_connections", ())] == 1
