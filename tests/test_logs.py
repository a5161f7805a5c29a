"""Log lines: JSON or text, request ids, and nothing secret in an answer line."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest

from app.logs import (
    JsonFormatter,
    TextFormatter,
    configure_logging,
    log_answer,
    log_request,
    request_id_from,
    request_id_var,
)

SESSION_ID = "5f0c2b7e-9d4a-4c1e-8a36-1f2e3d4c5b6a"
MESSAGE_ID = "0b9e8f7a-6c5d-4e3f-a2b1-c0d9e8f7a6b5"


@pytest.fixture
def restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def format_last(caplog: pytest.LogCaptureFixture, formatter: logging.Formatter) -> str:
    return formatter.format(caplog.records[-1])


def test_request_line_as_json(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="app.access"):
        log_request("req-1", "POST", "/chat/stream", 200, 12.345)

    line = json.loads(format_last(caplog, JsonFormatter()))
    assert line["message"] == "request"
    assert line["request_id"] == "req-1"
    assert (line["method"], line["route"], line["status"]) == ("POST", "/chat/stream", 200)
    assert line["latency_ms"] == 12.3
    assert line["level"] == "info" and line["logger"] == "app.access"


def test_answer_line_shortens_ids_and_carries_the_figures(
    caplog: pytest.LogCaptureFixture,
) -> None:
    token = request_id_var.set("req-from-context")
    try:
        with caplog.at_level(logging.INFO, logger="app.answer"):
            log_answer(
                message_id=MESSAGE_ID,
                session_id=SESSION_ID,
                status="complete",
                model="gpt-4o-mini",
                time_to_first_token_ms=412.0,
                duration_ms=2500.0,
                tokens_in=120,
                tokens_out=80,
                deltas=42,
            )
    finally:
        request_id_var.reset(token)

    text = format_last(caplog, JsonFormatter())
    line = json.loads(text)
    assert SESSION_ID not in text and MESSAGE_ID not in text
    assert line["session_id"] == SESSION_ID[:8]
    assert line["message_id"] == MESSAGE_ID[:8]
    assert line["request_id"] == "req-from-context"
    assert line["ttft_ms"] == 412.0 and line["tokens_out"] == 80 and line["deltas"] == 42
    assert line["status"] == "complete" and line["model"] == "gpt-4o-mini"


def test_text_format_puts_fields_on_the_message_line(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="app.access"):
        log_request("req-2", "GET", "/healthz", 200, 0.5)

    text = format_last(caplog, TextFormatter())
    assert "\n" not in text
    assert "app.access request request_id=req-2 method=GET route=/healthz status=200" in text


def test_client_request_id_is_kept_only_when_plain() -> None:
    assert request_id_from("abc-123_X.y") == "abc-123_X.y"
    forged = request_id_from('x" status=500\nfake line')
    assert forged != 'x" status=500\nfake line' and len(forged) == 32
    assert request_id_from(None) != request_id_from(None)
    assert request_id_from("a" * 129) != "a" * 129


def test_configure_logging_writes_json_to_stderr(
    capsys: pytest.CaptureFixture[str], restore_root_logger: None
) -> None:
    configure_logging("warning", "json")
    logging.getLogger("app.test").warning("shown", extra={"kind": "check"})
    logging.getLogger("app.test").info("hidden by LOG_LEVEL")

    lines = capsys.readouterr().err.splitlines()
    assert [json.loads(line)["message"] for line in lines] == ["shown"]
    assert json.loads(lines[0])["kind"] == "check"
