"""The hub client's pure parts: classification, answers, framing, the body."""

from __future__ import annotations

import email.parser
import email.policy
import hashlib
import os
import re
import threading
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from urllib.parse import unquote

import pytest

from hubwatchd import hub
from hubwatchd.hub import (
    CHUNK_SIZE,
    ProgressLog,
    _Aborted,
    _Body,
    classify,
    content_type_for,
    multipart_framing,
    parse_retry_after,
    parse_rows,
    short,
)

# --- classification -----------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (200, "success"),
        (201, "success"),
        (204, "success"),
        (400, "rejected"),
        (413, "rejected"),
        (415, "rejected"),
        (422, "rejected"),
        (411, "rejected"),
        (401, "blocked"),
        (403, "blocked"),
        (404, "blocked"),
        (405, "blocked"),
        (407, "blocked"),
        (410, "blocked"),
        (301, "blocked"),
        (308, "blocked"),
        (408, "retry"),
        (409, "retry"),
        (423, "retry"),
        (425, "retry"),
        (429, "retry"),
        (500, "retry"),
        (502, "retry"),
        (503, "retry"),
        (504, "retry"),
        (599, "retry"),
    ],
)
def test_every_status_has_one_kind(status, kind):
    assert classify(status) == kind


# --- Retry-After ----------------------------------------------------------------


def test_retry_after_in_seconds():
    assert parse_retry_after("120") == 120.0
    assert parse_retry_after(" 0 ") == 0.0


def test_retry_after_as_an_http_date():
    now = datetime(2026, 1, 5, 12, 0, 0, tzinfo=UTC)
    later = format_datetime(now + timedelta(seconds=90), usegmt=True)
    assert parse_retry_after(later, now=now.timestamp()) == pytest.approx(90.0)


def test_retry_after_in_the_past_means_now():
    now = datetime(2026, 1, 5, 12, 0, 0, tzinfo=UTC)
    earlier = format_datetime(now - timedelta(hours=1), usegmt=True)
    assert parse_retry_after(earlier, now=now.timestamp()) == 0.0


@pytest.mark.parametrize("value", [None, "", "soon", "-5", "1.5", "\uff11\uff12"])
def test_unreadable_retry_after_is_ignored(value):
    assert parse_retry_after(value) is None


# --- rows -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "rows"),
    [
        ("42", 42),
        (" 42\n", 42),
        ("0", 0),
        ('{"rowsProcessed": 7}', 7),
        ('{"rows": 8}', 8),
        ('{"rowCount": 9}', 9),
        ('{"processedRows": 10}', 10),
        ('{"count": 11}', 11),
        ('{"count": 1, "rowsProcessed": 2}', 2),
        ('{"rowsProcessed": "7", "rows": 3}', 3),
        ('{"rowsProcessed": true}', None),
        ('{"rowsProcessed": 7.5}', None),
        ('{"ok": true}', None),
        ("[1, 2]", None),
        ("done", None),
        ("", None),
        ("-3", None),
    ],
)
def test_rows_from_a_success_body(text, rows):
    assert parse_rows(text) == rows


def test_short_truncates_flattens_and_redacts():
    from hubwatchd import logs

    logs.register_secret("supersecretkey123")
    text = "line one\nline two supersecretkey123 " + "x" * 1000
    result = short(text)
    assert len(result) == 500
    assert "\n" not in result
    assert "supersecretkey123" not in result


# --- framing --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "content_type"),
    [
        ("sales.csv", "text/csv"),
        ("SALES.CSV", "text/csv"),
        ("a.json", "application/json"),
        (
            "b.xlsx",
            "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        ),
        ("c.txt", "application/octet-stream"),
    ],
)
def test_content_type_by_extension(name, content_type):
    assert content_type_for(name) == content_type


def parse_form(body: bytes, boundary: str):
    """Parse a multipart body with the standard library's MIME parser."""
    head = f"Content-Type: multipart/form-data; boundary={boundary}\r\n\r\n"
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        head.encode() + body
    )
    parts = list(message.iter_parts())
    assert len(parts) == 1
    return parts[0]


def sent_filename(disposition: str) -> str:
    """The name a server gets that prefers filename* (RFC 6266 §4.3)."""
    star = re.search(r"filename\*=UTF-8''([^;\s]+)", disposition)
    if star:
        return unquote(star.group(1), errors="strict")
    return re.search(r'filename="([^"]*)"', disposition).group(1)


NAMES = [
    "sales.csv",
    "Umsätze März.csv",
    'quote"d.csv',
    "semi;colon;s.csv",
    "cr\rlf\n.csv",
    "back\\slash.json",
    "100% sure.csv",
    "日本語.xlsx",
]


@pytest.mark.parametrize("name", NAMES)
def test_framing_is_a_valid_form_with_the_exact_name(name):
    head, tail = multipart_framing(name, "b0undary")
    part = parse_form(head + b"a,b\r\n1,2\r\n" + tail, "b0undary")
    assert part.get_param("name", header="content-disposition") == "file"
    assert sent_filename(head.split(b"\r\n")[1].decode()) == name
    assert part.get_content_type() == content_type_for(name)
    assert part.get_payload(decode=True) == b"a,b\r\n1,2\r\n"


@pytest.mark.parametrize("name", NAMES)
def test_part_header_holds_no_raw_quote_cr_or_lf_from_the_name(name):
    head, _ = multipart_framing(name, "b")
    disposition = head.split(b"\r\n")[1]
    assert disposition.startswith(b"Content-Disposition: form-data; ")
    quoted = disposition.split(b'filename="', 1)[1].split(b'"', 1)[0]
    assert not set(quoted) & set(b'"\r\n\\;')
    # The extension survives the fallback, so the hub still picks the format.
    assert quoted.decode().endswith(Path(name).suffix)


def test_plain_and_non_ascii_names_are_sent_as_utf8_without_filename_star():
    head, _ = multipart_framing("Umsätze.csv", "b")
    assert 'filename="Umsätze.csv"\r\n'.encode() in head
    assert b"filename*" not in head


# --- the body -------------------------------------------------------------------


def make_file(tmp_path: Path, size: int) -> Path:
    path = tmp_path / "data.csv"
    path.write_bytes(os.urandom(size))
    return path


def body_for(path: Path, size: int, **kwargs) -> tuple[_Body, int]:
    fd = os.open(path, os.O_RDONLY)
    defaults = dict(progress=None, hasher=None, cancel=None, on_body_sent=None)
    defaults.update(kwargs)
    return _Body(fd, size, b"HEAD", b"TAIL", **defaults), fd


def test_body_is_exactly_content_length_and_reports_progress(tmp_path):
    size = 2 * CHUNK_SIZE + 123
    path = make_file(tmp_path, size)
    seen: list[int] = []
    hasher = hashlib.sha256()
    sent_events: list[int] = []
    body, fd = body_for(
        path,
        size,
        progress=seen.append,
        hasher=hasher,
        on_body_sent=lambda: sent_events.append(body.sent),
    )
    try:
        data = b"".join(body)
    finally:
        os.close(fd)
    assert len(data) == body.length == size + 8
    assert data == b"HEAD" + path.read_bytes() + b"TAIL"
    assert seen == [CHUNK_SIZE, 2 * CHUNK_SIZE, size]
    assert hasher.hexdigest() == hashlib.sha256(path.read_bytes()).hexdigest()
    assert body.complete
    assert sent_events == [size]


def test_body_stops_at_size_when_the_file_grew(tmp_path):
    path = make_file(tmp_path, 5000)
    body, fd = body_for(path, 3000)
    try:
        data = b"".join(body)
    finally:
        os.close(fd)
    assert data == b"HEAD" + path.read_bytes()[:3000] + b"TAIL"


def test_body_aborts_when_the_file_shrank_under_it(tmp_path):
    size = 3 * CHUNK_SIZE
    path = make_file(tmp_path, size)

    def shrink(sent: int) -> None:
        if sent == CHUNK_SIZE:
            os.truncate(path, CHUNK_SIZE + 10)

    sent_events: list[bool] = []
    body, fd = body_for(
        path, size, progress=shrink, on_body_sent=lambda: sent_events.append(True)
    )
    got = 0
    try:
        with pytest.raises(_Aborted, match="file shrank while uploading"):
            for chunk in body:
                got += len(chunk)
    finally:
        os.close(fd)
    assert got == 4 + CHUNK_SIZE + 10
    assert got < body.length
    assert not body.complete
    assert sent_events == []


def test_body_stops_between_chunks_when_cancelled(tmp_path):
    size = 3 * CHUNK_SIZE
    path = make_file(tmp_path, size)
    cancel = threading.Event()
    body, fd = body_for(path, size, cancel=cancel, progress=lambda _: cancel.set())
    try:
        with pytest.raises(_Aborted, match="cancelled"):
            list(body)
    finally:
        os.close(fd)
    assert body.sent == CHUNK_SIZE
    assert not body.complete


def test_empty_file_body_is_framing_only(tmp_path):
    path = make_file(tmp_path, 0)
    body, fd = body_for(path, 0)
    try:
        assert b"".join(body) == b"HEADTAIL"
    finally:
        os.close(fd)
    assert body.complete


def test_the_body_sent_hook_runs_before_the_multipart_tail(tmp_path):
    size = 2 * CHUNK_SIZE + 5
    path = make_file(tmp_path, size)
    pieces: list[bytes] = []
    seen: list[tuple[int, int, bool]] = []
    body, fd = body_for(
        path,
        size,
        on_body_sent=lambda: seen.append((len(pieces), body.sent, body.complete)),
    )
    try:
        for piece in body:
            pieces.append(piece)
    finally:
        os.close(fd)
    # HEAD and three chunks handed over, every file byte read, the tail not.
    assert seen == [(4, size, False)]
    assert pieces[-1] == b"TAIL"
    assert body.complete


def test_without_a_tail_the_hook_runs_before_the_last_chunk(tmp_path):
    size = 2 * CHUNK_SIZE + 5
    path = make_file(tmp_path, size)
    fd = os.open(path, os.O_RDONLY)
    seen: list[int] = []
    body = _Body(
        fd,
        size,
        b"",
        b"",
        progress=None,
        hasher=None,
        cancel=None,
        on_body_sent=lambda: seen.append(len(pieces)),
    )
    pieces: list[bytes] = []
    try:
        for piece in body:
            pieces.append(piece)
    finally:
        os.close(fd)
    assert [len(p) for p in pieces] == [CHUNK_SIZE, CHUNK_SIZE, 5]
    assert seen == [2]  # two chunks handed over, the last one not yet
    assert body.complete


def test_an_abort_between_the_hook_and_the_final_piece_leaves_the_mark(tmp_path):
    # The transport took the tail but failed to send it (or the process died
    # there): the durable mark is set, the body is not complete. After a
    # crash, recover() must assume the hub may have it all (the safe side);
    # a live outcome still says body_complete=False.
    size = CHUNK_SIZE + 1
    path = make_file(tmp_path, size)
    marks: list[bool] = []
    body, fd = body_for(path, size, on_body_sent=lambda: marks.append(True))
    stream = iter(body)
    try:
        pieces = [next(stream) for _ in range(4)]  # HEAD, 2 chunks, TAIL
        assert (pieces[-1], marks) == (b"TAIL", [True])
        stream.close()  # never resumed: the tail did not go
    finally:
        os.close(fd)
    assert not body.complete


def test_a_failing_hook_keeps_the_final_piece_back(tmp_path):
    size = 1000
    path = make_file(tmp_path, size)

    def refuse() -> None:
        raise RuntimeError("the ledger is gone")

    body, fd = body_for(path, size, on_body_sent=refuse)
    pieces: list[bytes] = []
    try:
        with pytest.raises(RuntimeError, match="ledger is gone"):
            for piece in body:
                pieces.append(piece)
    finally:
        os.close(fd)
    assert b"TAIL" not in b"".join(pieces)
    assert not body.complete


@pytest.mark.parametrize(("head", "tail"), [(b"", b""), (b"HEAD", b"TAIL")])
def test_an_empty_file_still_runs_the_hook_once(tmp_path, head, tail):
    path = make_file(tmp_path, 0)
    fd = os.open(path, os.O_RDONLY)
    marks: list[bool] = []
    body = _Body(
        fd,
        0,
        head,
        tail,
        progress=None,
        hasher=None,
        cancel=None,
        on_body_sent=lambda: marks.append(True),
    )
    try:
        assert b"".join(body) == head + tail
    finally:
        os.close(fd)
    assert marks == [True]
    assert body.complete


# --- progress log ---------------------------------------------------------------


def test_progress_log_logs_once_per_interval(monkeypatch):
    lines: list[dict] = []
    monkeypatch.setattr(
        hub.log, "info", lambda event, **kw: lines.append({"event": event, **kw})
    )
    now = [100.0]
    progress = ProgressLog(
        path="/x.csv", size=1000 * 1024 * 1024, interval=30.0, clock=lambda: now[0]
    )
    for step in range(1, 100):
        now[0] = 100.0 + step  # one second and 10 MiB per call
        progress(step * 10 * 1024 * 1024)
    assert [line["event"] for line in lines] == ["upload.progress"] * 3
    first = lines[0]
    assert first["bytes"] == 300 * 1024 * 1024
    assert first["percent"] == 30.0
    assert first["mib_s"] == 10.0
    assert first["path"] == "/x.csv"
