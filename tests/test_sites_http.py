"""Sites end to end: two stores on one deployment (and across two instances), each with its own
profile, knowledge, origins, limits and budget; another site's ids are 404s like unknown ones."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from app import db
from app.knowledge import sync_knowledge
from app.sites import SiteStore
from app.store_profile import load_profile
from tests.conftest import FakeUpstream, RunningApp, stream_chat
from tests.test_sites import NORTHWIND_ARTICLE, NORTHWIND_PROFILE

NORTHWIND_ORIGIN = "https://northwind.example"
QUESTION = "Are your mugs dishwasher safe?"


@dataclass
class TwoSites:
    northwind: str  # its site key
    other: str
    other_origin: str


async def create_site(database_url: str, name: str, origin: str, *, profile: Path | None = None,
                      knowledge: Path | None = None, **overrides: Any) -> str:
    pool = db.create_pool(database_url, 2)
    await pool.open(wait=True)
    try:
        store = SiteStore(pool)
        record = await store.create(name, [origin],
                                    None if profile is None else load_profile(profile),
                                    **overrides)
        if knowledge is not None:
            await sync_knowledge(pool, knowledge, record.id)
        return record.site_key
    finally:
        await pool.close()


@pytest.fixture
async def sites(database_url: str, tmp_path: Path) -> TwoSites:
    """Northwind with its own profile, articles and model; a second site with none of its own."""
    profile = tmp_path / "northwind.toml"
    profile.write_text(NORTHWIND_PROFILE)
    articles = tmp_path / "northwind"
    articles.mkdir()
    (articles / "glaze.md").write_text(NORTHWIND_ARTICLE)
    northwind = await create_site(database_url, "Northwind", NORTHWIND_ORIGIN, profile=profile,
                                  knowledge=articles, model="northwind-model", temperature=0.1)
    other_origin = f"https://other-{uuid.uuid4().hex[:8]}.example"
    other = await create_site(database_url, "Other", other_origin)
    return TwoSites(northwind, other, other_origin)


async def test_each_site_gets_its_own_prompt_sources_and_model(
        sites: TwoSites, chat_app: RunningApp, upstream: FakeUpstream, query: Any) -> None:
    async with chat_app.client() as http:
        northwind = await stream_chat(http, {"message": QUESTION, "siteKey": sites.northwind})
        default = await stream_chat(http, {"message": QUESTION})
    northwind_prompt, default_prompt = upstream.requests[-2], upstream.requests[-1]
    assert "Northwind Ceramics" in northwind_prompt["messages"][0]["content"]
    assert "Saffron Loom" not in northwind_prompt["messages"][0]["content"]
    assert "dishwasher safe on the top rack" in northwind_prompt["messages"][0]["content"]
    assert northwind_prompt["model"] == "northwind-model"
    assert northwind_prompt["temperature"] == 0.1
    assert "Saffron Loom" in default_prompt["messages"][0]["content"]
    assert "Northwind" not in default_prompt["messages"][0]["content"]
    assert default_prompt["model"] == "gpt-4o-mini"
    assert northwind[-1].data["sources"] == [{"title": "Glaze safety", "path": "glaze.md"}]
    assert all(s["path"] != "glaze.md" for s in default[-1].data["sources"])
    session = northwind[0].data["sessionId"]
    assert query("SELECT s.site_key FROM conversations c JOIN sites s ON s.id = c.site_id"
                 " WHERE c.id = %s", session) == [(sites.northwind,)]
    assert query("SELECT DISTINCT m.model FROM messages m WHERE m.conversation_id = %s"
                 " AND sender = 'ai'", session) == [("northwind-model",)]


async def test_knowledge_only_answers_come_from_the_sites_own_articles(
        sites: TwoSites, start_app: Callable[..., Any]) -> None:
    app: RunningApp = await start_app(openai_api_key="", openai_base_url="")
    async with app.client() as http:
        northwind = await stream_chat(http, {"message": QUESTION, "siteKey": sites.northwind})
        other = await stream_chat(http, {"message": QUESTION, "siteKey": sites.other})
        # Nothing in the site's articles: the answer says whom to ask, from the site's profile.
        uncovered = await stream_chat(http, {"message": "Do you sell garden furniture?",
                                             "siteKey": sites.northwind})
    assert "top rack" in northwind[-1].data["text"]
    assert [s["path"] for s in northwind[-1].data["sources"]] == ["glaze.md"]
    assert "hello@northwind.example" in uncovered[-1].data["text"]
    assert uncovered[-1].data["sources"] == []
    # The other site has no articles of its own: it finds nothing, and says whom to ask.
    assert "top rack" not in other[-1].data["text"]
    assert other[-1].data["sources"] == []


async def test_another_sites_conversation_is_a_404_identical_to_an_unknown_one(
        sites: TwoSites, chat_app: RunningApp, upstream: FakeUpstream) -> None:
    async with chat_app.client() as http:
        events = await stream_chat(http, {"message": QUESTION, "siteKey": sites.northwind})
        session, answer = events[0].data["sessionId"], events[0].data["messageId"]
        unknown_session, unknown_answer = str(uuid.uuid4()), str(uuid.uuid4())

        async def calls(site: str, session_id: str, answer_id: str) -> list[httpx.Response]:
            return [
                await http.get(f"/chat/history/{session_id}", params={"siteKey": site}),
                await http.get(f"/chat/stream/{answer_id}",
                               params={"sessionId": session_id, "siteKey": site}),
                await http.post(f"/chat/messages/{answer_id}/cancel",
                                params={"sessionId": session_id, "siteKey": site}),
            ]

        own = await calls(sites.northwind, session, answer)
        assert [r.status_code for r in own] == [200, 200, 200]
        for site in (sites.other, ""):  # another site, and the default one
            crossed = await calls(site, session, answer)
            unknown = await calls(site, unknown_session, unknown_answer)
            assert [r.status_code for r in crossed] == [404, 404, 404]
            assert [(r.status_code, r.json(), r.headers.get("content-type")) for r in crossed] \
                == [(r.status_code, r.json(), r.headers.get("content-type")) for r in unknown]
        # Naming another site's session starts a new conversation there, as an unknown id does.
        other = await stream_chat(http, {"message": "hi", "sessionId": session,
                                         "siteKey": sites.other})
        assert other[0].data["sessionId"] != session


async def test_an_unknown_site_key_is_a_404_and_a_wrong_one_a_400(chat_app: RunningApp,
                                                                  upstream: FakeUpstream) -> None:
    async with chat_app.client() as http:
        for key in ("A" * 22, "not a key", "x"):
            response = await http.post("/chat/stream", json={"message": "hi", "siteKey": key})
            assert response.status_code == 404
            assert response.json() == {"error": {"code": "not_found",
                                                 "message": "This site was not found."}}
            response = await http.get(f"/chat/history/{uuid.uuid4()}", params={"siteKey": key})
            assert response.status_code == 404
        response = await http.post("/chat/stream", json={"message": "hi", "siteKey": 7})
        assert response.status_code == 400
        assert response.json()["error"]["code"] == "bad_request"


async def test_a_page_may_use_only_the_sites_that_allow_its_origin(
        sites: TwoSites, chat_app: RunningApp, upstream: FakeUpstream,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="app.middleware")
    async with chat_app.client(headers={"Origin": NORTHWIND_ORIGIN}) as http:
        allowed = await http.post("/chat/stream", json={"message": "hi",
                                                        "siteKey": sites.northwind})
        assert allowed.status_code == 200
        assert allowed.headers["access-control-allow-origin"] == NORTHWIND_ORIGIN
        for body in ({"message": "hi", "siteKey": sites.other}, {"message": "hi"}):
            refused = await http.post("/chat/stream", json=body)
            assert refused.status_code == 403
            assert refused.json()["error"]["code"] == "origin_not_allowed"
        refused = await http.get(f"/chat/history/{uuid.uuid4()}",
                                 params={"siteKey": sites.other})
        assert refused.status_code == 403
        # The owner sees which list the origin is missing from: each once, however often.
        warnings = [r.getMessage() for r in caplog.records if r.name == "app.middleware"]
        assert len(warnings) == 2
        assert f"{NORTHWIND_ORIGIN!r}: it is not in the origins of site {sites.other}" \
            in warnings[0] and f"({sites.other_origin})" in warnings[0]
        assert f"{NORTHWIND_ORIGIN!r}: it is not in ALLOWED_ORIGINS" in warnings[1]
        preflight = await http.options("/chat/stream", headers={
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type"})
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == NORTHWIND_ORIGIN
    async with chat_app.client(headers={"Origin": "https://nobody.example"}) as http:
        refused = await http.post("/chat/stream", json={"message": "hi",
                                                        "siteKey": sites.northwind})
        assert refused.status_code == 403


async def test_one_sites_limits_and_budget_do_not_reach_another(
        database_url: str, start_app: Callable[..., Any], upstream: FakeUpstream) -> None:
    limited = await create_site(database_url, "Limited", "https://limited.example",
                                rate_limit_chat_ip="2/15minutes")
    # An answer reserves its worst case first (its prompt, about 360 tokens, plus the site's
    # max_tokens): the frugal site's day fits one, and a few more once they settle at 19.
    frugal = await create_site(database_url, "Frugal", "https://frugal.example",
                               daily_token_budget=500, max_tokens=100)
    app: RunningApp = await start_app()
    async with app.client() as http:
        for _ in range(2):
            await stream_chat(http, {"message": "hi", "siteKey": limited})
        refused = await http.post("/chat/stream", json={"message": "hi", "siteKey": limited})
        assert refused.status_code == 429
        # The same shopper's address still has all of its allowance on the other sites.
        await stream_chat(http, {"message": "hi"})
        await stream_chat(http, {"message": "hi", "siteKey": frugal})

        # Each answer costs 19 tokens: once they are charged, the frugal site's day has no room
        # for another paid answer. Its questions are then refused (503 budget_exhausted), or,
        # when the day still fits the reservation taken before the knowledge search but not
        # the whole prompt, answered from the knowledge base without a model call.
        deadline = time.monotonic() + 10
        while True:
            response = await http.post("/chat/stream", json={"message": "hi", "siteKey": frugal})
            if response.status_code == 503:
                assert response.json()["error"]["code"] == "budget_exhausted"
                break
            assert response.status_code == 200
            done = [line for line in response.text.splitlines() if line.startswith("data:")][-1]
            if json.loads(done.removeprefix("data:"))["fallback"]:
                break
            assert time.monotonic() < deadline, "the budget was never charged"
            await asyncio.sleep(0.05)
        calls = len(upstream.requests)
        again = await http.post("/chat/stream", json={"message": "hi", "siteKey": frugal})
        assert again.status_code in (200, 503)
        assert len(upstream.requests) == calls  # no paid call on the spent site
        await stream_chat(http, {"message": "hi"})


async def test_across_two_instances_sites_stay_apart_and_new_sites_appear(
        sites: TwoSites, database_url: str, start_app: Callable[..., Any],
        upstream: FakeUpstream, shared_settings: dict[str, Any]) -> None:
    first: RunningApp = await start_app(**shared_settings)
    second: RunningApp = await start_app(**shared_settings)
    async with first.client() as one, second.client() as two:
        events = await stream_chat(one, {"message": QUESTION, "siteKey": sites.northwind})
        session, answer = events[0].data["sessionId"], events[0].data["messageId"]
        params = {"sessionId": session}
        resumed = await two.get(f"/chat/stream/{answer}",
                                params={**params, "siteKey": sites.northwind})
        assert resumed.status_code == 200
        assert (await two.get(f"/chat/stream/{answer}",
                              params={**params, "siteKey": sites.other})).status_code == 404
        history = await two.get(f"/chat/history/{session}", params={"siteKey": sites.northwind})
        assert [m["sender"] for m in history.json()["messages"]] == ["user", "ai"]

        # A site created while both run is served by both within a few seconds, no restart.
        newcomer = await create_site(database_url, "Newcomer", "https://newcomer.example")
        deadline = time.monotonic() + 15
        for http in (one, two):
            while True:
                response = await http.post("/chat/stream",
                                           json={"message": "hi", "siteKey": newcomer})
                if response.status_code == 200:
                    break
                assert response.status_code == 404
                assert time.monotonic() < deadline, "the new site never reached the instance"
                await asyncio.sleep(0.1)
