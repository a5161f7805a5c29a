"""The knowledge search's memory, against the real PostgreSQL: a repeated question is answered
from the retrievals it keeps, a change to the knowledge is seen on the very next question, and
neither what it keeps nor what it learns of shoppers' words grows without bound."""

from __future__ import annotations

import asyncio
import random
import shutil
import string
from collections.abc import AsyncIterator
from pathlib import Path

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from app import db, knowledge_search
from app.curated_answers import CuratedAnswers, CuratedDraft
from app.knowledge import DEFAULT_KNOWLEDGE_DIR, sync_knowledge
from app.knowledge_search import KnowledgeSearch, Retrieval, _RecentRetrievals
from app.sites import DEFAULT_SITE_ID
from app.store_profile import DEFAULT_PROFILE_PATH, load_profile

PROFILE = load_profile(DEFAULT_PROFILE_PATH)


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[AsyncConnectionPool]:
    """A pool on the test database with the shipped articles indexed, and nothing else."""
    pool = db.create_pool(database_url, 4)
    await pool.open(wait=True)
    async with pool.connection() as conn:
        await conn.execute("TRUNCATE knowledge_articles CASCADE")
    await sync_knowledge(pool, DEFAULT_KNOWLEDGE_DIR)
    yield pool
    await pool.close()


async def test_a_repeated_question_is_answered_from_memory(pool: AsyncConnectionPool) -> None:
    search = KnowledgeSearch(pool, PROFILE)
    first = await search.search("How long does delivery take?")
    assert first.found
    again = await search.search("How long does delivery take?")
    spaced = await search.search("  How long  does delivery\ntake? ")
    assert again is first and spaced is first
    # Case is part of the question ("US" is the country): another case is searched anew,
    # and finds the same.
    lower = await search.search("how long does delivery take?")
    assert lower is not first and lower.chunks == first.chunks


async def test_the_question_before_counts_only_for_a_follow_up(pool: AsyncConnectionPool
                                                              ) -> None:
    search = KnowledgeSearch(pool, PROFILE)
    fresh = KnowledgeSearch(pool, PROFILE, recent_questions=0)  # remembers nothing
    cases = [("and to Europe?", "how much is shipping?"),
             ("and to Europe?", "can I return a dress?"),
             ("Do gift cards expire?", "how much is shipping?"),
             ("Do gift cards expire?", "can I return a dress?")]
    for question, previous in cases:
        remembered = await search.search(question, previous)
        assert remembered == await fresh.search(question, previous), (question, previous)
    assert len(search._recent) == 3  # a whole new question is one entry, whatever came before
    assert len(fresh._recent) == 0


async def test_a_curated_answer_changed_is_seen_on_the_next_question(
        pool: AsyncConnectionPool) -> None:
    """The vocabulary is checked only every few seconds; the revision, on every question."""
    search = KnowledgeSearch(pool, PROFILE)
    question = "Can I have it gift wrapped?"
    before = await search.search(question)
    assert before.curated is None
    assert await search.search(question) is before
    answers = CuratedAnswers(pool)
    draft = CuratedDraft("Gift wrapping", ("can I have it gift wrapped", "do you gift wrap"),
                         "We wrap any order in recycled paper for 3 EUR.")
    published = await answers.publish(DEFAULT_SITE_ID, draft, None)
    found = await search.search(question)
    assert found.curated is not None and "recycled paper" in found.curated.text
    await answers.update(published.id, [DEFAULT_SITE_ID],
                         CuratedDraft(draft.title, draft.questions,
                                      "We wrap any order in linen for free."))
    edited = await search.search(question)
    assert edited.curated is not None and "linen" in edited.curated.text
    await answers.withdraw(published.id, [DEFAULT_SITE_ID])
    assert (await search.search(question)).curated is None


async def test_a_sync_that_changes_the_articles_is_seen_on_the_next_question(
        pool: AsyncConnectionPool, tmp_path: Path) -> None:
    folder = tmp_path / "knowledge"
    shutil.copytree(DEFAULT_KNOWLEDGE_DIR, folder)
    search = KnowledgeSearch(pool, PROFILE)
    question = "Can I have it gift wrapped?"
    before = await search.search(question)
    assert await search.search(question) is before
    assert "Gift wrapping" not in [chunk.title for chunk in before.chunks]
    (folder / "gift-wrapping.md").write_text(
        "# Gift wrapping\n\n## Can I have my order gift wrapped?\n\n"
        "Yes: tick gift wrapping at checkout and we wrap it in recycled paper.\n")
    assert (await sync_knowledge(pool, folder)).added == ("gift-wrapping.md",)
    after = await search.search(question)
    assert [chunk.title for chunk in after.chunks][:1] == ["Gift wrapping"]
    assert (await sync_knowledge(pool, folder)).added == ()  # nothing new: nothing bumped
    assert await search.search(question) is after


def test_what_is_kept_is_bounded_and_a_search_of_the_knowledge_before_stores_nothing() -> None:
    recent = _RecentRetrievals(3)
    for number in range(5):
        recent.put((f"question {number}", ""), Retrieval(f"question {number}", ()),
                   recent.version)
    assert len(recent) == 3 and recent.get(("question 1", "")) is None
    assert recent.get(("question 2", "")) is not None  # now the most recently asked
    recent.put(("question 5", ""), Retrieval("question 5", ()), recent.version)
    assert recent.get(("question 3", "")) is None and recent.get(("question 2", "")) is not None
    began_under = recent.version
    recent.clear()
    assert len(recent) == 0
    recent.put(("question 6", ""), Retrieval("question 6", ()), began_under)
    assert recent.get(("question 6", "")) is None


async def test_words_learned_from_questions_stay_bounded(pool: AsyncConnectionPool,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          ) -> None:
    monkeypatch.setattr(knowledge_search, "LEARNED_WORDS", 20)
    search = KnowledgeSearch(pool, PROFILE)
    await search.search("How long does delivery take?")
    index_stems = len(search._index_stems)
    rng = random.Random(15)
    most_stems = most_fixes = most_counts = 0
    for _ in range(60):
        # One made-up word a question, so that the question is still about the store.
        made_up = "".join(rng.choices(string.ascii_lowercase, k=rng.randint(6, 9)))
        await search.search(f"how long does delivery take for {made_up}")
        most_stems = max(most_stems, len(search._stems) - index_stems)
        most_fixes = max(most_fixes, len(search._typo_fixes))
        most_counts = max(most_counts, len(search._term_chunks))
    # Past LEARNED_WORDS, forgotten before the next question: at most one question's more.
    assert 20 < most_stems <= 20 + 10
    assert 20 < most_fixes <= 20 + 10
    assert 20 < most_counts <= 20 + 10
    # The index's own words are never forgotten.
    assert len(search._stems) >= index_stems


async def test_a_search_meeting_a_vocabulary_reload_midway_still_finds(
        pool: AsyncConnectionPool, database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # A new instance's first shoppers arrive together, and a search may load the vocabulary
    # while another waits for its word counts: the loader replaces the counts. That once raised
    # a KeyError in the middle of a search, and the shopper's stream stayed open, unanswered.
    search = KnowledgeSearch(pool, PROFILE)
    await search.search("How long does delivery take?")  # the vocabulary, loaded
    # The word counts' query, held long enough for the reload to happen while it runs.
    monkeypatch.setattr(knowledge_search, "_TERM_COUNT_SQL", "SELECT t.* FROM ("
                        + knowledge_search._TERM_COUNT_SQL + ") t CROSS JOIN pg_sleep(3)")
    # "delivery" is counted already, "gift" and "cards" are not: the query runs for them.
    waiting = asyncio.create_task(search.search("Do gift cards expire on delivery?"))
    with psycopg.connect(database_url, autocommit=True) as watcher:
        running = ("SELECT 1 FROM pg_stat_activity WHERE query LIKE '%%pg_sleep(3)%%'"
                   " AND pid <> pg_backend_pid()")
        while not watcher.execute(running).fetchone():  # noqa: ASYNC110 (the server's, no event)
            await asyncio.sleep(0.02)
    monkeypatch.undo()
    search._fingerprint, search._checked_at = "changed", -float("inf")  # the next one reloads
    await search.search("Can I return a dress?")
    assert not waiting.done()  # the reload happened while the first search waited
    found = await waiting
    assert found.chunks == (await KnowledgeSearch(pool, PROFILE).search(
        "Do gift cards expire on delivery?")).chunks
    assert found.found
