"""Which language of a site's knowledge answers a question: the shopper's, else English.

A site's knowledge may hold articles and curated answers per language (app/knowledge.py). A
question is searched first in the language it is written in (app/language.py detects it); when
the site has nothing in that language that answers it, the English articles are searched, and
the answer says in one line, in the shopper's language, that the help centre is in English
(`needs_english_note`). When neither finds anything, the shopper's language's empty result
stands, so "not covered" is said in their language.
"""

from __future__ import annotations

from app.knowledge_search import Retrieval, SiteSearches
from app.language import ENGLISH
from app.store_profile import StoreProfile


async def search_in_language(searches: SiteSearches, site_id: int, profile: StoreProfile,
                             question: str, previous_question: str | None,
                             language: str) -> Retrieval:
    """The best retrieval for a question written in `language` (ISO 639-1)."""
    own = await searches.for_site(site_id, profile, language).search(question, previous_question)
    if own.found or language == ENGLISH:
        return own
    english = await searches.for_site(site_id, profile, ENGLISH).search(
        question, previous_question)
    return english if english.found else own


def needs_english_note(retrieval: Retrieval, language: str) -> bool:
    """True when the answer comes from articles in another language than the shopper's
    (English ones: the fall back), so the shopper is told the help centre is in English."""
    return retrieval.found and retrieval.language != language
