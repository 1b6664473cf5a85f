"""devhub's HTTP application: the Data API upload path and the /_devhub/ paths.

The upload handler follows docs/hub-api.md: checks in the order 401 -> 404 ->
400 (task type, mode) -> 403, then 415 and 413 for the body, then
400 (no file, no result table). Bodies are spooled to a temp file in large
chunks while being hashed, then parsed into the task's result table in a
worker thread, so the event loop keeps answering other requests meanwhile.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime
import hashlib
import logging
import os
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from hubwatchd.devhub.faults import Fault, FaultError, Faults, parse_fault
from hubwatchd.devhub.formats import BadRows, choose_format, read_rows
from hubwatchd.devhub.settings import Settings
from hubwatchd.devhub.store import Store

log = logging.getLogger(__name__)
CHUNK = 1 << 20
MODES = ("replace", "append")
REQUEST_LOG_SIZE = 100_000


class TooLarge(Exception):
    """The body passed the size limit while it streamed."""


class ClientGone(Exception):
    """The client closed the connection before its body was complete."""


class Answer(Exception):
    """Stop handling and answer with this problem response."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


@dataclass
class Devhub:
    """Everything one running devhub holds; handlers reach it through the app."""

    settings: Settings
    data_dir: Path
    discard: bool = False
    faults: Faults = field(default_factory=Faults)
    requests: collections.deque[dict[str, Any]] = field(
        default_factory=lambda: collections.deque(maxlen=REQUEST_LOG_SIZE)
    )
    next_request_id: int = 1
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    store: Store = field(init=False)

    def __post_init__(self) -> None:
        self.store = Store(self.data_dir / "devhub.sqlite")
        self.spool_dir = self.data_dir / "incoming"
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        self.reset_faults()

    def reset_faults(self) -> None:
        """Back to the faults of the config file."""
        self.faults.clear()
        for spec in self.settings.faults:
            self.faults.add(parse_fault(spec))

    def tables(self) -> dict[str, list[str]]:
        """Each configured result table and the task ids that write it."""
        tables: dict[str, list[str]] = {}
        for task in self.settings.tasks.values():
            if task.table is not None:
                tables.setdefault(task.table, []).append(task.id)
        return tables


HUB_KEY: web.AppKey[Devhub] = web.AppKey("devhub", Devhub)


def make_app(hub: Devhub) -> web.Application:
    app = web.Application()
    app[HUB_KEY] = hub
    app.router.add_post("/v1/Tasks/{task_id}/data", upload)
    app.router.add_get("/_devhub/tasks", list_tasks)
    app.router.add_get("/_devhub/tables", list_tables)
    app.router.add_get("/_devhub/tables/{table}/rows", table_rows)
    app.router.add_get("/_devhub/requests", list_requests)
    app.router.add_delete("/_devhub/requests", clear_requests)
    app.router.add_get("/_devhub/faults", list_faults)
    app.router.add_post("/_devhub/faults", add_faults)
    app.router.add_delete("/_devhub/faults", clear_faults)
    app.router.add_post("/_devhub/reset", reset)
    return app


def problem(status: int, detail: str, **headers: str) -> web.Response:
    """An application/problem+json answer (RFC 9457)."""
    body = {
        "type": "about:blank",
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
    }
    response = web.json_response(body, status=status, headers=headers or None)
    response.content_type = "application/problem+json"
    return response


# --- the upload path ------------------------------------------------------


async def upload(request: web.Request) -> web.StreamResponse:
    hub = request.app[HUB_KEY]
    entry = _log_entry(hub, request)
    fault = hub.faults.take(entry["task"])
    if fault is not None:
        entry["fault"] = fault.kind
    if fault is not None and fault.kind != "delay":
        return await _inject(hub, request, fault, entry)
    response = await _handle(hub, request, entry)
    if fault is not None:
        await _sleep_unless_stopping(hub, fault.seconds)
    return response


def _log_entry(hub: Devhub, request: web.Request) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "id": hub.next_request_id,
        "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds"),
        "task": request.match_info["task_id"].lower(),
        "mode": request.query.get("mode"),
        "content_type": request.headers.get("Content-Type"),
        "content_length": request.content_length,
        "key": None,
        "filename": None,
        "part_content_type": None,
        "bytes": 0,
        "sha256": None,
        "fault": None,
        "status": None,
        "rows": None,
        "detail": None,
    }
    hub.next_request_id += 1
    hub.requests.append(entry)
    return entry


def _finish(entry: dict[str, Any], response: web.StreamResponse) -> web.StreamResponse:
    entry["status"] = response.status
    return response


async def _handle(
    hub: Devhub, request: web.Request, entry: dict[str, Any]
) -> web.StreamResponse:
    try:
        rows = await _accept(hub, request, entry)
    except Answer as answer:
        entry["detail"] = answer.detail
        if answer.status != 413:
            with contextlib.suppress(TooLarge, ClientGone):
                await _drain(request, hub.settings.max_body_size)
        response = problem(answer.status, answer.detail)
        if answer.status == 413:
            response.force_close()
        return _finish(entry, response)
    except ClientGone:
        entry["detail"] = "the client closed the connection mid-body"
        return web.Response(status=400)
    except Exception as exc:
        log.exception("devhub.upload_failed")
        entry["detail"] = f"devhub failed: {exc!r}"
        return _finish(entry, problem(500, entry["detail"]))
    entry["rows"] = rows
    return _finish(entry, web.json_response({"rowsProcessed": rows}))


async def _accept(hub: Devhub, request: web.Request, entry: dict[str, Any]) -> int:
    """Check, spool and store one upload; the rows processed, or raise Answer."""
    settings = hub.settings
    key = settings.keys.get(request.headers.get("X-Api-Key", ""))
    if key is None:
        raise Answer(401, "the X-Api-Key header is missing or not a known key")
    entry["key"] = key.name
    task = settings.task(entry["task"])
    if task is None:
        raise Answer(404, f"no task with id {request.match_info['task_id']!r}")
    if not task.is_container:
        raise Answer(400, f"task {task.id} is a {task.type} task, not a container")
    mode = request.query.get("mode", "replace")
    if mode not in MODES:
        raise Answer(400, f'mode must be "replace" or "append", got {mode!r}')
    if task.table is not None and not key.may_write(task.table):
        raise Answer(403, f"this key may not write table {task.table!r}")

    content_type = request.content_type
    if content_type not in ("multipart/form-data", "application/json"):
        message = (
            "Content-Type must be multipart/form-data or application/json, "
            f"got {content_type!r}"
        )
        raise Answer(415, message)
    limit = settings.max_body_size
    if request.content_length is not None and request.content_length > limit:
        raise Answer(
            413, f"the body is {request.content_length} bytes; the limit is {limit}"
        )

    try:
        if hub.discard:
            entry["bytes"] = await _drain(request, limit)
            return 0
        return await _spool_and_store(hub, request, task.table, mode, entry)
    except TooLarge as exc:
        raise Answer(413, f"the body passed the limit of {limit} bytes") from exc


async def _spool_and_store(
    hub: Devhub,
    request: web.Request,
    table: str | None,
    mode: str,
    entry: dict[str, Any],
) -> int:
    limit = hub.settings.max_body_size
    fd, name = tempfile.mkstemp(dir=hub.spool_dir, suffix=".body")
    path = Path(name)
    try:
        with os.fdopen(fd, "wb", buffering=0) as out:
            if request.content_type == "application/json":
                fmt: str | None = "json"
                found = True
                size, digest = await _spool(_body_chunks(request), out, limit)
            else:
                found, fmt, size, digest = await _spool_multipart(
                    request, out, entry, limit
                )
        if not found:
            raise Answer(400, 'no file: the form has no part named "file"')
        entry["bytes"], entry["sha256"] = size, digest
        if table is None:
            raise Answer(400, f"task {entry['task']} has no result table")
        if fmt is None:
            message = (
                f"cannot tell the file's format from its name {entry['filename']!r} "
                f"or type {entry['part_content_type']!r}: send CSV, JSON or XLSX"
            )
            raise Answer(415, message)
        rows = read_rows(path, fmt)
        new_columns = hub.settings.new_columns
        try:
            return await asyncio.to_thread(
                hub.store.write, table, mode, rows, new_columns=new_columns
            )
        except BadRows as exc:
            raise Answer(400, f"{fmt.upper()} {exc}") from exc
    finally:
        path.unlink(missing_ok=True)


async def _spool_multipart(
    request: web.Request, out: Any, entry: dict[str, Any], limit: int
) -> tuple[bool, str | None, int, str | None]:
    """Write the `file` part to `out`; drain the rest. (found, format, size, sha)."""
    try:
        reader = await request.multipart()
    except (ValueError, AssertionError, KeyError) as exc:
        raise Answer(400, f"not a readable multipart/form-data body: {exc}") from exc
    found, fmt, size, digest = False, None, 0, None
    total = 0
    try:
        while True:
            part = await reader.next()
            if part is None:
                break
            if not isinstance(part, aiohttp.BodyPartReader):
                raise Answer(400, "nested multipart bodies are not supported")
            if part.name == "file" and not found:
                found = True
                entry["filename"] = part.filename
                entry["part_content_type"] = part.headers.get("Content-Type")
                fmt = choose_format(part.filename, entry["part_content_type"])
                size, digest = await _spool(_part_chunks(part), out, limit - total)
                total += size
            else:
                async for chunk in _part_chunks(part):
                    total += len(chunk)
                    if total > limit:
                        raise TooLarge
    except (ValueError, AssertionError) as exc:
        raise Answer(400, f"not a readable multipart/form-data body: {exc}") from exc
    return found, fmt, size, digest


async def _body_chunks(request: web.Request) -> AsyncIterator[bytes]:
    try:
        async for chunk in request.content.iter_chunked(CHUNK):
            yield chunk
    except (aiohttp.ClientPayloadError, ConnectionError) as exc:
        raise ClientGone from exc


async def _part_chunks(part: aiohttp.BodyPartReader) -> AsyncIterator[bytes]:
    try:
        while chunk := await part.read_chunk(CHUNK):
            yield chunk
    except (aiohttp.ClientPayloadError, ConnectionError) as exc:
        raise ClientGone from exc


async def _spool(chunks: AsyncIterator[bytes], out: Any, limit: int) -> tuple[int, str]:
    """Copy chunks to `out` and hash them; (size, sha256 hex).

    The write and the hash of one batch run in a worker thread while the next
    batch is read (both release the GIL), so neither waits for the other.
    """
    hasher = hashlib.sha256()
    size = 0
    batch: list[bytes] = []
    batched = 0
    pending: asyncio.Future[None] | None = None
    loop = asyncio.get_running_loop()

    def sink(pieces: list[bytes]) -> None:
        for piece in pieces:
            out.write(piece)
            hasher.update(piece)

    async for chunk in chunks:
        size += len(chunk)
        if size > limit:
            raise TooLarge
        batch.append(chunk)
        batched += len(chunk)
        if batched >= CHUNK:
            if pending is not None:
                await pending
            pending = loop.run_in_executor(None, sink, batch)
            batch, batched = [], 0
    if pending is not None:
        await pending
    sink(batch)
    return size, hasher.hexdigest()


async def _drain(request: web.Request, limit: int) -> int:
    """Read and drop what is left of the body; the bytes read.

    readany() in a plain loop: the cheapest read aiohttp offers, so that in
    discard mode the client, not devhub, is what a benchmark measures.
    """
    size = 0
    content = request.content
    try:
        while chunk := await content.readany():
            size += len(chunk)
            if size > limit:
                raise TooLarge
    except (aiohttp.ClientPayloadError, ConnectionError) as exc:
        raise ClientGone from exc
    return size


# --- faults ---------------------------------------------------------------


async def _inject(
    hub: Devhub, request: web.Request, fault: Fault, entry: dict[str, Any]
) -> web.StreamResponse:
    if fault.kind == "status":
        with contextlib.suppress(TooLarge, ClientGone):
            entry["bytes"] = await _drain(request, hub.settings.max_body_size)
        headers = {}
        retry_after = fault.retry_after_header()
        if retry_after is not None:
            headers["Retry-After"] = retry_after
        detail = fault.detail or f"devhub injected a {fault.status} fault"
        entry["detail"] = detail
        return _finish(entry, problem(fault.status, detail, **headers))
    if fault.kind == "cut":
        entry["bytes"] = await _read_exactly(request, fault.after_bytes)
        entry["detail"] = f"connection cut after {entry['bytes']} body bytes"
        return _drop_connection(request)
    # hang: take the whole body, then never answer.
    with contextlib.suppress(TooLarge, ClientGone):
        entry["bytes"] = await _drain(request, hub.settings.max_body_size)
    entry["detail"] = "never answering (hang fault)"
    await hub.stopping.wait()
    return _drop_connection(request)


def _drop_connection(request: web.Request) -> web.StreamResponse:
    """Abort the TCP connection; aiohttp then quietly fails to send the answer."""
    if request.transport is not None:
        request.transport.abort()
    return web.Response(status=500)


async def _read_exactly(request: web.Request, count: int) -> int:
    read = 0
    with contextlib.suppress(aiohttp.ClientPayloadError, ConnectionError):
        while read < count:
            chunk = await request.content.read(min(CHUNK, count - read))
            if not chunk:
                break
            read += len(chunk)
    return read


async def _sleep_unless_stopping(hub: Devhub, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(hub.stopping.wait(), timeout=seconds)


# --- /_devhub/ ------------------------------------------------------------


async def list_tasks(request: web.Request) -> web.Response:
    hub = request.app[HUB_KEY]
    tasks = []
    for task in hub.settings.tasks.values():
        item = task.as_dict()
        if task.table is not None:
            item["rows"] = await asyncio.to_thread(hub.store.count, task.table) or 0
        tasks.append(item)
    return web.json_response({"tasks": tasks})


async def list_tables(request: web.Request) -> web.Response:
    hub = request.app[HUB_KEY]
    tables = []
    for name, task_ids in hub.tables().items():
        rows = await asyncio.to_thread(hub.store.count, name)
        tables.append({"name": name, "tasks": task_ids, "rows": rows or 0})
    return web.json_response({"tables": tables})


async def table_rows(request: web.Request) -> web.Response:
    hub = request.app[HUB_KEY]
    name = request.match_info["table"]
    try:
        limit = int(request.query["limit"]) if "limit" in request.query else None
        offset = int(request.query.get("offset", "0"))
    except ValueError:
        return problem(400, "limit and offset must be whole numbers")
    found = await asyncio.to_thread(hub.store.rows, name, limit=limit, offset=offset)
    if found is None:
        if name not in hub.tables():
            return problem(404, f"no table {name!r}")
        found = ([], [])
    columns, rows = found
    return web.json_response({"table": name, "columns": columns, "rows": rows})


async def list_requests(request: web.Request) -> web.Response:
    hub = request.app[HUB_KEY]
    return web.json_response({"requests": list(hub.requests)})


async def clear_requests(request: web.Request) -> web.Response:
    request.app[HUB_KEY].requests.clear()
    return web.json_response({"requests": []})


async def reset(request: web.Request) -> web.Response:
    """Empty every table and the request log; faults back to the config's."""
    hub = request.app[HUB_KEY]
    await asyncio.to_thread(hub.store.clear)
    hub.requests.clear()
    hub.reset_faults()
    return web.json_response({"reset": True})


async def list_faults(request: web.Request) -> web.Response:
    return web.json_response({"faults": request.app[HUB_KEY].faults.listing()})


async def add_faults(request: web.Request) -> web.Response:
    """Add one fault spec, or a list of them (all or none)."""
    hub = request.app[HUB_KEY]
    try:
        body = await request.json()
    except ValueError:
        return problem(400, "the body must be a JSON fault spec or a list of them")
    specs = body if isinstance(body, list) else [body]
    try:
        faults = [parse_fault(spec) for spec in specs]
    except FaultError as exc:
        return problem(400, str(exc))
    for fault in faults:
        hub.faults.add(fault)
    return web.json_response({"faults": hub.faults.listing()}, status=201)


async def clear_faults(request: web.Request) -> web.Response:
    hub = request.app[HUB_KEY]
    removed = hub.faults.clear(request.query.get("task"))
    return web.json_response({"removed": removed, "faults": hub.faults.listing()})
