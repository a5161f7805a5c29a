"""Which language of a site's knowledge answers a question: the shopper's, else English.

A site's knowledge may hold articles and curated answers per language (app/knowledge.py). A
question is searched first in the language it is written in (app/language.py detects it); when
the site has nothing in that language that answers it, the English articles are searched, and
the answer says in one line, in the shopper's language, that the help centre is in English
(`needs_english_note`). When neither finds anything, the shopper's language's empty result
stands, so "not covered" is said in their language.

Two corrections on top of that:
- a weak match in the shopper's language (it covers less than half of the question) loses to
  a stronger English one: "Habt ihr einen Rabattcode?" half-matches the German support-hours
  answer ("Code"), while the English discount-codes article answers it;
- a short question lingua reads as a language the site has nothing in ("el envio es gratis?"
  reads as French) is searched in the site's other languages lingua thinks it could be, and
  the first that finds something answers it (a French shopper's question finds nothing in
  the Spanish articles, so it stays French).
"""

from __future__ import annotations

import re

from psycopg_pool import AsyncConnectionPool

from app.knowledge_search import Retrieval, SiteSearches
from app.language import ENGLISH, WORD_PATTERN, possible_languages
from app.store_profile import StoreProfile


async def search_in_language(searches: SiteSearches, site_id: int, profile: StoreProfile,
                             question: str, previous_question: str | None,
                             language: str) -> Retrieval:
    """The best retrieval for a question written in `language` (ISO 639-1)."""
    own = await searches.for_site(site_id, profile, language).search(question, previous_question)
    if language == ENGLISH or (own.found and _coverage(own) >= WEAK_COVERAGE):
        return own
    if not own.found:
        for other in possible_languages(question, language):
            if other != ENGLISH:
                found = await searches.for_site(site_id, profile, other).search(
                    question, previous_question)
                if found.found and _coverage(found) >= WEAK_COVERAGE:
                    return found
    english = await searches.for_site(site_id, profile, ENGLISH).search(
        await _content_words(searches.pool, question, language), previous_question)
    if not english.found:
        return own
    return english if not own.found or _strength(english) > _strength(own) else own


# Below this share of the question's weight, a match in the shopper's language is weak, and a
# stronger English match answers instead (measured on tests/retrieval_questions_languages.toml).
WEAK_COVERAGE = 0.5


def _coverage(retrieval: Retrieval) -> float:
    return 1.0 if retrieval.curated is not None else retrieval.chunks[0].coverage


def _strength(retrieval: Retrieval) -> float:
    """How well the best chunk answers: its score as far as its coverage allows (the order of
    the results, app/knowledge_search.py), comparable across languages since both weigh each
    word by its rarity in its own articles."""
    best = retrieval.chunks[0]
    return best.score * best.coverage


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
    """True when the answer comes from the English articles (the fall back) for a shopper who
    wrote in another language, so they are told the help centre is in English."""
    return retrieval.found and retrieval.language == ENGLISH != language
