"""The knowledge search: a shopper's question in, the chunks that answer it out (or none).

One `KnowledgeSearch` per app. It owns what it caches: the index's vocabulary, synonyms and
regions (re-read when the index's fingerprint changes, checked at most every few seconds), and
the typo fixes found for that vocabulary. The steps per question:

1. widen the wording (app/shopper_words.py): phrases, the store's synonyms, place names;
2. fix typos with PostgreSQL's trigram similarity (`pg_trgm`) against the index's own words,
   only for words the index does not know, and each such word once per vocabulary;
3. rank chunks with full-text search, each term weighted by its rarity (BM25's idf), and
   keep only chunks that match enough of what the question is about (its *coverage*), so that
   "do you sell gift wrapping" does not come back as the gift-card article.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import class_row
from psycopg_pool import AsyncConnectionPool

from app.knowledge import KnowledgeChunk
from app.places import Place, Places
from app.shopper_words import ShopperWords
from app.store_profile import StoreProfile

# ts_rank_cd weights for the D, C, B, A labels: body words (C) count for a fifth of a title word.
RANK_WEIGHTS = [0.0, 0.2, 0.7, 0.5]
RANK_NORMALIZATION = 1
# Below this score a chunk shares only a stray word with the question.
RELEVANCE_THRESHOLD = 0.1
# A question whose words the articles mostly never use is not about the store.
MIN_KNOWN_SHARE = 0.5
# The best chunk must match this share of the question's weight (its groups' idf), or the
# question is about something the help centre does not cover. Measured on
# tests/retrieval_questions.toml (`make eval`).
MIN_COVERAGE = 0.2
# A curated answer is given word for word only when it matches the question this closely.
CURATED_COVERAGE = 0.6
# A misspelt word is replaced by an index word at least this similar (pg_trgm similarity).
TYPO_SIMILARITY = 0.4
VOCABULARY_CHECK_S = 5.0
DEFAULT_LIMIT = 3


@dataclass(frozen=True)
class Retrieval:
    """What the knowledge base holds for one question."""

    question: str
    chunks: tuple[KnowledgeChunk, ...]  # best first; empty when nothing is relevant
    places: tuple[Place, ...] = ()  # place names in the question, with their shipping region
    curated: KnowledgeChunk | None = None  # a curated answer that matches closely
    terms: tuple[tuple[str, ...], ...] = ()  # the widened question: one group per thing asked

    @property
    def found(self) -> bool:
        return bool(self.chunks)


class KnowledgeSearch:
    """Search the indexed knowledge; `await search(question)` -> Retrieval."""

    def __init__(self, pool: AsyncConnectionPool, profile: StoreProfile, *,
                 limit: int = DEFAULT_LIMIT,
                 vocabulary_check_s: float = VOCABULARY_CHECK_S) -> None:
        self._pool = pool
        self._profile = profile
        self._limit = limit
        self._check_s = vocabulary_check_s
        self._checked_at = -float("inf")
        self._fingerprint: str | None = None
        self._words: ShopperWords | None = None
        self._typo_fixes: dict[str, str] = {}

    async def search(self, question: str, previous_question: str | None = None) -> Retrieval:
        """The chunks that best answer `question`; a follow-up that finds nothing alone ("and to
        Europe?") is searched again together with `previous_question`."""
        async with self._pool.connection() as conn:
            retrieval = await self._search(conn, question)
            if not retrieval.found and previous_question:
                retrieval = await self._search(conn, f"{previous_question} {question}")
        return retrieval

    async def _search(self, conn: AsyncConnection, question: str) -> Retrieval:
        words = await self._current_words(conn)
        fixes = await self._fix_typos(conn, words, words.typo_candidates(question))
        widened = words.widen(question, fixes)
        if not widened.groups:
            return Retrieval(question, (), widened.places, None, widened.groups)
        terms = [term for group in widened.groups for term in group]
        group_ids = [number for number, group in enumerate(widened.groups) for _ in group]
        async with conn.cursor(row_factory=class_row(KnowledgeChunk)) as cursor:
            await cursor.execute(_SEARCH_SQL, {
                "terms": terms, "group_ids": group_ids, "weights": RANK_WEIGHTS,
                "normalization": RANK_NORMALIZATION, "min_known_share": MIN_KNOWN_SHARE,
                "threshold": RELEVANCE_THRESHOLD, "limit": self._limit,
            })
            rows = await cursor.fetchall()
        if not rows or rows[0].coverage < MIN_COVERAGE:
            return Retrieval(question, (), widened.places, None, widened.groups)
        # Once the best chunk is on topic, the others only need to be relevant.
        chunks = tuple(rows)
        best = chunks[0]
        curated = best if best.kind == "answer" and best.coverage >= CURATED_COVERAGE else None
        return Retrieval(question, chunks, widened.places, curated, widened.groups)

    async def _current_words(self, conn: AsyncConnection) -> ShopperWords:
        if self._words is not None and time.monotonic() - self._checked_at < self._check_s:
            return self._words
        cursor = await conn.execute(_FINGERPRINT_SQL)
        row = await cursor.fetchone()
        fingerprint = row[0] if row else ""
        self._checked_at = time.monotonic()
        if self._words is None or fingerprint != self._fingerprint:
            self._words = await self._load_words(conn)
            self._fingerprint = fingerprint
            self._typo_fixes = {}
        return self._words

    async def _load_words(self, conn: AsyncConnection) -> ShopperWords:
        cursor = await conn.execute("SELECT word FROM knowledge_words")
        vocabulary = frozenset(word for (word,) in await cursor.fetchall())
        cursor = await conn.execute("SELECT phrase, terms FROM knowledge_synonyms")
        synonyms: dict[str, str] = dict(await cursor.fetchall())
        cursor = await conn.execute("SELECT region, country_codes FROM knowledge_regions")
        regions: dict[str, Any] = dict(await cursor.fetchall())
        return ShopperWords(vocabulary, synonyms,
                            Places(self._profile.shipping_regions, regions))

    async def _fix_typos(self, conn: AsyncConnection, words: ShopperWords,
                         candidates: list[str]) -> Mapping[str, str]:
        unseen = [word for word in candidates if word not in self._typo_fixes]
        if unseen:
            cursor = await conn.execute(_TYPO_SQL, {"words": unseen,
                                                    "similarity": TYPO_SIMILARITY})
            for word, fix in await cursor.fetchall():
                self._typo_fixes[word] = fix or word
        return {word: self._typo_fixes[word] for word in candidates}


_FINGERPRINT_SQL = """
SELECT md5(coalesce((SELECT string_agg(path || ':' || content_hash, ',' ORDER BY path)
                     FROM knowledge_articles), '')
           || coalesce((SELECT string_agg(phrase || '=' || terms, ',' ORDER BY phrase)
                        FROM knowledge_synonyms), '')
           || coalesce((SELECT string_agg(region || '=' || array_to_string(country_codes, ' '),
                                          ',' ORDER BY region)
                        FROM knowledge_regions), ''))
"""

# `%%` is pg_trgm's similarity operator (its default threshold, 0.3, lets the index find the
# candidates); shoppers rarely get the first letter wrong, so a close word that starts
# differently is another word ("flight" is not "light").
_TYPO_SQL = """
SELECT input.word, best.word
FROM unnest(%(words)s::text[]) AS input(word)
LEFT JOIN LATERAL (
    SELECT known.word FROM knowledge_words AS known
    WHERE known.word %% input.word AND left(known.word, 1) = left(input.word, 1)
      AND similarity(known.word, input.word) >= %(similarity)s
    ORDER BY similarity(known.word, input.word) DESC, known.word
    LIMIT 1
) AS best ON true
"""

# Each term of the widened question is its own query, ranked with ts_rank_cd and weighted by
# how rare it is among the chunks (BM25's idf): one OR-query ranked as a whole would let a
# common word ("order") in a title outweigh the one rare word ("paypal") that matters. A group
# (a word with its fixes and synonyms) counts once per chunk, by its best term.
# websearch_to_tsquery stems each word and drops stop words, and never fails on odd input.
_SEARCH_SQL = """
WITH grouped_term AS (
    SELECT term.word, group_id, query
    FROM unnest(%(terms)s::text[], %(group_ids)s::int[]) AS term(word, group_id),
         websearch_to_tsquery('english', term.word) AS query
    WHERE numnode(query) > 0
),
weighted_term AS (
    SELECT term.query,
           matching.chunks,
           ln(1 + (total.chunks - matching.chunks + 0.5) / (matching.chunks + 0.5)) AS idf
    FROM (SELECT DISTINCT query FROM grouped_term) AS term,
         (SELECT count(*) AS chunks FROM knowledge_chunks) AS total,
         LATERAL (SELECT count(*) AS chunks FROM knowledge_chunks
                  WHERE search_vector @@ term.query) AS matching
),
-- What each thing asked about weighs: its rarest term the chunks use, or, for a word they
-- never use, the weight of the rarest possible word. Numbers are left out: every article
-- has some, so "what is 2+2" would look like a question the articles know all about.
group_weight AS (
    SELECT grouped_term.group_id,
           coalesce(max(weighted_term.idf) FILTER (WHERE weighted_term.chunks > 0),
                    max(weighted_term.idf)) AS idf,
           bool_or(weighted_term.chunks > 0) AS known
    FROM grouped_term JOIN weighted_term USING (query)
    WHERE grouped_term.word !~ '^[0-9]+$'
    GROUP BY grouped_term.group_id
),
question_weight AS (
    SELECT sum(idf) AS idf,
           count(*) FILTER (WHERE known)::float8 / nullif(count(*), 0) AS known_share
    FROM group_weight
),
chunk_group AS (
    SELECT chunk.id, grouped_term.group_id,
           max(weighted_term.idf * ts_rank_cd(%(weights)s::real[], chunk.search_vector,
                                              weighted_term.query, %(normalization)s)) AS rank
    FROM knowledge_chunks AS chunk
    JOIN weighted_term ON chunk.search_vector @@ weighted_term.query
    JOIN grouped_term USING (query)
    GROUP BY chunk.id, grouped_term.group_id
),
scored_chunk AS (
    SELECT chunk_group.id, sum(chunk_group.rank) AS score,
           coalesce(sum(group_weight.idf), 0) AS matched_idf
    FROM chunk_group LEFT JOIN group_weight USING (group_id)
    GROUP BY chunk_group.id
)
SELECT chunk.article_title AS title, chunk.heading, chunk.body AS text,
       chunk.article_path AS path, scored_chunk.score::float8 AS score, chunk.kind, chunk.link,
       linked.title AS link_title,
       coalesce(scored_chunk.matched_idf / nullif(question_weight.idf, 0), 0)::float8 AS coverage
FROM scored_chunk
JOIN knowledge_chunks AS chunk USING (id)
LEFT JOIN knowledge_articles AS linked ON linked.path = chunk.link
CROSS JOIN question_weight
WHERE scored_chunk.score >= %(threshold)s
  AND question_weight.known_share >= %(min_known_share)s
-- A chunk that matches one common word very well ("card" in "Gift cards") must not beat one
-- that matches most of what is asked: the score counts as much as the coverage allows.
ORDER BY scored_chunk.score * scored_chunk.matched_idf DESC, chunk.article_path, chunk.position
LIMIT %(limit)s
"""
