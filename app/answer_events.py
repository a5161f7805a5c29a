"""What an answer's stream says, one constructor per event kind, and the schemas of their JSON.

Every path that tells a client about an answer builds its events here: the live answer (app/chat.py
through the event log), the replay from the shared log on another instance (app/redis_eventlog.py)
and the replay of a settled answer from PostgreSQL (`replay_record`). Each constructor returns the
event's kind and payload, ready for `EventLog.append(answer_id, *event)` or for
`encode_event(seq, *event)`.

The payloads' JSON schemas in the OpenAPI document are derived from the TypedDicts below
(`PAYLOAD_SCHEMAS`): a field added to a payload and not to its schema fails at import.
"""

# No `from __future__ import annotations` here: TypedDict reads NotRequired from evaluated
# annotations only (Python 3.11 cannot see it in a string), and the schemas need it.
import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any, Literal, NotRequired, TypedDict

from .eventlog import REPLAYED_END_ID, Event, encode_event
from .llm import Usage
from .messages import AnswerRecord
from .orders import OrderItem, OrderSummary
from .sites import DEFAULT_SITE_ID

Kind = Literal["meta", "token", "tool", "done", "error"]


class MetaPayload(TypedDict):
    sessionId: str
    messageId: str
    userMessageId: NotRequired[str]
    siteId: NotRequired[int]


class TokenPayload(TypedDict):
    text: str


class ToolPayload(TypedDict):
    name: str
    result: str
    order: NotRequired[OrderSummary]
    orders: NotRequired[list[OrderSummary]]


class UsagePayload(TypedDict, total=False):
    promptTokens: int
    completionTokens: int
    totalTokens: int


class Source(TypedDict):
    title: str
    path: str


class DonePayload(TypedDict):
    messageId: str
    text: str
    status: str
    usage: UsagePayload
    sources: list[Source]
    fallback: bool
    # The answer offers the shopper a person (app/person_offer.py): show "Talk to a person".
    offerPerson: bool


class ErrorPayload(TypedDict):
    code: str
    message: str
    retryable: bool


NOT_SAVED_MESSAGE = "We could not keep this answer. Please ask again in a moment."
INTERRUPTED_MESSAGE = "The answer was cut off. Please ask again."
UNFINISHED_MESSAGE = "The assistant could not finish this answer. Please ask again."
UNAVAILABLE_MESSAGE = "The connection to this answer was lost. Please try again."


# -- one constructor per kind -----------------------------------------------------------------


def meta(session_id: str, answer_id: str, user_message_id: str | None = None,
         site_id: int = DEFAULT_SITE_ID) -> tuple[Kind, MetaPayload]:
    """First on every stream; `user_message_id` only on a new answer, not on a resume;
    `siteId` only on another site's than the default (a resume from the log checks it)."""
    payload: MetaPayload = {"sessionId": session_id, "messageId": answer_id}
    if user_message_id is not None:
        payload["userMessageId"] = user_message_id
    if site_id != DEFAULT_SITE_ID:
        payload["siteId"] = site_id
    return "meta", payload


def token(text: str) -> tuple[Kind, TokenPayload]:
    return "token", {"text": text}


def tool(name: str, result: str, *, order: OrderSummary | None = None,
         orders: Sequence[OrderSummary] | None = None) -> tuple[Kind, ToolPayload]:
    """A tool the answer used (an order lookup): its result, shopper-safe, for an order card.
    `result` is 'found', 'not_found' (also for another customer's order) or 'unavailable'."""
    payload: ToolPayload = {"name": name, "result": result}
    if order is not None:
        payload["order"] = order
    if orders is not None:
        payload["orders"] = list(orders)
    return "tool", payload


def usage_payload(usage: Usage | None) -> UsagePayload:
    if usage is None:
        return {}
    return {"promptTokens": usage.prompt_tokens, "completionTokens": usage.completion_tokens,
            "totalTokens": usage.prompt_tokens + usage.completion_tokens}


def done(answer_id: str, text: str, status: str, usage: Usage | None, sources: Sequence[Source],
         fallback: bool, offer_person: bool = False) -> tuple[Kind, DonePayload]:
    """The answer ended ('complete' or 'cancelled') and is saved."""
    return "done", {"messageId": answer_id, "text": text, "status": status,
                    "usage": usage_payload(usage), "sources": list(sources), "fallback": fallback,
                    "offerPerson": offer_person}


def error(code: str, message: str, *, retryable: bool) -> tuple[Kind, ErrorPayload]:
    return "error", {"code": code, "message": message, "retryable": retryable}


def interrupted(*, retryable: bool) -> tuple[Kind, ErrorPayload]:
    """The answer was cut off; its text so far is saved. `retryable` says whether resuming
    elsewhere can serve more: only while the producing instance is shutting down."""
    return error("interrupted", INTERRUPTED_MESSAGE, retryable=retryable)


def not_saved() -> tuple[Kind, ErrorPayload]:
    """`done` would tell the shopper the answer is kept; it was not. Asking again may work."""
    return error("not_saved", NOT_SAVED_MESSAGE, retryable=True)


def unavailable() -> tuple[Kind, ErrorPayload]:
    """The shared log stopped answering while a client followed it; resuming may work."""
    return error("unavailable", UNAVAILABLE_MESSAGE, retryable=True)


def unfinished() -> tuple[Kind, ErrorPayload]:
    """A saved answer that ended in an upstream error; the record no longer says which."""
    return error("upstream_error", UNFINISHED_MESSAGE, retryable=False)


async def forwarded(session_id: str, user_message_id: str) -> AsyncIterator[Event]:
    """The stream of a shopper's message in a conversation a person handles: no answer."""
    yield encode_event(0, *meta(session_id, user_message_id, user_message_id))
    yield encode_event(1, *done(user_message_id, "", "forwarded", None, [], False))


# -- replays ----------------------------------------------------------------------------------


def record_meta(record: AnswerRecord) -> Event:
    return encode_event(0, *meta(str(record.conversation_id), str(record.id),
                                 site_id=record.site_id))


def terminal_event(record: AnswerRecord, seq: int) -> Event:
    """How a settled answer ends on the wire: `done`, or an `error` that is not worth retrying."""
    if record.status in ("complete", "cancelled"):
        usage = None
        if record.prompt_tokens is not None and record.completion_tokens is not None:
            usage = Usage(record.prompt_tokens, record.completion_tokens)
        sources: list[Source] = record.sources  # type: ignore[assignment]
        return encode_event(seq, *done(str(record.id), record.text, record.status, usage,
                                       sources, record.fallback, record.offer_person))
    if record.status == "interrupted":
        # Not retryable: the record is settled, and resuming would replay this same end.
        return encode_event(seq, *interrupted(retryable=False))
    return encode_event(seq, *unfinished())


async def settled(events: AsyncIterator[Event]) -> AsyncIterator[Event]:
    """Events from the shared log, with a shutdown's 'retryable' interruption made final.

    A producer that shuts down ends its answers with a retryable `interrupted` error, so that
    its clients resume elsewhere. Elsewhere is here, and the answer is settled: retrying again
    would only replay the same end.
    """
    async with contextlib.aclosing(events):  # type: ignore[type-var]
        async for event in events:
            if event.kind == "error" and event.payload.get("code") == "interrupted":
                yield encode_event(event.seq, *interrupted(retryable=False))
            else:
                yield event


def replay_record(record: AnswerRecord, after: int) -> AsyncIterator[Event]:
    """A finished answer from PostgreSQL: meta, its tool events (order cards), its whole text
    as one token, then the end.

    The token ids it was streamed with are not kept, so its end has an id past any of them.
    """
    events = [record_meta(record)]
    if after < 1:
        seq = 1
        for used in record.tools:
            events.append(encode_event(seq, "tool", used))
            seq += 1
        if record.text:
            events.append(encode_event(seq, *token(record.text)))
    events.append(terminal_event(record, REPLAYED_END_ID))

    async def replay() -> AsyncIterator[Event]:
        for event in events:
            yield event

    return replay()


# -- the payloads' schemas, for the OpenAPI document ------------------------------------------

UUID_SCHEMA = {"type": "string", "format": "uuid",
               "pattern": "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"}


def _schema(payload: type, description: str, properties: dict[str, Any], *,
            closed: bool = True) -> dict[str, Any]:
    """The JSON schema of a TypedDict payload: its fields, and which are required, from the
    type itself; only the constraints and descriptions are written here."""
    fields = set(payload.__annotations__)
    if set(properties) != fields:
        raise TypeError(f"the schema of {payload.__name__} names {sorted(properties)},"
                        f" the payload has {sorted(fields)}")
    schema: dict[str, Any] = {"description": description, "type": "object"}
    required = [name for name in payload.__annotations__
                if name in payload.__required_keys__]  # type: ignore[attr-defined]
    if required:
        schema["required"] = required
    if closed:
        schema["additionalProperties"] = False
    schema["properties"] = properties
    return schema


# Schema name in the OpenAPI document -> its kind and schema.
PAYLOAD_SCHEMAS: dict[str, tuple[Kind, dict[str, Any]]] = {
    "MetaEvent": ("meta", _schema(MetaPayload, "`event: meta`, first on every stream (no `id:` line).", {
        "sessionId": UUID_SCHEMA,
        "messageId": {**UUID_SCHEMA, "description": "The answer's id."},
        "userMessageId": {**UUID_SCHEMA, "description": "The shopper's message (new"
                                                        " answers only, not on resume)."},
        "siteId": {"type": "integer", "description": "The site's id, on answers of a site"
                                                     " other than the default one only."},
    })),
    "TokenEvent": ("token", _schema(TokenPayload, "`event: token` with `id: n` (1, 2, 3, ... per answer).", {
        "text": {"type": "string"},
    })),
    "ToolEvent": ("tool", _schema(
        ToolPayload, "`event: tool` with `id: n` (numbered with the tokens): the answer looked"
                     " something up, e.g. an order; the widget shows an order card. Only what"
                     " the shopper may see: never another customer's order.", {
            "name": {"enum": ["lookup_order", "list_recent_orders"]},
            "result": {"enum": ["found", "not_found", "unavailable"],
                       "description": "not_found also for an order of another customer."},
            "order": {"$ref": "#/components/schemas/OrderSummary"},
            "orders": {"type": "array", "items": {"$ref": "#/components/schemas/OrderSummary"}},
        })),
    "DoneEvent": ("done", _schema(DonePayload, "`event: done` with `id: n` (the id after the last"
                                               " token's): the answer ended and is saved.", {
        "messageId": UUID_SCHEMA,
        "text": {"type": "string", "description": "The whole answer."},
        "status": {"enum": ["complete", "cancelled", "forwarded"],
                   "description": "forwarded: a person handles the conversation; the shopper's"
                                  " message is saved and no answer follows (text is empty)."},
        "usage": _schema(UsagePayload, "Token usage, when the model reported it.", {
            "promptTokens": {"type": "integer", "minimum": 0},
            "completionTokens": {"type": "integer", "minimum": 0},
            "totalTokens": {"type": "integer", "minimum": 0},
        }),
        "sources": {
            "type": "array",
            "description": "The knowledge articles (or curated answers, path"
                           " `answers.toml#<id>`) the answer used: those the model cited, else"
                           " all it was given, best first (app/prompt.py).",
            "items": _schema(Source, "One article or curated answer.", {
                "title": {"type": "string"}, "path": {"type": "string"}}, closed=False),
        },
        "fallback": {"type": "boolean",
                     "description": "The model failed before its first token and"
                                    " the answer came from the knowledge base."},
        "offerPerson": {"type": "boolean",
                        "description": "The answer offers a person (it could not help, or the"
                                       " shopper asked for one): the widget shows \"Talk to a"
                                       " person\", which is POST"
                                       " /chat/conversations/{sessionId}/handoff."},
    }, closed=False)),
    "ErrorEvent": ("error", _schema(
        ErrorPayload,
        "`event: error`: the answer could not be finished; the text streamed so far is saved."
        " It carries an `id:` when it ends the answer; a retryable `interrupted` or"
        " `unavailable` has none (follow the answer again from the last token).", {
            "code": {"type": "string", "pattern": "^[a-z][a-z_]*$"},
            "message": {"type": "string", "minLength": 1},
            "retryable": {"type": "boolean", "description": "Asking again (or resuming) may work."},
        })),
}


# The order card's schema, referenced by ToolEvent (app/openapi.py adds it beside the events).
ORDER_SUMMARY_SCHEMA: dict[str, Any] = _schema(OrderSummary, "One order, as a shopper sees it.", {
    "number": {"type": "string"},
    "status": {"type": "string", "description": "As the store says it, e.g. shipped."},
    "items": {"type": "array", "items": _schema(OrderItem, "One line of the order.", {
        "name": {"type": "string"}, "quantity": {"type": "integer"}})},
    "carrier": {"type": ["string", "null"]},
    "trackingUrl": {"type": ["string", "null"], "description": "http(s) only."},
    "expectedDelivery": {"type": ["string", "null"]},
})
