"""Support hours read as a weekly schedule, and GET /chat/hours saying whether a person is there."""

from __future__ import annotations

from datetime import UTC, datetime, time

import httpx
import pytest

from app.support_hours import hours_in_words, hours_status, read_hours

KOLKATA = "Asia/Kolkata"


@pytest.mark.parametrize(("text", "days", "opens", "closes"), [
    ("Monday-Friday 9am-6pm IST", {0, 1, 2, 3, 4}, time(9), time(18)),
    ("Mon to Sat, 9:30 - 17:00", {0, 1, 2, 3, 4, 5}, time(9, 30), time(17)),
    ("daily 10:00–22:00", set(range(7)), time(10), time(22)),
    ("weekdays 9-5pm", {0, 1, 2, 3, 4}, time(9), time(17)),
    ("Mon, Wed and Sat 8 am to 12 pm", {0, 2, 5}, time(8), time(12)),
    ("Fri-Mon 12pm-8pm", {4, 5, 6, 0}, time(12), time(20)),
])
def test_common_forms_of_hours_are_read(text: str, days: set[int], opens: time,
                                        closes: time) -> None:
    hours = read_hours(text, KOLKATA)
    assert hours is not None
    assert (set(hours.days), hours.opens, hours.closes) == (days, opens, closes)


@pytest.mark.parametrize("text", ["by appointment", "Monday-Friday", "9am-6pm",
                                  "Mon-Fri 6pm-9am", "Mon-Fri 25:00-26:00"])
def test_hours_that_do_not_read_as_a_schedule_give_none(text: str) -> None:
    assert read_hours(text, KOLKATA) is None


def test_the_status_is_computed_in_the_stores_time_zone() -> None:
    hours = read_hours("Monday-Friday 9am-6pm IST", KOLKATA)
    # Wednesday 2 December 2026, 10:00 in Kolkata (04:30 UTC): open until 18:00 (12:30 UTC).
    assert hours_status(hours, datetime(2026, 12, 2, 4, 30, tzinfo=UTC)) == {
        "known": True, "timeZone": KOLKATA, "open": True,
        "closesAt": "2026-12-02T12:30:00Z", "opensAt": "2026-12-03T03:30:00Z"}
    # Friday 20:00 in Kolkata: closed, next Monday 09:00 there.
    closed = hours_status(hours, datetime(2026, 12, 4, 14, 30, tzinfo=UTC))
    assert closed == {"known": True, "timeZone": KOLKATA, "open": False,
                      "opensAt": "2026-12-07T03:30:00Z"}
    # Monday 08:59 there: opens in a minute, today.
    early = hours_status(hours, datetime(2026, 12, 7, 3, 29, tzinfo=UTC))
    assert early["open"] is False and early["opensAt"] == "2026-12-07T03:30:00Z"
    assert hours_status(None, datetime.now(UTC)) == {"known": False}


@pytest.mark.parametrize(("text", "time_zone", "language", "said"), [
    ("Monday-Friday 9am-6pm IST", KOLKATA, "de", "Montag bis Freitag 9:00–18:00 Uhr IST"),
    ("Monday-Friday 9am-6pm IST", KOLKATA, "es", "de lunes a viernes de 9:00 a 18:00 IST"),
    ("Mon, Wed and Sat 8:30 am to 12 pm", KOLKATA, "fr",
     "lundi, mercredi, samedi de 8:30 à 12:00 IST"),
    ("daily 10:00–22:00", KOLKATA, "hi", "हर दिन 10:00–22:00 IST"),
    # Named as the store's clocks are at the time: Berlin in winter is CET.
    ("Mon-Fri 9-17", "Europe/Berlin", "de", "Montag bis Freitag 9:00–17:00 Uhr CET"),
    ("Monday-Friday 9am-6pm IST", KOLKATA, "en", None),  # the profile's own words stand
])
def test_the_hours_are_said_in_the_answers_language(text: str, time_zone: str, language: str,
                                                    said: str | None) -> None:
    hours = read_hours(text, time_zone)
    assert hours is not None
    assert hours_in_words(hours, language, datetime(2026, 12, 2, 4, 30, tzinfo=UTC)) == said


async def test_the_endpoint_reads_the_sites_profile(client: httpx.AsyncClient) -> None:
    response = await client.get("/chat/hours")
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert body["known"] is True and body["timeZone"] == KOLKATA
    assert isinstance(body["open"], bool)
    assert datetime.fromisoformat(body["opensAt"]) > datetime.now(UTC)
    unknown = await client.get("/chat/hours", params={"siteKey": "A" * 22})
    assert unknown.status_code == 404
    assert set(unknown.json()["error"]) == {"code", "message"}
