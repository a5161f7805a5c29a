"""Logging set-up and the two log lines operators read: one per request, one per finished answer.

Standard-library logging with a formatter of our own: JSON (one object per line, for log
collectors) or text (for a person at a terminal, the default). Fields travel in the record's
`extra`, so other code logs with plain `logger.info("...", extra={...})`.

What is never logged, whatever the level: message text, API keys, and whole session ids (they
let anyone read a conversation). Ids are cut to their first eight characters, enough to find the
row in the database.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import uuid
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, Literal

LogFormat = Literal["json", "text"]

access_logger = logging.getLogger("app.access")
answer_logger = logging.getLogger("app.answer")

SHORT_ID_CHARS = 8

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)
"""The current request's id; answer tasks started by a request inherit it with the context."""

# A client-sent X-Request-ID is used only when it is short and plain, so that it can't forge
# log lines or fields; anything else is replaced by a new id.
_REQUEST_ID_PATTERN = re.compile(r"[A-Za-z0-9._:-]{1,128}")

# Attributes every LogRecord has; anything else on a record came in through `extra`. uvicorn
# adds `color_message` (the message with terminal colour codes) to its own records.
_RECORD_ATTRIBUTES = frozenset(
    logging.LogRecord("", 0, "", 0, "", None, None).__dict__.keys()
    | {"message", "asctime", "color_message"}
)


def short_id(value: object) -> str | None:
    """The first eight characters of an id: enough to find it, too little to use it."""
    if value is None:
        return None
    return str(value)[:SHORT_ID_CHARS]


def request_id_from(header_value: str | None) -> str:
    """The client's X-Request-ID when it is a plain token, else a new random id."""
    if header_value is not None and _REQUEST_ID_PATTERN.fullmatch(header_value):
        return header_value
    return uuid.uuid4().hex


def _extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    return {
        key: value
        for key, value in record.__dict__.items()
        if key not in _RECORD_ATTRIBUTES and not key.startswith("_")
    }


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, then the record's extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = request_id_var.get()
        if request_id is not None:
            line["request_id"] = request_id
        line.update(_extra_fields(record))
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """`time level logger message key=value ...`: the same fields, readable at a terminal."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = _extra_fields(record)
        request_id = request_id_var.get()
        if request_id is not None and "request_id" not in fields:
            fields = {"request_id": request_id, **fields}
        if not fields:
            return text
        pairs = " ".join(f"{key}={_text_value(value)}" for key, value in fields.items())
        # The exception, if any, comes after the message line; keep the fields on that line.
        head, newline, rest = text.partition("\n")
        return f"{head} {pairs}{newline}{rest}"


def _text_value(value: object) -> str:
    text = "-" if value is None else str(value)
    return json.dumps(text) if (" " in text or '"' in text or not text) else text


def configure_logging(level: str = "INFO", log_format: LogFormat = "text") -> None:
    """Send every logger's records, uvicorn's included, to stderr in the chosen format."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger()
    for old_handler in list(root.handlers):
        root.removeHandler(old_handler)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Our access line replaces uvicorn's; its error logger goes through ours.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        uvicorn_logger = logging.getLogger(name)
        uvicorn_logger.handlers.clear()
        uvicorn_logger.propagate = True
    logging.getLogger("uvicorn.access").disabled = True
    # httpx logs every request at INFO with its URL: one line of noise per answer. The OpenAI
    # SDK talks through httpx2 (openai 3.x) or httpx (older releases).
    for name in ("httpx", "httpx2"):
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))


def log_request(request_id: str, method: str, route: str, status: int, latency_ms: float) -> None:
    """The one line per HTTP request, written when its response has ended."""
    access_logger.info(
        "request",
        extra={
            "request_id": request_id,
            "method": method,
            "route": route,
            "status": status,
            "latency_ms": round(latency_ms, 1),
        },
    )


def log_answer(
    *,
    message_id: object,
    session_id: object,
    status: str,
    model: str,
    time_to_first_token_ms: float | None,
    duration_ms: float,
    tokens_in: int | None,
    tokens_out: int | None,
    deltas: int,
    fallback: bool = False,
    request_id: str | None = None,
) -> None:
    """The one line per finished answer. Ids are shortened; the text is never logged.

    Token counts are the provider's (None when it sent no usage, as for a cancelled answer);
    `deltas` is how many text pieces were streamed; `fallback` marks an answer the knowledge
    base gave because the model failed before its first token.
    """
    answer_logger.info(
        "answer",
        extra={
            "request_id": request_id if request_id is not None else request_id_var.get(),
            "message_id": short_id(message_id),
            "session_id": short_id(session_id),
            "status": status,
            "model": model,
            "fallback": fallback,
            "ttft_ms": None if time_to_first_token_ms is None else round(time_to_first_token_ms, 1),
            "duration_ms": round(duration_ms, 1),
            "tokens_in": tokens_in,
            "tokens_out": tokens_out,
            "deltas": deltas,
        },
    )
