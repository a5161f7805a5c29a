"""Small talk: a shopper's message made only of greetings, thanks and goodbyes ("hello",
"Thanks a lot!", "¡Hola!", "danke schön", "नमस्ते"). It asks nothing, so with a model its answer
cites no article, which is not a gap in the knowledge base: app/knowledge_gaps.py leaves it out.

The words are the languages the widget ships (English, German, French, Spanish, Hindi, romanised
and in Devanagari). A message is small talk when every word of it is one of them (apart from the
punctuation and emoji around words) and it has at most MAX_WORDS words, so
"hi, where is my order?" is a question, not small talk. The check runs in PostgreSQL
(`SMALL_TALK_SQL`), beside the gaps query: one regular expression made from these words; the
knowledge search uses the same one (`is_small_talk`) to search nothing for it.
"""

from __future__ import annotations

import re

MAX_WORDS = 6
# Longer than this is never small talk, so most questions skip the word check.
MAX_CHARS = 80

SMALL_TALK_WORDS: frozenset[str] = frozenset("""
hi hii hiya hey heya hello helo hullo yo howdy greetings morning afternoon evening good day
there all everyone team guys folks thanks thank thankyou thanx thx ty tysm cheers you so much
very lot a great cool nice perfect awesome ok okay k kk alright fine bye goodbye see ya later
cya
hallo servus moin guten tag morgen abend danke schön schon sehr vielen dank tschüss tschüs
ciao
bonjour bonsoir salut coucou merci beaucoup bien au revoir
hola buenos buenas días dias tardes noches gracias muchas muchísimas adiós adios chao vale
namaste namaskar namaskaar dhanyavad dhanyavaad dhanyawad shukriya shukria ji bahut accha acha
theek hai नमस्ते नमस्कार धन्यवाद शुक्रिया जी बहुत
""".split())  # noqa: SIM905

# Between and around the words: spaces, punctuation in the shipped languages and common emoji.
# ("-" last, so the bracket expression reads it as itself.)
SEPARATORS = "!?.,;:¡¿…।'\"()~*🙏😊🙂👍❤️👋😀-"


def _pattern() -> str:
    """One PostgreSQL regular expression for the whole message (compiled once and cached by
    the server, so a row costs one match): words of the list, separated, at most MAX_WORDS."""
    separator = f"[\\s{SEPARATORS}]"
    word = "(?:" + "|".join(sorted(SMALL_TALK_WORDS, key=lambda w: (-len(w), w))) + ")"
    return f"^{separator}*{word}(?:{separator}+{word}){{0,{MAX_WORDS - 1}}}{separator}*$"


SMALL_TALK_PATTERN = _pattern()
_SMALL_TALK = re.compile(SMALL_TALK_PATTERN, re.IGNORECASE)


def is_small_talk(text: str) -> bool:
    """The same test in Python, for the knowledge search: "danke schön" asks for no article."""
    return len(text) <= MAX_CHARS and _SMALL_TALK.match(text) is not None

# True when the text column `text` is small talk (case-insensitive); its parameters are
# `sql_params()`.
SMALL_TALK_SQL = "(char_length(text) <= %(small_talk_chars)s AND text ~* %(small_talk_pattern)s)"


def sql_params() -> dict[str, object]:
    return {"small_talk_pattern": SMALL_TALK_PATTERN, "small_talk_chars": MAX_CHARS}
