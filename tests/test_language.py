"""The shopper's language: detected per question, recorded on the conversation and the message,
named in the system prompt, and noted when the answer comes from the English help centre (the
articles in the shopper's language: tests/test_knowledge_languages.py)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from app.language import HELP_CENTRE_IN_ENGLISH, LANGUAGES, answer_in, detect_language
from tests.conftest import FakeUpstream, Reply, stream_chat


@pytest.mark.parametrize(("question", "language"), [
    ("Wie lange dauert der Versand nach Deutschland?", "de"),
    ("Kann ich meine Bestellung zurückschicken?", "de"),
    ("Combien de temps prend la livraison ?", "fr"),
    ("¿Cuánto tarda el envío a España?", "es"),
    ("शिपिंग में कितना समय लगता है?", "hi"),
    ("How long does shipping take?", "en"),
    ("ok", "en"),  # too short to tell: the help centre's language
    ("#4711", "en"),
    # Short English questions the letter models alone read as German or Spanish: the model
    # would have been told to answer them in German.
    ("Where is my order?", "en"),
    ("Can I cancel my order?", "en"),
    ("I forgot my password", "en"),
    ("Do you ship to Canada?", "en"),
    # ... while short German, Spanish and French ones stay theirs.
    ("Wo ist meine Bestellung?", "de"),
    ("Kann ich stornieren?", "de"),
    ("¿Dónde está mi pedido?", "es"),
    ("Où est ma commande ?", "fr"),
])
def test_the_question_language_is_detected(question: str, language: str) -> None:
    assert detect_language(question) == language


def test_every_detected_language_but_english_has_a_help_centre_note() -> None:
    assert set(HELP_CENTRE_IN_ENGLISH) == set(LANGUAGES) - {"en"}


def test_the_instruction_names_the_language() -> None:
    assert answer_in("PROMPT", "de").startswith("PROMPT\n\nThe shopper wrote in German. "
                                                "Answer in German,")
    assert "Answer in English" in answer_in("PROMPT", "xx")


def languages(query: Any, session_id: str) -> tuple[Any, list[Any]]:
    conversation = query("SELECT language FROM conversations WHERE id = %s", session_id)[0][0]
    messages = [row[0] for row in query(
        "SELECT language FROM messages WHERE conversation_id = %s AND sender = 'user'"
        " ORDER BY seq", session_id)]
    return conversation, messages


async def test_with_a_model_the_prompt_says_to_answer_in_the_shoppers_language(
        client: httpx.AsyncClient, upstream: FakeUpstream, query: Any) -> None:
    events = await stream_chat(client, {"message": "Wie lange habe ich Zeit für eine Rücksendung?"})
    system = upstream.requests[-1]["messages"][0]["content"]
    assert "The shopper wrote in German. Answer in German" in system
    assert "Saffron Loom" in system  # the store's facts are still there
    session_id = events[0].data["sessionId"]
    assert languages(query, session_id) == ("de", ["de"])

    # The next question is in Spanish: that message says so, and so does the conversation.
    await stream_chat(client, {"message": "¿Y cuánto tarda el envío a España?",
                               "sessionId": session_id})
    assert "Answer in Spanish" in upstream.requests[-1]["messages"][0]["content"]
    assert languages(query, session_id) == ("es", ["de", "es"])


async def test_an_english_question_is_answered_in_english(
        client: httpx.AsyncClient, upstream: FakeUpstream, query: Any) -> None:
    events = await stream_chat(client, {"message": "how long does delivery take?"})
    assert "Answer in English" in upstream.requests[-1]["messages"][0]["content"]
    assert not events[-1].data["text"].startswith(tuple(HELP_CENTRE_IN_ENGLISH.values()))
    assert languages(query, events[0].data["sessionId"]) == ("en", ["en"])


async def test_without_a_model_a_french_question_gets_the_english_answer_with_a_note(
        start_app: Any, upstream: FakeUpstream, query: Any) -> None:
    # The example store has no French articles (German and Spanish ones it has,
    # tests/test_knowledge_languages.py): the answer comes from the English ones, and says so
    # first, in French. (PayPal is a word the English article has too.)
    app = await start_app(openai_api_key="", openai_base_url="")
    async with app.client() as http:
        events = await stream_chat(http, {"message": "Acceptez-vous PayPal ?"})
    done = events[-1].data
    note, _, answer = done["text"].partition("\n\n")
    assert note == HELP_CENTRE_IN_ENGLISH["fr"]
    assert "PayPal" in answer  # the English article's own sentence
    # The store's curated answer on payments, or the article itself.
    assert "payment-methods" in done["sources"][0]["path"]
    assert upstream.requests == []
    assert languages(query, events[0].data["sessionId"]) == ("fr", ["fr"])


async def test_a_model_failing_before_its_first_token_falls_back_in_the_shoppers_language(
        client: httpx.AsyncClient, upstream: FakeUpstream) -> None:
    upstream.default = Reply(status=503)
    # German: the store's German curated answer, with no note.
    events = await stream_chat(client, {"message": "Wann bekomme ich mein Geld zurück?"})
    done = events[-1].data
    assert done["fallback"] is True
    assert done["text"].startswith("Wir erstatten innerhalb von 3 Werktagen")
    # French: no French articles, so the English answer with the note.
    events = await stream_chat(client, {"message": "Acceptez-vous PayPal ?"})
    done = events[-1].data
    assert done["fallback"] is True
    assert done["text"].startswith(HELP_CENTRE_IN_ENGLISH["fr"] + "\n\n")
