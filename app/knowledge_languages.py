"""Which language of a site's knowledge answers a question: the shopper's, else English.

A site's knowledge may hold articles and curated answers per language (app/knowledge.py). A
question is searched first in the language it is written in (app/language.py detects it); when
the site has nothing in that language that answers it, the English articles are searched, and
the answer says in one line, in the shopper's language, that the help centre is in English
(`needs_english_note`). When neither finds anything, the shopper's language's empty result
stands, so "not covered" is said in their language.
"""

from __future__ import annotations

import re

from psycopg_pool import AsyncConnectionPool

from app.knowledge_search import Retrieval, SiteSearches
from app.language import ENGLISH, WORD_PATTERN
from app.store_profile import StoreProfile


async def search_in_language(searches: SiteSearches, site_id: int, profile: StoreProfile,
                             question: str, previous_question: str | None,
                             language: str) -> Retrieval:
    """The best retrieval for a question written in `language` (ISO 639-1)."""
    own = await searches.for_site(site_id, profile, language).search(question, previous_question)
    if own.found or language == ENGLISH:
        return own
    english = await searches.for_site(site_id, profile, ENGLISH).search(
        await _content_words(searches.pool, question, language), previous_question)
    return english if english.found else own


async def _content_words(pool: AsyncConnectionPool, question: str, language: str) -> str:
    """The question without its language's stop words, as PostgreSQL's configuration for the
    language lists them: searched in English, "Gibt es eine Garantie?" is "Gibt Garantie",
    whose "Garantie" the store's synonyms can map to its English article."""
    words = re.findall(WORD_PATTERN, question)
    if not words:
        return question
    async with pool.connection() as conn:
        cursor = await conn.execute(_CONTENT_WORDS_SQL, [words, language])
        kept = [word for (word,) in await cursor.fetchall()]
    return " ".join(kept)


_CONTENT_WORDS_SQL = """
SELECT word FROM unnest(%s::text[]) WITH ORDINALITY AS question(word, position)
WHERE numnode(websearch_to_tsquery(knowledge_search_config(%s), word)) > 0
ORDER BY position
"""


def needs_english_note(retrieval: Retrieval, language: str) -> bool:
    """True when the answer comes from articles in another language than the shopper's
    (English ones: the fall back), so the shopper is told the help centre is in English."""
    return retrieval.found and retrieval.language != language
