"""HubClient against a real devhub over a real socket: every outcome."""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import os
import shutil
import socket
import ssl
import subprocess
import threading
from pathlib import Path

import pytest
from hubdata import (
    ORDERS_TASK,
    REPORT_TASK,
    SALES_KEY,
    SALES_TABLE,
    SALES_TASK,
    UNKNOWN_TASK,
    WRONG_KEY,
)

from hubwatchd import logs
from hubwatchd.config import HubConfig, Secret
from hubwatchd.errors import FileRefused
from hubwatchd.hub import CHUNK_SIZE, HubClient, Outcome

CSV = b"region,amount\r\nnorth,10\r\nsouth,20\r\n"
KEY = Secret(SALES_KEY, "test")


def client_for(hub, workers: int = 1, **timeouts: float) -> HubClient:
    return HubClient(HubConfig(url=hub.url, api_key=None, **timeouts), workers)


def upload(client: HubClient, path: Path, task: str = SALES_TASK, **kwargs) -> Outcome:
    kwargs.setdefault("mode", "replace")
    kwargs.setdefault("api_key", KEY)
    if "size" not in kwargs:
        kwargs["size"] = path.stat().st_size
    return client.upload(path, task_id=task, **kwargs)


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def big_csv(tmp_path: Path, mib: int) -> Path:
    """A valid CSV of about `mib` MiB."""
    line = b"north," + b"7" * 57 + b"\n"  # 64 bytes
    path = tmp_path / "big.csv"
    with path.open("wb") as out:
        out.write(b"region,amount\n")
        block = line * (CHUNK_SIZE // len(line))
        for _ in range(mib):
            out.write(block)
    return path


# --- success ------------------------------------------------------------------


def test_csv_upload_succeeds_with_rows_and_every_byte_accounted(devhub, tmp_path):
    path = write(tmp_path, "sales.csv", CSV)
    seen: list[int] = []
    sent_hook: list[bool] = []
    hasher = hashlib.sha256()
    with client_for(devhub) as client:
        outcome = upload(
            client,
            path,
            progress=seen.append,
            hasher=hasher,
            on_body_sent=lambda: sent_hook.append(True),
        )
    assert outcome.kind == "success"
    assert outcome.status == 200
    assert outcome.rows == 2
    assert outcome.body_complete
    assert outcome.bytes_sent == len(CSV)
    assert outcome.error is None and outcome.raw is None
    assert seen[-1] == len(CSV)
    assert sent_hook == [True]
    assert devhub.rows(SALES_TABLE) == [
        {"region": "north", "amount": "10"},
        {"region": "south", "amount": "20"},
    ]
    (request,) = devhub.requests()
    assert request["mode"] == "replace"
    assert request["content_type"].startswith("multipart/form-data; boundary=")
    assert request["filename"] == "sales.csv"
    assert request["part_content_type"] == "text/csv"
    assert request["bytes"] == len(CSV)
    assert request["sha256"] == hasher.hexdigest() == hashlib.sha256(CSV).hexdigest()


def test_append_adds_rows(devhub, tmp_path):
    path = write(tmp_path, "sales.csv", CSV)
    with client_for(devhub) as client:
        assert upload(client, path).rows == 2
        outcome = upload(client, path, mode="append")
    assert outcome.kind == "success"
    assert len(devhub.rows(SALES_TABLE)) == 4
    assert [r["mode"] for r in devhub.requests()] == ["replace", "append"]


def test_json_as_a_raw_body(devhub, tmp_path):
    path = write(tmp_path, "sales.json", json.dumps([{"a": 1}, {"a": 2}]).encode())
    with client_for(devhub) as client:
        outcome = upload(client, path, json_raw=True)
    assert (outcome.kind, outcome.rows) == ("success", 2)
    (request,) = devhub.requests()
    assert request["content_type"] == "application/json"
    assert request["content_length"] == path.stat().st_size


def test_json_as_a_form_part(devhub, tmp_path):
    path = write(tmp_path, "sales.json", json.dumps([{"a": 1}]).encode())
    with client_for(devhub) as client:
        outcome = upload(client, path)
    assert (outcome.kind, outcome.rows) == ("success", 1)
    assert devhub.requests()[0]["part_content_type"] == "application/json"


def test_xlsx_as_a_form_part(devhub, tmp_path):
    openpyxl = pytest.importorskip("openpyxl")
    book = openpyxl.Workbook()
    book.active.append(["sku", "qty"])
    book.active.append(["A-1", 3])
    path = tmp_path / "stock.xlsx"
    book.save(path)
    with client_for(devhub) as client:
        outcome = upload(client, path)
    assert (outcome.kind, outcome.rows) == ("success", 1)
    (request,) = devhub.requests()
    assert request["filename"] == "stock.xlsx"
    assert request["part_content_type"] == (
        "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
    )
    assert request["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


def test_only_size_bytes_are_sent_from_an_open_file_at_any_position(devhub, tmp_path):
    path = write(tmp_path, "sales.csv", CSV + b"east,30\r\n")
    with path.open("rb") as handle, client_for(devhub) as client:
        handle.read()  # at the end, as after hashing it first
        outcome = client.upload(
            handle, task_id=SALES_TASK, mode="replace", api_key=KEY, size=len(CSV)
        )
    assert outcome.rows == 2
    assert devhub.requests()[0]["bytes"] == len(CSV)


def test_multi_mib_upload_streams_in_chunks(devhub, tmp_path):
    path = big_csv(tmp_path, 5)
    seen: list[int] = []
    with client_for(devhub) as client:
        outcome = upload(client, path, progress=seen.append)
    assert outcome.kind == "success"
    assert outcome.rows == 5 * CHUNK_SIZE // 64
    assert seen[:2] == [CHUNK_SIZE, 2 * CHUNK_SIZE]
    assert seen[-1] == path.stat().st_size


def test_parallel_uploads_share_one_pool(devhub, tmp_path):
    path = write(tmp_path, "sales.csv", CSV)
    outcomes: list[Outcome] = []
    with client_for(devhub, workers=4) as client:
        threads = [
            threading.Thread(
                target=lambda: outcomes.append(upload(client, path, mode="append"))
            )
            for _ in range(8)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert [o.kind for o in outcomes] == ["success"] * 8
    assert len(devhub.rows(SALES_TABLE)) == 16


# --- file names -----------------------------------------------------------------

NAMES = [
    "Umsätze März 2026.csv",
    "日本語のデータ.csv",
    'quo"te.csv',
    "semi;colon;s.csv",
    "back\\slash.csv",
    "per%25cent.csv",
    "cr\rlf\n.csv",
    'evil.json"; filename="x.csv',
    "x\r\nContent-Type: application/json\r\n\r\n.csv",
    "x.json\r\n\r\n--boundary--\r\n.csv",
]


@pytest.mark.parametrize("name", NAMES)
def test_the_hub_receives_the_exact_file_name_and_nothing_else(devhub, tmp_path, name):
    # The name is given apart from the path: a real file name cannot hold "/".
    path = write(tmp_path, "data.csv", CSV)
    with client_for(devhub) as client:
        outcome = upload(client, path, filename=name)
    assert outcome.kind == "success", outcome.error
    (request,) = devhub.requests()
    assert request["filename"] == name
    assert request["part_content_type"] == "text/csv"
    assert request["bytes"] == len(CSV)
    assert outcome.rows == 2


def test_the_name_on_disk_is_the_name_sent(devhub, tmp_path):
    path = write(tmp_path, 'Umsätze; "März"\n.csv', CSV)
    with client_for(devhub) as client:
        assert upload(client, path).kind == "success"
    assert devhub.requests()[0]["filename"] == 'Umsätze; "März"\n.csv'


# --- HTTP errors --------------------------------------------------------------


def test_wrong_key_is_blocked(devhub, tmp_path):
    path = write(tmp_path, "sales.csv", CSV)
    with client_for(devhub) as client:
        outcome = upload(client, path, api_key=Secret(WRONG_KEY, "test"))
    assert (outcome.kind, outcome.status) == ("blocked", 401)
    assert "X-Api-Key" in outcome.error


def test_key_without_access_to_the_table_is_blocked(devhub, tmp_path):
    path = write(tmp_path, "orders.csv", CSV)
    with client_for(devhub) as client:
        outcome = upload(client, path, task=ORDERS_TASK)
    assert (outcome.kind, outcome.status) == ("blocked", 403)


def test_unknown_task_is_blocked(devhub, tmp_path):
    path = write(tmp_path, "sales.csv", CSV)
    with client_for(devhub) as client:
        outcome = upload(client, path, task=UNKNOWN_TASK)
    assert (outcome.kind, outcome.status) == ("blocked", 404)
    assert UNKNOWN_TASK in outcome.error


def test_non_container_task_is_rejected(devhub, tmp_path):
    path = write(tmp_path, "sales.csv", CSV)
    key = Secret("test-key-all", "test")
    with client_for(devhub) as client:
        outcome = upload(client, path, task=REPORT_TASK, api_key=key)
    assert (outcome.kind, outcome.status) == ("rejected", 400)
    assert outcome.body_complete


def test_bad_csv_is_rejected_with_the_hubs_detail(devhub, tmp_path):
    path = write(tmp_path, "sales.csv", b"")
    with client_for(devhub) as client:
        outcome = upload(client, path)
    assert (outcome.kind, outcome.status) == ("rejected", 400)
    assert outcome.error.startswith("HTTP 400 Bad Request: ")


def test_too_large_is_rejected(devhub_factory, tmp_path):
    hub = devhub_factory(max_body_size=1000)
    path = big_csv(tmp_path, 1)
    with client_for(hub) as client:
        outcome = upload(client, path)
    assert (outcome.kind, outcome.status) == ("rejected", 413)


def test_unknown_format_is_rejected(devhub, tmp_path):
    path = write(tmp_path, "sales.txt", CSV)
    with client_for(devhub) as client:
        outcome = upload(client, path)
    assert (outcome.kind, outcome.status) == ("rejected", 415)


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, "rejected"),
        (401, "blocked"),
        (403, "blocked"),
        (404, "blocked"),
        (405, "blocked"),
        (408, "retry"),
        (409, "retry"),
        (410, "blocked"),
        (413, "rejected"),
        (415, "rejected"),
        (422, "rejected"),
        (429, "retry"),
        (500, "retry"),
        (502, "retry"),
        (503, "retry"),
        (504, "retry"),
        (301, "blocked"),
        (201, "success"),
    ],
)
def test_each_status_from_the_wire_becomes_its_outcome(devhub, tmp_path, status, kind):
    devhub.set_fault("status", status=status, detail="injected by the test")
    path = write(tmp_path, "sales.csv", CSV)
    with client_for(devhub) as client:
        outcome = upload(client, path)
    assert (outcome.kind, outcome.status) == (kind, status)
    assert outcome.body_complete
    assert outcome.retry_after is None
    if kind != "success":
        assert outcome.error.startswith(f"HTTP {status}")
    if kind in ("retry", "rejected", "blocked") and status >= 400:
        assert "injected by the test" in outcome.error


def test_retry_after_in_seconds(devhub, tmp_path):
    devhub.set_fault("status", status=503, retry_after=120)
    path = write(tmp_path, "sales.csv", CSV)
    with client_for(devhub) as client:
        outcome = upload(client, path)
    assert (outcome.kind, outcome.status, outcome.retry_after) == ("retry", 503, 120)


def test_retry_after_as_an_http_date(devhub, tmp_path):
    devhub.set_fault(
        "status", status=429, retry_after=600, retry_after_format="http-date"
    )
    path = write(tmp_path, "sales.csv", CSV)
    with client_for(devhub) as client:
        outcome = upload(client, path)
    assert (outcome.kind, outcome.status) == ("retry", 429)
    # An HTTP-date has whole seconds: the delay is 600 s give or take a few.
    assert 590 <= outcome.retry_after <= 601


def test_retry_after_is_ignored_where_no_retry_follows(devhub, tmp_path):
    devhub.set_fault("status", status=400, retry_after=60)
    path = write(tmp_path, "sales.csv", CSV)
    with client_for(devhub) as client:
        outcome = upload(client, path)
    assert (outcome.kind, outcome.retry_after) == ("rejected", None)


def test_error_bodies_are_truncated(devhub, tmp_path):
    devhub.set_fault("status", status=500, detail="boom " * 1000)
    path = write(tmp_path, "sales.csv", CSV)
    with client_for(devhub) as client:
        outcome = upload(client, path)
    assert outcome.kind == "retry"
    assert len(outcome.error) == 500


# --- network failures ---------------------------------------------------------


def test_connection_cut_mid_body_is_retried_with_an_incomplete_body(devhub, tmp_path):
    devhub.set_fault("cut", after_bytes=100_000)
    path = big_csv(tmp_path, 32)
    sent_hook: list[bool] = []
    with client_for(devhub) as client:
        outcome = upload(client, path, on_body_sent=lambda: sent_hook.append(True))
    assert (outcome.kind, outcome.status) == ("retry", None)
    assert not outcome.body_complete
    assert outcome.bytes_sent < path.stat().st_size
    assert sent_hook == []
    assert "while sending the body" in outcome.error
    assert devhub.rows(SALES_TABLE) == []


def test_a_failing_body_sent_hook_keeps_the_whole_body_from_the_hub(devhub, tmp_path):
    # The hook (the ledger's durable mark) runs before the final piece: if it
    # cannot record, the hub never gets a whole body and writes nothing.
    path = write(tmp_path, "sales.csv", CSV)

    def refuse() -> None:
        raise OSError("disk full")

    with client_for(devhub) as client:
        with pytest.raises(OSError, match="disk full"):
            upload(client, path, mode="append", on_body_sent=refuse)
        assert upload(client, path, mode="append").rows == 2  # still usable
    assert len(devhub.rows(SALES_TABLE)) == 2


def test_a_hub_that_never_answers_times_out_after_the_body(devhub, tmp_path):
    devhub.set_fault("hang")
    path = write(tmp_path, "sales.csv", CSV)
    with client_for(devhub, answer_timeout=0.5) as client:
        outcome = upload(client, path)
    assert (outcome.kind, outcome.status) == ("retry", None)
    assert outcome.body_complete
    assert outcome.bytes_sent == len(CSV)
    assert outcome.error == "no answer within 0.5s after the body was sent"


def test_a_slow_answer_is_in_doubt_not_lost(devhub, tmp_path):
    # The hub wrote the rows but answered too late: body_complete tells the
    # ledger an append may be in; the outcome still says retry.
    devhub.set_fault("delay", seconds=3)
    path = write(tmp_path, "sales.csv", CSV)
    with client_for(devhub, answer_timeout=0.5) as client:
        outcome = upload(client, path, mode="append")
    assert (outcome.kind, outcome.body_complete) == ("retry", True)
    assert len(devhub.rows(SALES_TABLE)) == 2


def test_connection_refused_is_retried(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    path = write(tmp_path, "sales.csv", CSV)
    config = HubConfig(url=f"http://127.0.0.1:{port}", api_key=None)
    with HubClient(config) as client:
        outcome = upload(client, path)
    assert (outcome.kind, outcome.status) == ("retry", None)
    assert (outcome.body_complete, outcome.bytes_sent) == (False, 0)
    assert outcome.error.startswith("cannot connect: ")


def test_a_stalled_upload_trips_the_idle_write_timeout(tmp_path):
    # A listener that never accepts: the kernel completes the handshake, the
    # socket buffers fill, then nothing moves.
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        path = big_csv(tmp_path, 64)
        config = HubConfig(
            url=f"http://127.0.0.1:{port}", api_key=None, write_timeout=0.5
        )
        with HubClient(config) as client:
            outcome = upload(client, path)
    assert (outcome.kind, outcome.status) == ("retry", None)
    assert not outcome.body_complete
    assert 0 < outcome.bytes_sent < path.stat().st_size
    assert outcome.error == "the hub took no data for 0.5s while the body was sent"


def test_a_file_that_shrinks_mid_upload_aborts_the_request(devhub, tmp_path):
    path = big_csv(tmp_path, 8)

    def shrink(sent: int) -> None:
        if sent == CHUNK_SIZE:
            os.truncate(path, 2 * CHUNK_SIZE)

    with client_for(devhub) as client:
        outcome = upload(client, path, progress=shrink)
    assert (outcome.kind, outcome.status) == ("retry", None)
    assert outcome.error == "file shrank while uploading"
    assert not outcome.body_complete
    assert outcome.bytes_sent == 2 * CHUNK_SIZE
    assert devhub.rows(SALES_TABLE) == []


def test_a_file_that_grows_mid_upload_is_sent_up_to_size(devhub, tmp_path):
    path = big_csv(tmp_path, 3)
    size = path.stat().st_size

    def grow(sent: int) -> None:
        if sent == CHUNK_SIZE:
            with path.open("ab") as out:
                out.write(b"late," + b"9" * 58 + b"\n")

    with client_for(devhub) as client:
        outcome = upload(client, path, size=size, progress=grow)
    assert outcome.kind == "success"
    assert devhub.requests()[0]["bytes"] == size


def test_cancel_aborts_between_chunks(devhub, tmp_path):
    path = big_csv(tmp_path, 8)
    cancel = threading.Event()
    with client_for(devhub) as client:
        outcome = upload(client, path, cancel=cancel, progress=lambda _: cancel.set())
    assert (outcome.kind, outcome.error) == ("retry", "cancelled: shutting down")
    assert outcome.bytes_sent == CHUNK_SIZE
    assert not outcome.body_complete
    assert devhub.rows(SALES_TABLE) == []


def test_environment_proxies_are_used(devhub, tmp_path, monkeypatch):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        proxy_port = sock.getsockname()[1]
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy_port}")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    path = write(tmp_path, "sales.csv", CSV)
    with client_for(devhub) as client:
        outcome = upload(client, path)
    # The request went to the (closed) proxy, not to the hub.
    assert (outcome.kind, outcome.status) == ("retry", None)
    assert devhub.requests() == []

    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    with client_for(devhub) as client:
        assert upload(client, path).kind == "success"


# --- refused locally ----------------------------------------------------------


def test_a_symlink_is_refused(devhub, tmp_path):
    target = write(tmp_path, "real.csv", CSV)
    link = tmp_path / "link.csv"
    link.symlink_to(target)
    with client_for(devhub) as client, pytest.raises(FileRefused, match="cannot open"):
        upload(client, link, size=len(CSV))
    assert devhub.requests() == []


def test_a_fifo_is_refused_without_blocking(devhub, tmp_path):
    fifo = tmp_path / "pipe.csv"
    os.mkfifo(fifo)
    with client_for(devhub) as client, pytest.raises(FileRefused, match="regular"):
        upload(client, fifo, size=10)


def test_a_missing_file_is_refused(devhub, tmp_path):
    with client_for(devhub) as client, pytest.raises(FileRefused, match="no such"):
        upload(client, tmp_path / "gone.csv", size=10)


# --- logs ---------------------------------------------------------------------


def test_debug_logs_of_every_library_never_show_the_key(devhub_factory, tmp_path):
    secret = "s3cret-key-that-must-not-leak"
    config = {
        "task": [{"id": SALES_TASK, "name": "Sales", "table": SALES_TABLE}],
        "key": [{"name": "k", "value": secret, "tables": [SALES_TABLE]}],
    }
    hub = devhub_factory(config=config)
    stream = io.StringIO()
    logs.configure("json", level="debug", stream=stream)
    try:
        path = write(tmp_path, "sales.csv", CSV)
        key = Secret(secret, "test")
        with client_for(hub) as client:
            assert upload(client, path, api_key=key).kind == "success"
            hub.set_fault("status", status=401)
            assert upload(client, path, api_key=key).kind == "blocked"
            hub.set_fault("cut", after_bytes=10)
            assert upload(client, path, api_key=key).kind == "retry"
    finally:
        logs.configure("json", level="warning", stream=io.StringIO())
    output = stream.getvalue()
    # The wire talk of httpcore and httpx was there, the key was not.
    assert "send_request_headers" in output and "HTTP Request: POST" in output
    assert "upload.succeeded" in output and "upload.failed" in output
    assert secret not in output
    assert CSV.decode() not in output


def test_one_canonical_line_per_upload(devhub, tmp_path):
    stream = io.StringIO()
    logs.configure("json", level="info", stream=stream)
    try:
        path = write(tmp_path, "sales.csv", CSV)
        with client_for(devhub) as client:
            upload(client, path)
    finally:
        logs.configure("json", level="warning", stream=io.StringIO())
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    (line,) = [entry for entry in lines if entry["event"].startswith("upload.")]
    assert line["event"] == "upload.succeeded"
    for field in ("task_id", "mode", "path", "bytes", "rows", "status", "seconds"):
        assert field in line
    assert "mib_s" in line
    assert (line["rows"], line["status"], line["bytes"]) == (2, 200, len(CSV))


# --- TLS ----------------------------------------------------------------------


class _Answer42(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        remaining = int(self.headers["Content-Length"])
        while remaining:
            remaining -= len(self.rfile.read(min(remaining, 65536)))
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"42")

    def log_message(self, *_args: object) -> None:
        pass


@pytest.fixture
def tls_hub(tmp_path):
    """An HTTPS server on 127.0.0.1 with a self-signed certificate: (url, cert)."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    command = [
        "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
        "-keyout", str(key), "-out", str(cert), "-days", "1",
        "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
    ]  # fmt: skip
    subprocess.run(command, check=True, capture_output=True)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Answer42)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"https://127.0.0.1:{server.server_address[1]}", cert
    server.shutdown()
    server.server_close()
    thread.join()


def test_tls_with_the_ca_bundle_succeeds(tls_hub, tmp_path):
    url, cert = tls_hub
    path = write(tmp_path, "sales.csv", CSV)
    with HubClient(HubConfig(url=url, api_key=None, ca_bundle=cert)) as client:
        outcome = upload(client, path)
    assert (outcome.kind, outcome.rows) == ("success", 42)


def test_tls_is_verified_without_a_ca_bundle(tls_hub, tmp_path, monkeypatch):
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    url, _cert = tls_hub
    path = write(tmp_path, "sales.csv", CSV)
    with HubClient(HubConfig(url=url, api_key=None)) as client:
        outcome = upload(client, path)
    assert (outcome.kind, outcome.status) == ("retry", None)
    assert "CERTIFICATE_VERIFY_FAILED" in outcome.error


def hash_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "hubwatchd-hash"]


def test_a_large_body_is_hashed_beside_the_send_exactly(devhub, tmp_path):
    # Above HASH_BESIDE_ABOVE the hash runs in a thread of its own; it must
    # still see every byte, in order, and be done when upload() returns.
    path = big_csv(tmp_path, 24)
    hasher = hashlib.sha256()
    with client_for(devhub) as client:
        outcome = upload(client, path, hasher=hasher)
    assert outcome.kind == "success"
    assert hasher.hexdigest() == hashlib.sha256(path.read_bytes()).hexdigest()
    (request,) = devhub.requests()
    assert request["sha256"] == hasher.hexdigest()
    assert hash_threads() == []


def test_the_hash_thread_ends_when_the_connection_is_cut(devhub, tmp_path):
    devhub.set_fault("cut", after_bytes=100_000)
    path = big_csv(tmp_path, 32)
    with client_for(devhub) as client:
        outcome = upload(client, path, hasher=hashlib.sha256())
    assert not outcome.body_complete
    assert hash_threads() == []  # ended by upload() itself, not by the collector
