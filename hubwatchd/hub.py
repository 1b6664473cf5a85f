"""The Data Hub client: stream one file into one container task, honestly.

`HubClient.upload` sends `POST {url}/v1/Tasks/{task_id}/data?mode=…` with the
file streamed from disk in 1 MiB reads, framed by hand (multipart or a raw
JSON body) behind an exact Content-Length, and turns whatever happens into
one `Outcome`. It never raises for a hub or network failure; it raises
`FileRefused` only when the file cannot be opened as a regular file, before
any request is made.

Timeouts, per phase (httpx has no overall deadline):
- connect: `connect_timeout` (also the wait for a free pooled connection);
- write: `write_timeout` is per send, so it is an *idle* timeout: a slow but
  moving upload never trips it, a stalled one does;
- read: `answer_timeout` is the wait for the answer once the body is sent;
  the hub parses the whole file before it answers, so it is long (30 min).

The body never carries more or fewer bytes than its Content-Length: it stops
at `size` even if the file grew, and aborts the request (outcome `retry`,
"file shrank while uploading") if the file is shorter than `size`.
"""

from __future__ import annotations

import contextlib
import email.utils
import hashlib
import json
import os
import queue
import re
import secrets
import ssl
import stat
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO
from urllib.parse import quote

import httpx

from hubwatchd import __version__, logs
from hubwatchd.config import HubConfig, Secret
from hubwatchd.errors import FileRefused

log = logs.get_logger(__name__)

CHUNK_SIZE = 1024 * 1024
# Above this, SHA-256 runs in a thread beside the send (see _HashBeside).
HASH_BESIDE_ABOVE = 8 * CHUNK_SIZE
MAX_TEXT = 500  # characters of an answer body kept in an Outcome
MAX_ANSWER_BYTES = 64 * 1024  # bytes of an answer body read at all
MIB = 1024 * 1024

CONTENT_TYPES = {
    ".csv": "text/csv",
    ".json": "application/json",
    ".xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
}
ROW_FIELDS = ("rowsProcessed", "rows", "rowCount", "processedRows", "count")

# Status classes beyond the documented ones (docs/hub-api.md, "open points"):
# 408/429/5xx are the hub or a proxy being busy; 409/423/425 say "not now".
RETRY_STATUSES = frozenset({408, 409, 423, 425, 429})
# 401/403/404 are documented; 405/410 mean the URL is not the upload endpoint
# and 407 a proxy wants credentials: no file is at fault, so nothing is failed.
BLOCKED_STATUSES = frozenset({401, 403, 404, 405, 407, 410})

KINDS = ("success", "retry", "rejected", "blocked")


@dataclass(frozen=True)
class Outcome:
    """What one upload came to.

    kind: "success", "retry" (try again later), "rejected" (the file is at
    fault: do not retry) or "blocked" (the key, task id or URL is wrong).
    status: the HTTP status, None when no answer came.
    rows: the row count from a 2xx answer, when it held one.
    retry_after: the hub's Retry-After in seconds, when it sent one.
    body_complete: every byte of the body had been handed to the transport.
    bytes_sent: bytes of the file handed to the transport (framing excluded).
    error: a short reason (the answer body, truncated, for an HTTP error).
    raw: the 2xx answer body, truncated, when no row count was found in it.
    seconds: from the start of the request to the outcome.
    """

    kind: str
    status: int | None = None
    rows: int | None = None
    retry_after: float | None = None
    body_complete: bool = False
    bytes_sent: int = 0
    error: str | None = None
    raw: str | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.kind == "success"

    def ledger_fields(self) -> dict[str, object]:
        """What `Ledger.finish` records of this outcome, as keyword arguments."""
        return {
            "kind": self.kind,
            "status": self.status,
            "rows": self.rows,
            "retry_after": self.retry_after,
            "body_complete": self.body_complete,
            "bytes_sent": self.bytes_sent,
            "error": self.error,
        }


# --- answers ----------------------------------------------------------------


def classify(status: int) -> str:
    """The outcome kind for an HTTP status (see the README's outcome table)."""
    if 200 <= status < 300:
        return "success"
    if status >= 500 or status in RETRY_STATUSES:
        return "retry"
    # A redirect means the configured URL is not the endpoint (http -> https):
    # the config is wrong, not the file.
    if status in BLOCKED_STATUSES or 300 <= status < 400:
        return "blocked"
    if 400 <= status < 500:
        return "rejected"
    return "retry"  # nothing else is expected; retrying is bounded by give-up


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a Retry-After value (delta-seconds or an HTTP-date)."""
    if not value:
        return None
    value = value.strip()
    if re.fullmatch(r"\d+", value, flags=re.ASCII):
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    now = time.time() if now is None else now
    return max(0.0, when.timestamp() - now)


def parse_rows(text: str) -> int | None:
    """The row count in a 200 answer: a bare integer or a JSON object's field."""
    text = text.strip()
    if re.fullmatch(r"\d+", text, flags=re.ASCII):
        return int(text)
    try:
        data = json.loads(text)
    except ValueError:
        return None
    if _is_count(data):
        return data
    if isinstance(data, dict):
        for name in ROW_FIELDS:
            if _is_count(data.get(name)):
                return data[name]
    return None


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def short(text: str, limit: int = MAX_TEXT) -> str:
    """`text` cut to `limit` characters, keys redacted, on one line."""
    text = logs.redact(" ".join(text.split()))
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --- the body ---------------------------------------------------------------


def content_type_for(name: str) -> str:
    """The part's Content-Type by extension; the hub decides the format by it."""
    return CONTENT_TYPES.get(Path(name).suffix.lower(), "application/octet-stream")


def disposition_params(filename: str) -> str:
    """The `filename` parameters of the part's Content-Disposition header.

    `filename="…"` carries the name as UTF-8 with `"`, CR and LF
    percent-encoded (RFC 7578 §4.2, as browsers do), and also `\\`, `;` and
    other control characters, which some parsers misread inside quotes
    (backslash escapes, splitting at `;`). The extension always survives, so
    the hub picks the right format. When that encoding changed the name,
    `filename*=UTF-8''…` (RFC 8187) carries it exactly, for servers that read
    it. Plain and non-ASCII names get the `filename` parameter alone.
    """
    fallback = re.sub(
        r'["\\;\x00-\x1f\x7f]', lambda m: f"%{ord(m.group()):02X}", filename
    )
    params = f'filename="{fallback}"'
    if fallback != filename:
        params += f"; filename*=UTF-8''{quote(filename, safe='')}"
    return params


def multipart_framing(filename: str, boundary: str) -> tuple[bytes, bytes]:
    """The bytes before and after the file in a one-part `file` form."""
    head = (
        f"--{boundary}\r\n"
        f'Content-Disposition: form-data; name="file"; '
        f"{disposition_params(filename)}\r\n"
        f"Content-Type: {content_type_for(filename)}\r\n"
        "\r\n"
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    return head, tail


class _Aborted(Exception):
    """Raised inside the body stream to abort the request on purpose."""


class _HashBeside:
    """Feeds a hasher from a thread of its own. hashlib lets go of the GIL for
    large buffers, so SHA-256 (about as fast as a loopback upload) runs beside
    the send instead of after each chunk. At most QUEUED chunks wait."""

    QUEUED = 4

    def __init__(self, hasher: hashlib._Hash) -> None:
        self.hasher = hasher
        self.chunks: queue.Queue[bytes | None] = queue.Queue(self.QUEUED)
        self.thread = threading.Thread(
            target=self._run, name="hubwatchd-hash", daemon=True
        )
        self.thread.start()

    def _run(self) -> None:
        while (chunk := self.chunks.get()) is not None:
            self.hasher.update(chunk)

    def update(self, chunk: bytes) -> None:
        self.chunks.put(chunk)

    def finish(self) -> None:
        """Wait until every chunk given so far is in the hasher; idempotent."""
        if self.thread.is_alive():
            self.chunks.put(None)
            self.thread.join()


class _HashInline:
    """Small bodies: a thread would cost more than the hashing it overlaps."""

    def __init__(self, hasher: hashlib._Hash) -> None:
        self.update = hasher.update

    def finish(self) -> None:
        pass


class _Body:
    """The request body: framing, then exactly `size` bytes of the file.

    An iterable httpx streams from. It records how far it got, so the outcome
    can say whether the body was complete, whatever the transport then did.
    """

    def __init__(
        self,
        fd: int,
        size: int,
        head: bytes,
        tail: bytes,
        *,
        progress: Callable[[int], None] | None,
        hasher: hashlib._Hash | None,
        cancel: threading.Event | None,
        on_body_sent: Callable[[], None] | None,
    ) -> None:
        self.fd = fd
        self.size = size
        self.head = head
        self.tail = tail
        self.progress = progress
        self.hasher = hasher
        self.cancel = cancel
        self.on_body_sent = on_body_sent
        self.sent = 0
        self.complete = False
        self.marked = False  # on_body_sent has run
        self._hash_thread: _HashBeside | None = None

    @property
    def length(self) -> int:
        return len(self.head) + self.size + len(self.tail)

    def __iter__(self) -> Iterator[bytes]:
        # `on_body_sent` runs just *before* the final piece is handed over,
        # so that its durable mark means "the hub may have the whole body": a
        # crash before the final piece left means the hub cannot have it all,
        # and a crash after it finds the mark. A false "in doubt" is the safe
        # direction; a missing one could append rows twice unnoticed.
        hashing = None
        if self.hasher is not None and self.size > HASH_BESIDE_ABOVE:
            hashing = self._hash_thread = _HashBeside(self.hasher)
        elif self.hasher is not None:
            hashing = _HashInline(self.hasher)
        try:
            yield from self._pieces(hashing)
        finally:
            if hashing is not None:
                hashing.finish()
        # Resumed after the last yield: the transport has taken every byte.
        self.complete = True

    def close(self) -> None:
        """End the hash thread even when the transport dropped this body
        half-way without closing it (a cut connection)."""
        if self._hash_thread is not None:
            self._hash_thread.finish()

    def _pieces(self, hashing: _HashBeside | _HashInline | None) -> Iterator[bytes]:
        if self.head:
            if not self.size and not self.tail:
                self._body_sent()
            yield self.head
        while self.sent < self.size:
            if self.cancel is not None and self.cancel.is_set():
                raise _Aborted("cancelled: shutting down")
            # pread: independent of the file position, so a caller may hand
            # over a file it has already read (to hash it) without seeking.
            data = os.pread(self.fd, min(CHUNK_SIZE, self.size - self.sent), self.sent)
            if not data:
                raise _Aborted("file shrank while uploading")
            if hashing is not None:
                hashing.update(data)
            if self.sent + len(data) == self.size and not self.tail:
                self._body_sent()
            yield data
            self.sent += len(data)
            if self.progress is not None:
                self.progress(self.sent)
        if self.tail:
            self._body_sent()
            yield self.tail
        self._body_sent()  # an empty body: nothing was yielded at all

    def _body_sent(self) -> None:
        if not self.marked:
            self.marked = True
            if self.on_body_sent is not None:
                self.on_body_sent()


# --- the client -------------------------------------------------------------


def ssl_context(ca_bundle: Path | None) -> ssl.SSLContext | bool:
    """Verification is always on; `ca_bundle` replaces the default trust store.

    Without one, httpx's default applies: certifi, or $SSL_CERT_FILE /
    $SSL_CERT_DIR when set.
    """
    if ca_bundle is None:
        return True
    return ssl.create_default_context(cafile=str(ca_bundle))


class HubClient:
    """One connection pool to the hub, shared by every upload thread.

    Thread-safe. Use as a context manager or call `close()`.
    """

    def __init__(self, hub: HubConfig, workers: int = 1) -> None:
        self.hub = hub
        self.timeout = httpx.Timeout(
            connect=hub.connect_timeout,
            write=hub.write_timeout,
            read=hub.answer_timeout,
            pool=hub.connect_timeout,
        )
        # No custom transport: httpx then still honours HTTP(S)_PROXY/NO_PROXY
        # from the environment (a transport= argument would silently drop them).
        self._http = httpx.Client(
            verify=ssl_context(hub.ca_bundle),
            timeout=self.timeout,
            limits=httpx.Limits(
                max_connections=workers, max_keepalive_connections=workers
            ),
            headers={"User-Agent": f"hubwatchd/{__version__}"},
            follow_redirects=False,
            trust_env=True,
        )

    def __enter__(self) -> HubClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def upload_url(self, task_id: str) -> str:
        return f"{self.hub.url}/v1/Tasks/{quote(task_id, safe='')}/data"

    def upload(
        self,
        path: Path | BinaryIO,
        *,
        task_id: str,
        mode: str,
        api_key: Secret,
        size: int,
        json_raw: bool = False,
        progress: Callable[[int], None] | None = None,
        hasher: hashlib._Hash | None = None,
        cancel: threading.Event | None = None,
        on_body_sent: Callable[[], None] | None = None,
        filename: str | None = None,
    ) -> Outcome:
        """Upload the first `size` bytes of `path` to `task_id` in `mode`.

        `path` is a path (opened here without following a symlink) or an
        open binary file (read from offset 0, whatever its position).
        `json_raw` sends a `.json` file as a raw application/json body; other
        files always go as multipart. `progress(file_bytes_sent)` is called
        after each chunk; `hasher` is fed every file byte sent; `cancel` is
        checked between chunks (not during the wait for the answer);
        `on_body_sent()` runs just before the final piece of the body is
        handed to the transport (so a durable mark made there is never
        missing when the hub may have the whole body), while
        `Outcome.body_complete` says the final piece really went. Exceptions
        from these callbacks propagate (from `on_body_sent`, before the final
        piece: the hub never gets the whole body).

        Returns an Outcome for every answer and every network failure.
        Raises FileRefused when `path` cannot be opened as a regular file.
        """
        if mode not in ("replace", "append"):
            raise ValueError(f'mode must be "replace" or "append", got {mode!r}')
        if size < 0:
            raise ValueError(f"size must be >= 0, got {size}")
        shown = str(path) if isinstance(path, Path) else str(getattr(path, "name", "?"))
        filename = filename or Path(shown).name
        with _descriptor(path) as fd:
            outcome = self._upload_fd(
                fd,
                filename,
                task_id=task_id,
                mode=mode,
                api_key=api_key,
                size=size,
                json_raw=json_raw,
                progress=progress,
                hasher=hasher,
                cancel=cancel,
                on_body_sent=on_body_sent,
            )
        _log_outcome(outcome, task_id=task_id, mode=mode, path=shown, size=size)
        return outcome

    def _upload_fd(
        self,
        fd: int,
        filename: str,
        *,
        task_id: str,
        mode: str,
        api_key: Secret,
        size: int,
        json_raw: bool,
        progress: Callable[[int], None] | None,
        hasher: hashlib._Hash | None,
        cancel: threading.Event | None,
        on_body_sent: Callable[[], None] | None,
    ) -> Outcome:
        _advise_sequential(fd)
        if json_raw and Path(filename).suffix.lower() == ".json":
            head, tail = b"", b""
            content_type = "application/json"
        else:
            boundary = secrets.token_hex(16)
            head, tail = multipart_framing(filename, boundary)
            content_type = f"multipart/form-data; boundary={boundary}"
        body = _Body(
            fd,
            size,
            head,
            tail,
            progress=progress,
            hasher=hasher,
            cancel=cancel,
            on_body_sent=on_body_sent,
        )
        headers = {
            "X-Api-Key": api_key.value,
            "Content-Type": content_type,
            # Explicit, so httpx sends it instead of chunked framing.
            "Content-Length": str(body.length),
            "Accept": "application/json, text/plain;q=0.9, */*;q=0.1",
        }
        request = self._http.build_request(
            "POST",
            self.upload_url(task_id),
            params={"mode": mode},
            headers=headers,
            content=body,
        )
        started = time.monotonic()
        try:
            response = self._http.send(request, stream=True)
        except _Aborted as exc:
            return self._failed(body, started, str(exc))
        except httpx.HTTPError as exc:
            return self._failed(body, started, self._describe(exc, body))
        finally:
            body.close()
        try:
            return self._answer(response, body, started)
        finally:
            response.close()

    def _answer(self, response: httpx.Response, body: _Body, started: float) -> Outcome:
        status = response.status_code
        kind = classify(status)
        text, cut = _read_text(response)
        seconds = time.monotonic() - started
        common = {
            "status": status,
            "body_complete": body.complete,
            "bytes_sent": body.sent,
            "seconds": seconds,
        }
        if kind == "success":
            rows = parse_rows(text) if not cut else None
            raw = None if rows is not None else short(text) or None
            return Outcome(kind, rows=rows, raw=raw, **common)
        reason = response.reason_phrase or ""
        error = f"HTTP {status} {reason}".strip()
        if 300 <= status < 400:
            location = response.headers.get("Location", "?")
            error += f": redirected to {location}; set [hub] url to the final address"
        elif text.strip():
            error += f": {text}"
        retry_after = None
        if kind == "retry":
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
        return Outcome(kind, retry_after=retry_after, error=short(error), **common)

    def _failed(self, body: _Body, started: float, error: str) -> Outcome:
        return Outcome(
            "retry",
            body_complete=body.complete,
            bytes_sent=body.sent,
            error=short(error),
            seconds=time.monotonic() - started,
        )

    def _describe(self, exc: httpx.HTTPError, body: _Body) -> str:
        t = self.timeout
        detail = str(exc) or exc.__class__.__name__
        if isinstance(exc, httpx.ConnectTimeout):
            return f"connect timed out after {t.connect:g}s"
        if isinstance(exc, httpx.PoolTimeout):
            return f"no free connection within {t.pool:g}s (more uploads than workers)"
        if isinstance(exc, httpx.WriteTimeout):
            return f"the hub took no data for {t.write:g}s while the body was sent"
        if isinstance(exc, httpx.ReadTimeout):
            if body.complete:
                return f"no answer within {t.read:g}s after the body was sent"
            return f"no answer within {t.read:g}s (body incomplete)"
        if isinstance(exc, httpx.ConnectError):
            return f"cannot connect: {detail}"
        where = "after the body was sent" if body.complete else "while sending the body"
        if isinstance(exc, httpx.RemoteProtocolError):
            return f"the hub closed the connection without an answer {where}: {detail}"
        return f"connection failed {where}: {detail}"


@contextlib.contextmanager
def _descriptor(source: Path | BinaryIO) -> Iterator[int]:
    """The file's descriptor; one opened here is closed here."""
    if not isinstance(source, Path):
        yield source.fileno()
        return
    fd = open_regular(source)
    try:
        yield fd
    finally:
        os.close(fd)


def sha256_fd(fd: int, size: int) -> str:
    """The SHA-256 of the first `size` bytes of an open file, read with pread
    in CHUNK_SIZE pieces (the file position is left alone)."""
    digest = hashlib.sha256()
    offset = 0
    while offset < size:
        chunk = os.pread(fd, min(CHUNK_SIZE, size - offset), offset)
        if not chunk:
            break
        digest.update(chunk)
        offset += len(chunk)
    return digest.hexdigest()


def open_regular(path: Path, shown: Path | None = None) -> int:
    """A read-only descriptor for a regular file, never through a symlink.

    Raises FileRefused naming `shown` (default: `path`) when it cannot be
    opened or is not a regular file.
    """
    shown = path if shown is None else shown
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise FileRefused(f"{shown}: no such file") from None
    except OSError as exc:
        # ELOOP: the last component is a symlink (O_NOFOLLOW).
        raise FileRefused(f"{shown}: cannot open: {exc.strerror}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise FileRefused(f"{shown}: not a regular file")
    return fd


def _advise_sequential(fd: int) -> None:
    # Only a read-ahead hint; some filesystems refuse it.
    with contextlib.suppress(OSError, AttributeError):
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)


def _read_text(response: httpx.Response) -> tuple[str, bool]:
    """The start of the answer body as text, and whether it was cut short."""
    chunks: list[bytes] = []
    total = 0
    cut = False
    try:
        for chunk in response.iter_bytes():
            chunks.append(chunk)
            total += len(chunk)
            if total >= MAX_ANSWER_BYTES:
                cut = True
                break
    except httpx.HTTPError:
        cut = True  # the status is what counts; a broken body only loses detail
    data = b"".join(chunks)[:MAX_ANSWER_BYTES]
    return data.decode(response.encoding or "utf-8", errors="replace"), cut


def _log_outcome(
    outcome: Outcome, *, task_id: str, mode: str, path: str, size: int
) -> None:
    """The canonical line: one per upload, never the key, never the body."""
    seconds = outcome.seconds
    fields = {
        "task_id": task_id,
        "mode": mode,
        "path": path,
        "bytes": size,
        "bytes_sent": outcome.bytes_sent,
        "rows": outcome.rows,
        "status": outcome.status,
        "outcome": outcome.kind,
        "seconds": round(seconds, 3),
        "mib_s": round(outcome.bytes_sent / MIB / seconds, 1) if seconds > 0 else None,
    }
    if outcome.ok:
        log.info("upload.succeeded", **fields)
        return
    fields["body_complete"] = outcome.body_complete
    fields["error"] = outcome.error
    if outcome.retry_after is not None:
        fields["retry_after"] = outcome.retry_after
    level = "warning" if outcome.kind == "retry" else "error"
    getattr(log, level)("upload.failed", **fields)


# --- progress ---------------------------------------------------------------


class ProgressLog:
    """A progress callback that logs `upload.progress` every `interval` seconds.

    For long uploads: one line with bytes, rate and percent, not one a chunk.
    """

    def __init__(
        self,
        *,
        path: str,
        size: int,
        interval: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        **context: object,
    ) -> None:
        self.path = path
        self.size = size
        self.interval = interval
        self.clock = clock
        self.context = context
        self.started = clock()
        self.last = self.started

    def __call__(self, sent: int) -> None:
        now = self.clock()
        if now - self.last < self.interval:
            return
        self.last = now
        elapsed = now - self.started
        log.info(
            "upload.progress",
            path=self.path,
            bytes=sent,
            total=self.size,
            percent=round(100.0 * sent / self.size, 1) if self.size else 100.0,
            mib_s=round(sent / MIB / elapsed, 1) if elapsed > 0 else None,
            **self.context,
        )
