"""When an answer offers the shopper a person ("Talk to a person" under the answer).

The assistant offers one when it could not help, which shows in its answer: the composed
answer of the knowledge base, when it has nothing for the question, and the model, told to do
the same (app/prompt.py), both give the store's contact address; when the model failed and the
knowledge base answered instead (a fallback); when the shopper seems stuck (they ask again what
they just asked); and when the shopper asks for a person in words, in any of the widget's
languages. The offer is kept with the answer
(messages.offer_person), so a reload or a resume shows it too; the widget shows it only while
the assistant has the conversation, and taking it is the widget's own POST .../handoff.
"""

from __future__ import annotations

import re

# "talk to a human", "real person", "an agent please", "Mitarbeiter", "conseiller", "persona
# real", "इंसान": short and generous; a false offer costs one button, a missed one a stuck shopper.
_ASKS_FOR_PERSON = re.compile(
    r"\b(human|real person|a person|someone|somebody|agent|representative|operator"
    r"|customer service|mensch|mitarbeiter(in)?|jemand(en)?|humain|conseill[eè]re?"
    r"|quelqu'un|une personne|persona|humano|alguien|agente|asesor)\b"
    r"|इंसान|व्यक्ति|एजेंट|किसी से बात", re.IGNORECASE)


def asks_for_person(question: str) -> bool:
    return _ASKS_FOR_PERSON.search(question) is not None


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def offers_person(question: str, answer: str, contact_email: str, *, fallback: bool = False,
                  previous_question: str | None = None) -> bool:
    """Whether a complete answer offers a person: the shopper asked for one, the answer sent
    them to the store's contact (it could not help), it is a fallback, or the shopper asked
    the same as in their previous message (the answer before did not help)."""
    repeated = previous_question is not None and bool(_words(question)) \
        and _words(question) == _words(previous_question)
    return asks_for_person(question) or fallback or repeated or (
        bool(contact_email) and contact_email.lower() in answer.lower())
