"""The API contract as an OpenAPI 3.1 document, served at GET /openapi.json.

Written by hand, as a plain dict, so it reads like documentation and changes in review like
code. Tests hold it to the app both ways: every route is in it and every path in it is a route,
and schemathesis checks that the app answers what it says (tests/test_openapi.py).

Two SSE endpoints answer `text/event-stream`; OpenAPI 3.1 has no schema for a stream of events,
so their descriptions list the events, `StreamEvent` is the schema of one event (read as
{"event", "data", "id"}) and the JSON in each `data` has its schema under
`components/schemas` (`MetaEvent`, `TokenEvent`, `ToolEvent`, `DoneEvent`, `ErrorEvent`).
"""

from __future__ import annotations

import functools
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .answer_events import ORDER_SUMMARY_SCHEMA, PAYLOAD_SCHEMAS, UUID_SCHEMA
from .endpoints import HISTORY_PAGE_MAX
from .feedback import MAX_COMMENT_CHARS
from .services import services
from .shopper_email import EMAIL_MAX_CHARS, EMAIL_PATTERN, PAGE_URL_MAX_CHARS, TOKEN_PATTERN

UUID = UUID_SCHEMA


def _ref(kind: str, name: str) -> dict[str, str]:
    return {"$ref": f"#/components/{kind}/{name}"}


def _json(schema_name: str) -> dict[str, Any]:
    return {"application/json": {"schema": _ref("schemas", schema_name)}}


STREAM_DESCRIPTION = """\
A stream of Server-Sent Events. A comment line `: ok` comes at once, and a comment every 15 s
keeps proxies from closing an idle connection. Then, in order:

- `event: meta` with `data:` a `MetaEvent` (the session, the answer's id, the shopper's message id);
- `event: token` with `id: 1`, `id: 2`, ... and `data:` a `TokenEvent` (the next piece of text);
- between tokens, `event: tool` numbered with them, `data:` a `ToolEvent`: the answer looked up
  an order (the widget shows an order card; only the shopper's own orders, ever);
- exactly one of `event: done` with `data:` a `DoneEvent` (the whole answer, its status and token
  usage), or `event: error` with `data:` an `ErrorEvent` (a code, a message for the shopper and
  whether asking again may work).

Tokens carry an `id:` line, so a browser's `Last-Event-ID` is the last token it has. The end
carries one too, the id after the last token's (`done`, and an `error` that ends the answer), so
an EventSource that reconnects after the end is answered 204 and stops. An `error` that asks the
client to follow the answer again (`interrupted` or `unavailable` with `retryable: true`) has no
`id:`: the client resumes from its last token. A finished answer replayed from the database
(after its stream expired) sends its whole text as token 1 and its end with id 999999999999.
Every `data:` is one line of JSON: text that looks like SSE framing cannot break the stream.
Once the stream has started, every failure is an `error` event followed by a clean end.
"""


CONVERSATION_STREAM_DESCRIPTION = """\
Server-Sent Events about one conversation, every one with an `id:` (1, 2, 3, ... in one
sequence per conversation), so `Last-Event-ID` resumes it on any instance. It never ends by
itself; the widget holds it while a person is asked for (`waiting`) or has the conversation
(`human`), and while its panel is open in a visible tab (so an agent who takes over a bot-only
conversation appears at once); otherwise it is closed. The widget opens it with the history's
`streamEventId` as `lastEventId`, and reopens it from the last id it saw, so nothing is missed
or shown twice.

- `event: message`, `data:` a message as in the history (`id`, `sender` user|ai|agent, `text`;
  an agent's with `agentName` and `createdAt`);
- `event: status`, `data:` `{"status": "bot"|"waiting"|"human"|"resolved", "agentName"}`;
- `event: typing`, `data:` `{"sender": "user"|"agent", "agentName"?, "at"}` (`at`: server time
  in ms; a typing event older than 5 s is never sent, so a resume shows no stale "is typing").

A reload reads the history, then opens the stream with the history's `streamEventId` as
`lastEventId`, so nothing already shown comes again.

An answer's tokens stay on its own stream (POST /chat/stream).
"""


# OpenAPI before 3.2 reads the `schema` of text/event-stream as the schema of one event, seen as
# {"event", "data", "id"?}; `contentSchema` describes the JSON inside `data`.
EVENT_STREAM = {"text/event-stream": {"schema": {"$ref": "#/components/schemas/StreamEvent"}}}


EVENT_IDS: dict[str, bool | None] = {"meta": False, "token": True, "tool": True, "done": True,
                                     "error": None}


def _event(kind: str, data_schema: str, *, numbered: bool | None = False) -> dict[str, Any]:
    """`numbered`: True, the event has an `id:`; None, it may have one; False, it has none."""
    event: dict[str, Any] = {
        "type": "object",
        "required": ["event", "data"] + (["id"] if numbered else []),
        "properties": {
            "event": {"const": kind},
            "data": {"type": "string", "contentMediaType": "application/json",
                     "contentSchema": _ref("schemas", data_schema)},
        },
    }
    if numbered is not False:
        event["properties"]["id"] = {"type": "string", "pattern": "^[1-9][0-9]{0,11}$"}
    return event


# What a client can do next with the ids in an answer (schemathesis follows these, too).
ANSWER_LINKS = {
    "History": {"operationId": "history",
                "parameters": {"sessionId": "$response.body#/sessionId"}},
    "Resume": {"operationId": "resumeStream",
               "parameters": {"messageId": "$response.body#/messageId",
                              "sessionId": "$response.body#/sessionId"}},
    "Cancel": {"operationId": "cancelAnswer",
               "parameters": {"messageId": "$response.body#/messageId",
                              "sessionId": "$response.body#/sessionId"}},
}


def _error_responses(*statuses: int) -> dict[str, Any]:
    return {str(status): _ref("responses", _ERROR_RESPONSE_NAMES[status]) for status in statuses}


_ERROR_RESPONSE_NAMES = {
    400: "BadRequest",
    401: "InvalidCustomerToken",
    403: "OriginNotAllowed",
    404: "NotFound",
    409: "Conflict",
    413: "PayloadTooLarge",
    415: "UnsupportedMediaType",
    429: "RateLimited",
    503: "ServiceUnavailable",
    504: "GatewayTimeout",
}


def _error_response(description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {"description": description, "content": _json("Error")}
    if headers:
        response["headers"] = headers
    return response


def _chat_request_schema(max_message_chars: int) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["message"],
        "properties": {
            "message": {
                "type": "string",
                "minLength": 1,
                "maxLength": max_message_chars,
                # Not blank, and no NUL (PostgreSQL text cannot hold it). Lone surrogates (an
                # escaped \\ud800 with no partner) are refused too; JSON Schema cannot say so.
                "pattern": "^[^\\x00]*[^\\s\\x00][^\\x00]*$",
                "description": "What the shopper typed: not blank, at most MAX_MESSAGE_CHARS"
                               " characters, no NUL character, valid Unicode.",
            },
            "sessionId": {
                "oneOf": [UUID, {"type": "null"}],
                "description": "The conversation to continue, from an earlier `meta` event. An"
                               " unknown id starts a new conversation with an id the server makes.",
            },
            "siteKey": {
                "oneOf": [{"type": "string"}, {"type": "null"}],
                "description": SITE_KEY_DESCRIPTION,
            },
            "customerToken": {
                "oneOf": [{"type": "string"}, {"type": "null"}],
                "description": "The logged-in customer, signed by the store's server: an HS256"
                               " JWT with sub, email, iat and exp (at most 24 h), signed with the"
                               " site's identity secret (README \"Who the shopper is\"). Absent"
                               " or null: an anonymous shopper. Invalid: 401.",
            },
        },
    }


SITE_KEY_DESCRIPTION = ("The site (store) the request is for: the embed snippet's `data-site`."
                        " Absent, null or empty: the deployment's default site. A key no site"
                        " has is a 404; a page on an origin the site does not allow is a 403."
                        " Every id is looked up within the site: another site's conversation"
                        " or answer is a 404, exactly like one that does not exist.")


def _site_query() -> dict[str, Any]:
    return {"name": "siteKey", "in": "query", "required": False, "schema": {"type": "string"},
            "description": SITE_KEY_DESCRIPTION}


def _session_query(description: str) -> dict[str, Any]:
    return {"name": "sessionId", "in": "query", "required": True, "schema": UUID,
            "description": description}


def _message_path(description: str) -> dict[str, Any]:
    return {"name": "messageId", "in": "path", "required": True, "schema": UUID,
            "description": description}


@functools.cache
def build_openapi(max_message_chars: int) -> dict[str, Any]:
    """The document for an app whose MAX_MESSAGE_CHARS is `max_message_chars`."""
    # Every endpoint but the health checks counts against the per-IP limit (429), and every
    # /chat/ endpoint refuses a browser page on an origin outside ALLOWED_ORIGINS (403).
    # 404: a siteKey that names no site.
    chat_refusals = _error_responses(400, 401, 403, 404, 413, 415, 429, 503)
    chat_reads = _error_responses(400, 403, 404, 429, 503)
    # History, resume, cancel and the conversation's own reads: their own share of the
    # database (503 lookups_busy).
    lookup_reads = {**_error_responses(400, 403, 404, 429),
                    "503": _ref("responses", "LookupUnavailable")}
    limited = _error_responses(429)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Support chat",
            "version": "1.0.0",
            "description": "AI live-chat support for an online store: answers stream over"
                           " Server-Sent Events and both sides of every conversation are kept."
                           " Every error has the body"
                           ' `{"error": {"code": "...", "message": "..."}}`.',
        },
        "paths": {
            "/chat/stream": {
                "post": {
                    "operationId": "chatStream",
                    "summary": "Ask a question; the answer streams back as it is written.",
                    "description": "Refusals (bad input, too large, not JSON, rate limited,"
                                   " unavailable) are plain HTTP errors before any stream starts."
                                   " The answer belongs to the server: if the connection drops,"
                                   " it still completes and is saved. Every POST starts a new"
                                   " answer (a `Last-Event-ID` header is ignored): to pick an"
                                   " answer up again, GET /chat/stream/{messageId}.",
                    "requestBody": {"required": True, "content": _json("ChatRequest")},
                    "responses": {
                        "200": {"description": STREAM_DESCRIPTION, "content": EVENT_STREAM},
                        **chat_refusals,
                    },
                },
            },
            "/chat/message": {
                "post": {
                    "operationId": "chatMessage",
                    "summary": "Ask a question; the whole answer comes back at once.",
                    "requestBody": {"required": True, "content": _json("ChatRequest")},
                    "responses": {
                        "200": {"description": "The answer.", "content": _json("ChatReply"),
                                "links": ANSWER_LINKS},
                        **chat_refusals,
                        **_error_responses(504),
                    },
                },
            },
            "/chat/stream/{messageId}": {
                "get": {
                    "operationId": "resumeStream",
                    "summary": "Follow an answer again, from after the last token received.",
                    "description": "The events after the id the client sends (`Last-Event-ID`,"
                                   " else `lastEventId`, else from the start). `meta` always comes"
                                   " first; a finished answer replays to its end; one still being"
                                   " written is followed live. An id at or past the last token"
                                   " gets `meta` and the end. An id at or past the end's own id"
                                   " (the client has seen the end: an EventSource reconnecting"
                                   " after `done`) gets 204, which stops an EventSource."
                                   " Another session's answer is a 404, exactly like one that"
                                   " does not exist.",
                    "parameters": [
                        _message_path("The answer's id (`messageId` of the `meta` event)."),
                        _session_query("The session the answer belongs to."),
                        _site_query(),
                        {"name": "Last-Event-ID", "in": "header", "required": False,
                         "schema": {"type": "string", "pattern": "^[0-9]{0,12}$"},
                         "description": "The id of the last event received (a token, or the"
                                        " end); the browser sends it when an EventSource"
                                        " reconnects. Empty or absent: from the start."},
                        {"name": "lastEventId", "in": "query", "required": False,
                         "schema": {"type": "string", "pattern": "^[0-9]{0,12}$"},
                         "description": "The same as Last-Event-ID, for clients that cannot set"
                                        " headers; the header wins when both are sent."},
                    ],
                    "responses": {
                        "200": {"description": STREAM_DESCRIPTION, "content": EVENT_STREAM},
                        "204": {"description": "The answer has ended and the client has its end"
                                               " (its id is at or past the end's id): nothing to"
                                               " send. An EventSource stops reconnecting."},
                        **lookup_reads,
                    },
                },
            },
            "/chat/messages/{messageId}/cancel": {
                "post": {
                    "operationId": "cancelAnswer",
                    "summary": "Stop an answer; the text written so far is kept as cancelled.",
                    "parameters": [
                        _message_path("The answer's id."),
                        _session_query("The session the answer belongs to."),
                        _site_query(),
                    ],
                    "responses": {
                        "200": {"description": "The answer's status after the cancel (an answer"
                                               " that had already ended keeps its status).",
                                "content": _json("CancelResult")},
                        **lookup_reads,
                    },
                },
            },
            "/chat/history/{sessionId}": {
                "get": {
                    "operationId": "history",
                    "summary": "A page of a conversation, oldest first within the page.",
                    "parameters": [
                        {"name": "sessionId", "in": "path", "required": True, "schema": UUID,
                         "description": "The conversation's id."},
                        {"name": "limit", "in": "query", "required": False,
                         "schema": {"type": "integer", "minimum": 1,
                                    "maximum": HISTORY_PAGE_MAX, "default": 50},
                         "description": "How many messages, at most."},
                        {"name": "before", "in": "query", "required": False, "schema": UUID,
                         "description": "A message id: the page ends just before it (the first"
                                        " message of the previous page)."},
                        _site_query(),
                    ],
                    "responses": {
                        "200": {"description": "The page.", "content": _json("HistoryPage")},
                        **lookup_reads,
                    },
                },
            },
            "/chat/hours": {
                "get": {
                    "operationId": "supportHours",
                    "summary": "Whether a person can reply now, and from when: the site's"
                               " support hours read as a weekly schedule, for the widget to"
                               " show in the shopper's own time zone.",
                    "parameters": [_site_query()],
                    "responses": {
                        "200": {"description": "The status; `known` is false when the"
                                               " profile's hours do not read as days and one"
                                               " daily window.",
                                "content": _json("SupportHours")},
                        **chat_reads,
                    },
                },
            },
            "/chat/conversations/{sessionId}/handoff": {
                "post": {
                    "operationId": "handoff",
                    "summary": "The shopper asks for a person: the conversation waits for one.",
                    "description": "The conversation's status becomes `waiting` (it stays"
                                   " `waiting`, or `human`, if it already is) and the store's"
                                   " staff see it in the inbox at /admin. While a person has it"
                                   " (`human`), a shopper's message is saved and answered by"
                                   " that person: its stream is `meta` and a `done` with status"
                                   " `forwarded` and no text.",
                    "parameters": [
                        {"name": "sessionId", "in": "path", "required": True, "schema": UUID,
                         "description": "The conversation's id."},
                        _site_query(),
                    ],
                    "responses": {
                        "200": {"description": "The conversation's status now.",
                                "content": _json("Handoff")},
                        **lookup_reads,
                    },
                },
            },
            "/chat/conversations/{sessionId}/stream": {
                "get": {
                    "operationId": "conversationStream",
                    "summary": "The conversation, live, while a person is asked for or involved.",
                    "description": CONVERSATION_STREAM_DESCRIPTION,
                    "parameters": [
                        {"name": "sessionId", "in": "path", "required": True, "schema": UUID,
                         "description": "The conversation's id."},
                        _site_query(),
                        {"name": "Last-Event-ID", "in": "header", "required": False,
                         "schema": {"type": "string", "pattern": "^[0-9]{1,12}$"},
                         "description": "The id of the last event the client has."},
                        {"name": "lastEventId", "in": "query", "required": False,
                         "schema": {"type": "string", "pattern": "^[0-9]{1,12}$"},
                         "description": "The same, for clients that cannot set headers."},
                    ],
                    "responses": {
                        "200": {"description": "A stream of Server-Sent Events.",
                                "content": EVENT_STREAM},
                        **lookup_reads,
                    },
                },
            },
            "/chat/messages/{messageId}/feedback": {
                "post": {
                    "operationId": "messageFeedback",
                    "summary": "A thumbs up or down on a finished answer, with an optional comment.",
                    "description": "One vote per answer: voting again replaces it (the history"
                                   " shows the latest as `feedback`). Only a finished answer can"
                                   " be rated: the assistant's (status `complete`) or an agent's;"
                                   " a shopper's own message, or an answer still streaming or"
                                   " that failed, is a 409. Another session's message is a 404.",
                    "parameters": [
                        _message_path("The answer's id (`messageId` of the `meta` event, or a"
                                      " message's `id` in the history)."),
                        _session_query("The session the answer belongs to."),
                        _site_query(),
                    ],
                    "requestBody": {"required": True, "content": _json("FeedbackRequest")},
                    "responses": {
                        "200": {"description": "The vote as kept.",
                                "content": _json("Feedback")},
                        **_error_responses(409, 413, 415),
                        **chat_reads,
                    },
                },
            },
            "/chat/conversations/{sessionId}/csat": {
                "post": {
                    "operationId": "conversationCsat",
                    "summary": "\"Did we solve your problem?\": the shopper's yes or no, once the"
                               " conversation is resolved.",
                    "description": "The widget asks it once, after a person resolved the"
                                   " conversation. Answering again replaces the answer. A"
                                   " conversation that is not resolved is a 409.",
                    "parameters": [
                        {"name": "sessionId", "in": "path", "required": True, "schema": UUID,
                         "description": "The conversation's id."},
                        _site_query(),
                    ],
                    "requestBody": {"required": True, "content": _json("CsatRequest")},
                    "responses": {
                        "200": {"description": "The answer as kept.", "content": _json("Csat")},
                        **_error_responses(409, 413, 415),
                        **chat_reads,
                    },
                },
            },
            "/chat/conversations/{sessionId}/email": {
                "post": {
                    "operationId": "leaveEmail",
                    "summary": "The shopper leaves an email address for a person's reply.",
                    "description": "Out of hours or when nobody is available (the handoff's"
                                   " `askEmail`), the widget asks for an address. An agent's"
                                   " later reply that the shopper does not see live is emailed"
                                   " to it, at most one email per conversation per"
                                   " REPLY_EMAIL_DELAY_S, with a link to `pageUrl` that"
                                   " reopens the conversation (POST /chat/reopen). `email`"
                                   " null forgets the address. A bad address is a 400.",
                    "parameters": [
                        {"name": "sessionId", "in": "path", "required": True, "schema": UUID,
                         "description": "The conversation's id."},
                        _site_query(),
                    ],
                    "requestBody": {"required": True, "content": _json("EmailRequest")},
                    "responses": {
                        "200": {"description": "The address as kept.",
                                "content": _json("ShopperEmail")},
                        **_error_responses(413, 415),
                        **chat_reads,
                    },
                },
            },
            "/chat/reopen": {
                "post": {
                    "operationId": "reopenConversation",
                    "summary": "A reply email's link: its token for the conversation it reopens.",
                    "description": "The link is the store page with `#chat-reopen=<token>`;"
                                   " the widget sends the token here and continues the"
                                   " conversation it names. A token works for 7 days; an"
                                   " unknown, expired or another site's token is a 404.",
                    "parameters": [_site_query()],
                    "requestBody": {"required": True, "content": _json("ReopenRequest")},
                    "responses": {
                        "200": {"description": "The conversation to continue.",
                                "content": _json("Reopened")},
                        **_error_responses(413, 415),
                        **chat_reads,
                    },
                },
            },
            "/chat/conversations/{sessionId}/typing": {
                "post": {
                    "operationId": "shopperTyping",
                    "summary": "The shopper is typing (the agent sees it on the conversation).",
                    "parameters": [
                        {"name": "sessionId", "in": "path", "required": True, "schema": UUID,
                         "description": "The conversation's id."},
                        _site_query(),
                    ],
                    "responses": {"204": {"description": "Told."}, **lookup_reads},
                },
            },
            "/healthz": {
                "get": {
                    "operationId": "healthz",
                    "summary": "The process is alive.",
                    "responses": {"200": {"description": "Alive.", "content": _json("Health")}},
                },
            },
            "/readyz": {
                "get": {
                    "operationId": "readyz",
                    "summary": "The service can answer: its database is reachable.",
                    "responses": {
                        "200": {"description": "Ready; `degraded` when Redis is down, or a use of"
                                               " it (`redisUses`) still falls back to memory.",
                                "content": _json("Ready")},
                        **_error_responses(503),
                    },
                },
            },
            "/metrics": {
                "get": {
                    "operationId": "metrics",
                    "summary": "Prometheus metrics (not rate-limited, like the health checks).",
                    "description": "With METRICS_TOKEN set, send it as `Authorization: Bearer"
                                   " <token>`.",
                    "responses": {
                        "200": {"description": "The Prometheus text format.",
                                "content": {"text/plain": {"schema": {"type": "string"}}}},
                        "401": {"description": "METRICS_TOKEN is set and the request does not"
                                               " carry it.",
                                "headers": {"WWW-Authenticate": {
                                    "required": True, "schema": {"const": "Bearer"}}},
                                "content": _json("Error")},
                    },
                },
            },
            "/openapi.json": {
                "get": {
                    "operationId": "openapi",
                    "summary": "This document.",
                    "responses": {"200": {"description": "The OpenAPI document.",
                                          "content": {"application/json": {
                                              "schema": {"type": "object"}}}},
                                  **limited},
                },
            },
            "/": {
                "get": {
                    "operationId": "demoPage",
                    "summary": "The demo store page, with the widget on it.",
                    "responses": {"200": {"description": "An HTML page.",
                                          "content": {"text/html": {"schema": {"type": "string"}}}},
                                  **limited},
                },
            },
            **{path: {
                "get": {
                    "operationId": operation,
                    "summary": "The demo page's icon (an SVG, whatever the name).",
                    "responses": {"200": {"description": "An SVG image.",
                                          "content": {"image/svg+xml": {
                                              "schema": {"type": "string"}}}}},
                },
            } for path, operation in (("/favicon.svg", "favicon"),
                                      ("/favicon.ico", "faviconIco"))},
            "/locales/{language}.json": {
                "get": {
                    "operationId": "widgetLocale",
                    "summary": "The widget's strings in one language (de, es, fr, hi), fetched by "
                               "the widget only for the language in use.",
                    "parameters": [{"name": "language", "in": "path", "required": True,
                                    "schema": {"type": "string"}}],
                    "responses": {"200": {"description": "The catalogue: string key to text.",
                                          "content": {"application/json": {"schema": {
                                              "type": "object",
                                              "additionalProperties": {"type": "string"}}}}},
                                  "404": _error_response("No catalogue for that language."),
                                  **limited},
                },
            },
            "/widget.js": {
                "get": {
                    "operationId": "widgetScript",
                    "summary": "The chat widget, to embed with a script tag.",
                    "responses": {"200": {"description": "JavaScript.",
                                          "content": {"text/javascript": {
                                              "schema": {"type": "string"}}}},
                                  **limited},
                },
            },
        },
        "components": {
            "schemas": {
                "ChatRequest": _chat_request_schema(max_message_chars),
                "ChatReply": {
                    "type": "object",
                    "required": ["reply", "sessionId", "messageId"],
                    "additionalProperties": False,
                    "properties": {
                        "reply": {"type": "string"},
                        "sessionId": UUID,
                        "messageId": UUID,
                    },
                },
                "HistoryMessage": {
                    "type": "object",
                    "required": ["id", "sender", "text", "status", "createdAt", "sources",
                                 "fallback", "tools", "offerPerson"],
                    "additionalProperties": False,
                    "properties": {
                        "id": UUID,
                        "sender": {"enum": ["user", "ai", "agent"],
                                   "description": "agent: a person of the store's team wrote it"
                                                  " (see agentName)."},
                        "text": {"type": "string"},
                        "status": _ref("schemas", "MessageStatus"),
                        "createdAt": {"type": "string", "format": "date-time"},
                        "sources": _ref("schemas", "Sources"),
                        "fallback": {"type": "boolean",
                                     "description": "As in the `done` event; false for the"
                                                    " shopper's messages."},
                        "agentName": {"type": ["string", "null"],
                                      "description": "sender agent only: the agent's name."},
                        "tools": {"type": "array",
                                  "description": "The answer's `tool` events (order cards), in"
                                                 " order; empty for the shopper's messages.",
                                  "items": _ref("schemas", "ToolEvent")},
                        "offerPerson": {"type": "boolean",
                                        "description": "As in the `done` event: the answer"
                                                       " offers a person; false for others."},
                        "feedback": {
                            "oneOf": [{"type": "null"}, {
                                "type": "object", "required": ["rating", "comment"],
                                "additionalProperties": False,
                                "properties": {"rating": {"enum": ["up", "down"]},
                                               "comment": {"type": ["string", "null"]}}}],
                            "description": "The shopper's vote on this answer (POST"
                                           " /chat/messages/{messageId}/feedback); null: none."},
                    },
                },
                "FeedbackRequest": {
                    "type": "object", "required": ["rating"], "additionalProperties": False,
                    "properties": {
                        "rating": {"enum": ["up", "down"]},
                        "comment": {"type": ["string", "null"], "maxLength": MAX_COMMENT_CHARS,
                                    "pattern": "^[^\\x00]*$",
                                    "description": "What was missing, in a line (optional,"
                                                   f" at most {MAX_COMMENT_CHARS} characters,"
                                                   " no NUL); white space is collapsed."},
                    },
                },
                "Feedback": {
                    "type": "object", "required": ["messageId", "rating", "comment"],
                    "additionalProperties": False,
                    "properties": {"messageId": UUID, "rating": {"enum": ["up", "down"]},
                                   "comment": {"type": ["string", "null"]}},
                },
                "CsatRequest": {
                    "type": "object", "required": ["solved"], "additionalProperties": False,
                    "properties": {"solved": {"type": "boolean"}},
                },
                "Csat": {
                    "type": "object", "required": ["sessionId", "csat"],
                    "additionalProperties": False,
                    "properties": {"sessionId": UUID, "csat": {"enum": ["yes", "no"]}},
                },
                "EmailRequest": {
                    "type": "object", "required": ["email"],
                    "properties": {
                        "email": {"type": ["string", "null"], "maxLength": EMAIL_MAX_CHARS,
                                  "pattern": EMAIL_PATTERN,
                                  "description": "An address as <input type=email> accepts"
                                                 " it; null forgets it."},
                        "pageUrl": {"type": "string", "maxLength": PAGE_URL_MAX_CHARS,
                                    "description": "The page the widget is on (an origin of"
                                                   " the site): the email's link opens it."},
                    },
                },
                "ShopperEmail": {
                    "type": "object", "required": ["sessionId", "email"],
                    "additionalProperties": False,
                    "properties": {"sessionId": UUID, "email": {"type": ["string", "null"]}},
                },
                "ReopenRequest": {
                    "type": "object", "required": ["token"],
                    "properties": {"token": {"type": "string", "pattern": TOKEN_PATTERN,
                                             "description": "From the link's #chat-reopen=."}},
                },
                "Reopened": {
                    "type": "object", "required": ["sessionId"], "additionalProperties": False,
                    "properties": {"sessionId": UUID},
                },
                "Handoff": {
                    "type": "object", "required": ["sessionId", "status", "supportHours",
                                                   "askEmail"],
                    "additionalProperties": False,
                    "properties": {
                        "sessionId": UUID,
                        "status": {"enum": ["waiting", "human"],
                                   "description": "waiting: for a person; human: one has it."},
                        "supportHours": {"type": ["string", "null"],
                                         "description": "The site's support hours, to tell the"
                                                        " shopper."},
                        "askEmail": {"type": "boolean",
                                     "description": "Nobody may reply soon (outside support"
                                                    " hours, or no staff active) and email is"
                                                    " configured: offer to email the reply."},
                    },
                },
                "Sources": {
                    "type": "array",
                    "description": "The knowledge articles the answer drew on, best first"
                                   " (empty for the shopper's messages).",
                    "items": {"type": "object", "required": ["title", "path"],
                              "properties": {"title": {"type": "string"},
                                             "path": {"type": "string"}}},
                },
                "HistoryPage": {
                    "type": "object",
                    "required": ["sessionId", "messages", "hasMore"],
                    "additionalProperties": False,
                    "properties": {
                        "status": {"enum": ["bot", "waiting", "human", "resolved"],
                                   "description": "Who answers: the assistant, nobody yet (a"
                                                  " person was asked for), a person, or"
                                                  " nobody (resolved)."},
                        "sessionId": UUID,
                        "messages": {"type": "array", "maxItems": HISTORY_PAGE_MAX,
                                     "items": _ref("schemas", "HistoryMessage")},
                        "hasMore": {"type": "boolean",
                                    "description": "Older messages exist before this page."},
                        "streamEventId": {
                            "type": "integer", "minimum": 0,
                            "description": "The conversation stream's last event id when the"
                                           " page was read: open the stream with it as"
                                           " `lastEventId` and nothing shown is replayed."},
                        "askEmail": {
                            "type": "boolean",
                            "description": "The shopper still waits, nobody can reply soon and"
                                           " no address was left: offer the email form again"
                                           " (first page only)."},
                    },
                },
                "MessageStatus": {
                    "enum": ["streaming", "complete", "error", "cancelled", "interrupted"],
                    "description": "`streaming` while the answer is written; then one of the rest.",
                },
                "CancelResult": {
                    "type": "object",
                    "required": ["messageId", "status"],
                    "additionalProperties": False,
                    "properties": {"messageId": UUID,
                                   "status": _ref("schemas", "MessageStatus")},
                },
                "SupportHours": {
                    "type": "object",
                    "required": ["known"],
                    "additionalProperties": False,
                    "properties": {
                        "known": {"type": "boolean"},
                        "timeZone": {"type": "string", "description": "The store's (IANA)."},
                        "open": {"type": "boolean", "description": "A person is there now."},
                        "opensAt": {"type": "string", "format": "date-time",
                                    "description": "The next opening, UTC."},
                        "closesAt": {"type": "string", "format": "date-time",
                                     "description": "When the current hours end (only while"
                                                    " open), UTC."},
                    },
                },
                "Health": {
                    "type": "object", "required": ["status"],
                    "properties": {"status": {"const": "ok"}},
                },
                "Ready": {
                    "type": "object", "required": ["status", "database", "redis"],
                    "properties": {"status": {"enum": ["ready", "degraded"]},
                                   "database": {"const": "up"},
                                   "redis": {"enum": ["up", "down", "off"],
                                             "description": "`off` when REDIS_URL is unset."},
                                   "redisUses": {
                                       "type": "object",
                                       "description": "With REDIS_URL set: each use of Redis as"
                                                      " it last saw it; `down` while it counts or"
                                                      " streams from this instance's memory.",
                                       "required": ["rateLimits", "eventLog"],
                                       "additionalProperties": False,
                                       "properties": {
                                           "rateLimits": {"enum": ["up", "down"]},
                                           "eventLog": {"enum": ["up", "down"]},
                                           "tokenBudget": {
                                               "enum": ["up", "down"],
                                               "description": "Only with DAILY_TOKEN_BUDGET:"
                                                              " `down` while this instance"
                                                              " spends its fallback share."}}},
                                   "mode": {"enum": ["llm", "knowledge-only"],
                                            "description": "`knowledge-only` without a model:"
                                                           " answers come from the articles."}},
                },
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "additionalProperties": False,
                    "properties": {
                        "error": {
                            "type": "object",
                            "required": ["code", "message"],
                            "additionalProperties": False,
                            "properties": {
                                "code": {"type": "string", "pattern": "^[a-z][a-z_]*$",
                                         "description": "Stable, for programs."},
                                "message": {"type": "string", "minLength": 1,
                                            "description": "For the shopper; no internals."},
                            },
                        },
                    },
                },
                "StreamEvent": {
                    "description": "One event of an answer's stream.",
                    # tokens and the end carry an `id:`; an error carries one when it ends the answer.
                    "oneOf": [_event(kind, name, numbered=EVENT_IDS[kind])
                              for name, (kind, _) in PAYLOAD_SCHEMAS.items()],
                },
                # Derived from the payloads' types (app/answer_events.py), so they cannot drift.
                **{name: schema for name, (_, schema) in PAYLOAD_SCHEMAS.items()},
                "OrderSummary": ORDER_SUMMARY_SCHEMA,
            },
            "responses": {
                "BadRequest": _error_response(
                    "The body or a parameter is not valid (a blank or too long message, an id that"
                    " is not a UUID, JSON that does not parse, NUL or invalid Unicode)."),
                "InvalidCustomerToken": _error_response(
                    "`customerToken` is not a valid HS256 token signed with the site's identity"
                    " secret (`invalid_customer_token`): wrong signature or site, expired, issued"
                    " in the future, living longer than 24 h, or not HS256."),
                "OriginNotAllowed": _error_response(
                    "A browser page on an origin the site does not allow (for the default site:"
                    " outside ALLOWED_ORIGINS) called the chat API."),
                "NotFound": _error_response(
                    "No such site, session or message, or it belongs to another session or site"
                    " (the two are answered alike)."),
                "Conflict": _error_response(
                    "The message or conversation is not in a state that allows this: only a"
                    " finished answer can be rated, and only a resolved conversation asked"
                    " whether it solved the problem."),
                "PayloadTooLarge": _error_response("The body is larger than 100 KB."),
                "UnsupportedMediaType": _error_response(
                    "The body is not sent as `application/json`."),
                "RateLimited": _error_response(
                    "Too many requests or messages (per IP, per conversation); wait the number of"
                    " seconds in Retry-After.",
                    headers={"Retry-After": {"description": "Seconds to wait.", "required": True,
                                             "schema": {"type": "string", "pattern": "^[0-9]+$"}},
                             "RateLimit-Policy": {"description": "The limit that refused.",
                                                  "schema": {"type": "string"}}}),
                "ServiceUnavailable": _error_response(
                    "The database or the model is not answering, or the day's token budget has no"
                    " room for another answer's worst case (`budget_exhausted`); try again"
                    " later."),
                "LookupUnavailable": _error_response(
                    "The database is not answering, or too many lookups (history, resume, cancel,"
                    " and the conversation's handoff, typing and stream check) are in the"
                    " database at once (`lookups_busy`, with Retry-After: their share of the"
                    " pool, DB_POOL_LOOKUPS, is in use); try again shortly.",
                    headers={"Retry-After": {
                        "description": "Seconds to wait (sent with `lookups_busy`).",
                        "schema": {"type": "string", "pattern": "^[0-9]+$"}}}),
                "GatewayTimeout": _error_response(
                    "The answer took longer than a non-streaming request may wait (30 s)."),
            },
        },
    }


async def openapi_json(request: Request) -> Response:
    return JSONResponse(build_openapi(services(request).settings.max_message_chars))
