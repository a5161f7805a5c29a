"""The store's knowledge base: Markdown articles, indexed in PostgreSQL, searched per question.

The articles in KNOWLEDGE_DIR are the source of truth. `sync_knowledge` splits each one by its
headings into chunks and mirrors them into the knowledge tables (sql/0002_knowledge.sql),
touching only files whose bytes changed. `search_knowledge` finds the chunks that best answer
a shopper's question with PostgreSQL full-text search; the shopper's wording is widened first
(see app/shopper_words.py), because shoppers rarely use the words the articles use.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from psycopg import AsyncConnection
from psycopg.rows import class_row
from psycopg_pool import AsyncConnectionPool

from app.shopper_words import widen_question
from app.sites import DEFAULT_SITE_ID
from app.store_profile import StoreProfile

DEFAULT_KNOWLEDGE_DIR = Path(__file__).parent / "store" / "knowledge"

# pg_advisory_xact_lock key ("knowledg" in ASCII). Instances that start together queue on
# this lock, so each sync sees the previous one's committed rows and finds nothing to do.
SYNC_LOCK_KEY = 0x6B6E6F776C656467

# ts_rank_cd weights for the D, C, B, A labels: body words (C) count for a fifth of a title word.
RANK_WEIGHTS = [0.0, 0.2, 0.7, 0.5]
# Below this score a chunk shares only a stray word with the question. Measured on
# tests/retrieval_questions.toml: on-topic questions score well above it, off-topic ones below.
RELEVANCE_THRESHOLD = 0.1
RANK_NORMALIZATION = 1
MIN_KNOWN_SHARE = 0.5


class KnowledgeError(Exception):
    """The knowledge folder or one of its articles cannot be read."""


@dataclass(frozen=True)
class KnowledgeChunk:
    title: str
    heading: str
    text: str
    path: str
    score: float

    @property
    def label(self) -> str:
        """ "Returns and exchanges: How to start a return", or the title alone for an intro."""
        return self.title if self.heading == self.title else f"{self.title}: {self.heading}"


@dataclass(frozen=True)
class ArticleSection:
    heading: str
    body: str


@dataclass(frozen=True)
class Article:
    path: str
    title: str
    content_hash: str
    sections: tuple[ArticleSection, ...]


@dataclass(frozen=True)
class SyncReport:
    added: tuple[str, ...]
    updated: tuple[str, ...]
    removed: tuple[str, ...]
    unchanged: int

    @property
    def changed(self) -> bool:
        return bool(self.added or self.updated or self.removed)

    def summary(self) -> str:
        return (
            f"{len(self.added)} added, {len(self.updated)} updated, "
            f"{len(self.removed)} removed, {self.unchanged} unchanged"
        )


_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
_FENCE = re.compile(r"^\s*(```|~~~)")


def parse_article(path: str, text: str, content_hash: str = "") -> Article:
    """Split an article into sections at its headings.

    The first level-1 heading is the title (the file name stands in when there is none); every
    other heading starts a section. Text before the first section becomes a section headed by
    the title, so an article without headings is still one searchable chunk.
    """
    title: str | None = None
    sections: list[ArticleSection] = []
    heading: str | None = None
    body_lines: list[str] = []
    in_fence = False

    def close_section() -> None:
        body = "\n".join(body_lines).strip()
        if body:
            sections.append(ArticleSection(heading or "", body))
        body_lines.clear()

    for line in text.splitlines():
        if _FENCE.match(line):
            in_fence = not in_fence
        match = None if in_fence else _HEADING.match(line)
        if match is None:
            body_lines.append(line)
        elif title is None and match.group(1) == "#" and heading is None and not sections:
            title = match.group(2)
        else:
            close_section()
            heading = match.group(2)
    close_section()

    title = title or Path(path).stem.replace("-", " ").replace("_", " ").capitalize()
    sections = [ArticleSection(section.heading or title, section.body) for section in sections]
    return Article(path, title, content_hash, tuple(sections))


def read_articles(knowledge_dir: Path) -> list[Article]:
    """Every *.md file under `knowledge_dir`, parsed, in a stable order."""
    if not knowledge_dir.is_dir():
        raise KnowledgeError(f"knowledge folder {knowledge_dir} does not exist or is not a folder")
    articles = []
    for file in sorted(knowledge_dir.rglob("*.md")):
        if not file.is_file():
            continue
        raw = file.read_bytes()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise KnowledgeError(f"knowledge article {file}: the file is not UTF-8 text") from exc
        # PostgreSQL text cannot hold NUL, so refuse the file here rather than fail in the INSERT.
        if "\x00" in text:
            raise KnowledgeError(f"knowledge article {file}: the file contains a NUL character")
        relative = file.relative_to(knowledge_dir).as_posix()
        articles.append(parse_article(relative, text, hashlib.sha256(raw).hexdigest()))
    return articles


async def sync_knowledge(pool: AsyncConnectionPool, knowledge_dir: Path,
                         site_id: int = DEFAULT_SITE_ID) -> SyncReport:
    """Make the site's index match the folder: index new and changed files, drop deleted ones.
    Other sites' articles are never touched.

    Safe to run from several instances at once: the whole sync is one transaction holding an
    advisory lock, so syncs run one after another and all but the first find nothing to do.
    """
    articles = read_articles(knowledge_dir)
    async with pool.connection() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", [SYNC_LOCK_KEY])
        cursor = await conn.execute(
            "SELECT path, content_hash FROM knowledge_articles WHERE site_id = %s", [site_id])
        indexed = {path: content_hash for path, content_hash in await cursor.fetchall()}

        on_disk = {article.path for article in articles}
        removed = sorted(path for path in indexed if path not in on_disk)
        if removed:
            await conn.execute("DELETE FROM knowledge_articles WHERE site_id = %s"
                               " AND path = ANY(%s)", [site_id, removed])

        added: list[str] = []
        updated: list[str] = []
        for article in articles:
            previous_hash = indexed.get(article.path)
            if previous_hash == article.content_hash:
                continue
            await _index_article(conn, article, site_id)
            (added if previous_hash is None else updated).append(article.path)

    unchanged = len(articles) - len(added) - len(updated)
    return SyncReport(tuple(added), tuple(updated), tuple(removed), unchanged)


async def _index_article(conn: AsyncConnection, article: Article, site_id: int) -> None:
    await conn.execute(
        """
        INSERT INTO knowledge_articles (site_id, path, title, content_hash) VALUES (%s, %s, %s, %s)
        ON CONFLICT (site_id, path) DO UPDATE
            SET title = EXCLUDED.title, content_hash = EXCLUDED.content_hash, indexed_at = now()
        """,
        [site_id, article.path, article.title, article.content_hash],
    )
    await conn.execute("DELETE FROM knowledge_chunks WHERE site_id = %s AND article_path = %s",
                       [site_id, article.path])
    async with conn.cursor() as cursor:
        await cursor.executemany(
            """
            INSERT INTO knowledge_chunks
                (site_id, article_path, position, article_title, heading, body, content_hash)
            VALUES (%s, %s, %s, %s, %s, %s, %s)
            """,
            [
                (
                    site_id,
                    article.path,
                    position,
                    article.title,
                    section.heading,
                    section.body,
                    hashlib.sha256(f"{section.heading}\n{section.body}".encode()).hexdigest(),
                )
                for position, section in enumerate(article.sections)
            ],
        )


async def search_knowledge(
    pool: AsyncConnectionPool, question: str, limit: int = 3, *, site_id: int = DEFAULT_SITE_ID
) -> list[KnowledgeChunk]:
    """The site's chunks that best answer `question`, best first; empty when none is relevant.
    Never another site's: the counts behind the ranking are the site's own too."""
    async with pool.connection() as conn:
        groups = widen_question(question, await _vocabulary(conn, site_id))
        if not groups:
            return []
        terms = [term for group in groups for term in group]
        group_ids = [number for number, group in enumerate(groups) for _ in group]
        async with conn.cursor(row_factory=class_row(KnowledgeChunk)) as cursor:
            await cursor.execute(
                _SEARCH_SQL,
                {
                    "terms": terms,
                    "group_ids": group_ids,
                    "weights": RANK_WEIGHTS,
                    "normalization": RANK_NORMALIZATION,
                    "min_known_share": MIN_KNOWN_SHARE,
                    "threshold": RELEVANCE_THRESHOLD,
                    "limit": limit,
                    "site_id": site_id,
                },
            )
            return await cursor.fetchall()


# Each term of the widened question is its own query, ranked with ts_rank_cd and weighted by
# how rare it is among the chunks (BM25's idf): one OR-query ranked as a whole would let a
# common word ("order") in a title outweigh the one rare word ("paypal") that matters.
# websearch_to_tsquery stems each word and drops stop words, and never fails on odd input.
# A question whose words the articles mostly never use ("write me a poem about cats") is not
# about the store, whatever single word it shares with an article, so it finds nothing.
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
         (SELECT count(*) AS chunks FROM knowledge_chunks
          WHERE site_id = %(site_id)s) AS total,
         LATERAL (SELECT count(*) AS chunks FROM knowledge_chunks
                  WHERE site_id = %(site_id)s AND search_vector @@ term.query) AS matching
),
-- Numbers are left out: every article has some, so "what is 2+2" would look like a question
-- the articles know all about.
known_share AS (
    SELECT count(DISTINCT grouped_term.group_id) FILTER (WHERE weighted_term.chunks > 0)::float8
           / nullif(count(DISTINCT grouped_term.group_id), 0) AS share
    FROM grouped_term JOIN weighted_term USING (query)
    WHERE grouped_term.word !~ '^[0-9]+$'
),
scored_chunk AS (
    SELECT chunk.id,
           sum(weighted_term.idf * ts_rank_cd(%(weights)s::real[], chunk.search_vector,
                                              weighted_term.query, %(normalization)s)) AS score
    FROM knowledge_chunks AS chunk
    JOIN weighted_term ON chunk.search_vector @@ weighted_term.query
    WHERE chunk.site_id = %(site_id)s
    GROUP BY chunk.id
)
SELECT chunk.article_title AS title, chunk.heading, chunk.body AS text,
       chunk.article_path AS path, scored_chunk.score::float8 AS score
FROM scored_chunk
JOIN knowledge_chunks AS chunk USING (id)
WHERE scored_chunk.score >= %(threshold)s
  AND (SELECT share FROM known_share) >= %(min_known_share)s
ORDER BY scored_chunk.score DESC, chunk.article_path, chunk.position
LIMIT %(limit)s
"""


# The words of the indexed articles, keyed by a fingerprint of their hashes, so typo correction
# sees the current articles without re-reading them for every question. The fingerprint itself
# is re-read at most every VOCABULARY_CHECK_S: a query per question is a round trip on the path
# to the first token, and articles change far less often than that.
# The last check is kept per database and site: a process may talk to several databases (the
# tests do), and every site has articles of its own.
_vocabulary_cache: dict[str, frozenset[str]] = {}
# Vocabularies kept at most: one per site in use, roughly.
VOCABULARY_CACHE_MAX = 64
VOCABULARY_CHECK_S = 5.0
_recent_vocabulary: dict[tuple[str, int], tuple[float, frozenset[str]]] = {}


async def _vocabulary(conn: AsyncConnection, site_id: int) -> frozenset[str]:
    key = (conn.info.dsn, site_id)
    recent = _recent_vocabulary.get(key)
    if recent is not None and time.monotonic() - recent[0] < VOCABULARY_CHECK_S:
        return recent[1]
    vocabulary = await _current_vocabulary(conn, site_id)
    _recent_vocabulary[key] = (time.monotonic(), vocabulary)
    return vocabulary


async def _current_vocabulary(conn: AsyncConnection, site_id: int) -> frozenset[str]:
    cursor = await conn.execute(
        "SELECT coalesce(md5(string_agg(path || ':' || content_hash, ',' ORDER BY path)), '')"
        " FROM knowledge_articles WHERE site_id = %s", [site_id]
    )
    row = await cursor.fetchone()
    fingerprint = row[0] if row else ""
    if fingerprint not in _vocabulary_cache:
        # ts_stat takes its query as text; the bigint cast keeps the site id a number.
        cursor = await conn.execute(
            """
            SELECT word FROM ts_stat(
                'SELECT to_tsvector(''simple'', article_title || '' '' || heading || '' '' || body)'
                ' FROM knowledge_chunks WHERE site_id = ' || %s::bigint)
            """, [site_id]
        )
        if len(_vocabulary_cache) >= VOCABULARY_CACHE_MAX:
            _vocabulary_cache.clear()
        _vocabulary_cache[fingerprint] = frozenset(word for (word,) in await cursor.fetchall())
    return _vocabulary_cache[fingerprint]


_ANSWER_PIECE = re.compile(r"\s*\S+")


def answer_pieces(text: str) -> list[str]:
    """A knowledge-base answer cut into word-sized token events, so it streams like a model's
    answer; joined, the pieces are exactly `text`."""
    pieces = _ANSWER_PIECE.findall(text)
    tail = text[len("".join(pieces)) :]
    if tail:
        pieces.append(tail)
    return pieces


def knowledge_only_answer(profile: StoreProfile, chunks: Sequence[KnowledgeChunk]) -> str:
    """An answer made of the best chunk, lightly framed; or, with no chunk, where to get help."""
    if not chunks:
        return (
            "Sorry, I could not find an answer to that in our help centre. "
            f"Our team can help: write to {profile.contact_email}"
            + (f" or call {profile.contact_phone}" if profile.contact_phone else "")
            + f", {profile.support_hours}."
        )
    best = chunks[0]
    topic = best.title[0].lower() + best.title[1:] if best.title[1:2].islower() else best.title
    quoted = [best.text.strip()]
    if best.heading == best.title:
        # An article's intro is a line of summary: quote the article's next best section too.
        detail = next((c for c in chunks[1:] if c.path == best.path), None)
        if detail is not None:
            quoted.append(f"{detail.heading}: {detail.text.strip()}")
        about = topic
    else:
        about = f'{topic} ("{best.heading}")'
    answer = f"Here is what our help centre says about {about}:\n\n" + "\n\n".join(quoted)
    related = []
    for chunk in chunks[1:]:
        if chunk.title != best.title and chunk.title not in related:
            related.append(chunk.title)
    if related:
        answer += "\n\nSee also: " + ", ".join(related) + "."
    answer += (
        f"\n\nIf this does not answer your question, our team is here {profile.support_hours}"
        f" at {profile.human_contact}."
    )
    return answer
