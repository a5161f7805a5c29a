"""The floor under `make eval`: the evaluation set over the example store, held a little under
the measured figures so that a regression in retrieval or answer composition fails the suite.
The figures themselves are printed by `make eval` (tests/knowledge_eval.py); nothing is timed."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from psycopg_pool import AsyncConnectionPool

from app import db
from app.knowledge import DEFAULT_KNOWLEDGE_DIR, sync_knowledge
from app.knowledge_search import KnowledgeSearch
from app.store_profile import DEFAULT_PROFILE_PATH, load_profile
from tests.knowledge_eval import evaluate, load_questions

# Measured (make eval) minus a small margin; raise them when the figures improve.
FLOORS = {"top1": 0.86, "top3": 0.96, "out_of_scope_recall": 0.82,
          "out_of_scope_precision": 0.95, "key_fact": 0.83}
MAX_MEDIAN_WORDS = 60


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[AsyncConnectionPool]:
    pool = db.create_pool(database_url, 2)
    await pool.open(wait=True)
    async with pool.connection() as conn:
        await conn.execute("TRUNCATE knowledge_articles CASCADE")
    yield pool
    await pool.close()


def test_the_evaluation_set_is_big_and_varied_enough() -> None:
    questions, out_of_scope = load_questions()
    assert len(questions) + len(out_of_scope) >= 150 and len(out_of_scope) >= 30
    assert len({article for _, article, _ in questions}) >= 15  # every article is asked about


async def test_retrieval_and_answers_stay_above_the_floor(pool: AsyncConnectionPool) -> None:
    await sync_knowledge(pool, DEFAULT_KNOWLEDGE_DIR)
    profile = load_profile(DEFAULT_PROFILE_PATH)
    result = await evaluate(KnowledgeSearch(pool, profile), profile)
    measured = {"top1": result.top1_share, "top3": result.top3_share,
                "out_of_scope_recall": result.out_of_scope_recall,
                "out_of_scope_precision": result.out_of_scope_precision,
                "key_fact": result.fact_share}
    below = {name: f"{measured[name]:.1%} < {floor:.0%}" for name, floor in FLOORS.items()
             if measured[name] < floor}
    assert not below, below
    assert result.median_words <= MAX_MEDIAN_WORDS
