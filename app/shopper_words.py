"""Turn a shopper's question into search terms that the help-centre articles actually use.

Shoppers write "where's my parcel", "money back", "promo code doesnt work", "pasword"; the
articles say tracking, refund, discount code, password. Full-text search matches stems, not
meanings, so the question is widened before it is searched:

- every word of the question stays (OR-ed, so one good word is enough to match);
- a word the articles never use, and that is close to one they do, adds that word (typos;
  the close word is found by the caller with PostgreSQL's trigram similarity);
- a list of shopper phrases adds the words the articles use for the same thing: the general
  list below, extended by the store's own synonyms file;
- a place name ("Mumbai", "Bavaria") adds the store's shipping region it is in ("india",
  "europe"), or, for a place outside them, the words the articles use for other countries.

The list below is general shop vocabulary, not tied to one store's articles; a store whose
articles use other words only loses the extra recall, never gets wrong matches from it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from app.language import OTHER_LANGUAGES_FILLER_WORDS, WORD_PATTERN
from app.places import Place, Places

# Shopper phrase -> words the articles use for it. Phrases are matched on whole words.
SHOPPER_PHRASES: dict[str, str] = {
    # delivery and tracking
    "package": "parcel",
    "pkg": "parcel",
    "deliver": "delivery shipping",
    "delivers": "delivery shipping",
    "delivery": "delivery deliver",
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
    "lost parcel": "trace parcel",
    "parcel lost": "trace parcel",
    "lost package": "trace parcel",
    "package lost": "trace parcel",
    "wheres my": "track tracking",
    "never arrived": "delivered received tracking",
    "not arrived": "delivered received tracking",
    "hasnt arrived": "delivered received tracking",
    "didnt arrive": "delivered received tracking",
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
    "no money": "refund received",
    "reimburse": "refund",
    "reimbursement": "refund",
    "refundable": "refund",
    "credit": "credit refund",
    # damage and faults
    "broken": "damaged faulty",
    "broke": "damaged faulty",
    "torn": "damaged tear",
    "tear": "damaged",
    "ripped": "damaged tear",
    "hole": "damaged",
    "stain": "damaged",
    "defect": "defects faulty",
    "defective": "faulty defects",
    "crushed": "damaged",
    # payment
    "cod": '"cash on delivery"',
    "emi": "instalment",
    "installment": "instalment",
    "installments": "instalment",
    "klarna": "instalment later",
    "afterpay": "instalment later",
    "rejected": "declined",
    "invalid": "rejected declined",
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
    whats wheres hows hasnt havent didnt doesnt wasnt arent gimme lemme gonna yo rn sir
    madam maam kindly guys stuff r able possible someone anyone actually
    """.split()  # noqa: SIM905
) | OTHER_LANGUAGES_FILLER_WORDS | {"gibt", "hay"}  # "there is": "Gibt es Ratenzahlung?"
_WORD = re.compile(WORD_PATTERN)
_MAPPED_TERM = re.compile(r'"[^"]+"|\S+')
# Shorter words are too often close to an unrelated word ("fit" -> "gift").
_MIN_TYPO_LENGTH = 5
# Endings that make another form of a word the articles use: "opened" is "open", not a typo.
_INFLECTIONS = ("s", "es", "ed", "d", "ing", "er", "ly")
# Words that stand for the thing being talked about; skipped so "send it back" is "send back".
_SKIPPED_IN_PHRASES = frozenset(
    {"it", "them", "this", "that", "these", "those", "him", "her", "something", "anything",
     "everything", "stuff", "my", "the", "a", "an", "got", "is", "was", "has", "been"}
)


# A question about one product's stock, price or sizes: the help centre has no catalogue, so
# an article sharing a word with it ("size", "kurta") would be a wrong answer. "the", "this"
# or "that" before the product is what makes it one product, not a kind of thing.
_ONE_PRODUCT = (r"(?:the|this|that|these|those|your) (?!(?:shipping|delivery|postage|return|"
                r"refund|customs|duty|duties|express|gift card|discount|sale|tax|vat)\b)[\w -]{2,40}?")
_CATALOGUE_QUESTION = re.compile(
    rf"\b(?:is|are) {_ONE_PRODUCT} (?:still |back )?in stock\b|\bback in stock\b"
    r"|\brestock(?:ed|ing)?\b|\bwhen will .{2,40} be (?:back )?in stock\b"
    rf"|\bhow much (?:does|do|is|are) {_ONE_PRODUCT}\b(?:cost|costs|price|priced)?\s*\??$"
    rf"|\bdo you (?:have|stock|carry) {_ONE_PRODUCT} in (?:size |a size |colou?r )?\w+",
    re.IGNORECASE)


def asks_about_a_product(question: str) -> bool:
    """Whether the question is about one product's stock, price or sizes (a catalogue
    question, not a help-centre one)."""
    return bool(_CATALOGUE_QUESTION.search(question.strip()))


# "US 8", "UK 10", "EU 38": a clothing size in a country's sizes, not the country.
_SIZE_NOTATION = re.compile(r"\b(?:US|UK|EU|usa?|uk|eu)\s?(?=\d{1,2}\b)")


def question_words(question: str) -> list[str]:
    """The question's words, lower-cased; a capitalised "US" is the country, not "us"; a
    size in a country's notation ("US 8") is a size."""
    question = _SIZE_NOTATION.sub("size chart ", question)
    return [
        "usa" if word == "US" else word.lower()
        for word in _WORD.findall(question.replace("’", "").replace("'", ""))
    ]


# What an article calls a place outside the shipping regions: "We do not ship to other countries".
OUTSIDE_REGIONS_TERMS = ("other", "countries")


@dataclass(frozen=True)
class WidenedQuestion:
    groups: tuple[tuple[str, ...], ...]
    places: tuple[Place, ...]
    place_groups: frozenset[int] = frozenset()  # the indices of the groups that are a place


class ShopperWords:
    """The words of one index (its vocabulary), the phrases (built-in and the store's) and the
    places: everything needed to turn a question into search groups, without a database."""

    def __init__(self, vocabulary: frozenset[str], store_phrases: Mapping[str, str],
                 places: Places) -> None:
        self.vocabulary = vocabulary
        self._phrases = {**SHOPPER_PHRASES, **store_phrases}
        self._longest_first = sorted(self._phrases, key=lambda phrase: -len(phrase.split()))
        self._phrase_words = frozenset(w for phrase in self._phrases for w in phrase.split())
        # Per first word: (rank in _longest_first, phrase, its words). A question is checked
        # only against the phrases that start with one of its words, not against every phrase
        # (hundreds with the store's and the other languages' synonyms: the search's largest
        # cost in Python). A phrase with odd spacing could never match, and is left out.
        self._phrases_by_first: dict[str, list[tuple[int, str, tuple[str, ...]]]] = {}
        for rank, phrase in enumerate(self._longest_first):
            phrase_words = tuple(phrase.split())
            if phrase_words and " ".join(phrase_words) == phrase:
                self._phrases_by_first.setdefault(phrase_words[0], []).append(
                    (rank, phrase, phrase_words))
        self._places = places

    def base_word(self, word: str) -> str | None:
        """The article word that `word` is a regular form of, when the articles do not use
        `word` itself: "deliverd" and "orderd" are "deliver" and "order" (the stemmer leaves
        a misspelt ending alone, so the full-text search would miss them)."""
        if word in self.vocabulary or len(word) < _MIN_TYPO_LENGTH:
            return None
        for ending in _INFLECTIONS:
            stem = word[: -len(ending)]
            if word.endswith(ending) and len(stem) >= 3 and stem in self.vocabulary:
                return stem
        return None

    def typo_candidates(self, question: str) -> list[str]:
        """The question's words that may be misspelt: long enough, and not the articles' own
        words or a regular form of one ("opened" is "open")."""
        return [word for word in dict.fromkeys(question_words(question))
                if self._may_be_typo(word)]

    def one_slip_away(self, word: str) -> str | None:
        """The index word one slip of the keyboard from `word` (two letters swapped, one
        missed or one too many), keeping its first letter: "retrun" is "return", which
        trigram similarity misses in a short word. None when there is no such word."""
        head, letters = word[0], "abcdefghijklmnopqrstuvwxyz"
        tail = word[1:]
        splits = [(tail[:i], tail[i:]) for i in range(len(tail) + 1)]
        swapped = [a + b[1] + b[0] + b[2:] for a, b in splits if len(b) > 1]
        # A mistyped letter is left to the trigrams: one letter changed too often makes
        # another word ("weather", "whether").
        others = [a + b[1:] for a, b in splits if b] + [
            a + c + b for a, b in splits for c in letters]
        for edits in (swapped, others):
            found = sorted({head + edit for edit in edits} & self.vocabulary - {word})
            if found:
                return found[0]
        return None

    def _may_be_typo(self, word: str) -> bool:
        if len(word) < _MIN_TYPO_LENGTH or not word.isalpha() or word in self._phrase_words:
            return False
        if word in self.vocabulary or word in FILLER_WORDS or self._places.is_sure_name(word):
            return False  # "münchen" is not a misspelt "manchen"
        for ending in _INFLECTIONS:
            stem = word[: -len(ending)]
            if word.endswith(ending) and stem in self.vocabulary:
                # "shiping" is not "ship" + "ing" when the articles say "shipping".
                return stem + stem[-1] + ending in self.vocabulary
        return True

    def widen(self, question: str, typo_fixes: Mapping[str, str]) -> WidenedQuestion:
        """Search terms for `question`, one group per thing the shopper asks about.

        A group holds a word of the question with its typo fix and the article words for it, or
        the article words for a shopper phrase ("where is my"). Any term of a group matching is
        that group found; the search uses the share of groups the articles know at all to tell
        a store question from an unrelated one.
        """
        words = question_words(question)
        fixed = [typo_fixes.get(word, word) for word in words]
        # A word the articles use ("sale", "store") is that word, not a town of that name.
        places = self._places.find(fixed, question, FILLER_WORDS | self.vocabulary)
        place_at = {start + offset: place for start, length, place in places
                    for offset in range(length)}
        phrase_at = self._find_phrases(fixed, exclude=set(place_at))

        groups: list[tuple[str, ...]] = []
        place_groups: set[tuple[str, ...]] = set()
        for index, word in enumerate(words):
            if index in place_at:
                start = min(i for i, p in place_at.items() if p is place_at[index])
                if index == start:
                    place = place_at[index]
                    # A place asks where the store delivers: "countries" finds where it says so.
                    region = ([*place.region.lower().split(), "countries"] if place.region
                              else list(OUTSIDE_REGIONS_TERMS))
                    # The names in the search's language too: German articles say "Schweiz".
                    local = [*place.local_country.lower().split(),
                             *(place.local_region or "").lower().split()]
                    groups.append(tuple(dict.fromkeys(
                        [*place.name.split(), *place.country.lower().split(), *region,
                         *local])))
                    place_groups.add(groups[-1])
                continue
            phrase = phrase_at.get(index)
            if phrase is not None and " " in phrase:
                # A phrase stands for its words together ("send back" is "return", not "send").
                if index == min(i for i, p in phrase_at.items() if p == phrase):
                    groups.append(self._mapped_terms(phrase))
                continue
            if word in FILLER_WORDS:
                continue
            base = self.base_word(fixed[index])
            group = [word, fixed[index], *([base] if base else ()),
                     *(self._mapped_terms(phrase) if phrase else ())]
            groups.append(tuple(dict.fromkeys(group)))
        unique = tuple(dict.fromkeys(groups))
        return WidenedQuestion(unique, tuple(place for _, _, place in places),
                               frozenset(n for n, group in enumerate(unique)
                                         if group in place_groups))

    def _find_phrases(self, words: list[str], exclude: set[int]) -> dict[int, str]:
        """Which shopper phrase each word index belongs to; longest phrases win; words like
        "it" are skipped so that "send it back" is the phrase "send back"."""
        positions = [index for index, word in enumerate(words)
                     if word not in _SKIPPED_IN_PHRASES and index not in exclude]
        sequence = [words[index] for index in positions]
        # Every match, then claimed in the order of the longest-first scan (phrase by phrase,
        # left to right), so the outcome is that scan's.
        matches: list[tuple[int, int, int, str]] = []
        for start, word in enumerate(sequence):
            for rank, phrase, phrase_words in self._phrases_by_first.get(word, ()):
                end = start + len(phrase_words)
                if tuple(sequence[start:end]) == phrase_words:
                    matches.append((rank, start, end, phrase))
        matches.sort()
        phrase_at: dict[int, str] = {}
        for _, start, end, phrase in matches:
            span = positions[start:end]
            if not any(index in phrase_at for index in span):
                phrase_at.update(dict.fromkeys(span, phrase))
        return phrase_at

    def _mapped_terms(self, phrase: str) -> tuple[str, ...]:
        return tuple(_MAPPED_TERM.findall(self._phrases[phrase]))
