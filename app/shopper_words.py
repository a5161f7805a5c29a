"""Turn a shopper's question into search terms that the help-centre articles actually use.

Shoppers write "where's my parcel", "money back", "promo code doesnt work", "pasword"; the
articles say tracking, refund, discount code, password. Full-text search matches stems, not
meanings, so the question is widened before it is searched:

- every word of the question stays (OR-ed, so one good word is enough to match);
- a word the articles never use, and that is close to one they do, adds that word (typos);
- a small list of shopper phrases adds the words the articles use for the same thing.

The list is general shop vocabulary, not tied to one store's articles; a store whose articles
use other words only loses the extra recall, never gets wrong matches from it.
"""

from __future__ import annotations

import difflib
import functools
import re

# Shopper phrase -> words the articles use for it. Phrases are matched on whole words.
SHOPPER_PHRASES: dict[str, str] = {
    # delivery and tracking
    "package": "parcel",
    "pkg": "parcel",
    "deliver": "delivery shipping",
    "delivers": "delivery shipping",
    "arrive": "delivery",
    "arrives": "delivery",
    "arriving": "delivery",
    "postage": "shipping",
    "post": "shipping",
    "send to": "ship",
    "faster": "express",
    "quicker": "express",
    "urgent": "express",
    "asap": "express",
    "next day": "express",
    "overnight": "express",
    "where is my": "track tracking",
    "shipped yet": "tracking shipped",
    "order status": "tracking statuses",
    "lost parcel": "lost parcel trace",
    "parcel lost": "lost parcel trace",
    "lost package": "lost parcel trace",
    "package lost": "lost parcel trace",
    "wheres my": "track tracking",
    "never arrived": "delivered received tracking",
    "not arrived": "delivered received tracking",
    "hasnt arrived": "delivered received tracking",
    "didnt arrive": "delivered received tracking",
    # places shoppers name instead of the region
    "america": "usa",
    "states": "usa",
    "germany": "europe",
    "france": "europe",
    "spain": "europe",
    "italy": "europe",
    "netherlands": "europe",
    "ireland": "europe",
    "uk": "europe kingdom",
    "england": "europe kingdom",
    "britain": "europe kingdom",
    # returns, exchanges and refunds
    "send back": "return",
    "sent back": "return",
    "sending back": "return",
    "give back": "return",
    "take back": "return",
    "bring back": "return",
    "too late": "window",
    "swap": "exchange",
    "money back": "refund",
    "reimburse": "refund",
    "reimbursement": "refund",
    "refundable": "refund",
    "credit": "credit refund",
    # damage and faults
    "broken": "damaged faulty",
    "broke": "damaged faulty",
    "torn": "damaged tear",
    "ripped": "damaged tear",
    "hole": "damaged",
    "stain": "damaged",
    "defect": "defects faulty",
    "defective": "faulty defects",
    "crushed": "damaged",
    # payment
    "cod": "cash delivery",
    "emi": "instalment",
    "installment": "instalment",
    "installments": "instalment",
    "klarna": "instalment later",
    "afterpay": "instalment later",
    "rejected": "declined",
    "american express": '"american express"',
    "amex": '"american express"',
    "charged twice": "charged payment",
    "double charged": "charged payment",
    "failed": "declined",
    "safe": "secure",
    "bill": "invoice",
    "receipt": "invoice",
    # gift cards and discounts
    "giftcard": "gift card",
    "gift voucher": "gift card",
    "gift vouchers": "gift card",
    "voucher": "gift card discount code",
    "vouchers": "gift card discount code",
    "present": "gift",
    "expire": "expiry expired",
    "expires": "expiry expired",
    "coupon": "discount code",
    "promo": "discount code",
    "promocode": "discount code",
    "deal": "sale offers",
    "deals": "sale offers",
    "cheaper": "sale discount",
    # customs
    "import": "customs duties",
    "tariff": "customs duties",
    "tariffs": "customs duties",
    "pay extra": "customs duties charged delivery",
    "extra charges": "customs duties charged delivery",
    "extra fees": "customs duties charged delivery",
    "hidden fees": "customs duties charged delivery",
    # fit and care
    "fit": "size",
    "fits": "size",
    "tight": "size fit",
    "loose": "size fit",
    "runs": "fit",
    "measurements": "measure size",
    "bleed": "colour dyes washing",
    "bleeding": "colour dyes washing",
    "fading": "colour dyes washing",
    "machine": "washing",
    "clean": "washing care",
    # account
    "login": "sign",
    "log in": "sign",
    "logon": "sign",
    "signin": "sign",
    "pwd": "password",
    "acct": "account",
    # people and hours
    "human": "person team contact",
    "real person": "person team contact",
    "agent": "person team contact",
    "representative": "person team contact",
    "customer service": "support team contact",
    "customer care": "support team contact",
    "talk": "contact person",
    "speak": "contact person",
    "call": "phone contact",
    "open": "support hours",
    "working hours": "support hours",
    "opening hours": "support hours",
    "office hours": "support hours",
    "business hours": "support hours",
    "timings": "support hours",
    "saturday": "weekends support hours",
    "sunday": "weekends support hours",
    "weekend": "weekends support hours",
    # warranty
    "guarantee": "quality promise warranty",
    "guaranteed": "quality promise warranty",
    "fix": "repair",
    "mend": "repair",
}

# Words that carry no meaning in a shopper's question but that PostgreSQL's English stop-word
# list keeps; articles rarely use them, so they would count as rare, telling words. The last
# three are words websearch_to_tsquery reads as operators.
FILLER_WORDS = frozenset(
    # A word list reads better as text than as a column of quoted strings.
    """
    hi hello hey thanks thank thx pls plz please ok okay u ur im ive id dont cant wont isnt
    want wanna need know tell ask asking question help get got getting take make give
    would could should also still really just like one thing something anything long
    or and not
    """.split()  # noqa: SIM905
)
_WORD = re.compile(r"[^\W_]+")
_MAPPED_TERM = re.compile(r'"[^"]+"|\S+')
# Shorter words are too often close to an unrelated word ("fit" -> "gift").
_MIN_TYPO_LENGTH = 5
_TYPO_CUTOFF = 0.8
# Endings that make another form of a word the articles use: "opened" is "open", not a typo.
_INFLECTIONS = ("s", "es", "ed", "d", "ing", "er", "ly")
# Words that stand for the thing being talked about; skipped so "send it back" is "send back".
_SKIPPED_IN_PHRASES = frozenset(
    {"it", "them", "this", "that", "these", "those", "him", "her", "something", "anything",
     "everything", "stuff", "my", "the", "a", "an"}
)


def question_words(question: str) -> list[str]:
    """The question's words, lower-cased; a capitalised "US" is the country, not "us"."""
    return [
        "usa" if word == "US" else word.lower()
        for word in _WORD.findall(question.replace("’", "").replace("'", ""))
    ]


def widen_question(question: str, vocabulary: frozenset[str]) -> list[tuple[str, ...]]:
    """Search terms for `question`, one group per thing the shopper asks about.

    A group holds a word of the question with its typo fix and the article words for it, or
    the article words for a shopper phrase ("where is my"). Any term of a group matching is
    that group found; search_knowledge uses the share of groups the articles know at all to
    tell a store question from an unrelated one.
    """
    words = question_words(question)
    fixed = [_fix_typo(word, vocabulary) for word in words]
    phrase_at = _find_phrases(fixed)

    groups: list[tuple[str, ...]] = []
    for index, word in enumerate(words):
        phrase = phrase_at.get(index)
        if phrase is not None and " " in phrase:
            # A phrase stands for its words together ("send back" is "return", not "send").
            if index == min(i for i, p in phrase_at.items() if p == phrase):
                groups.append(_mapped_terms(phrase))
            continue
        if word in FILLER_WORDS:
            continue
        group = [word, fixed[index], *(_mapped_terms(phrase) if phrase else ())]
        groups.append(tuple(dict.fromkeys(group)))
    return list(dict.fromkeys(groups))


# A close-match search over the whole vocabulary is the costliest step before the first token,
# and shoppers reuse the same words: remember each answer (per vocabulary, whose hash is cached).
@functools.lru_cache(maxsize=8192)
def _fix_typo(word: str, vocabulary: frozenset[str]) -> str:
    """The article word `word` is most likely a misspelling of, or `word` itself."""
    if len(word) < _MIN_TYPO_LENGTH or not word.isalpha() or word in _PHRASE_WORDS:
        return word
    if word in vocabulary or any(
        word.endswith(ending) and word[: -len(ending)] in vocabulary for ending in _INFLECTIONS
    ):
        return word
    close = difflib.get_close_matches(word, _sorted_words(vocabulary), 1, _TYPO_CUTOFF)
    # Shoppers rarely get the first letter wrong; a close word that starts differently is
    # another word ("flight" is not "light").
    return close[0] if close and close[0][0] == word[0] else word


def _find_phrases(words: list[str]) -> dict[int, str]:
    """Which shopper phrase each word index belongs to; longest phrases win; words like "it" are
    skipped so that "send it back" is the phrase "send back"."""
    positions = [index for index, word in enumerate(words) if word not in _SKIPPED_IN_PHRASES]
    sequence = [words[index] for index in positions]
    phrase_at: dict[int, str] = {}
    for phrase in _PHRASES_LONGEST_FIRST:
        length = len(phrase.split())
        for start in range(len(sequence) - length + 1):
            span = positions[start : start + length]
            if " ".join(sequence[start : start + length]) == phrase and not any(
                index in phrase_at for index in span
            ):
                phrase_at.update(dict.fromkeys(span, phrase))
    return phrase_at


def _mapped_terms(phrase: str) -> tuple[str, ...]:
    return tuple(_MAPPED_TERM.findall(SHOPPER_PHRASES[phrase]))


_sorted_cache: dict[frozenset[str], list[str]] = {}


def _sorted_words(vocabulary: frozenset[str]) -> list[str]:
    # difflib wants a sequence; sorting keeps its choice between equally close words stable.
    if vocabulary not in _sorted_cache:
        _sorted_cache.clear()
        _sorted_cache[vocabulary] = sorted(vocabulary)
    return _sorted_cache[vocabulary]


_PHRASE_WORDS = frozenset(word for phrase in SHOPPER_PHRASES for word in phrase.split())
_PHRASES_LONGEST_FIRST = sorted(SHOPPER_PHRASES, key=lambda phrase: -len(phrase.split()))
