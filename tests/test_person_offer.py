"""The assistant offers a person: an answer that could not help (it gives the store's contact),
or a question asking for a person in words, ends with `offerPerson`, kept for the history."""

from __future__ import annotations

import httpx

from app.person_offer import asks_for_person
from tests.conftest import FakeUpstream, Reply, stream_chat


async def test_an_answer_that_could_not_help_offers_a_person_and_the_history_keeps_it(
        client: httpx.AsyncClient, upstream: FakeUpstream) -> None:
    upstream.queue(Reply(tokens=["I'm not sure. ", "Please write to help@saffronloom.example."]))
    events = await stream_chat(client, {"message": "Can I pay with seashells?"})
    done = events[-1].data
    assert events[-1].event == "done" and done["offerPerson"] is True
    session_id = events[0].data["sessionId"]
    history = (await client.get(f"/chat/history/{session_id}")).json()
    assert [m["offerPerson"] for m in history["messages"]] == [False, True]


async def test_asking_for_a_person_in_words_offers_one_and_a_plain_answer_does_not(
        client: httpx.AsyncClient, upstream: FakeUpstream) -> None:
    plain = await stream_chat(client, {"message": "Hi there"})
    assert plain[-1].data["offerPerson"] is False
    asked = await stream_chat(client, {"message": "Can I talk to a real person please?"})
    assert asked[-1].data["offerPerson"] is True


async def test_a_shopper_asking_the_same_again_is_offered_a_person(
        client: httpx.AsyncClient, upstream: FakeUpstream) -> None:
    first = await stream_chat(client, {"message": "How do I change my address?"})
    assert first[-1].data["offerPerson"] is False
    session_id = first[0].data["sessionId"]
    again = await stream_chat(client, {"message": "how do I change my address",
                                       "sessionId": session_id})
    assert again[-1].data["offerPerson"] is True


async def test_a_fallback_answer_offers_a_person(
        client: httpx.AsyncClient, upstream: FakeUpstream) -> None:
    upstream.default = Reply(status=503)  # every retry too: the knowledge base answers
    events = await stream_chat(client, {"message": "How long does delivery take?"})
    assert events[-1].data["fallback"] is True and events[-1].data["offerPerson"] is True


def test_a_person_is_recognised_in_the_widgets_languages() -> None:
    for words in ("I want a human", "Kann ich mit einem Mitarbeiter sprechen?",
                  "Je veux parler à quelqu'un", "Quiero hablar con una persona",
                  "मुझे किसी इंसान से बात करनी है"):
        assert asks_for_person(words), words
    for words in ("Where is my parcel?", "Do you ship to Germany?", "Personalised gift wrap?"):
        assert not asks_for_person(words), words
