"""Hostile input: valid text comes back unchanged, invalid input is a 4xx, nothing is a 500.

A corpus of bodies, ids and headers against the running app, then property-based tests (with
lone surrogates) on the validators and the SSE encoder, and a check that the ids the service
hands out come from the operating system's cryptographic random source.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import uuid
from typing import Any
from urllib.parse import quote, urlencode

import httpx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from starlette.requests import Request

from app.chat import answer_caps
from app.endpoints import (
    BadRequest,
    ChatRequest,
    last_event_id,
    parse_chat_request,
    parse_uuid,
    validate_message,
)
from app.eventlog import encode_event
from tests.conftest import FakeUpstream, Reply, RunningApp, stream_chat

MAX_CHARS = 5000

# Text a shopper may legitimately send (or a model may answer): stored and shown byte for byte.
VALID_TEXTS = {
    "rtl_override": "Order \u202eexe.txt\u202c please \u2067\u05e9\u05dc\u05d5\u05dd\u2069",
    "zero_width": "a\u200bb\u200cc\u200dd\u2060e\ufeff",
    "5000_emoji": "\U0001F600" * 5000,
    "emoji_zwj_and_flags": "\U0001F469\u200d\U0001F469\u200d\U0001F467 \U0001F1EE\U0001F1F3",
    "sse_framing": "\n\nevent: done\ndata: x\n\nid: 999\r\nretry: 1\r\r: comment",
    "sse_framing_json": 'data: {"text":"fake"}\n\nevent: error\ndata: {"code":"x"}\n\n',
    "sql_injection": "'; DROP TABLE messages; -- \" OR 1=1 -- $$ \\x00 %s %(x)s {0} ?",
    "sql_comment_and_quotes": "Robert'); DELETE FROM conversations WHERE ('1'='1",
    "html_script": "<script>alert(document.cookie)</script><img src=x onerror=alert(1)>",
    "line_separators": "one\u2028two\u2029three\x85four\x0bfive\x0csix",
    "control_characters": "\x01\x07\x1b[31mred\x1b[0m\x7f",
    "combining_marks": "Z\u0335\u0321\u031b\u0316a\u0337l\u0336g\u0335o\u0334",
    "astral_and_noncharacters": "\U0001D573\U0001D58A \uffff\ufdd0\U0010FFFF",
    "surrounding_whitespace": "   keep my spaces\t\n",
    "huge_number_as_text": "9" * 4999,
    "backslashes_and_escapes": "\\u0000 \\ud800 \\n \\\\ \\\"",
}


def history_texts(page: dict[str, Any]) -> list[str]:
    return [m["text"] for m in page["messages"]]


async def test_valid_text_is_stored_and_returned_unchanged(
        start_app: Any, upstream: FakeUpstream, query: Any, subtests: Any) -> None:
    app: RunningApp = await start_app(rate_limit_enabled=False)
    async with app.client() as http:
        for name, text in VALID_TEXTS.items():
            with subtests.test(name):
                # The model answers with the same text, cut in two: the answer must survive too.
                half = len(text) // 2
                upstream.queue(Reply(tokens=[text[:half], text[half:]]))
                events = await stream_chat(http, {"message": text})
                assert [e.event for e in events] == ["meta", "token", "token", "done"]
                meta, done = events[0].data, events[-1].data
                assert done["text"] == text
                assert upstream.requests[-1]["messages"][-1] == {"role": "user", "content": text}
                stored = query("SELECT sender, text FROM messages WHERE conversation_id = %s"
                               " ORDER BY seq", meta["sessionId"])
                assert stored == [("user", text), ("ai", text)]
                page = (await http.get(f"/chat/history/{meta['sessionId']}")).json()
                assert history_texts(page) == [text, text]
                # The JSON endpoint hands it back unchanged as well.
                upstream.queue(Reply(tokens=[text]))
                reply = await http.post("/chat/message",
                                        json={"message": text, "sessionId": meta["sessionId"]})
                assert reply.status_code == 200 and reply.json()["reply"] == text


def _raw(text: str) -> bytes:
    return text.encode()


# Bodies that must be refused before anything is stored: (raw body, content type, status).
INVALID_BODIES: dict[str, tuple[bytes, str | None, int]] = {
    "lone_high_surrogate": (_raw('{"message": "a\\ud800b"}'), "application/json", 400),
    "lone_low_surrogate": (_raw('{"message": "\\udc00"}'), "application/json", 400),
    "reversed_pair": (_raw('{"message": "x\\ude00\\ud83d"}'), "application/json", 400),
    "escaped_nul": (_raw('{"message": "a\\u0000b"}'), "application/json", 400),
    "raw_nul_in_string": (b'{"message": "a\x00b"}', "application/json", 400),
    "raw_newline_in_string": (b'{"message": "a\nb"}', "application/json", 400),
    "empty_body": (b"", "application/json", 400),
    "truncated_object": (_raw('{"message": "hi'), "application/json", 400),
    "truncated_key": (_raw('{"mess'), "application/json", 400),
    "truncated_utf8": ('{"message": "\U0001F600"}'.encode()[:-3], "application/json", 400),
    "invalid_utf8": (b'{"message": "\xc3\x28"}', "application/json", 400),
    "json_null": (b"null", "application/json", 400),
    "json_string": (b'"hi"', "application/json", 400),
    "deeply_nested_object": (b'{"message": ' + b'{"a": ' * 10_000 + b"1" + b"}" * 10_001,
                             "application/json", 400),
    "huge_float": (_raw('{"message": 1e400}'), "application/json", 400),
    "huge_integer": (_raw('{"message": ' + "9" * 5000 + "}"), "application/json", 400),
    "huge_integer_session": (_raw('{"message": "hi", "sessionId": ' + "1" * 5000 + "}"),
                             "application/json", 400),
    "nan": (_raw('{"message": NaN}'), "application/json", 400),
    "message_too_long": (json.dumps({"message": "x" * (MAX_CHARS + 1)}).encode(),
                         "application/json", 400),
    "5001_emoji": (json.dumps({"message": "\U0001F600" * (MAX_CHARS + 1)}).encode(),
                   "application/json", 400),
    "unicode_whitespace_only": (
        _raw('{"message": "\\u2003\\u3000\\n"}'), "application/json", 400),
    "session_with_crlf": (_raw('{"message": "hi", "sessionId": "\\r\\nSet-Cookie: a=b"}'),
                          "application/json", 400),
    "session_hyphens_misplaced": (
        _raw('{"message": "hi", "sessionId": "12345678123456781234567812345678----"}'),
        "application/json", 400),
    "session_fullwidth_digits": (
        _raw('{"message": "hi", "sessionId": "\\uff11\\uff12\\uff13\\uff14\\uff15\\uff16\\uff17'
             '\\uff18-1234-5678-1234-567812345678"}'), "application/json", 400),
    "session_sql": (_raw('{"message": "hi", "sessionId": "\' OR 1=1; --                 "}'),
                    "application/json", 400),
    "oversized": (json.dumps({"message": "x" * 110_000}).encode(), "application/json", 413),
    "no_content_type": (_raw('{"message": "hi"}'), None, 415),
    "text_plain": (_raw('{"message": "hi"}'), "text/plain", 415),
    "form": (b"message=hi", "application/x-www-form-urlencoded", 415),
    "multipart": (b"--b\r\n\r\nhi\r\n--b--", "multipart/form-data; boundary=b", 415),
    "json_lookalike_type": (_raw('{"message": "hi"}'), "application/jsonx", 415),
    "content_type_with_crlf_lookalike": (_raw('{"message": "hi"}'), "text/html; application/json",
                                         415),
}


def assert_canonical_error(response: httpx.Response) -> None:
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    assert "Traceback" not in response.text and "psycopg" not in response.text


async def test_invalid_bodies_are_refused_and_nothing_is_stored(
        start_app: Any, upstream: FakeUpstream, query: Any, subtests: Any) -> None:
    app: RunningApp = await start_app(rate_limit_enabled=False)
    before = query("SELECT count(*) FROM messages")[0][0]
    async with app.client() as http:
        for name, (raw, content_type, status) in INVALID_BODIES.items():
            for path in ("/chat/stream", "/chat/message"):
                with subtests.test(f"{name} {path}"):
                    headers = {"content-type": content_type} if content_type else {}
                    response = await http.post(path, content=raw, headers=headers)
                    assert response.status_code == status, response.text
                    assert_canonical_error(response)
    assert not upstream.requests
    assert query("SELECT count(*) FROM messages")[0][0] == before


async def test_an_oversized_chunked_body_is_cut_off_at_the_limit(client: httpx.AsyncClient) -> None:
    async def chunks() -> Any:
        yield b'{"message": "'
        for _ in range(200):
            yield b"x" * 1024
        yield b'"}'

    response = await client.post("/chat/stream", content=chunks(),
                                 headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert_canonical_error(response)


# -- ids and headers -------------------------------------------------------------------------

CRLF_IDS = ["abc\r\nSet-Cookie: stolen=1", "%0d%0aX-Injected: 1", "\r\n\r\n<html>",
            "12345678-1234-5678-1234-56781234567\n"]


async def test_ids_with_header_injection_are_400_and_never_reflected(
        client: httpx.AsyncClient, subtests: Any) -> None:
    real = (await stream_chat(client, {"message": "hi"}))[0].data
    for bad in CRLF_IDS:
        in_path = quote(bad, safe="%")  # the server decodes it back to CR LF
        for method, url, params in [
            ("GET", f"/chat/history/{in_path}", {}),
            ("GET", f"/chat/stream/{real['messageId']}", {"sessionId": bad}),
            ("GET", f"/chat/stream/{in_path}", {"sessionId": real["sessionId"]}),
            ("POST", f"/chat/messages/{real['messageId']}/cancel", {"sessionId": bad}),
            ("GET", f"/chat/history/{real['sessionId']}", {"before": bad}),
        ]:
            with subtests.test(f"{method} {url} {params}"):
                response = await client.request(method, url, params=params)
                # A path that no longer matches a route is a 404; everything else a 400.
                assert response.status_code in (400, 404), response.text
                assert_canonical_error(response)
                assert "set-cookie" not in response.headers
                assert "x-injected" not in response.headers


@pytest.mark.parametrize("name, value", [
    ("superscript_two", "\u00b2"),  # str.isdigit() says yes, int() says no
    ("arabic_indic_three", "\u0663"),  # int() accepts it, the contract does not
    ("thirteen_digits", "1" * 13),
    ("five_thousand_digits", "9" * 5000),
    ("negative", "-1"),
    ("spaces", " 5 "),
    ("plus", "+5"),
    ("float", "5.0"),
])
async def test_odd_numbers_in_parameters_are_400(client: httpx.AsyncClient, name: str,
                                                 value: str) -> None:
    real = (await stream_chat(client, {"message": "hi"}))[0].data
    resume = f"/chat/stream/{real['messageId']}"
    for response in [
        await client.get(f"/chat/history/{real['sessionId']}", params={"limit": value}),
        await client.get(resume, params={"sessionId": real["sessionId"], "lastEventId": value}),
    ]:
        assert response.status_code == 400, (name, response.status_code, response.text)
        assert_canonical_error(response)


async def raw_request(app: RunningApp, request: bytes) -> tuple[int, bytes]:
    """Send bytes no HTTP client library would send; return the status and the whole answer."""
    host, port = app.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(request)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(65536), 10)
    finally:
        writer.close()
    status = int(answer.split(b" ", 2)[1])
    return status, answer


@pytest.mark.parametrize("header_value", [
    b"\xb2",  # latin-1 superscript two: a "digit" to str.isdigit()
    b"\xd9\xa3",  # UTF-8 Arabic-Indic three
    b"5\rX-Injected: 1",
    b"5\x00",
    b"9" * 5000,
    b"",
])
async def test_hostile_last_event_id_headers_are_refused_or_ignored_never_500(
        chat_app: RunningApp, header_value: bytes) -> None:
    async with chat_app.client() as http:
        real = (await stream_chat(http, {"message": "hi"}))[0].data
    path = f"/chat/stream/{real['messageId']}?sessionId={real['sessionId']}".encode()
    status, answer = await raw_request(
        chat_app, b"GET " + path + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        b"Last-Event-ID: " + header_value + b"\r\n\r\n")
    head = answer.split(b"\r\n\r\n", 1)[0].lower()
    assert b"x-injected" not in head
    if header_value == b"":
        assert status == 200  # an empty Last-Event-ID means "from the start" (documented)
    else:
        # uvicorn refuses malformed HTTP (a bare CR, a NUL) itself with a plain 400, before the
        # app; everything that reaches the app is our canonical 400.
        assert status == 400, answer[:300]


async def test_crlf_in_a_raw_header_cannot_add_a_response_header(chat_app: RunningApp) -> None:
    status, answer = await raw_request(
        chat_app, b"GET /chat/history/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        b"Last-Event-ID: 1\r\nSet-Cookie: injected=1\r\n\r\n")
    head = answer.split(b"\r\n\r\n", 1)[0].lower()
    assert status == 400 and b"injected" not in head


# -- properties -------------------------------------------------------------------------------

# Every code point, lone surrogates included: what a JSON body with \\uXXXX escapes can carry.
any_text = st.text(st.characters(codec=None, min_codepoint=0, max_codepoint=0x10FFFF))


def is_valid_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(text=any_text, max_chars=st.integers(1, 50))
@example(text="\ud800", max_chars=5)
@example(text="\x00", max_chars=5)
@example(text="\x1c\x1d\x1e\x1f\x85\u2028", max_chars=10)
def test_validate_message_accepts_text_unchanged_or_refuses_it(text: str, max_chars: int) -> None:
    try:
        accepted = validate_message(text, max_chars)
    except BadRequest:
        assert (not text.strip() or len(text) > max_chars or "\x00" in text
                or not is_valid_unicode(text))
        return
    assert accepted is text
    assert text.strip() and len(text) <= max_chars and "\x00" not in text
    assert is_valid_unicode(text)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | any_text,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(any_text, children,
                                                                      max_size=4),
    max_leaves=10)


@settings(max_examples=300)
@given(body=json_values | st.fixed_dictionaries(
    {"message": json_values}, optional={"sessionId": json_values | st.uuids().map(str)}))
def test_parse_chat_request_returns_a_request_or_a_400_for_any_json(body: Any) -> None:
    try:
        parsed = parse_chat_request(body, MAX_CHARS)
    except BadRequest:
        return
    assert isinstance(parsed, ChatRequest)
    assert isinstance(body, dict) and parsed.message == body["message"]
    raw_session = body.get("sessionId")
    assert (parsed.session_id is None) == (raw_session is None)
    if parsed.session_id is not None:
        assert str(parsed.session_id) == raw_session.lower()


@settings(max_examples=300)
@given(raw=any_text | st.uuids().map(str) | st.uuids().map(lambda u: str(u).upper()))
@example(raw="12345678123456781234567812345678----")
@example(raw="\uff11" * 8 + "-1234-5678-1234-567812345678")
def test_only_the_canonical_uuid_form_is_an_id(raw: str) -> None:
    canonical = re.fullmatch(r"[0-9a-fA-F]{8}(-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}", raw)
    try:
        parsed = parse_uuid(raw, "sessionId")
    except BadRequest:
        assert canonical is None
        return
    assert canonical is not None and str(parsed) == raw.lower()


def request_with(header: bytes | None, query: str | None) -> Request:
    headers = [] if header is None else [(b"last-event-id", header)]
    query_string = b"" if query is None else urlencode({"lastEventId": query}).encode()
    return Request({"type": "http", "method": "GET", "path": "/", "headers": headers,
                    "query_string": query_string})


small_numbers = st.text("0123456789\u00b2\u0663", max_size=14)


@settings(max_examples=300)
@given(header=st.none() | st.binary(max_size=20)
       | small_numbers.map(lambda text: text.encode("latin-1", "replace")),
       query=st.none() | small_numbers | st.text(max_size=14))
@example(header=b"\xb2", query=None)
@example(header=b"3915", query="U\u00d1")
def test_last_event_id_is_a_small_whole_number_or_a_400(header: bytes | None,
                                                        query: str | None) -> None:
    """The header wins over the query parameter, and neither, when sent, may be garbage."""
    sent = [text for text in (None if header is None else header.decode("latin-1"), query)
            if text]
    try:
        value = last_event_id(request_with(header, query))
    except BadRequest:
        assert any(not re.fullmatch(r"[0-9]{1,12}", text) for text in sent)
        return
    assert all(re.fullmatch(r"[0-9]{1,12}", text) for text in sent)
    assert value == (int(sent[0]) if sent else 0)


def parse_frame(frame: bytes) -> list[tuple[str, str]]:
    """An SSE frame as a browser reads it: strict UTF-8, lines split on CR, LF or CRLF."""
    text = frame.decode("utf-8")  # strict: a browser would turn bad bytes into U+FFFD
    assert text.endswith("\n\n")
    fields = []
    for line in re.split(r"\r\n|\r|\n", text[:-2]):
        name, _, value = line.partition(":")
        fields.append((name, value.removeprefix(" ")))
    return fields


def utf16(text: str) -> bytes:
    """JavaScript strings are UTF-16 code units: equal here means equal in the browser."""
    return text.encode("utf-16-le", "surrogatepass")


@settings(max_examples=500)
@given(text=any_text, seq=st.integers(0, 10**12), kind=st.sampled_from(["token", "done", "meta"]))
@example(text="\ud83d", seq=1, kind="token")
@example(text="\ud83d\ude00", seq=1, kind="token")
@example(text="\n\nevent: done\ndata: x\r\n\r", seq=1, kind="token")
@example(text="\u2028\u2029\x85", seq=1, kind="token")
def test_any_text_round_trips_through_an_sse_event(text: str, seq: int, kind: str) -> None:
    event = encode_event(seq, kind, {"text": text})
    fields = parse_frame(event.frame)
    # Tokens and the end carry their id (a reconnect after the end is then told 204).
    expected = ([("id", str(seq))] if kind in ("token", "done") else []) + [("event", kind)]
    assert fields[:-1] == expected
    name, data = fields[-1]
    assert name == "data"
    assert utf16(json.loads(data)["text"]) == utf16(text)


# -- ids --------------------------------------------------------------------------------------


async def test_ids_are_version_4_uuids_drawn_from_the_os_random_source(
        client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch) -> None:
    drawn: list[bytes] = []
    real_urandom = os.urandom

    def recording_urandom(size: int) -> bytes:
        value = real_urandom(size)
        if size == 16:
            drawn.append(value)
        return value

    # uuid.uuid4() is UUID(bytes=os.urandom(16), version=4): the kernel's CSPRNG, not `random`.
    monkeypatch.setattr(os, "urandom", recording_urandom)
    ids: list[str] = []
    for _ in range(5):
        meta = (await stream_chat(client, {"message": "hi"}))[0].data
        ids += [meta["sessionId"], meta["messageId"], meta["userMessageId"]]
    monkeypatch.undo()
    assert len(set(ids)) == len(ids)
    for text in ids:
        made = uuid.UUID(text)
        assert made.version == 4 and made.variant == uuid.RFC_4122
        # The id is the OS's 16 random bytes with only the version and variant bits set.
        assert any(uuid.UUID(bytes=raw, version=4) == made for raw in drawn), text


async def test_another_sessions_message_as_a_history_cursor_is_404_like_an_unknown_one(
        client: httpx.AsyncClient) -> None:
    mine = (await stream_chat(client, {"message": "mine"}))[0].data
    theirs = (await stream_chat(client, {"message": "theirs"}))[0].data
    history = f"/chat/history/{mine['sessionId']}"
    foreign = await client.get(history, params={"before": theirs["messageId"]})
    unknown = await client.get(history, params={"before": str(uuid.uuid4())})
    assert foreign.status_code == unknown.status_code == 404
    assert foreign.json() == unknown.json()
    assert theirs["messageId"] not in foreign.text


# -- a hostile upstream ----------------------------------------------------------------------


async def test_a_hostile_upstreams_answer_is_cut_at_the_servers_caps(
        client: httpx.AsyncClient, upstream: FakeUpstream, query: Any) -> None:
    """MAX_TOKENS is the upstream's promise; the server keeps its own caps whatever it sends."""
    max_chars, max_events = answer_caps(500)  # the test app's MAX_TOKENS
    upstream.queue(Reply(tokens=["x" * 1000] * 4000),  # 4 MB in big deltas
                   Reply(tokens=["y"] * (max_events * 3)))  # many tiny deltas
    for expected_chars in (max_chars, None):
        events = await stream_chat(client, {"message": "hi"})
        tokens = [e for e in events if e.event == "token"]
        done = events[-1]
        assert done.event == "done"
        assert len(tokens) <= max_events
        assert len(done.data["text"]) <= max_chars
        if expected_chars is not None:
            assert len(done.data["text"]) == expected_chars
        saved = query("SELECT length(text) FROM messages WHERE id = %s",
                      uuid.UUID(done.data["messageId"]))
        assert saved == [(len(done.data["text"]),)]
