"""devhub over a real socket: the documented API, formats, tables and faults."""

from __future__ import annotations

import datetime
import email.utils
import hashlib
import io
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openpyxl
import pytest
from hubdata import (
    ALL_TABLES_KEY,
    CATALOG_KEY,
    CATALOG_TABLE,
    CATALOG_TASK,
    INVENTORY_KEY,
    INVENTORY_TABLE,
    INVENTORY_TASK,
    NO_TABLE_TASK,
    ORDERS_KEY,
    ORDERS_TABLE,
    ORDERS_TASK,
    REPORT_TASK,
    SALES_KEY,
    SALES_TABLE,
    SALES_TASK,
    STANDARD_CONFIG,
    STAR_KEY,
    TABLE_OF,
    UNKNOWN_TASK,
    WRONG_KEY,
)

from hubwatchd.devhub.formats import XLSX_TYPE as XLSX

SALES_CSV = b"region,amount\nnorth,10\nsouth,20\n"


def post_file(url, key, content, filename="data.csv", content_type=None, timeout=30):
    files = {"file": (filename, content, content_type or "application/octet-stream")}
    headers = {"X-Api-Key": key} if key is not None else {}
    return httpx.post(url, files=files, headers=headers, timeout=timeout)


def post_json(url, key, body: bytes, **kw):
    headers = {"X-Api-Key": key, "Content-Type": "application/json"}
    return httpx.post(url, content=body, headers=headers, timeout=30, **kw)


def assert_problem(response: httpx.Response, status: int, *words: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["status"] == status
    assert body["title"] and body["type"]
    for word in words:
        assert word in body["detail"]
    return body


# --- the upload path ------------------------------------------------------


def test_csv_upload_replaces_rows_and_answers_rows_processed(devhub):
    response = post_file(devhub.endpoint(SALES_TASK), SALES_KEY, SALES_CSV)

    assert response.status_code == 200
    assert response.json() == {"rowsProcessed": 2}
    assert devhub.rows(SALES_TABLE) == [
        {"region": "north", "amount": "10"},
        {"region": "south", "amount": "20"},
    ]
    assert devhub.tables()[SALES_TABLE] == 2


def test_raw_json_body_is_stored(devhub):
    body = b'[{"sku": "a", "qty": 1}, {"sku": "b", "qty": 2.5, "ok": true}]'
    response = post_json(devhub.endpoint(ORDERS_TASK, "append"), ORDERS_KEY, body)

    assert response.json() == {"rowsProcessed": 2}
    assert devhub.rows(ORDERS_TABLE) == [
        {"sku": "a", "qty": 1, "ok": None},
        {"sku": "b", "qty": 2.5, "ok": 1},
    ]


def test_request_log_records_each_upload_with_the_file_parts_hash(devhub):
    post_file(devhub.endpoint(SALES_TASK, "replace"), SALES_KEY, SALES_CSV, "s.csv")
    post_json(devhub.endpoint(ORDERS_TASK, "append"), ORDERS_KEY, b'[{"a": 1}]')
    post_file(devhub.endpoint(SALES_TASK), WRONG_KEY, SALES_CSV)

    first, second, third = devhub.requests()
    assert first["task"] == SALES_TASK
    assert first["mode"] == "replace"
    assert first["content_type"].startswith("multipart/form-data; boundary=")
    assert first["filename"] == "s.csv"
    assert first["bytes"] == len(SALES_CSV)
    assert first["sha256"] == hashlib.sha256(SALES_CSV).hexdigest()
    assert (first["status"], first["rows"], first["key"]) == (200, 2, "sales")
    assert second["sha256"] == hashlib.sha256(b'[{"a": 1}]').hexdigest()
    assert (second["mode"], second["content_type"]) == ("append", "application/json")
    assert (third["status"], third["key"], third["mode"]) == (401, None, None)
    assert all(entry["time"] for entry in (first, second, third))


# --- every status, in the documented order --------------------------------


@pytest.mark.parametrize("key", [None, "", WRONG_KEY])
def test_missing_or_unknown_key_is_401(devhub, key):
    response = post_file(devhub.endpoint(SALES_TASK), key, SALES_CSV)
    assert_problem(response, 401, "X-Api-Key")


@pytest.mark.parametrize("task_id", [UNKNOWN_TASK, "not-a-guid"])
def test_unknown_or_malformed_task_id_is_404(devhub, task_id):
    response = post_file(devhub.endpoint(task_id), ALL_TABLES_KEY, SALES_CSV)
    assert_problem(response, 404, task_id)


def test_non_container_task_is_400(devhub):
    response = post_file(devhub.endpoint(REPORT_TASK), ALL_TABLES_KEY, SALES_CSV)
    assert_problem(response, 400, "not a container")


@pytest.mark.parametrize("mode", ["merge", "Append", "REPLACE", ""])
def test_mode_other_than_replace_or_append_is_400(devhub, mode):
    url = devhub.endpoint(SALES_TASK) + f"?mode={mode}"
    assert_problem(post_file(url, SALES_KEY, SALES_CSV), 400, "mode")


def test_key_scoped_to_another_table_is_403(devhub):
    response = post_file(devhub.endpoint(SALES_TASK), ORDERS_KEY, SALES_CSV)
    assert_problem(response, 403, SALES_TABLE)
    assert devhub.rows(SALES_TABLE) == []


def test_form_without_a_file_part_is_400(devhub):
    response = httpx.post(
        devhub.endpoint(SALES_TASK),
        data={"other": "x"},
        files={"attachment": ("a.csv", SALES_CSV)},
        headers={"X-Api-Key": SALES_KEY},
    )
    assert_problem(response, 400, "no file")


def test_container_without_result_table_is_400(devhub):
    response = post_file(devhub.endpoint(NO_TABLE_TASK), ALL_TABLES_KEY, SALES_CSV)
    assert_problem(response, 400, "no result table")


@pytest.mark.parametrize(
    ("task_id", "key", "mode", "files", "status"),
    [
        # 401 before 404, 400 and 403
        (UNKNOWN_TASK, WRONG_KEY, "bad", True, 401),
        # 404 before 400 (mode) and 403
        (UNKNOWN_TASK, SALES_KEY, "bad", True, 404),
        # 400 (task type, mode) before 403
        (REPORT_TASK, SALES_KEY, "append", True, 400),
        (SALES_TASK, ORDERS_KEY, "bad", True, 400),
        # 403 before 400 (no file)
        (SALES_TASK, ORDERS_KEY, "append", False, 403),
        # no file before no result table
        (NO_TABLE_TASK, ALL_TABLES_KEY, "append", False, 400),
    ],
)
def test_checks_run_in_the_documented_order(devhub, task_id, key, mode, files, status):
    response = httpx.post(
        devhub.endpoint(task_id, mode),
        data={"note": "x"},
        files={"file": ("a.csv", SALES_CSV)} if files else {"other": ("a", b"x")},
        headers={"X-Api-Key": key},
    )
    body = assert_problem(response, status)
    if task_id == NO_TABLE_TASK:
        assert "no file" in body["detail"]


def test_other_content_types_are_415(devhub):
    response = httpx.post(
        devhub.endpoint(SALES_TASK),
        content=SALES_CSV,
        headers={"X-Api-Key": SALES_KEY, "Content-Type": "text/csv"},
    )
    assert_problem(response, 415, "text/csv")


def test_file_part_of_unknown_format_is_415(devhub):
    response = post_file(devhub.endpoint(SALES_TASK), SALES_KEY, b"x", "notes.txt")
    assert_problem(response, 415, "notes.txt")


def test_body_over_the_limit_is_413_from_content_length(devhub_factory):
    hub = devhub_factory(max_body_size=1000)
    big = b"a,b\n" + b"1,2\n" * 500

    response = post_file(hub.endpoint(SALES_TASK), SALES_KEY, big)

    assert_problem(response, 413, "1000")
    assert post_file(hub.endpoint(SALES_TASK), SALES_KEY, SALES_CSV).status_code == 200


def test_body_over_the_limit_is_413_while_streaming(devhub_factory):
    hub = devhub_factory(max_body_size=1000)

    def chunks():  # no Content-Length: httpx sends it chunked
        yield b'[{"a": "' + b"x" * 600
        yield b"y" * 600 + b'"}]'

    response = httpx.post(
        hub.endpoint(ORDERS_TASK),
        content=chunks(),
        headers={"X-Api-Key": ORDERS_KEY, "Content-Type": "application/json"},
    )

    assert_problem(response, 413, "limit")
    assert hub.requests()[-1]["content_length"] is None
    assert hub.rows(ORDERS_TABLE) == []


# --- formats --------------------------------------------------------------


@pytest.mark.parametrize("delimiter", [",", ";", "\t", "|"])
def test_csv_delimiter_is_sniffed(devhub, delimiter):
    text = f'name{delimiter}"note"\r\nann{delimiter}"a {delimiter} b"\r\n'
    response = post_file(devhub.endpoint(SALES_TASK), SALES_KEY, text.encode())
    assert response.json() == {"rowsProcessed": 1}
    assert devhub.rows(SALES_TABLE) == [{"name": "ann", "note": f"a {delimiter} b"}]


def test_csv_quoting_follows_rfc_4180_and_drops_the_bom(devhub):
    text = '\ufeffid,text\n1,"say ""hi"", twice"\n2,"two\nlines"\n3,\n'
    response = post_file(devhub.endpoint(SALES_TASK), SALES_KEY, text.encode())
    assert response.json() == {"rowsProcessed": 3}
    assert devhub.rows(SALES_TABLE) == [
        {"id": "1", "text": 'say "hi", twice'},
        {"id": "2", "text": "two\nlines"},
        {"id": "3", "text": ""},
    ]


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b"", ["header"]),
        (b"a,b\n1,2\n3\n", ["line 3", "1 fields"]),
        (b"a,b\n1,2\n3,4,5\n", ["line 3", "3 fields"]),
        (b'a,b\n1,"x"y\n', ["line 2"]),
        (b"a,b\n1,\xff\xfe\n", ["UTF-8"]),
        (b"a,a\n1,2\n", ["twice"]),
    ],
)
def test_unreadable_csv_is_400_naming_the_line(devhub, body, words):
    response = post_file(devhub.endpoint(SALES_TASK), SALES_KEY, body)
    assert_problem(response, 400, *words)


def test_json_file_part_and_content_type_choose_the_format(devhub):
    body = b'[{"sku": "a", "n": 1}]'
    by_name = post_file(
        devhub.endpoint(ORDERS_TASK, "append"), ORDERS_KEY, body, "o.json"
    )
    by_type = post_file(
        devhub.endpoint(ORDERS_TASK, "append"),
        ORDERS_KEY,
        body,
        "orders",
        "application/json",
    )
    assert by_name.json() == by_type.json() == {"rowsProcessed": 1}
    assert len(devhub.rows(ORDERS_TABLE)) == 2


def test_filename_extension_wins_over_part_content_type(devhub):
    response = post_file(
        devhub.endpoint(SALES_TASK), SALES_KEY, SALES_CSV, "s.csv", "application/json"
    )
    assert response.json() == {"rowsProcessed": 2}


def test_json_array_spanning_many_read_chunks_is_streamed(devhub):
    rows = [{"i": i, "text": "x" * 200, "price": i / 4} for i in range(20_000)]
    body = json.dumps(rows, indent=1).encode()
    assert len(body) > 4 << 20

    response = post_json(devhub.endpoint(ORDERS_TASK), ORDERS_KEY, body)

    assert response.json() == {"rowsProcessed": 20_000}
    stored = devhub.rows(ORDERS_TABLE)
    assert stored[0] == rows[0] and stored[-1] == rows[-1]


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b'{"a": 1}', ["array"]),
        (b"[1, 2]", ["row 1", "not an object"]),
        (b'[{"a": {"b": 1}}]', ["row 1", "flat"]),
        (b'[{"a": [1]}]', ["row 1", "flat"]),
        (b'[{"a": 1},\n {"a": 2},\n {"a": }]', ["row 3", "line 3"]),
        (b'[{"a": 1} {"a": 2}]', ["row 1"]),
        (b'[{"a": 1}] trailing', ["after"]),
        (b'[{"a": 1},', ["row 2"]),
        (b"", ["array"]),
    ],
)
def test_unreadable_json_is_400_naming_the_row(devhub, body, words):
    response = post_json(devhub.endpoint(ORDERS_TASK), ORDERS_KEY, body)
    assert_problem(response, 400, "JSON", *words)


def test_empty_json_array_replaces_with_no_rows(devhub):
    post_json(devhub.endpoint(ORDERS_TASK), ORDERS_KEY, b'[{"a": 1}]')
    response = post_json(devhub.endpoint(ORDERS_TASK), ORDERS_KEY, b" [ ] ")
    assert response.json() == {"rowsProcessed": 0}
    assert devhub.rows(ORDERS_TABLE) == []


def xlsx_bytes(rows, *, second_sheet=None) -> bytes:
    book = openpyxl.Workbook()
    sheet = book.active
    for row in rows:
        sheet.append(row)
    if second_sheet:
        other = book.create_sheet("Other")
        for row in second_sheet:
            other.append(row)
    out = io.BytesIO()
    book.save(out)
    return out.getvalue()


def test_xlsx_first_sheet_header_row_and_typed_cells(devhub):
    content = xlsx_bytes(
        [
            ["sku", "qty", "price", "when"],
            ["a", 1, 2.5, datetime.date(2026, 1, 31)],
            ["b", 2, None, None],
            [],
            ["c", 3],
        ],
        second_sheet=[["ignored"], ["x"]],
    )

    response = post_file(
        devhub.endpoint(INVENTORY_TASK), INVENTORY_KEY, content, "i.xlsx"
    )

    assert response.json() == {"rowsProcessed": 3}
    assert devhub.rows(INVENTORY_TABLE) == [
        {"sku": "a", "qty": 1, "price": 2.5, "when": "2026-01-31T00:00:00"},
        {"sku": "b", "qty": 2, "price": None, "when": None},
        {"sku": "c", "qty": 3, "price": None, "when": None},
    ]


def test_xlsx_chosen_by_content_type_alone(devhub):
    content = xlsx_bytes([["a"], [1]])
    response = post_file(
        devhub.endpoint(SALES_TASK), SALES_KEY, content, "export", XLSX
    )
    assert response.json() == {"rowsProcessed": 1}


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (b"not a zip", ["XLSX"]),
        (None, ["header"]),  # an empty first sheet
        ("dup", ["twice"]),
        ("wide", ["row 2", "3 cells"]),
    ],
)
def test_unreadable_xlsx_is_400(devhub, content, words):
    if content is None:
        content = xlsx_bytes([])
    elif content == "dup":
        content = xlsx_bytes([["a", "a"], [1, 2]])
    elif content == "wide":
        content = xlsx_bytes([["a", "b"], [1, 2, 3]])
    response = post_file(devhub.endpoint(SALES_TASK), SALES_KEY, content, "x.xlsx")
    assert_problem(response, 400, *words)


# --- tables, modes and keys -----------------------------------------------


def test_replace_then_append_then_replace(devhub):
    url = devhub.endpoint(SALES_TASK)
    post_file(url, SALES_KEY, b"n\n1\n2\n")
    assert devhub.rows(SALES_TABLE) == [{"n": "1"}, {"n": "2"}]

    appended = post_file(devhub.endpoint(SALES_TASK, "append"), SALES_KEY, b"n\n3\n")
    assert appended.json() == {"rowsProcessed": 1}
    assert [r["n"] for r in devhub.rows(SALES_TABLE)] == ["1", "2", "3"]

    replaced = post_file(devhub.endpoint(SALES_TASK, "replace"), SALES_KEY, b"n\n9\n")
    assert replaced.json() == {"rowsProcessed": 1}
    assert devhub.rows(SALES_TABLE) == [{"n": "9"}]
    assert devhub.tables() == {
        SALES_TABLE: 1,
        ORDERS_TABLE: 0,
        CATALOG_TABLE: 0,
        INVENTORY_TABLE: 0,
    }


@pytest.mark.parametrize(
    ("key", "task_id", "status"),
    [
        (CATALOG_KEY, CATALOG_TASK, 200),  # Catalog_* covers Catalog_Products
        (CATALOG_KEY, SALES_TASK, 403),
        (STAR_KEY, SALES_TASK, 200),  # "*" covers every table
        (STAR_KEY, INVENTORY_TASK, 200),
        (ALL_TABLES_KEY, CATALOG_TASK, 200),  # no table list: every table
        (ALL_TABLES_KEY, INVENTORY_TASK, 200),
        (INVENTORY_KEY, INVENTORY_TASK, 200),  # a hyphen in the table name
        (INVENTORY_KEY, CATALOG_TASK, 403),
    ],
)
def test_wildcard_and_all_tables_keys(devhub, key, task_id, status):
    response = post_file(devhub.endpoint(task_id), key, SALES_CSV)
    assert response.status_code == status, response.text
    expected = 2 if status == 200 else 0
    assert len(devhub.rows(TABLE_OF[task_id])) == expected


BROKEN_CSV = b"n\n" + b"".join(b"%d\n" % i for i in range(5000)) + b"1,2\n"


@pytest.mark.parametrize("mode", ["replace", "append"])
def test_broken_body_leaves_the_table_exactly_as_it_was(devhub, mode):
    post_file(devhub.endpoint(SALES_TASK), SALES_KEY, SALES_CSV)
    before = devhub.rows(SALES_TABLE)

    csv_response = post_file(devhub.endpoint(SALES_TASK, mode), SALES_KEY, BROKEN_CSV)
    json_body = b"[" + b'{"region": "x", "extra": 1},' * 3000 + b"{]"
    json_response = post_json(devhub.endpoint(SALES_TASK, mode), SALES_KEY, json_body)

    assert_problem(csv_response, 400, "line 5002")
    assert_problem(json_response, 400, "row 3001")
    assert devhub.rows(SALES_TABLE) == before
    assert devhub.columns(SALES_TABLE) == ["region", "amount"]


def test_append_with_new_columns_unions_them(devhub):
    post_file(devhub.endpoint(SALES_TASK), SALES_KEY, b"a,b\n1,2\n")
    response = post_file(
        devhub.endpoint(SALES_TASK, "append"), SALES_KEY, b"b,c\n3,4\n"
    )

    assert response.json() == {"rowsProcessed": 1}
    assert devhub.columns(SALES_TABLE) == ["a", "b", "c"]
    assert devhub.rows(SALES_TABLE) == [
        {"a": "1", "b": "2", "c": None},
        {"a": None, "b": "3", "c": "4"},
    ]


def test_json_rows_with_differing_keys_union_within_one_upload(devhub):
    body = b'[{"a": 1}, {"b": 2}, {"a": 3, "b": 4}, {}]'
    response = post_json(devhub.endpoint(SALES_TASK), SALES_KEY, body)
    assert response.json() == {"rowsProcessed": 4}
    assert devhub.rows(SALES_TABLE) == [
        {"a": 1, "b": None},
        {"a": None, "b": 2},
        {"a": 3, "b": 4},
        {"a": None, "b": None},
    ]


def test_new_columns_on_append_can_be_refused(devhub_factory):
    config = {**STANDARD_CONFIG, "devhub": {"new_columns": "reject"}}
    hub = devhub_factory(config)
    post_file(hub.endpoint(SALES_TASK), SALES_KEY, b"a,b\n1,2\n")

    refused = post_file(hub.endpoint(SALES_TASK, "append"), SALES_KEY, b"a,c\n3,4\n")
    same = post_file(hub.endpoint(SALES_TASK, "append"), SALES_KEY, b"b,a\n5,6\n")
    replaced = post_file(hub.endpoint(SALES_TASK), SALES_KEY, b"x\n7\n")

    assert_problem(refused, 400, "'c'")
    assert same.json() == {"rowsProcessed": 1}
    assert replaced.json() == {"rowsProcessed": 1}
    assert hub.rows(SALES_TABLE) == [{"x": "7"}]


# --- faults ---------------------------------------------------------------


def test_status_fault_with_retry_after_seconds_for_the_next_n_requests(devhub):
    devhub.set_fault("status", status=503, retry_after=7, count=2)
    url = devhub.endpoint(SALES_TASK)

    answers = [post_file(url, SALES_KEY, SALES_CSV) for _ in range(3)]

    assert [a.status_code for a in answers] == [503, 503, 200]
    assert answers[0].headers["Retry-After"] == "7"
    assert_problem(answers[1], 503, "injected")
    assert devhub.faults() == []
    assert [r["fault"] for r in devhub.requests()] == ["status", "status", None]
    assert devhub.requests()[0]["bytes"] > len(SALES_CSV)  # the body was read


def test_status_fault_with_retry_after_as_http_date(devhub):
    devhub.set_fault(
        "status", status=429, retry_after=120, retry_after_format="http-date"
    )
    response = post_file(devhub.endpoint(SALES_TASK), SALES_KEY, SALES_CSV)

    assert response.status_code == 429
    when = email.utils.parsedate_to_datetime(response.headers["Retry-After"])
    now = datetime.datetime.now(datetime.UTC)
    assert (
        datetime.timedelta(seconds=60) < when - now <= datetime.timedelta(seconds=121)
    )


def test_status_fault_without_retry_after_and_per_task_scope(devhub):
    devhub.set_fault("status", status=500, task=ORDERS_TASK)

    sales = post_file(devhub.endpoint(SALES_TASK), SALES_KEY, SALES_CSV)
    orders = post_file(devhub.endpoint(ORDERS_TASK), ORDERS_KEY, SALES_CSV)

    assert sales.status_code == 200
    assert orders.status_code == 500
    assert "Retry-After" not in orders.headers


def test_task_faults_go_before_global_ones_and_can_be_cleared(devhub):
    devhub.set_fault("status", status=502, count=0)
    devhub.set_fault("status", status=504, task=SALES_TASK, count=0)
    url = devhub.endpoint(SALES_TASK)

    assert post_file(url, SALES_KEY, SALES_CSV).status_code == 504
    devhub.clear_faults(task=SALES_TASK)
    assert post_file(url, SALES_KEY, SALES_CSV).status_code == 502
    devhub.clear_faults()
    assert post_file(url, SALES_KEY, SALES_CSV).status_code == 200


def test_delay_fault_writes_the_rows_then_answers_late(devhub):
    devhub.set_fault("delay", seconds=1.5)

    with pytest.raises(httpx.ReadTimeout):
        post_file(devhub.endpoint(SALES_TASK), SALES_KEY, SALES_CSV, timeout=0.3)

    # The rows are in although the client never heard so: the in-doubt case.
    wait_for(lambda: devhub.requests()[-1]["status"] == 200)
    assert len(devhub.rows(SALES_TABLE)) == 2
    assert devhub.requests()[-1]["fault"] == "delay"


def test_delay_fault_answers_normally_when_the_client_waits(devhub):
    devhub.set_fault("delay", seconds=0.2)
    response = post_file(devhub.endpoint(SALES_TASK), SALES_KEY, SALES_CSV)
    assert response.json() == {"rowsProcessed": 2}


def test_cut_fault_drops_the_connection_after_k_body_bytes(devhub):
    post_file(devhub.endpoint(SALES_TASK), SALES_KEY, SALES_CSV)
    devhub.set_fault("cut", after_bytes=1000)
    body = b"n\n" + b"123456789\n" * 200_000  # 2 MB: more than the socket buffers

    with pytest.raises(httpx.TransportError):
        post_file(devhub.endpoint(SALES_TASK), SALES_KEY, body)

    entry = devhub.requests()[-1]
    assert (entry["fault"], entry["bytes"], entry["status"]) == ("cut", 1000, None)
    assert len(devhub.rows(SALES_TABLE)) == 2
    assert post_file(devhub.endpoint(SALES_TASK), SALES_KEY, body).status_code == 200


def test_hang_fault_never_answers(devhub):
    devhub.set_fault("hang")

    with pytest.raises(httpx.ReadTimeout):
        post_file(devhub.endpoint(SALES_TASK), SALES_KEY, SALES_CSV, timeout=0.3)

    entry = devhub.requests()[-1]
    assert (entry["fault"], entry["status"]) == ("hang", None)
    assert entry["bytes"] > len(SALES_CSV)  # the whole body was taken
    assert (
        post_file(devhub.endpoint(SALES_TASK), SALES_KEY, SALES_CSV).status_code == 200
    )


def test_chaos_fault_draws_from_its_list_at_its_rate_repeatably(devhub_factory):
    chaos = {
        "probability": 0.5,
        "seed": 11,
        "faults": [
            {"kind": "status", "status": 503, "retry_after": 1},
            {"kind": "status", "status": 429},
        ],
    }
    outcomes = []
    for _ in range(2):
        hub = devhub_factory()
        hub.set_fault("chaos", **chaos)
        codes = [
            post_file(hub.endpoint(SALES_TASK), SALES_KEY, SALES_CSV).status_code
            for _ in range(40)
        ]
        outcomes.append(codes)

    assert outcomes[0] == outcomes[1]  # same seed, same draws
    assert set(outcomes[0]) == {200, 429, 503}
    assert 8 <= outcomes[0].count(200) <= 32


def test_faults_from_the_config_file(devhub_factory):
    config = {
        **STANDARD_CONFIG,
        "fault": [{"kind": "status", "status": 503, "retry_after": 2, "count": 1}],
    }
    hub = devhub_factory(config)
    first = post_file(hub.endpoint(SALES_TASK), SALES_KEY, SALES_CSV)
    second = post_file(hub.endpoint(SALES_TASK), SALES_KEY, SALES_CSV)
    assert (first.status_code, first.headers["Retry-After"]) == (503, "2")
    assert second.status_code == 200


@pytest.mark.parametrize(
    "spec",
    [
        {"kind": "explode"},
        {"kind": "status"},
        {"kind": "status", "status": 999},
        {"kind": "cut", "after_bytes": -1},
        {"kind": "delay", "seconds": "soon"},
        {"kind": "status", "status": 503, "task": "nope"},
        {"kind": "chaos", "probability": 2, "faults": [{"kind": "hang"}]},
        {"kind": "chaos", "probability": 0.5, "faults": []},
        {"kind": "hang", "colour": "red"},
    ],
)
def test_bad_fault_specs_are_refused(devhub, spec):
    response = httpx.post(f"{devhub.url}/_devhub/faults", json=spec)
    assert_problem(response, 400)
    assert devhub.faults() == []


# --- discard mode, inspection paths ---------------------------------------


def test_discard_mode_counts_bodies_stores_nothing_and_still_checks_keys(
    devhub_factory,
):
    hub = devhub_factory(discard=True)
    ok = post_file(hub.endpoint(SALES_TASK), SALES_KEY, SALES_CSV)
    refused = post_file(hub.endpoint(SALES_TASK), ORDERS_KEY, SALES_CSV)

    assert ok.json() == {"rowsProcessed": 0}
    assert refused.status_code == 403
    assert hub.rows(SALES_TABLE) == []
    entry = hub.requests()[0]
    assert entry["bytes"] > len(SALES_CSV) and entry["sha256"] is None


def test_inspection_paths(devhub):
    post_file(devhub.endpoint(INVENTORY_TASK), INVENTORY_KEY, SALES_CSV)

    tasks = httpx.get(f"{devhub.url}/_devhub/tasks").json()["tasks"]
    by_id = {t["id"]: t for t in tasks}
    assert by_id[INVENTORY_TASK]["rows"] == 2
    assert by_id[REPORT_TASK]["type"] == "report"
    assert by_id[NO_TABLE_TASK]["table"] is None

    page = httpx.get(
        f"{devhub.url}/_devhub/tables/{INVENTORY_TABLE}/rows?limit=1&offset=1"
    )
    assert page.json()["rows"] == [{"region": "south", "amount": "20"}]
    assert httpx.get(f"{devhub.url}/_devhub/tables/Nope/rows").status_code == 404

    devhub.clear_requests()
    assert devhub.requests() == []


# --- the command ------------------------------------------------------------


@pytest.mark.parametrize("missing", ["aiohttp", "openpyxl"])
def test_command_without_the_extra_says_what_to_install(missing):
    script = (
        "import sys\n"
        f"sys.modules[{missing!r}] = None\n"  # as if the extra were not installed
        "from hubwatchd.cli import main\n"
        "main(['devhub', '--port', '0'])\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 69
    assert "pip install 'hubwatchd[devhub]'" in result.stderr


def test_the_daemons_command_line_never_imports_aiohttp():
    script = "import sys, hubwatchd.cli; print('aiohttp' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert result.stdout.strip() == "False"


def test_sigterm_stops_devhub_promptly_even_with_a_request_hanging(devhub_factory):
    hub = devhub_factory()
    hub.set_fault("hang")
    with pytest.raises(httpx.ReadTimeout):
        post_file(hub.endpoint(SALES_TASK), SALES_KEY, SALES_CSV, timeout=0.3)

    hub.proc.terminate()

    assert hub.proc.wait(timeout=10) == 0


def test_command_refuses_a_bad_devhub_config(tmp_path):
    config = tmp_path / "devhub.toml"
    config.write_text('[[task]]\nid = "acme"\n')
    result = subprocess.run(
        [sys.executable, "-m", "hubwatchd", "devhub", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 78
    assert "task #1: id must be a GUID" in result.stderr


def wait_for(condition, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


# --- memory ---------------------------------------------------------------

GIB = 1 << 30
RSS_LIMIT = 150 * 1000 * 1000


def vm_hwm(pid: int) -> int:
    """Peak resident set size of process `pid`, in bytes."""
    status = Path(f"/proc/{pid}/status").read_text()
    kib = re.search(r"^VmHWM:\s+(\d+) kB$", status, re.MULTILINE)
    assert kib is not None
    return int(kib.group(1)) * 1024


def test_1_gib_upload_keeps_devhub_peak_rss_below_150_mb(devhub_factory, tmp_path):
    hub = devhub_factory()
    # 1 GiB of CSV: a header, then 1 MiB rows of 1 KiB each, written in 8 MiB blocks.
    row = b"1234567," + b"x" * 1015 + b"\n"
    block = row * 8192
    path = tmp_path / "big.csv"
    digest = hashlib.sha256(b"id,text\n")
    with path.open("wb") as out:
        out.write(b"id,text\n")
        for _ in range(GIB // len(block)):
            out.write(block)
            digest.update(block)
    size = path.stat().st_size

    boundary = "devhub-test-boundary"
    head = (
        f"--{boundary}\r\n"
        'Content-Disposition: form-data; name="file"; filename="big.csv"\r\n'
        "Content-Type: text/csv\r\n\r\n"
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()

    def body():
        yield head
        with path.open("rb") as data:
            while chunk := data.read(1 << 20):
                yield chunk
        yield tail

    response = httpx.post(
        hub.endpoint(SALES_TASK),
        content=body(),
        headers={
            "X-Api-Key": SALES_KEY,
            "Content-Type": f"multipart/form-data; boundary={boundary}",
            "Content-Length": str(len(head) + size + len(tail)),
        },
        timeout=300,
    )

    assert response.json() == {"rowsProcessed": GIB // len(row)}
    assert vm_hwm(hub.pid) < RSS_LIMIT
    entry = hub.requests()[-1]
    assert (entry["bytes"], entry["sha256"]) == (size, digest.hexdigest())
    assert hub.tables()[SALES_TABLE] == GIB // len(row)
