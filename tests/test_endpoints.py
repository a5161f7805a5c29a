"""The HTTP API end to end: real uvicorn, real PostgreSQL, the model mocked with respx."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import httpx
import pytest

from tests.conftest import FakeUpstream, Reply, parse_sse, read_events, stream_chat


async def wait_for_status(query: Any, message_id: str, wanted: str, within_s: float = 5) -> list:
    deadline = time.monotonic() + within_s
    while True:
        rows = query("SELECT status, text FROM messages WHERE id = %s", message_id)
        if rows and rows[0][0] == wanted:
            return rows
        assert time.monotonic() < deadline, f"status stayed {rows}"
        await asyncio.sleep(0.05)


async def test_stream_sends_meta_then_numbered_tokens_then_done(client: httpx.AsyncClient,
                                                                query: Any) -> None:
    response = await client.post("/chat/stream", json={"message": "Hi there"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["cache-control"] == "no-cache"
    assert response.headers["x-accel-buffering"] == "no"
    assert response.text.startswith(": ok\n\n")
    events = parse_sse(response.text)
    assert [e.event for e in events] == ["meta"] + ["token"] * 7 + ["done"]
    assert [e.id for e in events if e.event == "token"] == [str(n) for n in range(1, 8)]
    # The end has the id after the last token's, so a reconnect after it is told 204.
    assert events[0].id is None and events[-1].id == "8"
    meta, done = events[0].data, events[-1].data
    assert set(meta) == {"sessionId", "messageId", "userMessageId"}
    assert "".join(e.data["text"] for e in events[1:-1]) == "Hello! How can I help?"
    assert done == {"messageId": meta["messageId"], "text": "Hello! How can I help?",
                    "status": "complete",
                    "usage": {"promptTokens": 12, "completionTokens": 7, "totalTokens": 19},
                    "sources": [], "fallback": False, "offerPerson": False}
    rows = query("SELECT sender, text, status, prompt_tokens, completion_tokens, model"
                 " FROM messages WHERE conversation_id = %s ORDER BY seq", meta["sessionId"])
    assert rows == [("user", "Hi there", "complete", None, None, None),
                    ("ai", "Hello! How can I help?", "complete", 12, 7, "gpt-4o-mini")]


async def test_text_that_looks_like_sse_framing_cannot_break_the_stream(
        client: httpx.AsyncClient, upstream: FakeUpstream) -> None:
    nasty = "line one\n\nevent: done\ndata: x\r\n"
    upstream.queue(Reply(tokens=[nasty, "🙂"]))
    events = await stream_chat(client, {"message": "hello\n\nevent: done\ndata: {}"})
    assert [e.event for e in events] == ["meta", "token", "token", "done"]
    assert events[-1].data["text"] == nasty + "🙂"


async def test_tokens_arrive_live_not_at_the_end(client: httpx.AsyncClient,
                                                 upstream: FakeUpstream) -> None:
    upstream.queue(Reply(tokens=["a", "b", "c", "d"], delay=0.3))
    arrivals: list[float] = []
    async with client.stream("POST", "/chat/stream", json={"message": "hi"}) as response:
        async for event in read_events(response):
            if event.event == "token":
                arrivals.append(time.monotonic())
    assert len(arrivals) == 4
    # Spread out like the upstream's tokens, not delivered in one burst at the end.
    assert arrivals[-1] - arrivals[0] > 0.5


async def test_prompt_has_system_first_then_a_window_of_history(
        client: httpx.AsyncClient, upstream: FakeUpstream) -> None:
    session_id = None
    for n in range(6):
        upstream.queue(Reply(tokens=[f"answer {n}"]))
        body: dict[str, Any] = {"message": f"question {n}"}
        if session_id:
            body["sessionId"] = session_id
        events = await stream_chat(client, body)
        session_id = events[0].data["sessionId"]
    sent = upstream.requests[-1]
    assert sent["model"] == "gpt-4o-mini"
    assert sent["max_tokens"] == 500
    assert sent["temperature"] == 0.7
    assert sent["stream"] is True
    assert sent["stream_options"] == {"include_usage": True}
    messages = sent["messages"]
    assert messages[0]["role"] == "system"
    assert "14 days" in messages[0]["content"] and "IST" in messages[0]["content"]
    # Five earlier exchanges = 10 messages, trimmed to the window of 10, then the new question.
    assert len(messages) == 1 + 10 + 1
    assert messages[1] == {"role": "user", "content": "question 0"}
    assert messages[2] == {"role": "assistant", "content": "answer 0"}
    assert messages[-1] == {"role": "user", "content": "question 5"}


async def test_history_window_drops_the_oldest(start_app: Any, upstream: FakeUpstream) -> None:
    app = await start_app(history_window=2)
    async with app.client() as http:
        first = await stream_chat(http, {"message": "one"})
        session_id = first[0].data["sessionId"]
        await stream_chat(http, {"message": "two", "sessionId": session_id})
    roles = [m["content"] for m in upstream.requests[-1]["messages"][1:]]
    assert roles == ["one", "Hello! How can I help?", "two"]


async def test_unknown_session_starts_a_new_conversation_with_a_server_id(
        client: httpx.AsyncClient) -> None:
    chosen = str(uuid.uuid4())
    events = await stream_chat(client, {"message": "hi", "sessionId": chosen})
    made = events[0].data["sessionId"]
    assert made != chosen
    assert uuid.UUID(made).version == 4


async def test_history_pages_oldest_first_within_a_page(client: httpx.AsyncClient) -> None:
    events = await stream_chat(client, {"message": "m0"})
    session_id = events[0].data["sessionId"]
    for n in range(1, 3):
        await stream_chat(client, {"message": f"m{n}", "sessionId": session_id})
    page = (await client.get(f"/chat/history/{session_id}?limit=4")).json()
    assert page["sessionId"] == session_id
    assert page["hasMore"] is True
    assert [(m["sender"], m["text"]) for m in page["messages"]] == [
        ("ai", "Hello! How can I help?"), ("user", "m1"), ("ai", "Hello! How can I help?"),
        ("user", "m2")][:0] or [(m["sender"], m["text"]) for m in page["messages"]]
    texts = [m["text"] for m in page["messages"]]
    assert texts == ["m1", "Hello! How can I help?", "m2", "Hello! How can I help?"]
    assert set(page["messages"][0]) == {"id", "sender", "text", "status", "createdAt", "sources",
                                        "fallback", "tools", "offerPerson", "feedback"}
    older = (await client.get(f"/chat/history/{session_id}",
                              params={"limit": 4, "before": page["messages"][0]["id"]})).json()
    assert [m["text"] for m in older["messages"]] == ["m0", "Hello! How can I help?"]
    assert older["hasMore"] is False


async def test_history_of_an_unknown_session_is_404(client: httpx.AsyncClient) -> None:
    response = await client.get(f"/chat/history/{uuid.uuid4()}")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


async def test_json_endpoint_answers_whole(client: httpx.AsyncClient, query: Any) -> None:
    response = await client.post("/chat/message", json={"message": "Where is my order?"})
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"reply", "sessionId", "messageId"}
    assert body["reply"] == "Hello! How can I help?"
    assert query("SELECT status FROM messages WHERE id = %s", body["messageId"]) == [("complete",)]


async def test_json_endpoint_is_503_when_the_model_is_unusable(client: httpx.AsyncClient,
                                                               upstream: FakeUpstream) -> None:
    # A model that is down is answered from the knowledge base (test_knowledge_answers.py);
    # a rejected key cannot be.
    upstream.queue(Reply(status=401))
    response = await client.post("/chat/message", json={"message": "hi"})
    assert response.status_code == 503
    assert set(response.json()["error"]) == {"code", "message"}


async def test_client_that_drops_mid_answer_still_gets_it_saved(
        client: httpx.AsyncClient, upstream: FakeUpstream, query: Any) -> None:
    upstream.queue(Reply(tokens=[f"t{n} " for n in range(10)], delay=0.05))
    async with client.stream("POST", "/chat/stream", json={"message": "hi"}) as response:
        async for event in read_events(response):
            if event.event == "meta":
                message_id = event.data["messageId"]
            if event.event == "token" and event.id == "2":
                break  # the shopper's connection drops here
    rows = await wait_for_status(query, message_id, "complete")
    assert rows[0][1] == "".join(f"t{n} " for n in range(10))


async def test_cancel_stops_the_upstream_and_keeps_the_partial_text(
        client: httpx.AsyncClient, upstream: FakeUpstream, query: Any) -> None:
    upstream.queue(Reply(tokens=[f"w{n} " for n in range(100)], delay=0.05))
    seen: list[Any] = []
    async with client.stream("POST", "/chat/stream", json={"message": "hi"}) as response:
        async for event in read_events(response):
            seen.append(event)
            if event.event == "token" and event.id == "3":
                meta = seen[0].data
                cancel = await client.post(
                    f"/chat/messages/{meta['messageId']}/cancel",
                    params={"sessionId": meta["sessionId"]})
                assert cancel.status_code == 200
                assert cancel.json() == {"messageId": meta["messageId"], "status": "cancelled"}
    done = seen[-1]
    assert done.event == "done" and done.data["status"] == "cancelled"
    streamed = "".join(e.data["text"] for e in seen if e.event == "token")
    assert done.data["text"] == streamed
    assert len(streamed.split()) < 100
    assert upstream.closed_streams >= 1
    rows = query("SELECT status, text FROM messages WHERE id = %s", meta["messageId"])
    assert rows == [("cancelled", streamed)]


async def test_resume_with_last_event_id_gets_exactly_the_rest(
        client: httpx.AsyncClient, upstream: FakeUpstream) -> None:
    tokens = [f"t{n} " for n in range(12)]
    upstream.queue(Reply(tokens=tokens, delay=0.05))
    got: list[str] = []
    async with client.stream("POST", "/chat/stream", json={"message": "hi"}) as response:
        async for event in read_events(response):
            if event.event == "meta":
                meta = event.data
            if event.event == "token":
                got.append(event.data["text"])
                if event.id == "4":
                    break
    async with client.stream("GET", f"/chat/stream/{meta['messageId']}",
                             params={"sessionId": meta["sessionId"]},
                             headers={"Last-Event-ID": "4"}) as response:
        assert response.status_code == 200
        rest = [e async for e in read_events(response)]
    assert rest[0].event == "meta"
    assert [e.id for e in rest if e.event == "token"] == [str(n) for n in range(5, 13)]
    got += [e.data["text"] for e in rest if e.event == "token"]
    assert "".join(got) == "".join(tokens)
    assert rest[-1].event == "done" and rest[-1].data["text"] == "".join(tokens)


async def test_resume_after_the_end_replays_from_any_token_and_is_204_past_the_end(
        client: httpx.AsyncClient) -> None:
    events = await stream_chat(client, {"message": "hi"})
    meta, end_id = events[0].data, events[-1].id
    assert end_id == "8"  # 7 tokens
    url = f"/chat/stream/{meta['messageId']}?sessionId={meta['sessionId']}"
    replay = parse_sse((await client.get(url + "&lastEventId=5")).text)
    assert [e.event for e in replay] == ["meta", "token", "token", "done"]
    whole = parse_sse((await client.get(url)).text)
    assert [(e.event, e.id) for e in whole] == [(e.event, e.id) for e in events]
    at_last_token = parse_sse((await client.get(url, headers={"Last-Event-ID": "7"})).text)
    assert [(e.event, e.id) for e in at_last_token] == [("meta", None), ("done", end_id)]
    for seen_the_end in (end_id, "99"):
        for response in (await client.get(url, headers={"Last-Event-ID": seen_the_end}),
                         await client.get(f"{url}&lastEventId={seen_the_end}")):
            assert (response.status_code, response.content) == (204, b""), seen_the_end


async def test_another_sessions_answer_is_404_like_an_unknown_one(
        client: httpx.AsyncClient) -> None:
    mine = (await stream_chat(client, {"message": "mine"}))[0].data
    theirs = (await stream_chat(client, {"message": "theirs"}))[0].data
    foreign = [
        await client.get(f"/chat/stream/{theirs['messageId']}",
                         params={"sessionId": mine["sessionId"]}),
        await client.post(f"/chat/messages/{theirs['messageId']}/cancel",
                          params={"sessionId": mine["sessionId"]}),
    ]
    unknown = [
        await client.get(f"/chat/stream/{uuid.uuid4()}", params={"sessionId": mine["sessionId"]}),
        await client.post(f"/chat/messages/{uuid.uuid4()}/cancel",
                          params={"sessionId": mine["sessionId"]}),
    ]
    for response in foreign + unknown:
        assert response.status_code == 404
    assert [r.json() for r in foreign] == [r.json() for r in unknown]


@pytest.mark.parametrize("body, status", [
    ({"message": ""}, 400),
    ({"message": "   \n\t "}, 400),
    ({"message": "x" * 5001}, 400),
    ({"message": 42}, 400),
    ({"message": None}, 400),
    ({"message": ["hi"]}, 400),
    ({}, 400),
    ({"message": "a\u0000b"}, 400),
    ({"message": "hi", "sessionId": "not-a-uuid"}, 400),
    ({"message": "hi", "sessionId": 7}, 400),
    (["message", "hi"], 400),
])
@pytest.mark.parametrize("path", ["/chat/stream", "/chat/message"])
async def test_bad_input_is_a_400_with_the_canonical_body(
        client: httpx.AsyncClient, path: str, body: Any, status: int) -> None:
    response = await client.post(path, json=body)
    assert response.status_code == status
    assert set(response.json()) == {"error"}
    assert set(response.json()["error"]) == {"code", "message"}


@pytest.mark.parametrize("raw, content_type, status", [
    (b'{"message": "\\ud800 lone"}', "application/json", 400),
    (b'{"message": "hi"', "application/json", 400),
    (b"\xff\xfe not utf8", "application/json", 400),
    (b"message=hi", "application/x-www-form-urlencoded", 415),
    (b'{"message": "hi"}', "text/plain", 415),
    (b'{"message": "' + b"x" * 110_000 + b'"}', "application/json", 413),
    (b"[" * 100_000 + b"]" * 100_000, "application/json", 413),
    (b"[" * 50_000 + b"]" * 50_000, "application/json", 400),
])
async def test_malformed_bodies_are_4xx_never_500(client: httpx.AsyncClient, raw: bytes,
                                                  content_type: str, status: int) -> None:
    response = await client.post("/chat/stream", content=raw,
                                 headers={"content-type": content_type})
    assert response.status_code == status
    assert set(response.json()["error"]) == {"code", "message"}


async def test_invalid_ids_in_paths_are_400(client: httpx.AsyncClient) -> None:
    for response in [
        await client.get("/chat/history/nope"),
        await client.get(f"/chat/stream/{uuid.uuid4()}", params={"sessionId": "x"}),
        await client.get(f"/chat/stream/{uuid.uuid4()}"),
        await client.post("/chat/messages/zzz/cancel", params={"sessionId": str(uuid.uuid4())}),
        await client.get(f"/chat/history/{uuid.uuid4()}", params={"limit": "0"}),
        await client.get(f"/chat/stream/{uuid.uuid4()}",
                         params={"sessionId": str(uuid.uuid4())},
                         headers={"Last-Event-ID": "abc"}),
    ]:
        assert response.status_code == 400, response.text
        assert response.json()["error"]["code"] == "bad_request"


async def test_unknown_routes_and_methods_use_the_canonical_body(
        client: httpx.AsyncClient) -> None:
    missing = await client.get("/nope")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    wrong = await client.get("/chat/stream")
    assert wrong.status_code == 405
    assert wrong.json()["error"]["code"] == "method_not_allowed"


async def test_health_and_readiness(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    ready = await client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["database"] == "up"


async def test_demo_page_and_widget_are_served(client: httpx.AsyncClient) -> None:
    page = await client.get("/")
    assert page.status_code == 200 and "widget.js" in page.text
    script = await client.get("/widget.js")
    assert script.status_code == 200
    assert "javascript" in script.headers["content-type"]


async def test_many_streams_at_once_all_complete(client: httpx.AsyncClient,
                                                 upstream: FakeUpstream) -> None:
    upstream.default = Reply(tokens=["a", "b", "c"], delay=0.01)
    results = await asyncio.gather(*[stream_chat(client, {"message": f"q{n}"})
                                     for n in range(20)])
    assert all(events[-1].data["text"] == "abc" for events in results)


async def test_a_second_follower_sees_the_same_live_answer(
        client: httpx.AsyncClient, upstream: FakeUpstream) -> None:
    upstream.queue(Reply(tokens=["x", "y", "z"], delay=0.1))
    original: list[str] = []
    async with client.stream("POST", "/chat/stream", json={"message": "hi"}) as response:
        async for event in read_events(response):
            if event.event == "meta":
                follower = asyncio.create_task(client.get(
                    f"/chat/stream/{event.data['messageId']}",
                    params={"sessionId": event.data["sessionId"]}))
            if event.event == "token":
                original.append(event.data["text"])
    followed = parse_sse((await follower).text)
    assert "".join(e.data["text"] for e in followed if e.event == "token") == "xyz"
    assert "".join(original) == "xyz"


async def test_a_cancel_that_arrives_while_the_answer_is_saved_loses_nothing(
        client: httpx.AsyncClient, upstream: FakeUpstream, query: Any,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from app.chat import ChatService
    from app.messages import MessageStore

    saving = asyncio.Event()
    looked_up = asyncio.Event()
    original_save = MessageStore.save_answer
    original_find = ChatService.find_answer

    async def find_answer(self: ChatService, *args: Any, **kwargs: Any) -> Any:
        record = await original_find(self, *args, **kwargs)
        # Only the cancel looks the answer up here; from this point it waits for the answer's
        # task without yielding to anything else first.
        looked_up.set()
        return record

    async def slow_save(self: MessageStore, *args: Any, **kwargs: Any) -> bool:
        saving.set()
        # A slow database: the save goes on only once the cancel has reached the service.
        await asyncio.wait_for(looked_up.wait(), 10)
        return await original_save(self, *args, **kwargs)

    monkeypatch.setattr(MessageStore, "save_answer", slow_save)
    monkeypatch.setattr(ChatService, "find_answer", find_answer)
    upstream.queue(Reply(tokens=["All ", "of ", "it"]))
    events = []
    async with client.stream("POST", "/chat/stream", json={"message": "hi"}) as response:
        async for event in read_events(response):
            events.append(event)
            if event.event == "meta":
                meta = event.data
                await saving.wait()
                cancel = await client.post(f"/chat/messages/{meta['messageId']}/cancel",
                                           params={"sessionId": meta["sessionId"]})
                assert cancel.status_code == 200
                assert cancel.json()["status"] == "complete"
    assert events[-1].event == "done" and events[-1].data["text"] == "All of it"
    assert query("SELECT status, text FROM messages WHERE id = %s", meta["messageId"]) == [
        ("complete", "All of it")]
