"""Per-language knowledge: a folder and a curated-answers file per language, each language
stemmed with its own text search configuration, and a question answered from the articles in
its language, else from the English ones with a note, in knowledge-only mode (no model)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from psycopg_pool import AsyncConnectionPool

from app import db
from app.knowledge import read_articles, sync_knowledge
from app.knowledge_languages import search_in_language
from app.knowledge_search import SiteSearches
from app.language import HELP_CENTRE_IN_ENGLISH
from app.sites import DEFAULT_SITE_ID
from app.store_profile import DEFAULT_PROFILE_PATH, load_profile
from tests.conftest import FakeUpstream, stream_chat

PROFILE = load_profile(DEFAULT_PROFILE_PATH)


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[AsyncConnectionPool]:
    pool = db.create_pool(database_url, 2)
    await pool.open(wait=True)
    async with pool.connection() as conn:
        await conn.execute("TRUNCATE knowledge_articles CASCADE")
    yield pool
    await pool.close()


def small_store(root: Path) -> Path:
    """An English, a German and a Hindi article, German curated answers, and a folder that is
    not a language (its article is English)."""
    folder = root / "knowledge"
    for path, text in {
        "returns.md": "# Returns\n\nYou can return items within 30 days.",
        "faq/wrapping.md": "# Gift wrapping\n\nWe wrap gifts for free.",
        "de/ruecksendung.md": "# Rücksendung\n\nSie können Artikel 30 Tage lang zurückgeben.",
        "hi/refund.md": "# रिफंड\n\nरिफंड पांच दिनों में आपके खाते में आता है।",
    }.items():
        (folder / path).parent.mkdir(parents=True, exist_ok=True)
        (folder / path).write_text(text, encoding="utf-8")
    (root / "answers.de.toml").write_text(
        '[[answer]]\nid = "gutschein"\ntitle = "Verfallen Gutscheine?"\n'
        'questions = ["verfallen Gutscheine"]\nanswer = "Gutscheine gelten 12 Monate."\n',
        encoding="utf-8")
    return folder


def test_a_folder_or_answers_file_per_language_gives_its_articles_that_language(
        tmp_path: Path) -> None:
    articles = read_articles(small_store(tmp_path))
    languages = {article.path: article.language for article in articles}
    assert languages == {"returns.md": "en", "faq/wrapping.md": "en", "de/ruecksendung.md": "de",
                         "hi/refund.md": "hi", "answers.de.toml#gutschein": "de"}


async def test_each_language_is_stemmed_with_its_own_configuration(
        pool: AsyncConnectionPool, tmp_path: Path) -> None:
    await sync_knowledge(pool, small_store(tmp_path))
    async with pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT language, search_vector::text FROM knowledge_chunks WHERE kind = 'article'")
        vectors = dict(await cursor.fetchall())
    assert "'rucksend'" in vectors["de"]  # german: "Rücksendung" stemmed, umlaut folded
    assert "'return'" in vectors["en"]
    assert "'रिफंड'" in vectors["hi"]  # simple: PostgreSQL has no Hindi stemmer; words whole


async def test_a_question_finds_its_own_languages_articles_only(
        pool: AsyncConnectionPool, tmp_path: Path) -> None:
    await sync_knowledge(pool, small_store(tmp_path))
    searches = SiteSearches(pool, PROFILE)

    async def paths(question: str, language: str) -> tuple[str, list[str]]:
        found = await search_in_language(searches, DEFAULT_SITE_ID, PROFILE, question, None,
                                         language)
        return found.language, [chunk.path for chunk in found.chunks]

    # German plural, German article (German stemming: "Rücksendungen" is "Rücksendung").
    assert await paths("Wie funktionieren Rücksendungen?", "de") == ("de", ["de/ruecksendung.md"])
    assert await paths("how do returns work", "en") == ("en", ["returns.md"])
    # A Devanagari question, from the Hindi article: its words are whole words, not letters.
    assert await paths("रिफंड कब मिलेगा?", "hi") == ("hi", ["hi/refund.md"])
    # Nothing in German about wrapping: the English article answers.
    assert await paths("gift wrapping?", "de") == ("en", ["faq/wrapping.md"])


def languages(query: Any, session_id: str) -> Any:
    return query("SELECT language FROM conversations WHERE id = %s", session_id)[0][0]


async def knowledge_only_answer(start_app: Any, question: str) -> dict[str, Any]:
    app = await start_app(openai_api_key="", openai_base_url="")
    async with app.client() as http:
        events = await stream_chat(http, {"message": question})
    done: dict[str, Any] = events[-1].data
    done["sessionId"] = events[0].data["sessionId"]
    return done


async def test_a_german_question_is_answered_from_the_german_articles(
        start_app: Any, query: Any) -> None:
    done = await knowledge_only_answer(start_app, "Wie lange habe ich Zeit für eine Rücksendung?")
    assert "14 Tagen" in done["text"]
    assert not done["text"].startswith(HELP_CENTRE_IN_ENGLISH["de"])  # no "it is in English"
    assert done["sources"][0]["path"] in ("answers.de.toml#return-window", "de/returns.md")
    assert languages(query, done["sessionId"]) == "de"


async def test_a_spanish_question_is_answered_from_the_spanish_articles(
        start_app: Any) -> None:
    done = await knowledge_only_answer(start_app, "¿Aceptáis PayPal?")
    assert "PayPal" in done["text"] and "Aceptamos" in done["text"]
    assert not done["text"].startswith(HELP_CENTRE_IN_ENGLISH["es"])
    assert done["sources"][0]["path"] == "answers.es.toml#payment-methods"


async def test_a_hindi_question_is_answered_from_the_english_articles_with_the_note(
        start_app: Any, query: Any) -> None:
    # The example store has no Hindi articles.
    done = await knowledge_only_answer(start_app, "मेरा रिफंड कब आएगा?")
    note, _, answer = done["text"].partition("\n\n")
    assert note == HELP_CENTRE_IN_ENGLISH["hi"]
    assert "3 business days" in answer
    assert "refund" in done["sources"][0]["path"]
    assert languages(query, done["sessionId"]) == "hi"


async def test_a_question_nothing_answers_is_told_so_in_its_language(start_app: Any) -> None:
    done = await knowledge_only_answer(start_app, "Schreib mir bitte ein Gedicht über Katzen")
    assert done["text"].startswith("Dazu steht leider nichts in unserem Hilfe-Center.")
    # The contact line too, hours and all (the profile says "Monday-Friday 9am-6pm IST").
    assert done["text"].endswith("Unser Team hilft gern: help@saffronloom.example oder"
                                 " +91 141 555 0134, Montag bis Freitag 9:00–18:00 Uhr IST.")
    done = await knowledge_only_answer(start_app, "¿Quién ganó el mundial de fútbol?")
    assert done["text"] == (
        "Lo siento, nuestro centro de ayuda no trata ese tema. Nuestro equipo puede ayudarte:"
        " help@saffronloom.example o +91 141 555 0134, de lunes a viernes de 9:00 a 18:00 IST.")


async def test_with_a_model_a_german_question_gets_the_german_sources(
        client: httpx.AsyncClient, upstream: FakeUpstream) -> None:
    await stream_chat(client, {"message": "Wie lange habe ich Zeit für eine Rücksendung?"})
    system = upstream.requests[-1]["messages"][0]["content"]
    assert "Answer in German" in system
    assert "innerhalb von 14 Tagen" in system  # the German curated answer or article
    assert "You can return unworn items" not in system  # not the English curated answer


async def test_the_answers_own_words_are_in_the_articles_language(start_app: Any) -> None:
    done = await knowledge_only_answer(start_app, "¿Enviáis a Madrid?")
    assert done["text"].startswith("Sí, Madrid está en nuestra zona de entrega")  # not "Yes, …"
    assert "Más en nuestro centro de ayuda:" in done["text"]


async def test_questions_are_counted_by_language(client: httpx.AsyncClient) -> None:
    async def counted(language: str) -> float:
        response = await client.get("/metrics")
        assert response.status_code == 200
        return sum(sample.value for family in text_string_to_metric_families(response.text)
                   for sample in family.samples if sample.name == "chat_questions_total"
                   and sample.labels == {"language": language})

    german, spanish = await counted("de"), await counted("es")
    await stream_chat(client, {"message": "Wie lange dauert der Versand?"})
    await stream_chat(client, {"message": "Kann ich mit PayPal bezahlen?"})
    await stream_chat(client, {"message": "¿Cuánto tarda el envío?"})
    assert (await counted("de"), await counted("es")) == (german + 2, spanish + 1)


async def test_a_short_spanish_question_read_as_french_is_answered_from_the_spanish_articles(
        start_app: Any, query: Any) -> None:
    # lingua reads "el envio es gratis?" as French (0.89), Spanish only just possible; the
    # store has no French articles, so the Spanish ones are tried, and they answer it.
    done = await knowledge_only_answer(start_app, "el envio es gratis?")
    assert "gratis" in done["text"] and "70 €" in done["text"]
    assert not done["text"].startswith(HELP_CENTRE_IN_ENGLISH["fr"])
    assert done["sources"][0]["path"].startswith(("answers.es.toml", "es/"))


async def test_a_weak_match_in_the_shoppers_language_loses_to_a_strong_english_one(
        start_app: Any) -> None:
    # The Spanish articles hold no warranty: "garantía" half-matches the damaged-item answer,
    # while the English warranty article answers the question (with the note).
    done = await knowledge_only_answer(start_app, "¿Qué garantía tienen los productos?")
    note, _, answer = done["text"].partition("\n\n")
    assert note == HELP_CENTRE_IN_ENGLISH["es"]
    assert "Quality promise and warranty" in answer
    assert done["sources"][0]["path"] == "warranty.md"
    # The German size guide answers its question, before the German size-exchange answer.
    done = await knowledge_only_answer(start_app, "Welche Größe passt mir?")
    assert not done["text"].startswith(HELP_CENTRE_IN_ENGLISH["de"])
    assert done["sources"][0]["path"] == "de/sizing.md"


async def test_places_named_in_german_or_spanish_are_placed_in_that_language(
        start_app: Any) -> None:
    done = await knowledge_only_answer(start_app, "Liefert ihr nach München?")
    assert "München liegt in unserem Liefergebiet Europa" in done["text"]
    done = await knowledge_only_answer(start_app, "¿Hacéis envíos a Japón?")
    assert done["text"].startswith("Todavía no enviamos a Japón.")
    # An English article for a German shopper names the country in English.
    done = await knowledge_only_answer(start_app, "Muss ich in der Schweiz Zollgebühren zahlen?")
    assert "Schweiz" in done["text"] and done["sources"][0]["path"] == (
        "de/international-customs.md")


async def test_a_refund_not_received_in_german_or_spanish_gets_who_can_help(
        start_app: Any) -> None:
    # As "i have not received my refund" does: the answer, then the team's contact. The answer
    # is the section headed with the shopper's words (ask the bank), not when refunds are made.
    for question, bank, contact in (
            ("Ich habe meine Erstattung noch nicht erhalten", "Ihrer Bank", "Unser Team hilft"),
            ("No he recibido mi reembolso", "tu banco", "Nuestro equipo puede ayudarte")):
        done = await knowledge_only_answer(start_app, question)
        assert bank in done["text"] and contact in done["text"], question
        assert "help@saffronloom.example" in done["text"], question


async def test_a_section_headed_with_the_whole_question_gives_the_answer(start_app: Any) -> None:
    # "Ist das Bezahlen auf Ihrer Website sicher?" heads the section whose sentences answer it
    # without repeating its words; the article's opening sentence repeats them and says nothing.
    done = await knowledge_only_answer(start_app, "Ist das Bezahlen bei euch sicher?")
    assert "verschlüsselte Verbindung" in done["text"]
    assert done["sources"][0]["path"] == "de/payment-methods.md"
