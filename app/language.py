"""The language a shopper writes in: detected per question, recorded, and used by the answer.

Detection is lingua (lingua-language-detector), which ships its models in the package, so
nothing is downloaded at run time. It is restricted to the languages the service serves
(`LANGUAGES`) and runs in lingua's low-accuracy mode (trigram models only): about 20 MB of
memory for the five languages instead of about 170 MB, built in about 0.15 s, and some 50 us
per question; for questions a shopper types (a few words to a few sentences) it tells these
five apart as well as the full models do. Romanised Hindi ("kitne din me delivery hogi")
reads as English: lingua's Hindi model is Devanagari only.

Too short or too mixed to tell ("ok", an order number): English, the help centre's language.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from lingua import Language, LanguageDetector, LanguageDetectorBuilder

from app.store_profile import StoreProfile
from app.support_hours import hours_in_words, read_hours

ENGLISH = "en"

# A word of a question or an article, in any of LANGUAGES. Python's \w leaves out the vowel
# signs of Devanagari (combining marks), which would cut "डिलीवरी" into single letters.
WORD_PATTERN = r"(?:[^\W_]|[\u0900-\u0963\u0966-\u097F])+"

# ISO 639-1 code -> (lingua's language, the name the system prompt uses)
LANGUAGES: dict[str, tuple[Language, str]] = {
    "en": (Language.ENGLISH, "English"),
    "de": (Language.GERMAN, "German"),
    "fr": (Language.FRENCH, "French"),
    "es": (Language.SPANISH, "Spanish"),
    "hi": (Language.HINDI, "Hindi"),
}
_CODES = {language: code for code, (language, _) in LANGUAGES.items()}

# Words of questions that say nothing about what is asked (as "please" and "is" in English,
# app/shopper_words.py), per language. They are left out of the search, or "Schreib mir bitte
# ein Gedicht" would look like a question the German articles know half of ("bitte" is in
# them), and a Hindi question the English articles answer ("रिफंड कब मिलेगा?") like one about
# things they never mention: PostgreSQL has no Hindi stop words. Hindi both in Devanagari and
# romanised; only words no other served language uses as a word of its own. Spanish "cuál" too,
# as "which" is an English stop word (PostgreSQL's Spanish list has only the unaccented "cual"):
# "¿Cuál es la capital de Francia?" matched the curated answers asked as "¿Cuál es ...?".
# And the words around what is asked: "use" ("Welchen Kurierdienst nutzt ihr?" matched the
# account article's "nutzen Sie ..."), "any" (Spanish "algún", which PostgreSQL keeps) and the
# "mehr" of "nicht mehr" (no longer).
FILLER_WORDS_BY_LANGUAGE = {
    "de": frozenset("""
        bitte danke hallo moin servus mal gern gerne kurz eigentlich möchte möchten würde
        würden sag sagen sagt wissen weiß frage fragen mehr
        nutzt nutzen nutze benutzt benutzen verwendet verwenden
        """.split()),  # noqa: SIM905
    "es": frozenset("""
        hola gracias favor porfa quiero quisiera saber dime necesito pregunta
        cuál cuáles algún alguna algo
        usáis usan usas usar utilizáis utilizan
        """.split()),  # noqa: SIM905
    "hi": frozenset("""
        है हैं क्या का की के में से को कर करें करूँ करूं सकते सकता सकती मैं मेरा मेरी मेरे मुझे आप
        आपका आपकी हम कैसे कब कहाँ कहां कितना कितने कितनी लगते लगता लगेगा होगा होगी और यह ये
        वह भी तो नहीं हो था थी जी ही मिलेगा मिलेगी आएगा आएगी रहा रही
        kya hai hain kaise kab kahan kitna kitne kitni mujhe aap ka ki ke ko karna karu karun
        kar sakte sakta hoga hogi milega milegi aayega aur nahi bhi ji
        """.split()),  # noqa: SIM905
}
OTHER_LANGUAGES_FILLER_WORDS = frozenset().union(*FILLER_WORDS_BY_LANGUAGE.values())

# The one line put before an answer taken from English articles for a shopper who wrote in
# another language (knowledge-only mode, or the model's fallback).
HELP_CENTRE_IN_ENGLISH = {
    "de": "Unser Hilfe-Center ist auf Englisch, daher folgt die Antwort auf Englisch.",
    "fr": "Notre centre d'aide est en anglais, la réponse suit donc en anglais.",
    "es": "Nuestro centro de ayuda está en inglés, así que la respuesta sigue en inglés.",
    "hi": "हमारा सहायता केंद्र अंग्रेज़ी में है, इसलिए जवाब अंग्रेज़ी में है।",
}




@dataclass(frozen=True)
class AnswerPhrases:
    """The few words of a knowledge-only answer that are not the articles' own."""

    not_covered: str
    team_can_help: str  # {contact}, {hours}
    email_or_phone: str  # {email}, {phone}
    more: str  # {title}: the article to read for more
    # A place the shopper named (the country and region names are the profile's, in English).
    not_delivered: str  # {country}
    delivered: str  # {region}
    in_region: str  # {name} (the place), {region}


# By the language of the articles an answer is made from (or the shopper's, when none matched).
ANSWER_PHRASES = {
    "en": AnswerPhrases("Sorry, our help centre does not cover that.",
                        "Our team can help: {contact}, {hours}.", "{email} or {phone}",
                        "More in our help centre: {title}.",
                        "We do not deliver to {country} yet.", "Yes, we deliver to {region}.",
                        "Yes, {name} is in our {region} delivery region."),
    "de": AnswerPhrases("Dazu steht leider nichts in unserem Hilfe-Center.",
                        "Unser Team hilft gern: {contact}, {hours}.", "{email} oder {phone}",
                        "Mehr in unserem Hilfe-Center: {title}.",
                        "Nach {country} liefern wir noch nicht.", "Ja, wir liefern nach {region}.",
                        "Ja, {name} liegt in unserem Liefergebiet {region}."),
    "fr": AnswerPhrases("Désolé, notre centre d'aide ne traite pas ce sujet.",
                        "Notre équipe peut vous aider : {contact}, {hours}.",
                        "{email} ou {phone}",
                        "Plus d'informations dans notre centre d'aide : {title}.",
                        "Nous ne livrons pas encore : {country}.", "Oui, nous livrons : {region}.",
                        "Oui, {name} fait partie de notre zone de livraison {region}."),
    "es": AnswerPhrases("Lo siento, nuestro centro de ayuda no trata ese tema.",
                        "Nuestro equipo puede ayudarte: {contact}, {hours}.",
                        "{email} o {phone}",
                        "Más en nuestro centro de ayuda: {title}.",
                        "Todavía no enviamos a {country}.", "Sí, enviamos a {region}.",
                        "Sí, {name} está en nuestra zona de entrega {region}."),
    "hi": AnswerPhrases("माफ़ कीजिए, हमारे सहायता केंद्र में इसकी जानकारी नहीं है।",
                        "हमारी टीम मदद कर सकती है: {contact}, {hours}।", "{email} या {phone}",
                        "सहायता केंद्र में और जानकारी: {title}।",
                        "हम अभी {country} में डिलीवरी नहीं करते।", "हाँ, हम {region} में डिलीवरी करते हैं।",
                        "हाँ, {name} हमारे {region} डिलीवरी क्षेत्र में है।"),
}


def answer_phrases(code: str) -> AnswerPhrases:
    return ANSWER_PHRASES.get(code, ANSWER_PHRASES[ENGLISH])


def team_can_help(profile: StoreProfile, code: str) -> str:
    """The contact line of an answer composed without a model, in the answer's language: the
    store's email and phone, and its support hours in that language when they read as a weekly
    schedule (app/support_hours.py); hours that do not ("by appointment"), and English, as the
    profile writes them."""
    phrases = answer_phrases(code)
    contact = (phrases.email_or_phone.format(email=profile.contact_email,
                                             phone=profile.contact_phone)
               if profile.contact_phone else profile.contact_email)
    schedule = read_hours(profile.support_hours, profile.time_zone)
    hours = (hours_in_words(schedule, code) if schedule is not None else None) \
        or profile.support_hours
    return phrases.team_can_help.format(contact=contact, hours=hours)


@functools.cache
def detector() -> LanguageDetector:
    """Built once per process (ChatService builds it at start, so no question waits for it)."""
    languages = [language for language, _ in LANGUAGES.values()]
    return (LanguageDetectorBuilder.from_languages(*languages)
            .with_preloaded_language_models().with_low_accuracy_mode().build())


# The low-accuracy models read letters, not words, and a short English question goes astray
# with them: "Where is my order?" is German to them (0.79), "Do you ship to Canada?" Spanish
# (0.56). They are sure of real German or Spanish ("Wo ist meine Bestellung?" 1.0). So a pick
# below this confidence is English after all when at least half of the question's words are
# common English ones (function words, and the nouns shoppers ask with). The high-accuracy
# models know better, but cost some 150 MB more per process.
SURE_CONFIDENCE = 0.9
_ENGLISH_WORDS_TEXT = (
    "a about after am an and any are at be been but by can can't could did do does doesn't"
    " don't for from get got has hasn't have haven't how i i'm if in is isn't it it's my me"
    " need not of on or please should so than that the their them there they this to too"
    " was wasn't we what when where which who why will with won't would you your yet still"
    " order ship shipping delivery forgot password refund return cancel")
ENGLISH_WORDS = frozenset(_ENGLISH_WORDS_TEXT.split())


def detect_language(text: str) -> str:
    """The ISO 639-1 code of the language `text` is written in, one of LANGUAGES; English
    when it cannot tell."""
    confidences = detector().compute_language_confidence_values(text)
    if not confidences or confidences[0].value == 0:
        return ENGLISH
    best = confidences[0]
    if best.language is Language.ENGLISH or best.value >= SURE_CONFIDENCE:
        return _CODES[best.language]
    words = re.findall(r"[^\W\d_]+(?:'[^\W\d_]+)?", text.lower())
    english = sum(word in ENGLISH_WORDS for word in words)
    return ENGLISH if words and english * 2 >= len(words) else _CODES[best.language]


# A language lingua gives at least this confidence to is worth a search in a site's articles
# when the language it picked finds nothing: "el envio es gratis?" is French to lingua (0.89),
# Spanish only 0.01, but the Spanish articles answer it.
POSSIBLE_LANGUAGE_CONFIDENCE = 0.005


def possible_languages(text: str, detected: str) -> list[str]:
    """The other languages `text` might be in, most likely first (not `detected`)."""
    return [_CODES[value.language]
            for value in detector().compute_language_confidence_values(text)
            if value.value >= POSSIBLE_LANGUAGE_CONFIDENCE and _CODES[value.language] != detected]


def language_name(code: str) -> str:
    return LANGUAGES[code][1] if code in LANGUAGES else LANGUAGES[ENGLISH][1]


def answer_in(system_prompt: str, code: str) -> str:
    """The system prompt with the instruction to answer in the shopper's detected language.
    The store's facts stay as they are: prices, days and addresses are not translated."""
    name = language_name(code)
    return (f"{system_prompt}\n\nThe shopper wrote in {name}. Answer in {name}, keeping the "
            "store's facts (numbers, names, addresses, links) exactly as given.")


def english_help_centre_note(code: str) -> str | None:
    """The one-line note for an answer from English articles, in the shopper's language;
    None for an English question."""
    return HELP_CENTRE_IN_ENGLISH.get(code)
