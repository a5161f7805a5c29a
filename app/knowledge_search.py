"""The knowledge search: a shopper's question in, the chunks that answer it out (or none).

One `KnowledgeSearch` per site: it reads only that site's rows (articles, curated answers,
words, synonyms, regions) and places names with that site's profile. `SiteSearches`, one per
app (built in the lifespan), creates a site's search on its first question and keeps it, so
each site's caches live as long as the app and no longer. A search owns what it caches: the
site's vocabulary, synonyms and regions (re-read when the site's fingerprint changes, checked
at most every few seconds), and the typo fixes found for that vocabulary. The steps per
question:

1. widen the wording (app/shopper_words.py): phrases, the store's synonyms, place names;
2. fix typos with PostgreSQL's trigram similarity (`pg_trgm`) against the index's own words,
   only for words the index does not know, and each such word once per vocabulary;
3. rank chunks with full-text search, each term weighted by its rarity (BM25's idf), and
   keep only chunks that match enough of what the question is about (its *coverage*), so that
   "do you sell gift wrapping" does not come back as the gift-card article.

A search is for one language of the site's knowledge (app/knowledge.py: a folder per language):
it reads only that language's chunks and words, with its text search configuration
(`knowledge_search_config`, sql/0013_knowledge_languages.sql). Which language to search, and
the fall back to English, is app/knowledge_languages.py.
"""

from __future__ import annotations

import math
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import class_row
from psycopg_pool import AsyncConnectionPool

from app import db
from app.knowledge import BACK_OFFICE_PREFIX, KnowledgeChunk
from app.language import ENGLISH
from app.places import Place, Places
from app.shopper_words import FILLER_WORDS, ShopperWords, asks_about_a_product, question_words
from app.sites import DEFAULT_SITE_ID
from app.small_talk import is_small_talk
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
# Weighing the words the articles never use more (x1.5 to x3) lost more in-scope questions
# than it kept out-of-scope ones out: shoppers' slang is unknown to the articles too.
MIN_COVERAGE = 0.15
# A best chunk whose title and heading hold none of what is asked, matched only by a word or
# two of its body, must match this much more: "do you have an iphone app" shares "app" with a
# sentence on banking apps, "can you book me a flight" "book" with "book a pickup". A chunk
# whose heading names part of the question is on topic however few words it shares.
MIN_BODY_ONLY_COVERAGE = 0.45
# A curated answer is given word for word only when it matches the question this closely.
CURATED_COVERAGE = 0.6
# ... and leads the next result by this factor: "is shipping available in mumbai" is close to
# the shipping-cost entry's words, but no closer than to the article on where the store ships.
CURATED_LEAD = 1.3
# A misspelt word is replaced by an index word at least this similar (pg_trgm similarity).
TYPO_SIMILARITY = 0.4
# ... and of about its length: a slip adds or drops a letter or two, whereas a longer word that
# contains a shorter one is another word ("wholesale" is not "whole", "timeline" not "time").
TYPO_LENGTH_CHANGE = 2
# A term matching more chunks than this (a store of thousands of articles) makes a chunk a
# candidate only where it is in the title or heading; below it, every chunk it matches is ranked.
BROAD_TERM_CHUNKS = 200
VOCABULARY_CHECK_S = 5.0
DEFAULT_LIMIT = 3
# Shoppers ask the same few things ("where is my order?"): the retrievals of the last this many
# questions are kept, for the knowledge as it is, so a repeated one costs a revision read only.
RECENT_QUESTIONS = 512
# What a search learns of words the index does not hold (their stems, typo fixes, chunk counts)
# is kept up to this many words each, then forgotten: what shoppers type cannot grow memory.
LEARNED_WORDS = 10_000


# A question that finds nothing alone is read together with the one before only when it reads
# as a follow-up: very short ("how much?"), opening with a connective ("and to Europe?"), or
# pointing back with a pronoun ("how long does it take?"). A whole new question ("Do you have a
# loyalty programme?") is not one: searched with the question before, it would get that
# question's article, and never be seen as a gap.
FOLLOW_UP_MAX_WORDS = 3
_FOLLOW_UP_OPENINGS = re.compile(
    r"^\W*(and|also|what about|how about|what if|or|und|auch|et|aussi|y|también|o|और)\b",
    re.IGNORECASE)
_POINTING_BACK = frozenset("""
it its that this those these they them there one
das dies diese dafür dort ihn
ça cela celui celle y
eso esto ese esa lo allí ahí
यह वह इसका उसका इसे उसे
""".split())  # noqa: SIM905


def reads_as_follow_up(question: str) -> bool:
    words = re.findall(r"[^\W\d_]+", question.lower())
    return (len(words) <= FOLLOW_UP_MAX_WORDS
            or _FOLLOW_UP_OPENINGS.match(question) is not None
            or not _POINTING_BACK.isdisjoint(words))


@dataclass(frozen=True)
class Retrieval:
    """What the knowledge base holds for one question."""

    question: str
    chunks: tuple[KnowledgeChunk, ...]  # best first; empty when nothing is relevant
    places: tuple[Place, ...] = ()  # place names in the question, with their shipping region
    curated: KnowledgeChunk | None = None  # a curated answer that matches closely
    terms: tuple[tuple[str, ...], ...] = ()  # the widened question: one group per thing asked
    language: str = ENGLISH  # the language of the knowledge searched (and of its chunks)
    weights: tuple[float, ...] = ()  # what each group of `terms` weighs (its rarity)
    place_groups: frozenset[int] = frozenset()  # the groups of `terms` that name a place
    # Word -> its stem as the full-text index has it ("deliveries" -> "deliveri"), for the
    # words of the chunks and of the question, so that an answer's sentences are picked by
    # the same stems the search matched; a word missing here is stemmed roughly.
    stems: Mapping[str, str] = field(default_factory=dict)
    # A question of several parts: what each part found alone, in the shopper's order.
    parts: tuple[Retrieval, ...] = ()

    @property
    def found(self) -> bool:
        return bool(self.chunks)


def _close_curated(chunks: tuple[KnowledgeChunk, ...]) -> KnowledgeChunk | None:
    """The best chunk, when it is a curated answer that matches the question closely."""
    best, rest = chunks[0], chunks[1:]
    if rest and _collide(best, rest[0]):
        # A back-office answer and a file answer both close: the back office's wins (README,
        # "Curated answers from the back office"), and must lead only what comes after them.
        best = best if best.path.startswith(BACK_OFFICE_PREFIX) else rest[0]
        rest = rest[1:]
    if best.kind != "answer" or best.coverage < CURATED_COVERAGE:
        return None
    if rest and _strength(best) < CURATED_LEAD * _strength(rest[0]):
        return None
    return best


def _word_pairs(question: str, meaning: Callable[[str], str | None]
                ) -> list[tuple[str, str]]:
    """The stems of each two neighbouring words of the question that both mean something
    ("gift wrapping" -> ("gift", "wrap")): in English the second names the thing, the first
    what kind of thing it is."""
    words = [meaning(word) for word in question_words(question)]
    return [(first, second) for first, second in zip(words, words[1:], strict=False)
            if first and second and first != second]


def _names_another_thing(chunk: KnowledgeChunk, pairs: list[tuple[str, str]],
                         meaning: Callable[[str], str | None]) -> bool:
    """Whether the chunk's title names another thing of the same kind as the question's:
    "do you sell gift wrapping" and the article "Gift cards", which never says "wrapping",
    ask and answer about two different things."""
    if not pairs:
        return False
    # Words side by side in the title, not across a comma: "Customs, duties and taxes".
    title_pairs = set()
    for phrase in _TITLE_PHRASE_BREAK.split(chunk.title):
        title = [meaning(word.lower()) for word in _EXAMPLE_WORD.findall(phrase)]
        title_pairs |= set(zip(title, title[1:], strict=False))
    text = {meaning(word.lower()) for word in _EXAMPLE_WORD.findall(
        f"{chunk.title}\n{chunk.heading}\n{chunk.examples}\n{chunk.text}")}
    return any(second not in text and any(
        first == mine and other is not None and other != second for mine, other in title_pairs)
        for first, second in pairs)


_EXAMPLE_WORD = re.compile(r"[^\W\d_]+")
_TITLE_PHRASE_BREAK = re.compile(r"[,;:()&/]")


def _collide(first: KnowledgeChunk, second: KnowledgeChunk) -> bool:
    """Two curated answers, one from the back office and one from answers.toml, both close."""
    return (first.kind == second.kind == "answer"
            and min(first.coverage, second.coverage) >= CURATED_COVERAGE
            and first.path.startswith(BACK_OFFICE_PREFIX)
            != second.path.startswith(BACK_OFFICE_PREFIX))


def _strength(chunk: KnowledgeChunk) -> float:
    """What the results are ordered by (the score as far as the coverage allows)."""
    return chunk.score * chunk.coverage


# Where one question asks a second thing: "..., and how long", "... also do you ...", "...? how".
_SECOND_QUESTION = re.compile(
    r"(?:[?,;]\s*|\s+)(?:and|also|plus|&)\s+(?=(?:also\s+)?(?:how|what|whats|when|where|which|who"
    r"|can|could|do|does|is|are|will|would|should|did|i|my)\b)|\?\s+(?=\w)", re.IGNORECASE)
MIN_PART_WORDS = 3


def question_parts(question: str) -> list[str]:
    """The questions in one message, when it asks several (each of a few words at least)."""
    parts = [part.strip() for part in _SECOND_QUESTION.split(question)]
    return [part for part in parts if len(part.split()) >= MIN_PART_WORDS]


class _RecentRetrievals:
    """The retrievals of the last RECENT_QUESTIONS questions, least recently asked dropped
    first, for one version of the knowledge.

    `clear` starts a new version. A search begun before it passes the version it began under to
    `put`, and stores nothing: a result of the old knowledge never outlives the change.
    Retrievals are frozen and nobody changes them, so one can be handed to every asker."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._entries: OrderedDict[tuple[str, str], Retrieval] = OrderedDict()
        self.version = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: tuple[str, str]) -> Retrieval | None:
        found = self._entries.get(key)
        if found is not None:
            self._entries.move_to_end(key)
        return found

    def put(self, key: tuple[str, str], retrieval: Retrieval, version: int) -> None:
        if version != self.version or self._size <= 0:
            return
        self._entries[key] = retrieval
        self._entries.move_to_end(key)
        if len(self._entries) > self._size:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()
        self.version += 1


class KnowledgeSearch:
    """Search one site's indexed knowledge; `await search(question)` -> Retrieval."""

    def __init__(self, pool: AsyncConnectionPool, profile: StoreProfile, *,
                 site_id: int = DEFAULT_SITE_ID, limit: int = DEFAULT_LIMIT,
                 vocabulary_check_s: float = VOCABULARY_CHECK_S,
                 language: str = ENGLISH, recent_questions: int = RECENT_QUESTIONS) -> None:
        """`recent_questions` 0: every question searched afresh (what a search costs)."""
        self._pool = pool
        self._language = language
        self._profile = profile
        self._site_id = site_id
        self._limit = limit
        self._check_s = vocabulary_check_s
        self._checked_at = -float("inf")
        self._fingerprint: str | None = None
        self._revision: int | None = None  # the site's knowledge_revisions row, last read
        self._words: ShopperWords | None = None
        self._typo_fixes: dict[str, str] = {}
        # Per vocabulary: how many chunks match each term (None: a stop word, not searchable).
        self._term_chunks: dict[str, int | None] = {}
        self._stems: dict[str, str] = {}
        self._stop_words: set[str] = set()  # words the text search configuration drops
        self._index_stems: dict[str, str] = {}  # ... of the index's own words, kept
        self._index_stop_words: frozenset[str] = frozenset()
        self._total_chunks = 0
        self._recent = _RecentRetrievals(recent_questions)

    @property
    def profile(self) -> StoreProfile:
        return self._profile

    async def search(self, question: str, previous_question: str | None = None) -> Retrieval:
        """The chunks that best answer `question`; a follow-up that finds nothing alone ("and to
        Europe?", read so by `reads_as_follow_up`) is searched again together with
        `previous_question`; small talk ("thanks!")
        asks for no article, alone or with the question before it."""
        if is_small_talk(question):
            return Retrieval(question, (), language=self._language)
        # The question as searched and remembered: spacing never changes what it asks. Its case
        # does ("US" is the country, a capitalised word may be a town), so that stays.
        question = " ".join(question.split())
        follow_up = bool(previous_question) and reads_as_follow_up(question)
        previous = " ".join((previous_question or "").split()) if follow_up else ""
        key = (question, previous)  # the question before counts only where it may be read
        # Reads only, each complete alone: no transaction before the answer's first token.
        async with self._pool.connection() as conn, db.autocommit(conn):
            words = await self._current_words(conn)  # once per question, not per part
            version = self._recent.version
            remembered = self._recent.get(key)
            if remembered is not None:
                return remembered
            self._forget_learned_words()
            retrieval = await self._search(conn, words, question)
            parts = question_parts(question)
            if len(parts) > 1:
                retrieval = await self._search_parts(conn, words, retrieval, parts)
            if not retrieval.found and follow_up:
                retrieval = await self._search(conn, words, f"{previous} {question}")
        self._recent.put(key, retrieval, version)
        return retrieval

    async def _search(self, conn: AsyncConnection, words: ShopperWords,
                      question: str) -> Retrieval:
        fixes = await self._fix_typos(conn, words, words.typo_candidates(question))
        widened = words.widen(question, fixes)
        nothing = Retrieval(question, (), widened.places, None, widened.groups, self._language)
        if not widened.groups or asks_about_a_product(question):
            return nothing
        weighted = await self._weigh(conn, widened.groups, widened.place_groups)
        if weighted is None:
            return nothing
        terms, group_ids, idfs, group_weights, broad = weighted
        # A place says where, not what: the coverage counts the rest of the question, so "the
        # capital of peru" is not a shipping question; the ranking counts the place too.
        topic_weights = [0.0 if number in widened.place_groups else weight
                         for number, weight in enumerate(group_weights)]
        async with conn.cursor(row_factory=class_row(KnowledgeChunk)) as cursor:
            await cursor.execute(_SEARCH_SQL, {
                "terms": terms, "group_ids": group_ids, "idfs": idfs, "broad": broad,
                "group_weights": group_weights, "topic_weights": topic_weights,
                "question_idf": sum(topic_weights),
                "weights": RANK_WEIGHTS, "normalization": RANK_NORMALIZATION,
                "threshold": RELEVANCE_THRESHOLD, "limit": self._limit,
                "site_id": self._site_id, "language": self._language,
            })
            rows = await cursor.fetchall()
        await self._stem_words(conn, [w for g in widened.groups for t in g for w in t.split()])
        pairs = _word_pairs(question, self._meaning)
        rows = [row for row in rows if not _names_another_thing(row, pairs, self._meaning)]
        if not rows or rows[0].coverage < MIN_COVERAGE or not any(
                row.heading_coverage > 0 or row.coverage >= MIN_BODY_ONLY_COVERAGE
                for row in rows):
            return nothing
        # Once the best chunk is on topic, the others only need to be relevant.
        chunks = tuple(rows)
        return Retrieval(question, chunks, widened.places, _close_curated(chunks), widened.groups,
                         self._language, tuple(group_weights), widened.place_groups, self._stems)

    async def _search_parts(self, conn: AsyncConnection, words: ShopperWords,
                            whole: Retrieval, parts: list[str]) -> Retrieval:
        """A question of several parts ("can I return it and how long does the refund take"):
        the best chunk of each part first, in the shopper's order, then the whole question's
        others; no curated answer, since one entry answers one part."""
        chunks: list[KnowledgeChunk] = []
        found_parts: list[Retrieval] = []
        for part in parts:
            found = await self._search(conn, words, part)
            if found.found and found.chunks[0] not in chunks:
                chunks.append(found.chunks[0])
                found_parts.append(found)
        if len(chunks) < 2:
            return whole
        chunks += [chunk for chunk in whole.chunks if chunk not in chunks]
        return Retrieval(whole.question, tuple(chunks[: max(self._limit, len(parts))]),
                         whole.places, None, whole.terms, whole.language, whole.weights,
                         whole.place_groups, self._stems, tuple(found_parts))

    def _forget_learned_words(self) -> None:
        """Past LEARNED_WORDS, back to what the index holds. New objects, never cleared ones: a
        search under way keeps the ones it took (_weigh, _fix_typos)."""
        if len(self._stems) > len(self._index_stems) + LEARNED_WORDS:
            # New objects, not cleared ones: a Retrieval keeps the stems it was given.
            self._stems = dict(self._index_stems)
            self._stop_words = set(self._index_stop_words)
        if len(self._typo_fixes) > LEARNED_WORDS:
            self._typo_fixes = {}
        if len(self._term_chunks) > LEARNED_WORDS:
            self._term_chunks = {}

    def _meaning(self, word: str) -> str | None:
        """The stem of a word that means something: not a stop word or a filler."""
        if word in self._stop_words or word in FILLER_WORDS:
            return None
        return self._stems.get(word)

    async def _weigh(self, conn: AsyncConnection, groups: tuple[tuple[str, ...], ...],
                     place_groups: frozenset[int] = frozenset(),
                     ) -> tuple[list[str], list[int], list[float], list[float],
                                list[bool]] | None:
        """Each searchable term with its group and its rarity among the chunks (BM25's idf),
        and what each group weighs; None when the question is mostly words the articles never
        use. The counts are cached per vocabulary, so a search runs one query, not one a term.

        A group weighs as its rarest term the chunks use, or, for a word they never use, as the
        rarest possible word. Numbers and codes (a word with a digit) weigh nothing: every
        article has some numbers, so "what is 2+2" would look like a question the articles know
        all about, and an order number ("return order 0f5019") is not what a question is about.

        The counts and the total are taken before the query's await: a search that meanwhile
        loads a new vocabulary replaces them, and this search still has every count it asked
        for (a KeyError here once left a shopper's stream open with no answer)."""
        term_chunks, total = self._term_chunks, self._total_chunks
        unseen = list(dict.fromkeys(t for g in groups for t in g if t not in term_chunks))
        if unseen:
            cursor = await conn.execute(_TERM_COUNT_SQL, {"words": unseen,
                                                          "site_id": self._site_id,
                                                          "language": self._language})
            for word, searchable, chunks in await cursor.fetchall():
                term_chunks[word] = chunks if searchable else None

        def idf(chunks: int) -> float:
            return math.log(1 + (total - chunks + 0.5) / (chunks + 0.5))

        terms: list[str] = []
        group_ids: list[int] = []
        idfs: list[float] = []
        group_weights: list[float] = []
        known_groups = weighed_groups = 0
        for number, group in enumerate(groups):
            counts = {term: term_chunks[term] for term in group}
            searchable = {term: count for term, count in counts.items() if count is not None}
            for term, count in searchable.items():
                terms.append(term)
                group_ids.append(number)
                idfs.append(idf(count))
            weighed = [count for term, count in searchable.items()
                       if not any(char.isdigit() for char in term)]
            known = [count for count in weighed if count > 0]
            weight = idf(min(known or weighed)) if weighed else 0.0
            group_weights.append(weight)
            weighed_groups += bool(weighed)
            known_groups += bool(known)
        if not terms or not weighed_groups or known_groups / weighed_groups < MIN_KNOWN_SHARE:
            return None
        broad = [(term_chunks[term] or 0) > BROAD_TERM_CHUNKS for term in terms]
        return terms, group_ids, idfs, group_weights, broad

    async def _current_words(self, conn: AsyncConnection) -> ShopperWords:
        # A change made in the back office (app/curated_answers.py) or by a sync (app/knowledge.py)
        # bumps the site's revision: one primary-key read per question, so every instance sees
        # it on its next question.
        cursor = await conn.execute(
            "SELECT revision FROM knowledge_revisions WHERE site_id = %s", [self._site_id])
        row = await cursor.fetchone()
        revision = row[0] if row else 0
        if revision != self._revision:
            self._recent.clear()  # now, before any await: no question after this one sees it
        if (self._words is not None and revision == self._revision
                and time.monotonic() - self._checked_at < self._check_s):
            return self._words
        self._revision = revision
        cursor = await conn.execute(_FINGERPRINT_SQL, {"site_id": self._site_id})
        row = await cursor.fetchone()
        fingerprint = row[0] if row else ""
        self._checked_at = time.monotonic()
        if self._words is None or fingerprint != self._fingerprint:
            self._words = await self._load_words(conn)
            cursor = await conn.execute("SELECT count(*) FROM knowledge_chunks WHERE site_id = %s"
                                        " AND language = %s", [self._site_id, self._language])
            row = await cursor.fetchone()
            self._total_chunks = row[0] if row else 0
            self._fingerprint = fingerprint
            self._typo_fixes = {}
            self._term_chunks = {}
            cursor = await conn.execute(_STEMS_SQL, {"site_id": self._site_id,
                                                     "language": self._language})
            rows = await cursor.fetchall()
            self._index_stems = {word: stem for word, stem in rows if stem}
            self._index_stop_words = frozenset(word for word, stem in rows if not stem)
            self._stems = dict(self._index_stems)
            self._stop_words = set(self._index_stop_words)
            # Again: a search begun while these loaded, with the words before, stores nothing.
            self._recent.clear()
        return self._words

    async def _load_words(self, conn: AsyncConnection) -> ShopperWords:
        site = [self._site_id]
        cursor = await conn.execute("SELECT word FROM knowledge_words WHERE site_id = %s"
                                    " AND language = %s", [self._site_id, self._language])
        vocabulary = frozenset(word for (word,) in await cursor.fetchall())
        cursor = await conn.execute(
            "SELECT phrase, terms FROM knowledge_synonyms WHERE site_id = %s", site)
        synonyms: dict[str, str] = dict(await cursor.fetchall())
        cursor = await conn.execute(
            "SELECT region, country_codes FROM knowledge_regions WHERE site_id = %s", site)
        regions: dict[str, Any] = dict(await cursor.fetchall())
        return ShopperWords(vocabulary, synonyms,
                            Places(self._profile.shipping_regions, regions, self._language))

    async def _stem_words(self, conn: AsyncConnection, words: list[str]) -> None:
        """Add the stems of the question's words the index does not hold ("arrives")."""
        unseen = list(dict.fromkeys(w.strip('"').lower() for w in words
                                    if w.strip('"').lower() not in self._stems
                                    and w.strip('"').lower() not in self._stop_words))
        if unseen:
            cursor = await conn.execute(_STEM_WORDS_SQL, {"words": unseen,
                                                          "language": self._language})
            for word, stem in await cursor.fetchall():
                # A stop word gets no stem, as in the index: the answer's sentence picking
                # tells "our" in a heading from a word that says something by its absence.
                if stem:
                    self._stems[word] = stem
                else:
                    self._stop_words.add(word)

    async def _fix_typos(self, conn: AsyncConnection, words: ShopperWords,
                         candidates: list[str]) -> Mapping[str, str]:
        typo_fixes = self._typo_fixes  # taken before the await, as in _weigh
        unseen = [word for word in candidates if word not in typo_fixes]
        if unseen:
            cursor = await conn.execute(_TYPO_SQL, {"words": unseen, "site_id": self._site_id,
                                                    "language": self._language,
                                                    "similarity": TYPO_SIMILARITY,
                                                    "length_change": TYPO_LENGTH_CHANGE})
            for word, fix in await cursor.fetchall():
                typo_fixes[word] = fix or words.one_slip_away(word) or word
        return {word: typo_fixes[word] for word in candidates}


_FINGERPRINT_SQL = """
SELECT md5(coalesce((SELECT string_agg(path || ':' || content_hash, ',' ORDER BY path)
                     FROM knowledge_articles WHERE site_id = %(site_id)s), '')
           || coalesce((SELECT string_agg(phrase || '=' || terms, ',' ORDER BY phrase)
                        FROM knowledge_synonyms WHERE site_id = %(site_id)s), '')
           || coalesce((SELECT string_agg(region || '=' || array_to_string(country_codes, ' '),
                                          ',' ORDER BY region)
                        FROM knowledge_regions WHERE site_id = %(site_id)s), ''))
"""

# The stems the index's configuration for the language gives each word (stop words have none).
_STEMS_SQL = """
SELECT word, (SELECT lexeme FROM unnest(to_tsvector(knowledge_search_config(%(language)s), word))
              LIMIT 1)
FROM knowledge_words WHERE site_id = %(site_id)s AND language = %(language)s
"""
_STEM_WORDS_SQL = """
SELECT word, (SELECT lexeme FROM unnest(to_tsvector(knowledge_search_config(%(language)s), word))
              LIMIT 1)
FROM unnest(%(words)s::text[]) AS word
"""

# `%%` is pg_trgm's similarity operator (its default threshold, 0.3, lets the index find the
# candidates); shoppers rarely get the first letter wrong, so a close word that starts
# differently is another word ("flight" is not "light").
_TYPO_SQL = """
SELECT input.word, best.word
FROM unnest(%(words)s::text[]) AS input(word)
LEFT JOIN LATERAL (
    SELECT known.word FROM knowledge_words AS known
    WHERE known.site_id = %(site_id)s AND known.language = %(language)s
      AND known.word %% input.word AND left(known.word, 1) = left(input.word, 1)
      AND similarity(known.word, input.word) >= %(similarity)s
      AND abs(length(known.word) - length(input.word)) <= %(length_change)s
    ORDER BY similarity(known.word, input.word) DESC, known.word
    LIMIT 1
) AS best ON true
"""

# How many chunks each term matches (its idf follows); websearch_to_tsquery stems each word and
# drops stop words (numnode 0: not searchable), and never fails on odd input.
_TERM_COUNT_SQL = """
SELECT term.word, numnode(query) > 0,
       (SELECT count(*) FROM knowledge_chunks
        WHERE site_id = %(site_id)s AND language = %(language)s AND search_vector @@ query)::int
FROM unnest(%(words)s::text[]) AS term(word),
     websearch_to_tsquery(knowledge_search_config(%(language)s), term.word) AS query
"""

# Each term of the widened question is its own query, ranked with ts_rank_cd and weighted by
# how rare it is (idf, passed in): one OR-query ranked as a whole would let a common word
# ("order") in a title outweigh the one rare word ("paypal") that matters. A group (a word with
# its fixes and synonyms) counts once per chunk, by its best term. The chunks matching any term
# are read once (one index scan, not one a term), and only the best few are joined to their
# article, so a store of thousands of articles costs little more than one of fifteen.
_SEARCH_SQL = """
WITH term AS MATERIALIZED (
    SELECT group_id, idf, broad,
           websearch_to_tsquery(knowledge_search_config(%(language)s), word) AS query
    FROM unnest(%(terms)s::text[], %(group_ids)s::int[], %(idfs)s::float8[],
                %(broad)s::bool[]) AS term(word, group_id, idf, broad)
),
-- Without a term of one kind its query is NULL, matching nothing ('' would, with a NOTICE).
any_term AS MATERIALIZED (
    SELECT (string_agg('(' || query::text || ')', ' | ') FILTER (WHERE NOT broad))::tsquery
               AS narrow,
           (string_agg('(' || query::text || ')', ' | ') FILTER (WHERE broad))::tsquery AS broad
    FROM term
),
candidate AS MATERIALIZED (
    SELECT id, article_path, position, search_vector FROM knowledge_chunks
    WHERE site_id = %(site_id)s AND language = %(language)s
      AND search_vector @@ (SELECT narrow FROM any_term)
    UNION
    SELECT id, article_path, position, search_vector FROM knowledge_chunks
    WHERE site_id = %(site_id)s AND language = %(language)s
      AND heading_vector @@ (SELECT broad FROM any_term)
),
chunk_group AS (
    SELECT candidate.id, candidate.article_path, candidate.position, term.group_id,
           max(term.idf * ts_rank_cd(%(weights)s::real[], candidate.search_vector, term.query,
                                     %(normalization)s)) AS rank
    FROM candidate JOIN term ON candidate.search_vector @@ term.query
    GROUP BY candidate.id, candidate.article_path, candidate.position, term.group_id
),
scored_chunk AS (
    SELECT chunk_group.id, chunk_group.article_path, chunk_group.position,
           sum(chunk_group.rank) AS score, sum(group_weight.idf) AS matched_idf,
           sum(group_weight.topic_idf) AS matched_topic_idf
    FROM chunk_group
    JOIN unnest(%(group_weights)s::float8[], %(topic_weights)s::float8[])
         WITH ORDINALITY AS group_weight(idf, topic_idf, number)
      ON group_weight.number = chunk_group.group_id + 1
    GROUP BY chunk_group.id, chunk_group.article_path, chunk_group.position
    HAVING sum(chunk_group.rank) >= %(threshold)s AND sum(group_weight.topic_idf) > 0
    -- A chunk that matches one common word very well ("card" in "Gift cards") must not beat
    -- one that matches most of what is asked: the score counts as much as the coverage allows.
    ORDER BY sum(chunk_group.rank) * sum(group_weight.idf) DESC, chunk_group.article_path,
             chunk_group.position
    LIMIT %(limit)s
)
SELECT chunk.article_title AS title, chunk.heading, chunk.body AS text,
       chunk.article_path AS path, scored_chunk.score::float8 AS score, chunk.kind, chunk.link,
       linked.title AS link_title, chunk.examples,
       coalesce(scored_chunk.matched_topic_idf / nullif(%(question_idf)s::float8, 0), 0)::float8
           AS coverage,
       -- Read for the best few chunks only: what of the question their title, heading or
       -- example questions hold.
       coalesce((SELECT sum(group_weight.topic_idf)
                 FROM unnest(%(topic_weights)s::float8[])
                      WITH ORDINALITY AS group_weight(topic_idf, number)
                 WHERE EXISTS (SELECT FROM term WHERE term.group_id + 1 = group_weight.number
                                                AND chunk.heading_vector @@ term.query))
                / nullif(%(question_idf)s::float8, 0), 0)::float8 AS heading_coverage
FROM scored_chunk
JOIN knowledge_chunks AS chunk USING (id)
LEFT JOIN knowledge_articles AS linked
       ON linked.site_id = chunk.site_id AND linked.path = chunk.link
ORDER BY scored_chunk.score * scored_chunk.matched_idf DESC, scored_chunk.article_path,
         scored_chunk.position
"""


class SiteSearches:
    """Every site's KnowledgeSearch, one per site id, created on the site's first question.

    One per app, built in the lifespan. A site whose profile changed (`sites update --profile`)
    gets a new search, since place names map to the profile's shipping regions; a search costs
    nothing until its first question, so keeping one per site in use is cheap.
    """

    def __init__(self, pool: AsyncConnectionPool, default_profile: StoreProfile, *,
                 limit: int = DEFAULT_LIMIT,
                 vocabulary_check_s: float = VOCABULARY_CHECK_S) -> None:
        self._pool = pool
        self._default_profile = default_profile
        self._limit = limit
        self._check_s = vocabulary_check_s
        self._searches: dict[tuple[int, str], KnowledgeSearch] = {}

    @property
    def pool(self) -> AsyncConnectionPool:
        return self._pool

    def for_site(self, site_id: int = DEFAULT_SITE_ID, profile: StoreProfile | None = None,
                 language: str = ENGLISH) -> KnowledgeSearch:
        """The site's search of its knowledge in `language` (None profile: the default
        site's profile)."""
        profile = profile or self._default_profile
        search = self._searches.get((site_id, language))
        if search is None or (search.profile is not profile and search.profile != profile):
            search = KnowledgeSearch(self._pool, profile, site_id=site_id, limit=self._limit,
                                     vocabulary_check_s=self._check_s, language=language)
            self._searches[(site_id, language)] = search
        return search
