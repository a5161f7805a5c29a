"""GET /metrics and the log lines, on the real app: what an operator sees after real traffic."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from app.logs import JsonFormatter
from tests.conftest import FakeUpstream, Reply, RunningApp, parse_sse

QUESTION = "Where is my order 12345?"


async def scrape(http: httpx.AsyncClient, **headers: str) -> dict[tuple[str, frozenset[Any]], float]:
    response = await http.get("/metrics", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(response.text)
            for sample in family.samples}


def sample(samples: dict[tuple[str, frozenset[Any]], float], name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def test_an_answer_and_a_resume_show_in_the_metrics(client: httpx.AsyncClient) -> None:
    response = await client.post("/chat/stream", json={"message": QUESTION})
    meta = parse_sse(response.text)[0].data
    resumed = await client.get(f"/chat/stream/{meta['messageId']}",
                               params={"sessionId": meta["sessionId"]},
                               headers={"Last-Event-ID": "3"})
    assert resumed.status_code == 200

    samples = await scrape(client)
    assert sample(samples, "chat_answers_total", status="complete") == 1
    assert sample(samples, "chat_llm_tokens_total", direction="in") == 12
    assert sample(samples, "chat_llm_tokens_total", direction="out") == 7
    assert sample(samples, "chat_time_to_first_token_seconds_count") == 1
    assert sample(samples, "chat_answer_duration_seconds_count") == 1
    assert sample(samples, "chat_resumes_total") == 1
    assert sample(samples, "chat_http_requests_total", route="/chat/stream", method="POST",
                  status="200") == 1
    assert sample(samples, "chat_http_requests_total", route="/chat/stream/{message_id}",
                  method="GET", status="200") == 1
    # Both streams have ended; the pool is read at scrape time.
    assert sample(samples, "chat_active_streams") == 0
    assert sample(samples, "chat_db_pool_max_connections") == 10
    assert sample(samples, "chat_db_pool_requests_total") >= 2
    assert sample(samples, "chat_redis_fallback") == 0


async def test_upstream_errors_and_rate_limit_refusals_are_counted(
        start_app: Any, upstream: FakeUpstream) -> None:
    app: RunningApp = await start_app(rate_limit_chat_ip="1/15minutes", rate_limit_ip="3/15minutes")
    upstream.queue(Reply(status=401))
    async with app.client() as http:
        failed = await http.post("/chat/stream", json={"message": QUESTION})
        assert parse_sse(failed.text)[-1].data["code"] == "upstream_auth"
        assert (await http.post("/chat/stream", json={"message": QUESTION})).status_code == 429
        # The per-IP limit on every endpoint refuses before routing; the route is still named.
        assert (await http.get("/chat/history/0b9e8f7a-6c5d-4e3f-a2b1-c0d9e8f7a6b5")).status_code == 404
        refused = await http.get("/chat/history/0b9e8f7a-6c5d-4e3f-a2b1-c0d9e8f7a6b5")
        assert refused.status_code == 429
        samples = await scrape(http)

    assert sample(samples, "chat_upstream_errors_total", kind="upstream_auth") == 1
    assert sample(samples, "chat_answers_total", status="error") == 1
    assert sample(samples, "chat_rate_limit_refusals_total", limit="chat_ip") == 1
    assert sample(samples, "chat_rate_limit_refusals_total", limit="ip") == 1
    assert sample(samples, "chat_http_requests_total", route="/chat/history/{session_id}",
                  method="GET", status="429") == 1


async def test_metrics_token_guards_the_endpoint(start_app: Any, upstream: FakeUpstream) -> None:
    app: RunningApp = await start_app(metrics_token="s3cret-token")
    async with app.client() as http:
        missing = await http.get("/metrics")
        wrong = await http.get("/metrics", headers={"Authorization": "Bearer nope"})
        samples = await scrape(http, Authorization="Bearer s3cret-token")

    for refused in (missing, wrong):
        assert refused.status_code == 401
        assert refused.json()["error"]["code"] == "unauthorized"
        assert refused.headers["www-authenticate"] == "Bearer"
    assert sample(samples, "chat_http_requests_total", route="/metrics", method="GET",
                  status="401") == 2


async def test_one_answer_line_with_the_request_id_and_no_secrets(
        client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="app"):
        response = await client.post("/chat/stream", json={"message": QUESTION},
                                     headers={"X-Request-ID": "shop-req-7"})
        # The server writes the request line once the response has ended, which can be just
        # after the client has read the last byte.
        for _ in range(1000):
            if any(record.name == "app.access" for record in caplog.records):
                break
            await asyncio.sleep(0.01)
    meta = parse_sse(response.text)[0].data
    assert response.headers["x-request-id"] == "shop-req-7"

    formatter = JsonFormatter()
    lines = [json.loads(formatter.format(record)) for record in caplog.records
             if record.name in ("app.access", "app.answer")]
    answer = next(line for line in lines if line["message"] == "answer")
    request = next(line for line in lines if line["message"] == "request")
    assert answer["request_id"] == request["request_id"] == "shop-req-7"
    assert answer["status"] == "complete" and answer["model"] == "gpt-4o-mini"
    assert (answer["tokens_in"], answer["tokens_out"], answer["deltas"]) == (12, 7, 7)
    assert answer["ttft_ms"] is not None and answer["duration_ms"] >= answer["ttft_ms"]
    assert answer["session_id"] == meta["sessionId"][:8]
    everything = "\n".join(formatter.format(record) for record in caplog.records)
    assert QUESTION not in everything and "Hello" not in everything
    assert meta["sessionId"] not in everything and "test-key" not in everything
