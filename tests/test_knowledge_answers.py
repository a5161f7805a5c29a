"""Answers grounded in the store's knowledge, through the running app: the articles in the
prompt and in `done.sources`, knowledge-only mode without a model, and the fallback to the
knowledge base when the model fails before its first token."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from app import db
from app.curated_answers import CuratedAnswers, CuratedDraft
from app.knowledge_search import KnowledgeSearch
from app.sites import DEFAULT_SITE_ID
from app.store_profile import DEFAULT_PROFILE_PATH
from tests.conftest import ROOT, FakeUpstream, Reply, stream_chat

RETURNS = {"title": "Returns and exchanges", "path": "returns.md"}


def saved_answer(query: Any, message_id: str) -> tuple[Any, ...]:
    return query("SELECT status, fallback, sources, model, text FROM messages WHERE id = %s",
                 message_id)[0]


async def test_knowledge_only_mode_answers_from_the_help_centre(
        start_app: Any, upstream: FakeUpstream, query: Any) -> None:
    app = await start_app(openai_api_key="", openai_base_url="")
    async with app.client() as http:
        ready = (await http.get("/readyz")).json()
        events = await stream_chat(http, {"message": "how long do i have to send something back?"})
    assert ready["mode"] == "knowledge-only"
    assert events[0].event == "meta" and events[-1].event == "done"
    tokens = [e for e in events if e.event == "token"]
    assert len(tokens) > 10 and [e.id for e in tokens] == [str(n) for n in range(1, len(tokens) + 1)]
    done = events[-1].data
    assert done["text"] == "".join(e.data["text"] for e in tokens)
    # A short answer in the store's words (here its curated answer), not a pasted article.
    assert "14 days" in done["text"] and "Here is what" not in done["text"]
    assert len(done["text"].split()) <= 60
    assert done["sources"] == [{"title": "How long do I have to return something?",
                                "path": "answers.toml#return-window"}]
    assert done["fallback"] is False
    assert done["status"] == "complete" and done["usage"] == {}
    assert upstream.requests == []
    status, fallback, sources, model, _ = saved_answer(query, done["messageId"])
    assert (status, fallback, model) == ("complete", False, None)
    assert sources == done["sources"]


async def test_a_curated_answer_published_between_two_asks_answers_the_next_one(
        start_app: Any, upstream: FakeUpstream, database_url: str) -> None:
    # A repeated question is answered from the search's memory, which must not outlive a
    # change: in a new conversation and in a known one alike, the next ask sees it.
    app = await start_app(openai_api_key="", openai_base_url="")
    question = "Can I have it gift wrapped?"
    pool = db.create_pool(database_url, 2)
    await pool.open(wait=True)
    try:
        async with app.client() as http:
            first = await stream_chat(http, {"message": question})
            again = await stream_chat(http, {"message": question})
            assert "recycled paper" not in again[-1].data["text"]
            session = first[0].data["sessionId"]
            answers = CuratedAnswers(pool)
            published = await answers.publish(DEFAULT_SITE_ID, CuratedDraft(
                "Gift wrapping", ("can I have it gift wrapped", "do you gift wrap"),
                "We wrap any order in recycled paper for 3 EUR."), None)
            new_conversation = await stream_chat(http, {"message": question})
            known_conversation = await stream_chat(http, {"message": question,
                                                          "sessionId": session})
            await answers.withdraw(published.id, [DEFAULT_SITE_ID])
            withdrawn = await stream_chat(http, {"message": question, "sessionId": session})
    finally:
        await pool.close()
    assert known_conversation[0].data["sessionId"] == session
    for events in (new_conversation, known_conversation):
        assert "recycled paper" in events[-1].data["text"]
    assert "recycled paper" not in withdrawn[-1].data["text"]


async def test_knowledge_only_mode_without_a_match_gives_hours_and_contact(
        start_app: Any, upstream: FakeUpstream) -> None:
    app = await start_app(openai_api_key="", openai_base_url="")
    async with app.client() as http:
        events = await stream_chat(http, {"message": "write me a poem about cats"})
        reply = await http.post("/chat/message", json={"message": "tell me a joke"})
    done = events[-1].data
    assert done["sources"] == [] and done["fallback"] is False
    for fact in ("Monday-Friday 9am-6pm IST", "help@saffronloom.example", "+91 141 555 0134"):
        assert fact in done["text"] and fact in reply.json()["reply"]


async def test_a_follow_up_is_searched_with_the_previous_question(
        start_app: Any, upstream: FakeUpstream) -> None:
    app = await start_app(openai_api_key="", openai_base_url="")
    async with app.client() as http:
        first = await stream_chat(http, {"message": "do you take paypal"})
        follow_up = await stream_chat(http, {"message": "ok and after that?",
                                             "sessionId": first[0].data["sessionId"]})
    assert follow_up[-1].data["sources"][0]["path"] in (
        "payment-methods.md", "answers.toml#payment-methods")


async def test_a_new_question_is_not_read_as_a_follow_up_of_the_one_before(
        start_app: Any, upstream: FakeUpstream) -> None:
    # Searched with "Can I return a sale item?", it got the returns article's list of items
    # that cannot be returned, and never showed as a gap in the knowledge base.
    app = await start_app(openai_api_key="", openai_base_url="")
    async with app.client() as http:
        first = await stream_chat(http, {"message": "Can I return a sale item?"})
        assert first[-1].data["sources"]
        new = await stream_chat(http, {"message": "Do you have a loyalty programme?",
                                       "sessionId": first[0].data["sessionId"]})
    assert new[-1].data["sources"] == []


async def test_the_prompt_carries_the_profile_and_the_matching_articles(
        client: httpx.AsyncClient, upstream: FakeUpstream, query: Any) -> None:
    assert (await client.get("/readyz")).json()["mode"] == "llm"
    events = await stream_chat(client, {"message": "can i send back a kurta i dont like?"})
    system = upstream.requests[-1]["messages"][0]
    assert system["role"] == "system"
    assert "Saffron Loom" in system["content"] and "Asia/Kolkata" in system["content"]
    assert "[1] " in system["content"] and "] Returns and exchanges" in system["content"]
    assert "Cite the sources you used" in system["content"]
    done = events[-1].data
    assert done["text"] == "Hello! How can I help?"
    # The model cited nothing: every source it was given, best first.
    assert RETURNS in done["sources"] and done["fallback"] is False
    assert saved_answer(query, done["messageId"])[:3] == ("complete", False, done["sources"])


async def test_done_lists_only_the_sources_the_model_cited(
        client: httpx.AsyncClient, upstream: FakeUpstream) -> None:
    upstream.default = Reply(tokens=["Refunds take", " 3 business days", " [2]."])
    events = await stream_chat(client, {"message": "can i return it and when is my refund"})
    system = upstream.requests[-1]["messages"][0]["content"]
    given = [line for line in system.splitlines() if line.startswith("[")]
    assert len(given) >= 2
    title = given[1].split("] ", 1)[1].split(" (curated")[0].split(": ")[0]
    assert [source["title"] for source in events[-1].data["sources"]] == [title]


@pytest.mark.parametrize("reply", [
    Reply(status=429),
    Reply(status=500),
    Reply(status=503),
    Reply(exception=httpx.ConnectError("connection refused")),
    Reply(exception=httpx.ReadTimeout("read timed out")),
])
async def test_a_model_failing_before_its_first_token_falls_back_to_the_knowledge_base(
        client: httpx.AsyncClient, upstream: FakeUpstream, query: Any, reply: Reply) -> None:
    upstream.default = reply
    events = await stream_chat(client, {"message": "when do i get my money back"})
    assert [e.event for e in events][-1] == "done"
    # The SDK's retries happen first; only then does the knowledge base answer.
    assert len(upstream.requests) == 3
    done = events[-1].data
    assert done["fallback"] is True and done["status"] == "complete"
    assert "3 business days" in done["text"]
    assert done["sources"] == [{"title": "How long does a refund take?",
                                "path": "answers.toml#refund-time"}]
    status, fallback, sources, model, text = saved_answer(query, done["messageId"])
    assert (status, fallback, sources, text) == ("complete", True, done["sources"], done["text"])
    assert model == "gpt-4o-mini"


async def test_history_carries_sources_and_fallback_like_done(
        client: httpx.AsyncClient, upstream: FakeUpstream) -> None:
    """A reload shows the same "From: …" notes as the live answer: history holds them too."""
    grounded = await stream_chat(client, {"message": "can i send back a kurta i dont like?"})
    session_id = grounded[0].data["sessionId"]
    upstream.default = Reply(status=503)
    fell_back = await stream_chat(client, {"message": "when do i get my money back",
                                           "sessionId": session_id})
    page = (await client.get(f"/chat/history/{session_id}")).json()
    seen = [(m["sender"], m["sources"], m["fallback"]) for m in page["messages"]]
    assert seen == [
        ("user", [], False),
        ("ai", grounded[-1].data["sources"], False),
        ("user", [], False),
        ("ai", fell_back[-1].data["sources"], True),
    ]
    # Not empty lists that match trivially: the model cited nothing, so all it was given shows,
    # the store's curated answer on returns first.
    assert grounded[-1].data["sources"][0]["path"] == "answers.toml#return-window"
    assert fell_back[-1].data["sources"]


async def test_the_json_endpoint_falls_back_too(client: httpx.AsyncClient,
                                                upstream: FakeUpstream) -> None:
    upstream.default = Reply(status=503)
    response = await client.post("/chat/message", json={"message": "do you ship to germany"})
    assert response.status_code == 200
    assert "Europe" in response.json()["reply"]


async def test_a_failure_after_tokens_stays_an_error(client: httpx.AsyncClient,
                                                     upstream: FakeUpstream, query: Any) -> None:
    upstream.queue(Reply(tokens=["We ship"], reset_after_tokens=True))
    events = await stream_chat(client, {"message": "do you ship to germany"})
    assert [e.event for e in events] == ["meta", "token", "error"]
    assert saved_answer(query, events[0].data["messageId"])[:2] == ("error", False)


async def test_a_store_brings_its_own_profile_and_articles(
        start_app: Any, upstream: FakeUpstream, tmp_path: Path) -> None:
    profile = tmp_path / "profile.toml"
    profile.write_text(DEFAULT_PROFILE_PATH.read_text().replace(
        'name = "Saffron Loom"', 'name = "Corner Teapots"'))
    articles = tmp_path / "articles"
    articles.mkdir()
    (articles / "teapots.md").write_text(
        "# Teapot care\n\n## Descaling\n\nDescale your teapot monthly with citric acid.\n")
    app = await start_app(store_profile=str(profile), knowledge_dir=str(articles))
    async with app.client() as http:
        events = await stream_chat(http, {"message": "how do i descale the teapot"})
    system = upstream.requests[-1]["messages"][0]["content"]
    assert "Corner Teapots" in system and "Descale your teapot monthly" in system
    assert events[-1].data["sources"] == [{"title": "Teapot care", "path": "teapots.md"}]


def run_app(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "app", *args], cwd=ROOT,
                          env={**os.environ, **env}, capture_output=True, text=True, timeout=120)


def test_a_bad_profile_stops_the_service_naming_file_and_field(tmp_path: Path) -> None:
    profile = tmp_path / "profile.toml"
    profile.write_text(DEFAULT_PROFILE_PATH.read_text().replace("window_days = 14",
                                                                'window_days = "two weeks"'))
    result = run_app(STORE_PROFILE=str(profile))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"configuration error: store profile {profile}: field 'returns.window_days' must be a "
        "whole number above 0, got 'two weeks'"]


def test_a_missing_knowledge_folder_stops_the_service(tmp_path: Path) -> None:
    result = run_app(KNOWLEDGE_DIR=str(tmp_path / "nope"))
    assert result.returncode == 2
    assert f"knowledge folder {tmp_path / 'nope'} does not exist" in result.stderr


def test_the_sync_command_indexes_the_folder(database_url: str, tmp_path: Path) -> None:
    (tmp_path / "only.md").write_text("# Only\n\nOne article.")
    first = run_app("knowledge", "sync", DATABASE_URL=database_url, KNOWLEDGE_DIR=str(tmp_path))
    second = run_app("knowledge", "sync", DATABASE_URL=database_url, KNOWLEDGE_DIR=str(tmp_path))
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip().endswith(": 1 added, 0 updated, 0 removed, 0 unchanged") or \
        first.stdout.strip().endswith("removed, 0 unchanged")
    assert second.stdout.strip().endswith(": 0 added, 0 updated, 0 removed, 1 unchanged")


async def test_a_start_too_slow_for_the_search_warm_up_still_starts_and_answers(
        start_app: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    # On a busy machine the warm-up's statements can time out (the pool drops the connection):
    # the app must start anyway, and its first question loads the search instead.
    real_search, calls = KnowledgeSearch.search, []

    async def too_slow_at_first(self: KnowledgeSearch, question: str,
                                previous_question: str | None = None) -> Any:
        calls.append(question)
        if len(calls) == 1:
            raise psycopg.OperationalError("consuming input failed: server closed the connection")
        return await real_search(self, question, previous_question)

    monkeypatch.setattr(KnowledgeSearch, "search", too_slow_at_first)
    with caplog.at_level(logging.WARNING, logger="app.main"):
        app = await start_app(openai_api_key="", openai_base_url="")
    assert any("not warmed up" in r.getMessage() for r in caplog.records)
    async with app.client() as http:
        assert (await http.get("/readyz")).status_code == 200
        events = await stream_chat(http, {"message": "how long do i have to send something back?"})
    assert len(calls) == 2
    done = events[-1].data
    assert events[-1].event == "done" and done["status"] == "complete" and "14 days" in done["text"]
