"""Settle: decide when a file in a drop folder is completely written.

Events (from watchdog, the start-up scan and the periodic rescan) go into a
`Settler`, one per daemon. Each path gets its own quiet period on the
monotonic clock; a single thread sleeps on a condition variable until the
nearest deadline, re-checks the file there, and calls `on_ready` once the
file is judged complete. `inspect` then opens the file the safe way and
refuses what must never be uploaded.

A path is ready when all of these hold:

- no event for it during the watch's `settle` seconds, and size, mtime_ns
  and ctime_ns are unchanged since its last event (else the wait restarts);
- where close events exist (inotify), it was closed after its last write, or
  renamed into place (a write, or the creation of an empty file, means a
  descriptor that will be closed; a link() or mknod() name needs no close).
  A rename is complete at once: it waits only
  `RENAME_GRACE` (or `settle`, if shorter) and is re-checked. A close alone
  proves nothing (SFTP servers close cut-off uploads too): the quiet period
  always applies. A file written and never closed (a writer idling with it
  open, a truncate by path) waits `open_cap`, by default
  max(10 x settle, 1 h) of complete quiet, then goes ahead with a warning;
- it does not look preallocated: its last 4 KiB are not all zero bytes, and
  where st_blocks says it has fewer bytes on disk than its size, it has no
  hole (SEEK_HOLE). st_blocks alone is no proof: compressed filesystems (ZFS,
  btrfs) and ext4 inline data report few blocks for complete files. A file
  that looks preallocated never becomes ready on its own; after `open_cap`
  a warning says so;
- its name matches the watch's patterns and none of its ignore patterns
  (case-insensitive, on the basename), no part of its path below the watch
  folder is hidden, and it is not inside the archive or failed folder;
- where the watch sets `ready_marker`, NAME + marker exists (it may arrive
  before or after the file).

Versions: an event on a path that was already reported starts a new wait;
the path is reported again only if its identity (size, mtime_ns, ctime_ns,
inode) differs from what was last reported, so one file closed and reopened
within `settle` is reported once, after its final close and quiet period.
"""

from __future__ import annotations

import codecs
import errno
import fnmatch
import functools
import heapq
import itertools
import os
import re
import stat
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from hubwatchd import logs
from hubwatchd.config import WatchConfig
from hubwatchd.errors import FileRefused

log = logs.get_logger(__name__)

# Event kinds a Settler understands.
CREATED = "created"
MODIFIED = "modified"
ATTRIB = "attrib"
CLOSED_WRITE = "closed_write"
MOVED_IN = "moved_in"
DELETED = "deleted"
SCAN = "scan"
# Opens and read-only closes say nothing about writing (our own checks cause
# them), so they are accepted and dropped.
OPENED = "opened"
CLOSED_NO_WRITE = "closed_no_write"

KINDS = frozenset(
    {
        CREATED,
        MODIFIED,
        ATTRIB,
        CLOSED_WRITE,
        MOVED_IN,
        DELETED,
        SCAN,
        OPENED,
        CLOSED_NO_WRITE,
    }
)
_ACTIVITY = frozenset({CREATED, MODIFIED, ATTRIB, CLOSED_WRITE, MOVED_IN})

RENAME_GRACE = 0.5
OPEN_CAP_MIN = 3600.0
HEAD_BYTES = 64 * 1024
TAIL_BYTES = 4096
XLSX_MAGIC = b"PK\x03\x04"

OnReady = Callable[[WatchConfig, "Candidate"], None]
OnRefused = Callable[[WatchConfig, str, str], None]
OnNote = Callable[[WatchConfig, str, str], None]
Clock = Callable[[], float]
Identity = tuple[int, int, int, int]


@dataclass(frozen=True)
class Candidate:
    """A file judged complete, with the identity it had when judged.

    The daemon compares size, mtime_ns and ctime_ns again after the upload
    to notice a file that changed while it was read.
    """

    watch: str
    path: str
    size: int
    mtime_ns: int
    ctime_ns: int
    inode: int
    marker: str | None = None


@dataclass(frozen=True)
class Settling:
    """A path still waiting, as `Settler.pending` reports it for `explain`."""

    watch: str
    path: str
    note: str
    quiet_for: float
    waiting_for_close: bool


@dataclass
class _Entry:
    watch: str
    path: str
    sig: Identity | None
    last_event: float
    needs_close: bool = False
    eligible: bool = True
    deadline: float | None = None
    gen: int = 0
    note: str = "settling"
    warned: bool = False


@dataclass
class _Verdict:
    action: str  # "drop" | "wait" | "hold" | "ready" | "refused"
    note: str = ""
    sig: Identity | None = None
    candidate: Candidate | None = None
    reason: str = ""
    warn: str | None = None


# --- names -----------------------------------------------------------------


@functools.lru_cache(maxsize=256)
def _matcher(patterns: tuple[str, ...]) -> re.Pattern[str] | None:
    if not patterns:
        return None
    joined = "|".join(f"(?:{fnmatch.translate(p)})" for p in patterns)
    return re.compile(joined, re.IGNORECASE)


def name_matches(watch: WatchConfig, name: str) -> bool:
    """Whether a basename is input for `watch`: patterns, ignore, hidden, marker."""
    if name.startswith("."):
        return False
    marker = watch.ready_marker
    if marker and name.lower().endswith(marker.lower()):
        return False
    wanted = _matcher(tuple(watch.patterns))
    if wanted is None or wanted.match(name) is None:
        return False
    ignored = _matcher(tuple(watch.ignore))
    return ignored is None or ignored.match(name) is None


def is_input(watch: WatchConfig, path: str) -> bool:
    """Whether `path` is a file hubwatchd may take from `watch`'s folder.

    Outside the folder, below it when the watch is not recursive, under a
    hidden name, or in the archive or failed folder: never input.
    """
    root = str(watch.path)
    if not path.startswith(root + os.sep):
        return False
    for folder in (watch.archive_path, watch.failed_path):
        if path.startswith(str(folder) + os.sep):
            return False
    parts = path[len(root) + 1 :].split(os.sep)
    if not watch.recursive and len(parts) > 1:
        return False
    if any(part.startswith(".") for part in parts[:-1]):
        return False
    return name_matches(watch, parts[-1])


def marker_base(watch: WatchConfig, path: str) -> str | None:
    """The file a ready marker at `path` stands for, or None if it is none."""
    marker = watch.ready_marker
    if not marker or not path.endswith(marker) or len(path) <= len(marker):
        return None
    base = path[: -len(marker)]
    return base if is_input(watch, base) else None


def default_open_cap(settle: float) -> float:
    """How long a written, never-closed file waits: max(10 x settle, 1 h)."""
    return max(10 * settle, OPEN_CAP_MIN)


# --- checks on one file ----------------------------------------------------


def _identity(st: os.stat_result) -> Identity:
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


_KIND_NAMES = (
    (stat.S_ISLNK, "a symbolic link"),
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISDIR, "a folder"),
)


def _kind_name(mode: int) -> str:
    for test, name in _KIND_NAMES:
        if test(mode):
            return name
    return "not a regular file"


def _refuse_kind(mode: int) -> FileRefused:
    what = _kind_name(mode)
    if stat.S_ISLNK(mode):
        return FileRefused(
            "it is a symbolic link; hubwatchd never follows links in a drop "
            "folder. Copy the file itself into the folder instead"
        )
    return FileRefused(
        f"it is {what}, not a regular file; only regular files are uploaded. "
        "Remove it and drop the export as a plain file"
    )


def looks_unfinished(path: str) -> str | None:
    """Why a file looks preallocated and not yet filled, or None.

    Reads the last 4 KiB only. Raises OSError when the file cannot be read.
    """
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENXIO, errno.EACCES):
            return None  # inspect() refuses these with their reason
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size == 0:
            return None
        size = st.st_size
        tail = os.pread(fd, min(TAIL_BYTES, size), max(0, size - TAIL_BYTES))
        if tail and tail.count(0) == len(tail):
            return (
                f"its last {len(tail)} bytes are all zero: space reserved "
                "(preallocated) but not yet written"
            )
        if st.st_blocks * 512 < size:
            try:
                hole = os.lseek(fd, 0, os.SEEK_HOLE)
            except OSError:
                hole = size
            if hole < size:
                return f"it has an unwritten hole at byte {hole} (sparse file)"
        return None
    finally:
        os.close(fd)


def inspect(watch: WatchConfig, path: str | os.PathLike[str]) -> Candidate:
    """Open `path` safely and return its Candidate, or refuse it.

    Opens with O_RDONLY | O_NOFOLLOW | O_NONBLOCK (a FIFO cannot block us),
    takes the identity from fstat, and reads at most the first 64 KiB.
    Raises FileRefused with an operator-facing reason, or OSError (such as
    FileNotFoundError) when the file vanished or cannot be opened at all.
    """
    path = os.fspath(path)
    root = os.path.realpath(watch.path)
    parent = os.path.realpath(os.path.dirname(path))
    if parent != root and not parent.startswith(root + os.sep):
        raise FileRefused(
            f"its folder resolves to {parent}, outside the watched folder {root} "
            "(a linked folder); move the file into the watched folder itself"
        )
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _refuse_kind(stat.S_IFLNK) from None
        if exc.errno == errno.ENXIO:
            raise _refuse_kind(stat.S_IFSOCK) from None
        if exc.errno == errno.EACCES:
            raise FileRefused(
                "it cannot be read by the hubwatchd user (permission denied); "
                "give that user read access and drop it again"
            ) from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _refuse_kind(st.st_mode)
        _check_size(watch, st.st_size)
        _check_content(watch, path, fd, st.st_size)
    finally:
        os.close(fd)

    marker = None
    if watch.ready_marker and os.path.lexists(path + watch.ready_marker):
        marker = path + watch.ready_marker
    return Candidate(
        watch=watch.name,
        path=path,
        size=st.st_size,
        mtime_ns=st.st_mtime_ns,
        ctime_ns=st.st_ctime_ns,
        inode=st.st_ino,
        marker=marker,
    )


def check_open(watch: WatchConfig, path: str, fd: int, size: int) -> None:
    """The size and content checks of `inspect`, on a file already open.

    The dispatcher runs them again just before an upload, on the descriptor
    it sends from: a version queued again by hand (`hubwatchd retry`) must
    not bypass them. Raises FileRefused.
    """
    _check_size(watch, size)
    _check_content(watch, path, fd, size)


def _check_size(watch: WatchConfig, size: int) -> None:
    if size == 0 and not watch.allow_empty:
        raise FileRefused(
            "it is empty (0 bytes); an empty export would wipe or add nothing "
            "to the table. Check the export job, or set allow_empty = true"
        )
    if size > watch.max_file_size:
        raise FileRefused(
            f"it is {size} bytes, over this watch's max_file_size of "
            f"{watch.max_file_size}; split the export or raise max_file_size "
            "(the hub accepts at most 20 GB)"
        )


def _check_content(watch: WatchConfig, path: str, fd: int, size: int) -> None:
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in (".csv", ".json", ".xlsx") or size == 0:
        return
    head = os.pread(fd, min(HEAD_BYTES, size), 0)
    if suffix == ".csv":
        _check_csv(head, size)
    elif suffix == ".json":
        _check_json(head, raw=watch.json_upload == "raw")
    elif not head.startswith(XLSX_MAGIC):
        raise FileRefused(
            "it is not an XLSX workbook (an .xlsx file is a zip archive that "
            "starts with PK); save it as .xlsx, or rename it to its real type"
        )


def _check_csv(head: bytes, size: int) -> None:
    if head.startswith(b"\xef\xbb\xbf"):
        head = head[3:]
    if b"\x00" in head:
        at = head.index(b"\x00")
        raise FileRefused(
            f"it contains a NUL byte at offset {at}, so it is not CSV text "
            "(binary data, UTF-16, or an unfilled file); export it as UTF-8 CSV"
        )
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        text = decoder.decode(head, final=len(head) >= size)
    except UnicodeDecodeError as exc:
        raise FileRefused(
            f"it is not UTF-8 text (byte 0x{head[exc.start]:02x} at offset "
            f"{exc.start}); export it as UTF-8 CSV, with or without BOM"
        ) from None
    line, newline, _rest = text.partition("\n")
    if not line.strip() or (not newline and len(head) < size):
        raise FileRefused(
            "it has no header line in its first 64 KiB; the first line of a "
            "CSV file must name the columns"
        )


def _check_json(head: bytes, *, raw: bool) -> None:
    if head.startswith(b"\xef\xbb\xbf"):
        head = head[3:]
    body = head.lstrip(b" \t\r\n")
    first = body[:1]
    allowed = (b"[",) if raw else (b"[", b"{")
    if first in allowed:
        return
    found = repr(first.decode("latin-1")) if first else "only white space"
    want = "[ (an array of rows), as raw JSON upload needs" if raw else "[ or {"
    raise FileRefused(
        f"it does not look like JSON: it must start with {want}, found {found} "
        "in its first 64 KiB; check the export, or its file extension"
    )


# --- the settler -----------------------------------------------------------


class Settler:
    """Per-path quiet periods; reports each complete file once.

    `feed` may be called from any thread. `on_ready(watch, candidate)`,
    `on_refused(watch, path, reason)` and `on_note(watch, path, note)` are
    called from the Settler's own thread (or from `check_due` when a test
    drives it by hand), never while a lock is held. An exception in a
    callback is logged and the path is forgotten, so the next rescan finds
    it again.
    """

    def __init__(
        self,
        on_ready: OnReady,
        *,
        on_refused: OnRefused | None = None,
        on_note: OnNote | None = None,
        watches: Iterable[WatchConfig] = (),
        clock: Clock = time.monotonic,
        open_cap: float | None = None,
    ) -> None:
        self._on_ready = on_ready
        self._on_refused = on_refused
        self._on_note = on_note
        self._clock = clock
        self._open_cap = open_cap
        self._watches: dict[str, WatchConfig] = {w.name: w for w in watches}
        self._entries: dict[tuple[str, str], _Entry] = {}
        self._reported: dict[tuple[str, str], Identity] = {}
        self._heap: list[tuple[float, int, tuple[str, str]]] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None

    # --- lifecycle ---

    def start(self) -> None:
        """Start the thread that wakes at each deadline."""
        if self._thread is not None:
            raise RuntimeError("Settler already started")
        self._thread = threading.Thread(
            target=self._run, name="hubwatchd-settle", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread; what was settling is dropped (a rescan finds it)."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    def alive(self) -> bool:
        """True while the deadline thread runs (for the systemd watchdog)."""
        return self._thread is not None and self._thread.is_alive()

    def set_watches(self, watches: Iterable[WatchConfig]) -> None:
        """Adopt a (re)loaded config. Paths of removed watches are dropped;
        those of unchanged and changed watches keep settling and are judged
        by the new settings at their next deadline."""
        new = {w.name: w for w in watches}
        with self._cond:
            self._watches = new
            for key in [k for k in self._entries if k[0] not in new]:
                del self._entries[key]
            for key in [k for k in self._reported if k[0] not in new]:
                del self._reported[key]
            self._cond.notify_all()

    def forget(self, watch: str, path: str) -> None:
        """Drop what is known about a path (the daemon moved or deleted it)."""
        with self._cond:
            self._entries.pop((watch, path), None)
            self._reported.pop((watch, path), None)

    def pending(self) -> list[Settling]:
        """Every path still waiting, with why."""
        now = self._clock()
        with self._cond:
            return [
                Settling(
                    watch=e.watch,
                    path=e.path,
                    note=e.note,
                    quiet_for=max(0.0, now - e.last_event),
                    waiting_for_close=e.needs_close,
                )
                for e in self._entries.values()
                if e.eligible
            ]

    # --- events ---

    def feed(
        self,
        watch: str,
        path: str,
        kind: str,
        *,
        closes: bool = True,
        stat_result: os.stat_result | None = None,
        src: str | None = None,
    ) -> None:
        """One event for `path` in watch `watch`.

        `kind` is one of KINDS. `closes` says whether this watch's events
        include close-after-write (inotify: True; polling: False). For
        MOVED_IN, `src` is the old path when it was inside the watch, so a
        writer that renamed a file it still has open is still waited for.
        `stat_result` (an lstat) saves a system call when the caller has one.
        """
        config = self._watches.get(watch)
        if config is None or kind in (OPENED, CLOSED_NO_WRITE):
            return
        if kind not in KINDS:
            raise ValueError(f"unknown event kind {kind!r}")
        key = (watch, path)
        if kind == DELETED:
            with self._cond:
                self._entries.pop(key, None)
                self._reported.pop(key, None)
            return

        base = marker_base(config, path)
        if base is not None:
            if kind != ATTRIB:
                self._marker_arrived(watch, base)
            return

        carried = False
        if kind == MOVED_IN and src is not None:
            with self._cond:
                old = self._entries.pop((watch, src), None)
                self._reported.pop((watch, src), None)
            carried = bool(old and old.needs_close and closes)

        eligible = is_input(config, path)
        if not eligible:
            self._track_writer(key, kind, closes)
            return
        if stat_result is None:
            try:
                stat_result = os.lstat(path)
            except OSError:
                with self._cond:
                    self._entries.pop(key, None)
                return
        sig = _identity(stat_result)
        # A write means an open descriptor, which will be closed. A creation
        # does too when the new file is empty; a link(), symlink() or mknod()
        # creates a name no one holds open, so no close will ever come.
        opens = kind == MODIFIED or (
            kind == CREATED
            and stat.S_ISREG(stat_result.st_mode)
            and stat_result.st_size == 0
        )
        self._record(config, key, kind, sig, writer=opens and closes, carried=carried)

    def _record(
        self,
        config: WatchConfig,
        key: tuple[str, str],
        kind: str,
        sig: Identity,
        *,
        writer: bool,
        carried: bool,
    ) -> None:
        now = self._clock()
        with self._cond:
            entry = self._entries.get(key)
            if kind == SCAN:
                if entry is not None:
                    # A rescan is no activity; it only revives a path that
                    # waits for its marker, in case that event was lost.
                    if entry.deadline is None:
                        self._schedule(entry, max(now, entry.last_event))
                    return
                if self._reported.get(key) == sig:
                    return
            if entry is None or not entry.eligible:
                entry = _Entry(
                    watch=key[0],
                    path=key[1],
                    sig=sig,
                    last_event=now,
                    needs_close=bool(entry and entry.needs_close),
                )
                self._entries[key] = entry
            entry.gen += 1
            entry.sig = sig
            entry.last_event = now
            if writer:
                entry.needs_close = True
            elif kind == CLOSED_WRITE:
                entry.needs_close = False
            elif kind == MOVED_IN:
                entry.needs_close = carried
            delay = config.settle
            if kind == MOVED_IN and not entry.needs_close:
                delay = min(config.settle, RENAME_GRACE)
            self._schedule(entry, now + delay)

    def _track_writer(self, key: tuple[str, str], kind: str, closes: bool) -> None:
        # Temp names never become ready, but a writer that renames its temp
        # file before closing it must still be waited for after the rename.
        with self._cond:
            if kind == MODIFIED and closes:
                entry = self._entries.get(key)
                if entry is None:
                    self._entries[key] = _Entry(
                        watch=key[0],
                        path=key[1],
                        sig=None,
                        last_event=self._clock(),
                        needs_close=True,
                        eligible=False,
                    )
            elif kind == CLOSED_WRITE:
                self._entries.pop(key, None)

    def _marker_arrived(self, watch: str, base: str) -> None:
        now = self._clock()
        with self._cond:
            entry = self._entries.get((watch, base))
            if entry is not None and entry.eligible:
                config = self._watches[watch]
                self._schedule(entry, max(now, entry.last_event + config.settle))
                return
        # The file may have settled before this run started: look at it now.
        if os.path.lexists(base):
            self.feed(watch, base, SCAN)

    def _schedule(self, entry: _Entry, deadline: float) -> None:
        # Caller holds the lock.
        wake = not self._heap or deadline < self._heap[0][0]
        entry.deadline = deadline
        heapq.heappush(
            self._heap, (deadline, next(self._seq), (entry.watch, entry.path))
        )
        if wake:
            self._cond.notify_all()

    # --- deadlines ---

    def check_due(self) -> int:
        """Judge every path whose deadline has passed; returns how many."""
        judged = 0
        while True:
            with self._cond:
                entry = self._pop_due(self._clock())
                if entry is None:
                    return judged
                config = self._watches.get(entry.watch)
                snapshot = (entry.gen, entry.sig, entry.needs_close, entry.last_event)
            judged += 1
            if config is None:
                continue
            try:
                verdict = self._judge(config, entry.path, *snapshot[1:])
            except Exception:
                log.exception("settle.check_failed", watch=entry.watch, path=entry.path)
                verdict = _Verdict("wait", note="settling (check failed; retrying)")
            self._apply(config, entry, snapshot[0], verdict)

    def _pop_due(self, now: float) -> _Entry | None:
        while self._heap and self._heap[0][0] <= now:
            deadline, _seq, key = heapq.heappop(self._heap)
            entry = self._entries.get(key)
            if entry is not None and entry.deadline == deadline:
                entry.deadline = None
                return entry
        return None

    def _judge(
        self,
        config: WatchConfig,
        path: str,
        sig: Identity | None,
        needs_close: bool,
        last_event: float,
    ) -> _Verdict:
        if not is_input(config, path):
            return _Verdict("drop")
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return _Verdict("drop")
        now_sig = _identity(st)
        if now_sig != sig:
            return _Verdict(
                "wait", note="settling (changed without an event)", sig=now_sig
            )

        quiet = self._clock() - last_event
        cap = (
            self._open_cap
            if self._open_cap is not None
            else default_open_cap(config.settle)
        )
        warn = None
        if needs_close:
            if quiet < cap:
                return _Verdict("wait", note="waiting for the writer to close it")
            warn = "settle.no_close"

        if stat.S_ISREG(st.st_mode):
            unfinished = looks_unfinished(path)
            if unfinished is not None:
                long_wait = "settle.still_preallocated" if quiet >= cap else None
                return _Verdict(
                    "wait", note=f"looks unfinished: {unfinished}", warn=long_wait
                )

        if config.ready_marker and not os.path.lexists(path + config.ready_marker):
            return _Verdict(
                "hold",
                note=f"waiting for {os.path.basename(path)}{config.ready_marker}",
            )

        try:
            candidate = inspect(config, path)
        except FileRefused as exc:
            return _Verdict("refused", reason=exc.reason, sig=now_sig)
        except FileNotFoundError:
            return _Verdict("drop")
        found = (
            candidate.size,
            candidate.mtime_ns,
            candidate.ctime_ns,
            candidate.inode,
        )
        if found != sig:
            return _Verdict("wait", note="settling (changed while checked)", sig=found)
        return _Verdict("ready", candidate=candidate, sig=found, warn=warn)

    def _apply(
        self, config: WatchConfig, entry: _Entry, gen: int, verdict: _Verdict
    ) -> None:
        key = (entry.watch, entry.path)
        calls: list[Callable[[], None]] = []
        with self._cond:
            if self._entries.get(key) is not entry or entry.gen != gen:
                return  # a newer event has already rescheduled this path
            now = self._clock()
            if verdict.action in ("drop", "ready", "refused"):
                del self._entries[key]
            if verdict.action in ("ready", "refused"):
                if self._reported.get(key) == verdict.sig:
                    return  # this very version was reported already
                assert verdict.sig is not None
                self._reported[key] = verdict.sig
            if verdict.action == "wait":
                if verdict.sig is not None and verdict.sig != entry.sig:
                    entry.sig = verdict.sig
                    entry.last_event = now
                self._schedule(entry, now + config.settle)
            if verdict.note and verdict.note != entry.note:
                entry.note = verdict.note
                if self._on_note is not None:
                    on_note = self._on_note
                    calls.append(lambda: on_note(config, entry.path, verdict.note))
            if verdict.warn and not entry.warned:
                entry.warned = True
                self._warn(config, entry, verdict)
        if verdict.action == "ready" and verdict.candidate is not None:
            candidate = verdict.candidate
            calls.append(lambda: self._on_ready(config, candidate))
            # DEBUG: the daemon logs file.ready (once per version) at INFO.
            log.debug(
                "settle.ready", watch=config.name, path=entry.path, bytes=candidate.size
            )
        elif verdict.action == "refused":
            # DEBUG: the daemon logs file.refused (once per version), then
            # file.failed when the file is in the failed folder.
            log.debug(
                "settle.refused",
                watch=config.name,
                path=entry.path,
                reason=verdict.reason,
            )
            if self._on_refused is not None:
                on_refused = self._on_refused
                calls.append(lambda: on_refused(config, entry.path, verdict.reason))
        for call in calls:
            try:
                call()
            except Exception:
                log.exception(
                    "settle.callback_failed", watch=config.name, path=entry.path
                )
                with self._cond:
                    self._reported.pop(key, None)

    def _warn(self, config: WatchConfig, entry: _Entry, verdict: _Verdict) -> None:
        if verdict.warn == "settle.no_close":
            log.warning(
                "settle.no_close",
                watch=config.name,
                path=entry.path,
                detail="written, never closed; quiet long enough to take as complete",
            )
        else:
            log.warning(
                "settle.still_preallocated",
                watch=config.name,
                path=entry.path,
                detail=verdict.note
                + "; it will not be uploaded until its end is written",
            )

    def _run(self) -> None:
        while True:
            try:
                self.check_due()
            except Exception:
                log.exception("settle.loop_failed")
            with self._cond:
                if self._stopping:
                    return
                while self._heap and self._is_stale(self._heap[0]):
                    heapq.heappop(self._heap)
                if self._heap:
                    timeout = self._heap[0][0] - self._clock()
                    if timeout > 0:
                        self._cond.wait(timeout)
                else:
                    self._cond.wait()
                if self._stopping:
                    return

    def _is_stale(self, item: tuple[float, int, tuple[str, str]]) -> bool:
        entry = self._entries.get(item[2])
        return entry is None or entry.deadline != item[0]
