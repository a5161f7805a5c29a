"""When a person can reply: the store profile's support hours read as a weekly schedule.

The profile's `support.hours` is text for people ("Monday-Friday 9am-6pm IST") and goes into
the prompt as is; this module reads the common forms of it as days and a daily window, in the
profile's `support.time_zone`, so the widget can say "We're online now" or "A person can reply
from 9:00 your time" in the shopper's own time zone. Hours it cannot read ("by appointment")
give no schedule, and the widget then says nothing about hours.

Read: day ranges and lists in English ("Mon-Fri", "Monday to Friday", "Mon, Wed, Sat",
"daily", "every day", "weekdays") and one window ("9am-6pm", "9:30 - 17:00", "09:00–18:00").
Said back in the other languages the answers are written in (`hours_in_words`), for the contact
line of an answer composed without a model.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

_DAYS = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
_DAY = r"(mon|tue|wed|thu|fri|sat|sun)[a-z]*\.?"
_TIME = r"(\d{1,2})(?:[:.](\d{2}))?\s*(am|pm|a\.m\.|p\.m\.)?"
_WINDOW = re.compile(_TIME + r"\s*(?:-|–|—|to|until)\s*" + _TIME, re.I)
_RANGE = re.compile(_DAY + r"\s*(?:-|–|—|to|through)\s*" + _DAY, re.I)
_SINGLE = re.compile(r"\b" + _DAY + r"\b", re.I)


@dataclass(frozen=True)
class WeeklyHours:
    days: frozenset[int]  # 0 Monday .. 6 Sunday, in the store's time zone
    opens: time
    closes: time  # after `opens`: a window past midnight is not read
    time_zone: str

    def is_open(self, now: datetime) -> bool:
        local = now.astimezone(ZoneInfo(self.time_zone))
        return local.weekday() in self.days and self.opens <= local.time() < self.closes

    def next_opening(self, now: datetime) -> datetime:
        """The next time the hours begin, after `now` (an aware datetime)."""
        zone = ZoneInfo(self.time_zone)
        local = now.astimezone(zone)
        for ahead in range(8):
            day = local.date() + timedelta(days=ahead)
            opening = datetime.combine(day, self.opens, zone)
            if day.weekday() in self.days and opening > local:
                return opening
        raise AssertionError("a schedule with days opens within a week")  # pragma: no cover

    def closing(self, now: datetime) -> datetime:
        """When today's hours end (for a `now` inside them)."""
        zone = ZoneInfo(self.time_zone)
        return datetime.combine(now.astimezone(zone).date(), self.closes, zone)


def _clock(hour: str, minute: str | None, half: str | None) -> time | None:
    h, m = int(hour), int(minute or 0)
    if half:
        if not 1 <= h <= 12:
            return None
        h = h % 12 + (12 if half.lower().startswith("p") else 0)
    if h > 23 or m > 59:
        return None
    return time(h, m)


def _days(text: str) -> frozenset[int] | None:
    lowered = text.lower()
    if re.search(r"\b(daily|every day|7 days|seven days)\b", lowered):
        return frozenset(range(7))
    days: set[int] = set()
    if re.search(r"\bweekdays\b", lowered):
        days |= set(range(5))
    for first, last in _RANGE.findall(text):
        start, end = _DAYS.index(first.lower()), _DAYS.index(last.lower())
        days |= {(start + step) % 7 for step in range((end - start) % 7 + 1)}
    without_ranges = _RANGE.sub(" ", text)
    days |= {_DAYS.index(day.lower()) for day in _SINGLE.findall(without_ranges)}
    return frozenset(days) or None


def read_hours(text: str, time_zone: str) -> WeeklyHours | None:
    """The schedule in `text`, or None when it does not read as days and one window."""
    window = _WINDOW.search(text)
    if window is None:
        return None
    h1, m1, half1, h2, m2, half2 = window.groups()
    # "9-6pm": the first time takes the second's half of the day, if that keeps it earlier.
    opens, closes = _clock(h1, m1, half1), _clock(h2, m2, half2)
    if half1 is None and half2 is not None:
        same_half = _clock(h1, m1, half2)
        if same_half is not None and closes is not None and same_half < closes:
            opens = same_half
    days = _days(text[: window.start()] + " " + text[window.end():])
    if opens is None or closes is None or opens >= closes or days is None:
        return None
    return WeeklyHours(days, opens, closes, time_zone)


def hours_status(hours: WeeklyHours | None, now: datetime) -> dict[str, object]:
    """GET /chat/hours: whether a person is there now, and the next opening (UTC, ISO 8601)."""
    if hours is None:
        return {"known": False}
    status: dict[str, object] = {"known": True, "timeZone": hours.time_zone,
                                 "open": hours.is_open(now)}
    if status["open"]:
        status["closesAt"] = _utc(hours.closing(now))
    status["opensAt"] = _utc(hours.next_opening(now))
    return status


def _utc(moment: datetime) -> str:
    return moment.astimezone(ZoneInfo("UTC")).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- the hours in the shopper's language ---------------------------------------------------------

@dataclass(frozen=True)
class _HoursWords:
    days: tuple[str, ...]  # Monday .. Sunday
    every_day: str
    day_range: str  # {first}, {last}
    window: str  # {opens}, {closes}: clock times, 24-hour


# Per language the store may answer in (app/language.py); English keeps the profile's own text.
_HOURS_WORDS = {
    "de": _HoursWords(("Montag", "Dienstag", "Mittwoch", "Donnerstag", "Freitag", "Samstag",
                       "Sonntag"), "täglich", "{first} bis {last}", "{opens}–{closes} Uhr"),
    "fr": _HoursWords(("lundi", "mardi", "mercredi", "jeudi", "vendredi", "samedi", "dimanche"),
                      "tous les jours", "du {first} au {last}", "de {opens} à {closes}"),
    "es": _HoursWords(("lunes", "martes", "miércoles", "jueves", "viernes", "sábado", "domingo"),
                      "todos los días", "de {first} a {last}", "de {opens} a {closes}"),
    "hi": _HoursWords(("सोमवार", "मंगलवार", "बुधवार", "गुरुवार", "शुक्रवार", "शनिवार", "रविवार"),
                      "हर दिन", "{first} से {last}", "{opens}–{closes}"),
}


def hours_in_words(hours: WeeklyHours, language: str, now: datetime | None = None) -> str | None:
    """The schedule as a shopper reading `language` says it ("Montag bis Freitag 9:00–18:00 Uhr
    IST"), in the store's time zone, named as its clocks do; None for a language without
    words here (English: the profile's text is already the store's own English)."""
    words = _HOURS_WORDS.get(language)
    if words is None:
        return None
    days = sorted(hours.days)
    if len(days) == 7:
        day_text = words.every_day
    elif len(days) > 2 and days == list(range(days[0], days[-1] + 1)):
        day_text = words.day_range.format(first=words.days[days[0]], last=words.days[days[-1]])
    else:
        day_text = ", ".join(words.days[day] for day in days)
    window = words.window.format(opens=_clock_text(hours.opens), closes=_clock_text(hours.closes))
    zone = ZoneInfo(hours.time_zone)
    # As the store's clocks name it at `now`: "IST"; "CET" or "CEST" for Berlin; "+04" for a
    # zone without a name.
    abbreviation = (now or datetime.now(zone)).astimezone(zone).tzname() or hours.time_zone
    return f"{day_text} {window} {abbreviation}"


def _clock_text(moment: time) -> str:
    return f"{moment.hour}:{moment.minute:02d}"
