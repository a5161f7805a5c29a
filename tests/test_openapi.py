"""The API contract: GET /openapi.json matches the routes, and the app answers what it says.

schemathesis generates requests from the document (positive ones that fit it and negative ones
that break it) and sends them to the real app on a loopback port, with the model mocked; every
response must be no 5xx, match its documented status, content type and schema, and every error
body must be the canonical {"error": {"code", "message"}}.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import GenerationMode
from starlette.routing import Route

from app.main import create_app, routes
from app.openapi import build_openapi
from app.server import AppServer, server_config
from tests.conftest import FakeUpstream, Reply, make_settings, parse_sse

MAX_MESSAGE_CHARS = 5000
# Per operation and mode: enough to find the classic mistakes, small enough for a 2-core CI.
EXAMPLES_PER_OPERATION = 25

DOCUMENT = build_openapi(MAX_MESSAGE_CHARS)
schema = schemathesis.openapi.from_dict(DOCUMENT)
# The same cases on every run, so CI is repeatable; SCHEMATHESIS_SEED=<n> explores others.
schema.config.seed = int(os.environ.get("SCHEMATHESIS_SEED", "9"))
schema.config.generation.update(
    modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
    max_examples=EXAMPLES_PER_OPERATION,
    # NUL is refused by the app (PostgreSQL text cannot hold it) and the document says so in
    # a pattern; letting the generator make NULs only tests the generator's regex engine.
    allow_x00=False,
)


def _template(path: str) -> str:
    """`/chat/history/{session_id}` and `/chat/history/{sessionId}` are the same route."""
    return re.sub(r"\{[^}]*\}", "{}", path)


def test_every_route_is_in_the_document_and_every_path_is_a_route() -> None:
    served = {(method, _template(route.path))
              for route in routes if isinstance(route, Route)
              for method in (route.methods or ()) if method != "HEAD"}
    documented = {(method.upper(), _template(path))
                  for path, operations in DOCUMENT["paths"].items() for method in operations}
    assert served == documented


async def test_the_document_is_served(client: httpx.AsyncClient) -> None:
    response = await client.get("/openapi.json")
    assert response.status_code == 200
    document = response.json()
    assert document == DOCUMENT
    assert document["openapi"].startswith("3.1")


def _error_schema_refs(document: dict[str, Any]) -> Iterator[tuple[str, str, str, Any]]:
    responses = document["components"]["responses"]
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            for status, response in operation["responses"].items():
                if int(status) >= 400:
                    if "$ref" in response:
                        response = responses[response["$ref"].rsplit("/", 1)[1]]
                    yield path, method, status, response["content"]["application/json"]["schema"]


def test_every_documented_error_is_the_canonical_body() -> None:
    for path, method, status, error_schema in _error_schema_refs(DOCUMENT):
        assert error_schema == {"$ref": "#/components/schemas/Error"}, (path, method, status)


async def test_stream_events_match_their_documented_schemas(
        client: httpx.AsyncClient, upstream: FakeUpstream) -> None:
    import jsonschema_rs

    def validator(name: str) -> Any:
        return jsonschema_rs.validator_for({**DOCUMENT["components"]["schemas"][name],
                                            "components": DOCUMENT["components"]})

    by_event = {"meta": validator("MetaEvent"), "token": validator("TokenEvent"),
                "done": validator("DoneEvent"), "error": validator("ErrorEvent")}
    response = await client.post("/chat/stream", json={"message": "hi"})
    events = parse_sse(response.text)
    meta = events[0].data
    resumed = await client.get(f"/chat/stream/{meta['messageId']}",
                               params={"sessionId": meta["sessionId"]})
    upstream.queue(Reply(status=401))  # not retryable, so no fallback: an error event
    failed = await client.post("/chat/stream", json={"message": "hi"})
    stream_event = validator("StreamEvent")
    seen = set()
    for event in events + parse_sse(resumed.text) + parse_sse(failed.text):
        by_event[event.event].validate(event.data)
        # The frame itself, as OpenAPI reads it: which events carry an `id:` line.
        frame = {"event": event.event, "data": json.dumps(event.data)}
        stream_event.validate(frame if event.id is None else {**frame, "id": event.id})
        seen.add(event.event)
    assert seen == {"meta", "token", "done", "error"}


# -- schemathesis against the running app ------------------------------------------------------


@pytest.fixture(scope="module")
def live_url(database_url: str, redis_url: str) -> Iterator[str]:
    """The app on a loopback port, in its own thread and event loop (schemathesis is synchronous)."""
    upstream = FakeUpstream()
    ready = threading.Event()
    state: dict[str, Any] = {}

    async def serve() -> None:
        llm_client = httpx.AsyncClient(transport=httpx.MockTransport(upstream.respond))
        # The limits stay on (their code runs on every request), set high enough that a few
        # hundred generated requests from one address are not refused.
        settings = make_settings(database_url, redis_url, max_message_chars=MAX_MESSAGE_CHARS,
                                 rate_limit_ip="100000/minute", rate_limit_chat_ip="100000/minute",
                                 rate_limit_chat_ip_daily="100000/day",
                                 rate_limit_session="100000/minute")
        app = create_app(settings, llm_http_client=llm_client)
        config = server_config(app, "127.0.0.1", 0, grace_s=2.0, log_level="warning")
        server = AppServer(config, app, grace_s=2.0)
        state["server"] = server
        task = asyncio.create_task(server.serve())
        while not server.started:
            if task.done():
                ready.set()  # it failed to start; the fixture reports that
                return await task
            await asyncio.sleep(0.01)
        state["port"] = server.servers[0].sockets[0].getsockname()[1]
        ready.set()
        await task

    thread = threading.Thread(target=lambda: asyncio.run(serve()), name="schemathesis-app")
    thread.start()
    ready.wait(30)
    assert state.get("port"), "the app did not start"
    yield f"http://127.0.0.1:{state['port']}"
    state["server"].should_exit = True
    thread.join(30)


def canonical_error_body(ctx: Any, response: Any, case: Any) -> bool | None:
    """Every error response, documented or not, has the body {"error": {"code", "message"}}."""
    if response.status_code < 400:
        return None
    body = response.json()
    assert isinstance(body, dict) and set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message"}, body
    assert all(isinstance(value, str) and value for value in body["error"].values()), body
    return True


@schema.parametrize()
@settings(deadline=None, suppress_health_check=list(HealthCheck))
def test_the_app_keeps_the_contract(case: Any, live_url: str) -> None:
    case.call_and_validate(base_url=live_url, timeout=10,
                           additional_checks=[canonical_error_body])


def test_linked_operations_keep_the_contract(live_url: str) -> None:
    """Follow the document's links from a real answer: its history, resume and cancel answer 200."""

    class Scenarios(schema.as_state_machine()):  # type: ignore[misc]
        def get_call_kwargs(self, case: Any) -> dict[str, Any]:
            return {"base_url": live_url, "timeout": 10}

        def validate_response(self, response: Any, case: Any,
                              additional_checks: Any = None, **kwargs: Any) -> None:
            super().validate_response(response, case, additional_checks=[canonical_error_body],
                                      **kwargs)

    Scenarios.run(settings=settings(max_examples=15, stateful_step_count=5, deadline=None,
                                    suppress_health_check=list(HealthCheck)))
