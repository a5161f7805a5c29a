"""Knowledge gaps closed from the back office: a question the knowledge base could not answer
shows in the gaps list, grouped; an owner publishes a curated answer from it on one instance,
and the next shopper asking the same on another instance gets it at once, without a restart."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import aclosing
from typing import Any

from app import db
from app.knowledge import BACK_OFFICE_PREFIX, DEFAULT_KNOWLEDGE_DIR, KnowledgeChunk, sync_knowledge
from app.knowledge_search import _close_curated
from tests.conftest import FakeUpstream, Reply, RunningApp
from tests.test_admin import make_staff, signed_in
from tests.test_feedback import ask, feedback_url

CURATED = ("Yes: every order earns one point per dollar, and 100 points take $5 off your"
           " next order. Points show in your account.")


async def knowledge_only(start_app: Callable[..., Any], **overrides: Any) -> RunningApp:
    """An instance with no model: an answer is the knowledge base's own words, so a test can
    tell which curated answer it came from."""
    app: RunningApp = await start_app(openai_api_key="", openai_base_url="", **overrides)
    return app


async def test_a_gap_turned_into_a_curated_answer_on_one_instance_is_answered_on_another(
        start_app: Callable[..., Any], database_url: str, shared_settings: dict[str, Any]
) -> None:
    instance_a = await knowledge_only(start_app, **shared_settings)
    instance_b = await knowledge_only(start_app, **shared_settings)
    owner = await make_staff(database_url, [1], role="owner", name="Olive")
    agent = await make_staff(database_url, [1], role="agent", name="Abe")
    async with instance_b.client() as shopper:
        _, _, first = await ask(shopper, "Is there a loyalty programme?")
        assert first["sources"] == []  # not found: a gap
        _, _, again = await ask(shopper, "Do you have a loyalty programme")
        assert again["sources"] == []

        http, csrf = await signed_in(instance_a, owner)
        async with aclosing(http):
            gaps = (await http.get("/admin/api/gaps?site=1")).json()["gaps"]
            group = next(g for g in gaps if "Is there a loyalty programme?" in g["questions"])
            # Both wordings are one group, newest first within it.
            assert group["questions"][:2] == ["Do you have a loyalty programme",
                                              "Is there a loyalty programme?"]
            assert group["reasons"]["not_found"] >= 2

            draft = {"siteId": 1, "title": "Do you have a loyalty programme?",
                     "questions": group["questions"], "answer": CURATED,
                     "gapKey": group["key"]}
            agent_http, agent_csrf = await signed_in(instance_a, agent)
            async with aclosing(agent_http):
                refused = await agent_http.post("/admin/api/curated-answers", json=draft,
                                                headers={"X-CSRF-Token": agent_csrf})
                assert refused.status_code == 403
                assert refused.json()["error"]["code"] == "owners_only"
            bad = await http.post("/admin/api/curated-answers", json={**draft, "answer": " "},
                                  headers={"X-CSRF-Token": csrf})
            assert bad.status_code == 400 and "answer" in bad.json()["error"]["message"]
            published = await http.post("/admin/api/curated-answers", json=draft,
                                        headers={"X-CSRF-Token": csrf})
            assert published.status_code == 201, published.text
            answer = published.json()["answer"]
            assert answer["path"] == f"{BACK_OFFICE_PREFIX}{answer['id']}"

            # The next shopper, on the other instance, gets it word for word.
            _, _, answered = await ask(shopper, "Is there a loyalty programme?")
            assert answered["text"] == CURATED
            assert [s["path"] for s in answered["sources"]] == [answer["path"]]

            # The gap is closed: it leaves the list.
            gaps = (await http.get("/admin/api/gaps?site=1")).json()["gaps"]
            assert group["key"] not in [g["key"] for g in gaps]

            # A sync of the site's folder (every start does one) leaves it alone.
            pool = db.create_pool(database_url, 2)
            await pool.open(wait=True)
            try:
                report = await sync_knowledge(pool, DEFAULT_KNOWLEDGE_DIR)
            finally:
                await pool.close()
            assert answer["path"] not in report.removed
            _, _, after_sync = await ask(shopper, "Do you have a loyalty programme")
            assert after_sync["text"] == CURATED

            # Edited on A: B gives the new words on the next question.
            edited = await http.put(f"/admin/api/curated-answers/{answer['id']}",
                                    json={**draft, "answer": "Not yet, but soon."},
                                    headers={"X-CSRF-Token": csrf})
            assert edited.status_code == 200, edited.text
            _, _, changed = await ask(shopper, "Is there a loyalty programme?")
            assert changed["text"] == "Not yet, but soon."

            # Withdrawn on A: B stops giving it on the next question.
            withdrawn = await http.delete(f"/admin/api/curated-answers/{answer['id']}",
                                          headers={"X-CSRF-Token": csrf})
            assert withdrawn.status_code == 204
            _, _, gone = await ask(shopper, "Is there a loyalty programme?")
            assert gone["sources"] == []


async def test_thumbs_down_and_handoff_make_gaps_grouped_by_the_article_matched(
        start_app: Callable[..., Any], database_url: str) -> None:
    app = await knowledge_only(start_app)
    owner = await make_staff(database_url, [1], role="owner", name="Olive")
    async with app.client() as shopper:
        session, answer, done = await ask(shopper, "how long does delivery take?")
        assert done["sources"]
        vote = await shopper.post(feedback_url(answer, session),
                                  json={"rating": "down", "comment": "I need it by Friday"})
        assert vote.status_code == 200
        session2, answer2, done2 = await ask(shopper, "when will my order arrive")
        await shopper.post(feedback_url(answer2, session2), json={"rating": "down"})
        handed, _, _ = await ask(shopper, "Can I pick up my parcel myself?")
        assert (await shopper.post(f"/chat/conversations/{handed}/handoff")).status_code == 200

        http, _ = await signed_in(app, owner)
        async with aclosing(http):
            gaps = (await http.get("/admin/api/gaps")).json()["gaps"]
            article = f"article:{done['sources'][0]['path']}"
            if done2["sources"][0]["path"] == done["sources"][0]["path"]:
                group = next(g for g in gaps if g["key"] == article)
                assert group["reasons"]["thumbs_down"] >= 2
                assert "I need it by Friday" in group["comments"]
            handoff = next(g for g in gaps if "Can I pick up my parcel myself?" in g["questions"])
            assert handoff["reasons"]["handoff"] == 1
            assert gaps.index(handoff) < gaps.index(next(g for g in gaps if g["reasons"][
                "thumbs_down"]))  # newest first
            bad = await http.get("/admin/api/gaps?days=0")
            assert bad.status_code == 400
            assert (await http.get("/admin/api/gaps?site=999")).status_code == 404


def chunk(path: str, coverage: float, score: float = 1.0) -> KnowledgeChunk:
    return KnowledgeChunk(title=path, heading=path, text=path, path=path, score=score,
                          kind="answer", coverage=coverage)


def test_a_back_office_answer_wins_over_a_file_answer_that_matches_as_closely() -> None:
    file_answer = chunk("answers.toml#loyalty", 0.9, score=1.2)
    back_office = chunk(f"{BACK_OFFICE_PREFIX}7", 0.9, score=1.0)
    assert _close_curated((file_answer, back_office)) is back_office
    assert _close_curated((back_office, file_answer)) is back_office
    # Only when both are close: a back-office answer matching little does not displace one.
    assert _close_curated((file_answer, chunk(f"{BACK_OFFICE_PREFIX}8", 0.3, 0.1))) \
        is file_answer


async def test_with_a_model_greetings_and_thanks_are_not_listed_as_gaps(
        chat_app: RunningApp, upstream: FakeUpstream, database_url: str) -> None:
    owner = await make_staff(database_url, [1], role="owner", name="Olive")
    small_talk = ["hello", "Thanks a lot!", "¡Hola!", "Danke schön", "नमस्ते 🙏", "hi there :)"]
    asked = small_talk + ["hi, is there a loyalty programme?"]
    upstream.queue(*[Reply(tokens=["Hello! How can I help?"]) for _ in asked])
    async with chat_app.client() as shopper:
        session = None
        for message in asked:
            session, _, done = await ask(shopper, message, session)
            assert done["sources"] == []  # the model cited no article: each one looks "not found"
    http, _ = await signed_in(chat_app, owner)
    async with aclosing(http):
        gaps = (await http.get("/admin/api/gaps")).json()["gaps"]
    listed = {question for gap in gaps for question in gap["questions"]}
    assert "hi, is there a loyalty programme?" in listed  # a question after a greeting is one
    assert listed.isdisjoint(small_talk)
