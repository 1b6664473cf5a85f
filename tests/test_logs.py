"""Log output: JSON or console, one renderer for every logger, keys hidden."""

from __future__ import annotations

import io
import json
import logging

from hubwatchd import logs


def test_json_lines_carry_event_and_fields(monkeypatch):
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    stream = io.StringIO()
    logs.configure("json", "info", stream=stream)
    logs.get_logger("t").info("upload.succeeded", watch="acme", bytes=42)
    logging.getLogger("some.library").warning("plain %s", "message")
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["event"] == "upload.succeeded" and first["bytes"] == 42
    assert first["level"] == "info" and "timestamp" in first
    assert second["event"] == "plain message" and second["level"] == "warning"


def test_journal_gets_a_priority_prefix(monkeypatch):
    monkeypatch.setenv("JOURNAL_STREAM", "8:1234")
    stream = io.StringIO()
    logs.configure("json", "info", stream=stream)
    logs.get_logger("t").error("watch.blocked", watch="acme")
    line = stream.getvalue().strip()
    assert line.startswith("<3>{")
    assert json.loads(line[3:])["event"] == "watch.blocked"


def test_auto_is_json_off_a_terminal(monkeypatch):
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    assert logs.choose_format("auto", io.StringIO()) == "json"
    assert logs.choose_format("console", io.StringIO()) == "console"


def test_console_format_and_levels(monkeypatch):
    stream = io.StringIO()
    logs.configure("console", "warning", stream=stream)
    log = logs.get_logger("t")
    log.info("hidden.event")
    log.warning("shown.event", path="/srv/a.csv")
    text = stream.getvalue()
    assert "hidden.event" not in text
    assert "shown.event" in text and "/srv/a.csv" in text


def test_traceback_has_no_local_variables(monkeypatch):
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    stream = io.StringIO()
    logs.configure("json", "info", stream=stream)
    secret_local = "local-value-that-must-not-show"
    try:
        raise ValueError("boom")
    except ValueError:
        logs.get_logger("t").exception("it.failed")
    assert secret_local not in stream.getvalue()
    assert "boom" in stream.getvalue()


def test_header_values_are_redacted_even_unregistered():
    text = logs.redact("send headers [(b'X-Api-Key', b'unregistered-9999')]")
    assert "unregistered-9999" not in text
    assert "<redacted>" in text
