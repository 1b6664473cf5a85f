"""devhub over a real socket: the documented API, formats, tables and faults."""

from __future__ import annotations

import httpx
from hubdata import (
    ORDERS_KEY,
    ORDERS_TABLE,
    ORDERS_TASK,
    SALES_KEY,
    SALES_TABLE,
    SALES_TASK,
)

SALES_CSV = b"region,amount\nnorth,10\nsouth,20\n"


def post_file(url, key, content, filename="data.csv", content_type=None, **kw):
    files = {"file": (filename, content, content_type or "application/octet-stream")}
    headers = {"X-Api-Key": key} if key is not None else {}
    return httpx.post(url, files=files, headers=headers, timeout=30, **kw)


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
