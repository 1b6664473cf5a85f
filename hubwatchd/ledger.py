"""The ledger: every file version's state in SQLite, the one source of truth.

One row per file version (identity: watch, path, size, mtime_ns, inode) in
`versions`, one row per upload request in `attempts`, one row per watch the
hub refused (401/403/404) in `blocked_watches`. States and the moves between
them are listed in `TRANSITIONS`; every other move raises
IllegalTransition.

Durability: the database runs in WAL mode with synchronous=NORMAL, which
keeps it consistent across power loss but may lose the last commits (a
killed process loses nothing: NORMAL commits are in the WAL file). The
commits that guard data (`done` before a file is moved or deleted, the
body-sent mark that decides `in_doubt`, every outcome) are written with
synchronous=FULL, which fsyncs the WAL at commit; since the WAL is one file
appended in order, that fsync also makes every earlier NORMAL commit durable.

The claim (`uploading` before the request starts) is NORMAL, and that is
enough: the body-sent mark is committed FULL before the last piece of a body
leaves, which makes the claim durable with it. A claim lost to a power cut
therefore belongs to a request whose body never reached the hub whole, and
the hub writes nothing for such a request, so the version is rightly back in
the queue. This saves one of three fsyncs per upload, which is what bounds
the rate of small files.

Threads: one connection, one lock. Every method takes the lock, and writes
run in `BEGIN IMMEDIATE` transactions so that another process (the command
line's `retry`, `forget`) waits on busy_timeout instead of failing half-way.
Readers in other processes use their own connection and never block the
daemon (WAL).
"""

from __future__ import annotations

import fcntl
import json
import os
import random
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from sqlite_utils import Database, Migrations

from hubwatchd import logs, mounts
from hubwatchd.config import WatchConfig, format_duration
from hubwatchd.errors import IllegalTransition, LedgerError, LedgerLocked
from hubwatchd.retry import RetryPolicy

log = logs.get_logger(__name__)

DB_NAME = "ledger.db"
# The watch name `hubwatchd push` records files outside every watch under;
# no configured watch can have it (parentheses are not allowed in names).
ADHOC_WATCH = "(push)"
LOCK_NAME = "hubwatchd.lock"

STATES = (
    "detected",
    "ready",
    "uploading",
    "retry_wait",
    "done",
    "failed",
    "blocked",
    "in_doubt",
    "skipped",
    "superseded",
    "forgotten",
)
# Versions queued for a task, in per-task order; only the first can be claimed.
WAITING = ("ready", "retry_wait", "blocked")
# Versions that never go back into the queue.
CLOSED = ("done", "skipped", "superseded", "forgotten")
PRUNABLE = ("done", "skipped", "superseded")

TRANSITIONS: dict[str, frozenset[str]] = {
    "detected": frozenset({"ready"}),
    "ready": frozenset({"uploading", "skipped", "superseded", "failed"}),
    "uploading": frozenset(
        {
            "done",
            "retry_wait",
            "failed",
            "blocked",
            "in_doubt",
            "ready",
            "skipped",
            "superseded",
        }
    ),
    "retry_wait": frozenset({"uploading", "superseded", "failed", "ready"}),
    "blocked": frozenset({"uploading", "superseded", "failed", "ready"}),
    "failed": frozenset({"ready"}),
    "in_doubt": frozenset({"ready", "forgotten"}),
    "done": frozenset(),
    "skipped": frozenset(),
    "superseded": frozenset(),
    "forgotten": frozenset(),
}
RETRYABLE = ("failed", "in_doubt", "retry_wait", "blocked")
# pending: the file still needs its after-action; failed_folder: moved to the
# watch's failed folder; gone: the file had vanished before it could be moved.
DISPOSITIONS = ("pending", "archived", "deleted", "kept", "failed_folder", "gone")
OUTCOME_KINDS = ("success", "retry", "rejected", "blocked")
# SQLite's locking is unsafe on these (sqlite.org, "How To Corrupt").
NETWORK_FILESYSTEMS = frozenset(
    {"nfs", "nfs4", "cifs", "smb", "smb2", "smb3", "smbfs", "ncpfs"}
)


@dataclass(frozen=True)
class Version:
    """One row of `versions`: a file version and where it stands."""

    id: int
    watch: str
    task_id: str
    mode: str
    path: str
    size: int
    mtime_ns: int
    ctime_ns: int
    inode: int
    sha256: str | None
    state: str
    attempts: int
    first_failure_at: float | None
    next_attempt_at: float | None
    rows: int | None
    last_status: int | None
    last_error: str | None
    detected_at: float
    ready_at: float | None
    started_at: float | None
    done_at: float | None
    disposition: str | None
    disposed_to: str | None
    note: str | None

    @property
    def order_key(self) -> tuple[float, int, str, int]:
        """The per-task queue order: ready time, then mtime, then name."""
        return (self.ready_at or 0.0, self.mtime_ns, self.path, self.id)


@dataclass(frozen=True)
class Attempt:
    """One row of `attempts`: one upload request of a version."""

    id: int
    version_id: int
    started_at: float
    ended_at: float | None
    status: int | None
    bytes_sent: int | None
    body_complete: bool
    outcome: str | None
    error: str | None


@dataclass(frozen=True)
class BlockedWatch:
    """A watch the hub refused (401/403/404): its key or task id is wrong."""

    watch: str
    status: int | None
    reason: str
    since: float
    version_id: int | None


@dataclass(frozen=True)
class WatchSummary:
    """What `status` shows for one watch."""

    watch: str
    counts: dict[str, int]
    next_retry_at: float | None
    blocked: BlockedWatch | None
    last_success: Version | None
    last_error: Version | None


VERSION_COLUMNS = tuple(f.name for f in fields(Version))
_QUEUE_ORDER = "ready_at, mtime_ns, path, id"
_WAITING_SQL = "('ready', 'retry_wait', 'blocked')"

# --- schema -----------------------------------------------------------------

MIGRATIONS = Migrations("hubwatchd.ledger")


@MIGRATIONS(name="0001_versions_attempts_blocked")
def _m0001(db: Database) -> None:
    states = ", ".join(f"'{s}'" for s in STATES)
    dispositions = ", ".join(f"'{d}'" for d in DISPOSITIONS)
    db.execute(f"""
        CREATE TABLE versions (
            id INTEGER PRIMARY KEY,
            watch TEXT NOT NULL,
            task_id TEXT NOT NULL,
            mode TEXT NOT NULL CHECK (mode IN ('replace', 'append')),
            path TEXT NOT NULL,
            size INTEGER NOT NULL,
            mtime_ns INTEGER NOT NULL,
            ctime_ns INTEGER NOT NULL,
            inode INTEGER NOT NULL,
            sha256 TEXT,
            state TEXT NOT NULL CHECK (state IN ({states})),
            attempts INTEGER NOT NULL DEFAULT 0,
            first_failure_at REAL,
            next_attempt_at REAL,
            rows INTEGER,
            last_status INTEGER,
            last_error TEXT,
            detected_at REAL NOT NULL,
            ready_at REAL,
            started_at REAL,
            done_at REAL,
            disposition TEXT
                CHECK (disposition IN ({dispositions})),
            disposed_to TEXT,
            note TEXT
        )""")
    for sql in (
        # Identity of a version; a settling file has one row per path instead.
        "CREATE UNIQUE INDEX versions_identity ON versions"
        " (watch, path, size, mtime_ns, inode) WHERE state != 'detected'",
        "CREATE UNIQUE INDEX versions_settling ON versions (watch, path)"
        " WHERE state = 'detected'",
        # The dispatcher's queue, per task in ready order.
        f"CREATE INDEX versions_queue ON versions (task_id, {_QUEUE_ORDER})"
        f" WHERE state IN {_WAITING_SQL}",
        "CREATE INDEX versions_task_state ON versions (task_id, state, done_at)",
        "CREATE INDEX versions_state ON versions (state, watch)",
        "CREATE INDEX versions_watch_path ON versions (watch, path)",
        # Files whose after-action (archive, delete, failed folder) is due.
        "CREATE INDEX versions_pending ON versions (id) WHERE disposition = 'pending'",
    ):
        db.execute(sql)
    db.execute("""
        CREATE TABLE attempts (
            id INTEGER PRIMARY KEY,
            version_id INTEGER NOT NULL REFERENCES versions(id) ON DELETE CASCADE,
            started_at REAL NOT NULL,
            ended_at REAL,
            status INTEGER,
            bytes_sent INTEGER,
            body_complete INTEGER NOT NULL DEFAULT 0,
            outcome TEXT,
            error TEXT
        )""")
    db.execute("CREATE INDEX attempts_version ON attempts (version_id, ended_at)")
    db.execute("""
        CREATE TABLE blocked_watches (
            watch TEXT PRIMARY KEY,
            status INTEGER,
            reason TEXT NOT NULL,
            since REAL NOT NULL,
            version_id INTEGER
        )""")


# --- the state directory ------------------------------------------------------


def filesystem_type(path: Path, mountinfo: str | None = None) -> str:
    """The type of the filesystem holding `path`; `mountinfo` is the mount
    table's text (default: this process's)."""
    if mountinfo is None:
        mountinfo = mounts.read_mountinfo() or ""
    found = mounts.mount_of(path, mountinfo)
    return found.fstype if found is not None else "unknown"


def check_local_filesystem(state_dir: Path, mountinfo: str | None = None) -> None:
    """Raise LedgerError when `state_dir` is on NFS, CIFS or SMB."""
    fstype = filesystem_type(state_dir, mountinfo)
    if fstype in NETWORK_FILESYSTEMS:
        message = (
            f"state_dir {state_dir} is on a network filesystem ({fstype}), where "
            "SQLite's locking is unsafe; put the ledger on a local disk"
        )
        raise LedgerError(message)


class StateLock:
    """One daemon per state directory: an flock on a file holding its pid."""

    def __init__(self, state_dir: Path) -> None:
        self.path = Path(state_dir) / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise LedgerLocked naming the holder's pid."""
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            message = (
                f"{self.path.parent} is in use by another hubwatchd (pid {holder}); "
                "stop it first, or give this daemon its own state_dir"
            )
            raise LedgerLocked(message) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    @staticmethod
    def holder(state_dir: Path) -> int | None:
        """The pid of the daemon running on `state_dir`, or None.

        Read from the lock file, never by taking the lock: a `status` that
        held it even briefly could make a starting daemon refuse to run. A
        pid left from a stopped daemon counts only while a hubwatchd process
        has it.
        """
        try:
            text = (Path(state_dir) / LOCK_NAME).read_text(errors="replace")
            pid = int(text.strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            return None
        return pid if b"hubwatchd" in cmdline else None

    def release(self) -> None:
        """Let the lock go; the file stays (removing it would race)."""
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> StateLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


# --- the ledger ---------------------------------------------------------------


class Ledger:
    """The SQLite ledger. Open with `Ledger.open`; every method is thread-safe."""

    def __init__(
        self,
        db: Database,
        path: Path,
        *,
        policy: RetryPolicy,
        blocked_probe_interval: float,
        rng: random.Random,
        clock: Any,
    ) -> None:
        self.db = db
        self.path = path
        self.policy = policy
        self.blocked_probe_interval = blocked_probe_interval
        self.rng = rng
        self.clock = clock
        self._lock = threading.RLock()
        self._sync = ""

    @classmethod
    def open(
        cls,
        state_dir: Path,
        *,
        create: bool = True,
        policy: RetryPolicy | None = None,
        blocked_probe_interval: float = 300.0,
        rng: random.Random | None = None,
        clock: Any = time.time,
    ) -> Ledger:
        """Open (with `create`, make) the ledger in `state_dir` and migrate it.

        The folder is made 0700 and the database 0600. Raises LedgerError when
        the folder is on a network filesystem, when `create` is false and there
        is no ledger yet, or when the file is not a usable SQLite database.
        """
        state_dir = Path(state_dir)
        check_local_filesystem(state_dir)
        path = state_dir / DB_NAME
        if create:
            _make_private_file(path)
        elif not path.exists():
            message = f"no ledger at {path}: the daemon has not run with it yet"
            raise LedgerError(message)
        try:
            conn = sqlite3.connect(path, timeout=30.0, check_same_thread=False)
            db = Database(conn, execute_plugins=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA foreign_keys=ON")
            MIGRATIONS.apply(db)
        except sqlite3.DatabaseError as exc:
            raise LedgerError(f"cannot open the ledger {path}: {exc}") from exc
        return cls(
            db,
            path,
            policy=policy or RetryPolicy(5.0, 900.0, 86400.0),
            blocked_probe_interval=blocked_probe_interval,
            rng=rng or random.Random(),
            clock=clock,
        )

    def close(self) -> None:
        """Close the connection; the ledger cannot be used afterwards."""
        with self._lock:
            self.db.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- plumbing -----------------------------------------------------------

    @contextmanager
    def _write(self, *, durable: bool = False) -> Iterator[None]:
        # BEGIN IMMEDIATE rather than db.atomic()'s deferred BEGIN: a deferred
        # transaction that reads, then writes after another process committed,
        # fails with SQLITE_BUSY at once; IMMEDIATE waits on busy_timeout.
        # sqlite-utils' own inserts nest inside as savepoints and roll back
        # with it.
        with self._lock:
            self._set_sync("FULL" if durable else "NORMAL")
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                self.db.rollback()
                raise
            self.db.execute("COMMIT")

    def _set_sync(self, level: str) -> None:
        if level != self._sync:
            self.db.conn.execute(f"PRAGMA synchronous={level}")
            self._sync = level

    def _now(self, now: float | None) -> float:
        return self.clock() if now is None else now

    def _versions(self, where: str, params: Iterable[Any] = ()) -> list[Version]:
        sql = f"SELECT {', '.join(VERSION_COLUMNS)} FROM versions WHERE {where}"
        with self._lock:
            return [Version(**row) for row in self.db.query(sql, list(params))]

    def _one(self, where: str, params: Iterable[Any] = ()) -> Version | None:
        found = self._versions(where + " LIMIT 1", params)
        return found[0] if found else None

    def _require(self, version_id: int) -> Version:
        version = self.get(version_id)
        if version is None:
            raise LedgerError(f"there is no version {version_id} in the ledger")
        return version

    def _move(self, version: Version, state: str, **changes: Any) -> Version:
        if state not in TRANSITIONS[version.state]:
            message = (
                f"version {version.id} ({version.path}) is {version.state}; "
                f"it cannot become {state}"
            )
            raise IllegalTransition(message)
        changes["state"] = state
        assignments = ", ".join(f"{column} = ?" for column in changes)
        self.db.execute(
            f"UPDATE versions SET {assignments} WHERE id = ? AND state = ?",
            [*changes.values(), version.id, version.state],
        )
        return self._require(version.id)

    def _open_attempt(self, version_id: int) -> Attempt | None:
        rows = list(
            self.db.query(
                "SELECT * FROM attempts WHERE version_id = ? AND ended_at IS NULL"
                " ORDER BY id DESC LIMIT 1",
                [version_id],
            )
        )
        return _attempt(rows[0]) if rows else None

    # --- detection and readiness ------------------------------------------

    def note_detected(
        self,
        watch: WatchConfig,
        path: Path | str,
        size: int,
        mtime_ns: int,
        ctime_ns: int,
        inode: int,
        note: str | None = None,
        *,
        now: float | None = None,
    ) -> None:
        """Record or refresh a file that is still settling, for `explain`.

        One `detected` row per (watch, path), updated in place; nothing is
        recorded when this exact version is already known. Cheap: one
        NORMAL commit.
        """
        path, now = str(path), self._now(now)
        with self._write():
            if self._identity(watch.name, path, size, mtime_ns, inode) is not None:
                return
            row = {"watch": watch.name, "task_id": watch.task_id, "mode": watch.mode}
            row |= {"path": path, "size": size, "mtime_ns": mtime_ns}
            row |= {"ctime_ns": ctime_ns, "inode": inode, "now": now, "note": note}
            self.db.execute(
                "INSERT INTO versions (watch, task_id, mode, path, size, mtime_ns,"
                " ctime_ns, inode, state, detected_at, note) VALUES (:watch,"
                " :task_id, :mode, :path, :size, :mtime_ns, :ctime_ns, :inode,"
                " 'detected', :now, :note)"
                " ON CONFLICT (watch, path) WHERE state = 'detected' DO UPDATE SET"
                " size = :size, mtime_ns = :mtime_ns, ctime_ns = :ctime_ns,"
                " inode = :inode, note = :note",
                row,
            )

    def drop_detected(self, watch_name: str, path: Path | str) -> None:
        """Forget a settling file that went away or turned out to be ignored."""
        with self._write():
            self.db.execute(
                "DELETE FROM versions WHERE watch = ? AND path = ?"
                " AND state = 'detected'",
                [watch_name, str(path)],
            )

    def _identity(
        self, watch: str, path: str, size: int, mtime_ns: int, inode: int
    ) -> Version | None:
        return self._one(
            "watch = ? AND path = ? AND size = ? AND mtime_ns = ? AND inode = ?"
            " AND state != 'detected'",
            [watch, path, size, mtime_ns, inode],
        )

    def record_ready(
        self,
        watch: WatchConfig,
        path: Path | str,
        size: int,
        mtime_ns: int,
        ctime_ns: int,
        inode: int,
        *,
        now: float | None = None,
    ) -> tuple[Version, bool]:
        """Queue a settled file version; idempotent on its identity.

        Returns (the new `ready` row, True), or (the row already known for
        this watch, path, size, mtime_ns and inode, False) whatever its state:
        a `done` version is never queued again.
        """
        path, now = str(path), self._now(now)
        with self._write():
            known = self._identity(watch.name, path, size, mtime_ns, inode)
            settling = self._one(
                "watch = ? AND path = ? AND state = 'detected'", [watch.name, path]
            )
            if known is not None:
                if settling is not None:
                    self.db.execute("DELETE FROM versions WHERE id = ?", [settling.id])
                return known, False
            values = {
                "task_id": watch.task_id,
                "mode": watch.mode,
                "size": size,
                "mtime_ns": mtime_ns,
                "ctime_ns": ctime_ns,
                "inode": inode,
                "ready_at": now,
                "note": None,
            }
            if settling is not None:
                return self._move(settling, "ready", **values), True
            row = {"watch": watch.name, "path": path, "state": "ready"}
            row |= {"detected_at": now, **values}
            version_id = self.db["versions"].insert(row).last_pk
            return self._require(version_id), True

    def known_identities(self, watch_name: str) -> set[tuple[str, int, int, int]]:
        """(path, size, mtime_ns, inode) of every version of `watch_name` that
        is past settling, for the start-up scan."""
        sql = (
            "SELECT path, size, mtime_ns, inode FROM versions"
            " WHERE watch = ? AND state != 'detected'"
        )
        with self._lock:
            return set(self.db.conn.execute(sql, [watch_name]).fetchall())

    # --- the queue ----------------------------------------------------------

    def _heads(
        self,
        skip_tasks: Iterable[str],
        watches: Iterable[str] | None = None,
        only_task: str | None = None,
    ) -> list[Version]:
        """The first waiting version of each task not busy, in ready order.

        With `watches`, a task whose head belongs to another watch (one a
        reload removed) is held: its order must not be broken.
        """
        # One indexed lookup per task (versions_queue), not a ranking of every
        # waiting row: the scheduler asks on every file ready and every upload
        # finished, so the cost must not grow with the backlog.
        tasks_sql = (
            f"SELECT DISTINCT task_id FROM versions WHERE state IN {_WAITING_SQL}"
            " AND task_id NOT IN"
            " (SELECT task_id FROM versions WHERE state = 'uploading')"
        )
        head_sql = (
            f"SELECT {', '.join(VERSION_COLUMNS)} FROM versions"
            f" WHERE task_id = ? AND state IN {_WAITING_SQL}"
            f" ORDER BY {_QUEUE_ORDER} LIMIT 1"
        )
        skip = set(skip_tasks)
        allowed = None if watches is None else set(watches)
        heads = []
        with self._lock:
            if only_task is not None:
                busy = self.db.conn.execute(
                    "SELECT 1 FROM versions WHERE task_id = ? AND state = 'uploading'",
                    [only_task],
                ).fetchone()
                tasks = [] if busy else [only_task]
            else:
                tasks = [row[0] for row in self.db.conn.execute(tasks_sql)]
            for task_id in tasks:
                if task_id in skip:
                    continue
                row = self.db.conn.execute(head_sql, [task_id]).fetchone()
                if row is not None:
                    heads.append(Version(*row))
        heads.sort(key=lambda head: head.order_key)
        return [h for h in heads if allowed is None or h.watch in allowed]

    @staticmethod
    def _due_at(version: Version) -> float:
        if version.state == "ready":
            return version.ready_at or 0.0
        return version.next_attempt_at or 0.0

    def claim_next(
        self,
        now: float | None = None,
        skip_tasks: Iterable[str] = (),
        watches: Iterable[str] | None = None,
        only_task: str | None = None,
    ) -> Version | None:
        """The next version to upload, committed `uploading` first (at NORMAL:
        see the module docstring for why that is durable enough).
        `only_task` limits it to that task (a worker going on with its
        task's backlog).

        Takes the first due version of a task with nothing uploading and not
        in `skip_tasks`, in per-task order (ready time, mtime, path). For a
        replace-mode task, the newest waiting replace version is taken and
        the older ones become `superseded`. Opens an attempt row. None when
        nothing is due.
        """
        now = self._now(now)
        with self._write():
            heads = self._heads(skip_tasks, watches, only_task)
            due = [h for h in heads if self._due_at(h) <= now]
            if not due:
                return None
            chosen = self._coalesce(due[0], now) if due[0].mode == "replace" else due[0]
            claimed = self._move(
                chosen, "uploading", started_at=now, next_attempt_at=None
            )
            self.db["attempts"].insert({"version_id": claimed.id, "started_at": now})
            return claimed

    def claim(self, version_id: int, now: float | None = None) -> Version:
        """Take exactly this version for an upload now (`hubwatchd push`):
        committed `uploading` with an attempt row, as `claim_next`.

        Only a queued version can be claimed: `ready`, or `retry_wait` (push's
        own next attempt, taken in one transaction so that a daemon cannot
        slip in between). Any other state, or another version of the same
        task already uploading (one upload per task at a time), raises
        IllegalTransition and changes nothing. In replace mode the waiting
        replace versions queued before it are `superseded`, as `claim_next`
        does: uploading them afterwards would put older data back.
        """
        now = self._now(now)
        with self._write():
            version = self._require(version_id)
            if version.state not in ("ready", "retry_wait"):
                message = (
                    f"version {version_id} ({version.path}) is {version.state}; "
                    "only a ready or retry_wait version can be claimed"
                )
                raise IllegalTransition(message)
            busy = self._one("task_id = ? AND state = 'uploading'", [version.task_id])
            if busy is not None:
                message = (
                    f"task {version.task_id} is busy: #{busy.id} ({busy.path}) "
                    "is being uploaded now"
                )
                raise IllegalTransition(message)
            if version.mode == "replace":
                self._supersede_older(version)
            claimed = self._move(
                version, "uploading", started_at=now, next_attempt_at=None
            )
            self.db["attempts"].insert({"version_id": claimed.id, "started_at": now})
            return claimed

    def _supersede_older(self, newest: Version) -> None:
        """Supersede the replace versions waiting before `newest` in its
        task's queue, back to the nearest waiting append (which keeps its
        place: an append's rows are not replaced by anything before it)."""
        queue = self._versions(
            f"task_id = ? AND state IN {_WAITING_SQL} AND id != ?"
            f" ORDER BY {_QUEUE_ORDER}",
            [newest.task_id, newest.id],
        )
        older = [v for v in queue if v.order_key < newest.order_key]
        for version in reversed(older):
            if version.mode != "replace":
                break
            self._move(
                version,
                "superseded",
                note=f"superseded by #{newest.id} ({Path(newest.path).name})",
                disposition="pending",
                next_attempt_at=None,
            )
            log.info("version.superseded", version=version.id, by=newest.id)

    def _coalesce(self, head: Version, now: float) -> Version:
        queue = self._versions(
            f"task_id = ? AND state IN {_WAITING_SQL} ORDER BY {_QUEUE_ORDER}",
            [head.task_id],
        )
        run: list[Version] = []
        for version in queue:
            if version.mode != "replace":
                break
            run.append(version)
        newest = run[-1]
        for older in run[:-1]:
            self._move(
                older,
                "superseded",
                note=f"superseded by #{newest.id} ({Path(newest.path).name})",
                disposition="pending",
                next_attempt_at=None,
            )
            log.info("version.superseded", version=older.id, by=newest.id)
        return newest

    def next_due_at(
        self, skip_tasks: Iterable[str] = (), watches: Iterable[str] | None = None
    ) -> float | None:
        """When `claim_next` will next have something (may be in the past);
        None when nothing is waiting."""
        times = [self._due_at(head) for head in self._heads(skip_tasks, watches)]
        return min(times) if times else None

    def queue_ahead(self, version: Version) -> int:
        """How many versions of the same task go before `version`."""
        ahead = [
            v
            for v in self._versions(
                f"task_id = ? AND state IN {_WAITING_SQL}", [version.task_id]
            )
            if v.order_key < version.order_key
        ]
        uploading = self._versions(
            "task_id = ? AND state = 'uploading'", [version.task_id]
        )
        return len(ahead) + len(uploading)

    # --- content dedupe -----------------------------------------------------

    def _last_success(self, task_id: str) -> Version | None:
        return self._one(
            "task_id = ? AND state = 'done' ORDER BY done_at DESC, id DESC",
            [task_id],
        )

    def needs_prehash(self, version: Version) -> bool:
        """True only when an earlier success for the same task had the same
        size, so that its content might be a duplicate (append: any such
        success; replace: the task's last one). Otherwise the daemon hashes
        while streaming."""
        if version.mode == "replace":
            last = self._last_success(version.task_id)
            same = last is not None and last.size == version.size
            return same and last.id != version.id
        return (
            self._one(
                "task_id = ? AND state = 'done' AND size = ? AND id != ?",
                [version.task_id, version.size, version.id],
            )
            is not None
        )

    def duplicate_of(self, version: Version, sha256: str) -> Version | None:
        """The success `version` would duplicate, or None.

        Append: any earlier `done` version of the task with this content.
        Replace: the task's last success, if it had this content (A, B, A
        uploads A again). The daemon skips this call when the watch sets
        dedupe = false.
        """
        if version.mode == "replace":
            last = self._last_success(version.task_id)
            if last is not None and last.id != version.id and last.sha256 == sha256:
                return last
            return None
        return self._one(
            "task_id = ? AND state = 'done' AND sha256 = ? AND id != ?"
            " ORDER BY done_at DESC",
            [version.task_id, sha256, version.id],
        )

    # --- outcomes -------------------------------------------------------------

    def mark_body_sent(self, version_id: int, bytes_sent: int | None = None) -> None:
        """Record, durably, that the hub may have the whole body of the current
        attempt: the client calls this just before the last piece leaves.

        After a crash, `recover` turns an append-mode upload with this mark
        into `in_doubt` instead of queueing it again. While the process lives,
        `finish` goes by the outcome's own `body_complete` instead.
        """
        with self._write(durable=True):
            version = self._require(version_id)
            attempt = self._open_attempt(version_id)
            if version.state != "uploading" or attempt is None:
                message = f"version {version_id} is {version.state}, not uploading"
                raise IllegalTransition(message)
            self.db.execute(
                "UPDATE attempts SET body_complete = 1,"
                " bytes_sent = COALESCE(?, bytes_sent) WHERE id = ?",
                [bytes_sent, attempt.id],
            )

    def finish(
        self,
        version_id: int,
        *,
        kind: str,
        status: int | None = None,
        rows: int | None = None,
        retry_after: float | None = None,
        body_complete: bool = False,
        bytes_sent: int | None = None,
        error: str | None = None,
        sha256: str | None = None,
        doubt: str | None = None,
        now: float | None = None,
    ) -> Version:
        """Close the upload of an `uploading` version with the hub's outcome.

        `doubt` says why a success is not to be trusted (the file changed
        while it was sent): an append then becomes `in_doubt`, since its rows
        may be wrong and sending the new version could repeat some; a replace
        is done, as the next version replaces whatever this one wrote.

        `kind` is the hub client's Outcome.kind: success -> done (disposition
        pending); rejected -> failed; blocked -> blocked, with the watch
        recorded in blocked_watches and a probe after blocked_probe_interval;
        retry -> retry_wait at a backoff time, or failed once give_up_after
        has passed since the first failure, or in_doubt for an append whose
        whole body was sent (`body_complete`, from the outcome; the attempt's
        body-sent mark does not count here) and that got no answer.
        Committed durably.
        """
        if kind not in OUTCOME_KINDS:
            raise ValueError(f"kind must be one of {OUTCOME_KINDS}, got {kind!r}")
        now = self._now(now)
        with self._write(durable=True):
            version = self._require(version_id)
            if version.state != "uploading":
                message = f"version {version_id} is {version.state}, not uploading"
                raise IllegalTransition(message)
            attempt = self._open_attempt(version_id)
            # The outcome alone says whether the whole body went. The durable
            # mark is pessimistic (made just before the final piece, see
            # hub._Body) and is for `recover` only, after a crash; here a
            # live answer-less failure with an incomplete body wrote nothing.
            sent_all = body_complete
            if attempt is not None:
                self._close_attempt(attempt, now, kind, status, bytes_sent, error)
            common = {
                "attempts": version.attempts + 1,
                "last_status": status,
                "last_error": error,
                "sha256": sha256 or version.sha256,
            }
            if kind == "success" and doubt and version.mode == "append":
                note = _in_doubt_note(version.id, doubt)
                return self._move(version, "in_doubt", note=note, rows=rows, **common)
            if kind == "success":
                return self._succeed(version, now, rows, common)
            if kind == "rejected":
                return self._move(version, "failed", disposition="pending", **common)
            if kind == "blocked":
                return self._block(version, now, status, error, common)
            if version.mode == "append" and sent_all and status is None:
                note = _in_doubt_note(version.id, "no answer came after the body")
                return self._move(version, "in_doubt", note=note, **common)
            return self._retry_later(version, now, retry_after, common)

    def _close_attempt(
        self,
        attempt: Attempt,
        now: float,
        outcome: str,
        status: int | None,
        bytes_sent: int | None,
        error: str | None,
    ) -> None:
        self.db.execute(
            "UPDATE attempts SET ended_at = ?, outcome = ?, status = ?,"
            " bytes_sent = COALESCE(?, bytes_sent), error = ? WHERE id = ?",
            [now, outcome, status, bytes_sent, error, attempt.id],
        )

    def _succeed(
        self, version: Version, now: float, rows: int | None, common: dict[str, Any]
    ) -> Version:
        done = self._move(
            version,
            "done",
            done_at=now,
            rows=rows,
            first_failure_at=None,
            next_attempt_at=None,
            disposition="pending",
            **(common | {"last_error": None}),
        )
        self.db.execute("DELETE FROM blocked_watches WHERE watch = ?", [version.watch])
        return done

    def _block(
        self,
        version: Version,
        now: float,
        status: int | None,
        error: str | None,
        common: dict[str, Any],
    ) -> Version:
        reason = error or f"HTTP {status}"
        self.db["blocked_watches"].upsert(
            {
                "watch": version.watch,
                "status": status,
                "reason": reason,
                "since": now,
                "version_id": version.id,
            },
            pk="watch",
        )
        probe_at = now + self.blocked_probe_interval
        return self._move(version, "blocked", next_attempt_at=probe_at, **common)

    def _retry_later(
        self,
        version: Version,
        now: float,
        retry_after: float | None,
        common: dict[str, Any],
    ) -> Version:
        first = version.first_failure_at or now
        if self.policy.gave_up(first, now):
            given_up = format_duration(round(now - first))
            error = f"gave up after {given_up} of failures: {common['last_error']}"
            changes = common | {"last_error": error, "next_attempt_at": None}
            return self._move(version, "failed", disposition="pending", **changes)
        wait = self.policy.delay(common["attempts"], retry_after, self.rng)
        return self._move(
            version,
            "retry_wait",
            first_failure_at=first,
            next_attempt_at=now + wait,
            **common,
        )

    def mark_skipped(
        self,
        version_id: int,
        *,
        duplicate: Version | None = None,
        sha256: str | None = None,
        reason: str | None = None,
    ) -> Version:
        """A `ready` or just-claimed version is not uploaded: `skipped`.

        Give the `duplicate` it repeats (from `duplicate_of`) or a `reason`.
        A claimed version's attempt row is dropped: no request was made.
        """
        with self._write():
            version = self._require(version_id)
            if duplicate is not None:
                reason = f"duplicate of #{duplicate.id} ({Path(duplicate.path).name})"
            self.db.execute(
                "DELETE FROM attempts WHERE version_id = ? AND ended_at IS NULL",
                [version_id],
            )
            return self._move(
                version,
                "skipped",
                note=reason,
                sha256=sha256 or version.sha256,
                disposition="pending",
            )

    def mark_failed(
        self, version_id: int, reason: str, *, now: float | None = None
    ) -> Version:
        """Refuse a version without (another) request: `failed` with `reason`
        (a symlink, an empty file, gone, too large...)."""
        with self._write(durable=True):
            version = self._require(version_id)
            self.db.execute(
                "DELETE FROM attempts WHERE version_id = ? AND ended_at IS NULL",
                [version_id],
            )
            return self._move(
                version,
                "failed",
                last_error=reason,
                next_attempt_at=None,
                disposition="pending",
            )

    def mark_superseded(self, version_id: int, reason: str) -> Version:
        """A claimed version whose file changed before any byte was sent:
        its newer version is recorded on its own when it settles."""
        with self._write(durable=True):
            version = self._require(version_id)
            self.db.execute(
                "DELETE FROM attempts WHERE version_id = ? AND ended_at IS NULL",
                [version_id],
            )
            return self._move(version, "superseded", note=reason, next_attempt_at=None)

    def release(self, version_id: int, reason: str) -> Version:
        """Put a claimed version back at the head of its queue, unsent (an
        internal error before the request, or a watch that a reload removed)."""
        now = self._now(None)
        with self._write(durable=True):
            version = self._require(version_id)
            attempt = self._open_attempt(version_id)
            if attempt is not None:
                self._close_attempt(attempt, now, "released", None, None, reason)
            return self._move(version, "ready", note=reason)

    def record_refused(
        self,
        watch: WatchConfig,
        path: Path | str,
        size: int,
        mtime_ns: int,
        ctime_ns: int,
        inode: int,
        reason: str,
        *,
        now: float | None = None,
    ) -> tuple[Version, bool]:
        """Record a file refused before any request (a symlink, a FIFO, an
        empty file...) as `failed` with `reason`, its move still pending.
        Idempotent on identity, like `record_ready`."""
        path, now = str(path), self._now(now)
        with self._write(durable=True):
            known = self._identity(watch.name, path, size, mtime_ns, inode)
            if known is not None:
                return known, False
            self.db.execute(
                "DELETE FROM versions WHERE watch = ? AND path = ?"
                " AND state = 'detected'",
                [watch.name, path],
            )
            row = {
                "watch": watch.name,
                "task_id": watch.task_id,
                "mode": watch.mode,
                "path": path,
                "size": size,
                "mtime_ns": mtime_ns,
                "ctime_ns": ctime_ns,
                "inode": inode,
                "state": "failed",
                "detected_at": now,
                "ready_at": now,
                "last_error": reason,
                "disposition": "pending",
            }
            version_id = self.db["versions"].insert(row).last_pk
            return self._require(version_id), True

    def pending_dispositions(
        self,
        watches: Iterable[str] | None = None,
        skip_ids: Iterable[int] = (),
        limit: int = 500,
    ) -> list[Version]:
        """Closed or failed versions whose file still awaits its move, oldest
        first: of `watches` only, when given, and leaving out `skip_ids` (moves
        that failed and wait to be tried again), so that rows nobody can move
        now never crowd out the ones that can."""
        where = "disposition = 'pending' AND id NOT IN (SELECT value FROM json_each(?))"
        params: list[Any] = [json.dumps(list(skip_ids))]
        if watches is not None:
            where += " AND watch IN (SELECT value FROM json_each(?))"
            params.append(json.dumps(list(watches)))
        return self._versions(where + " ORDER BY id LIMIT ?", [*params, limit])

    def counts(self) -> dict[str, int]:
        """How many versions are in each state."""
        sql = "SELECT state, COUNT(*) FROM versions GROUP BY state"
        with self._lock:
            return dict(self.db.conn.execute(sql).fetchall())

    def set_disposition(
        self, version_id: int, disposition: str, disposed_to: Path | str | None = None
    ) -> Version:
        """Record what happened to a closed version's file: archived (to
        `disposed_to`), deleted, kept, or pending. Not a state change."""
        if disposition not in DISPOSITIONS:
            raise ValueError(f"disposition must be one of {DISPOSITIONS}")
        with self._write():
            version = self._require(version_id)
            if version.state not in (*CLOSED, "failed"):
                message = (
                    f"version {version_id} is {version.state}; only a closed or "
                    "failed version's file can be archived, deleted or kept"
                )
                raise IllegalTransition(message)
            self.db.execute(
                "UPDATE versions SET disposition = ?, disposed_to = ? WHERE id = ?",
                (disposition, disposed_to and str(disposed_to), version_id),
            )
            return self._require(version_id)

    # --- start-up and the operator's commands -------------------------------

    def recover(self, *, now: float | None = None) -> dict[str, int]:
        """On start: every `uploading` version goes back in the queue (`ready`),
        except an append whose whole body had been sent, which becomes
        `in_doubt` until an operator decides, and a `hubwatchd push` of a
        file outside every watch (ADHOC_WATCH), which no daemon will upload:
        it becomes `failed` (its file kept), so it cannot hold its task's
        queue. Returns counts by new state."""
        now = self._now(now)
        counts = {"ready": 0, "in_doubt": 0, "failed": 0}
        with self._write(durable=True):
            for version in self._versions("state = 'uploading'"):
                attempt = self._open_attempt(version.id)
                sent_all = attempt is not None and attempt.body_complete
                if attempt is not None:
                    error = "interrupted: the daemon stopped during the upload"
                    self._close_attempt(attempt, now, "interrupted", None, None, error)
                if version.mode == "append" and sent_all:
                    why = "the daemon stopped after the whole body was sent"
                    note = _in_doubt_note(version.id, why)
                    self._move(
                        version, "in_doubt", note=note, attempts=version.attempts + 1
                    )
                    counts["in_doubt"] += 1
                elif version.watch == ADHOC_WATCH:
                    self._move(
                        version,
                        "failed",
                        attempts=version.attempts + 1,
                        last_error="push was interrupted before an answer; "
                        "push the file again",
                        disposition="kept",
                    )
                    counts["failed"] += 1
                else:
                    self._move(version, "ready", attempts=version.attempts + 1)
                    counts["ready"] += 1
        if any(counts.values()):
            log.warning("ledger.recovered", **counts)
        return counts

    def retry(
        self,
        ids: Iterable[int] = (),
        *,
        failed: bool = False,
        in_doubt: bool = False,
        watch: str | None = None,
        now: float | None = None,
    ) -> list[Version]:
        """Queue versions again: the given ids, and/or every failed or in-doubt
        one (of `watch`, when given). Failed and in-doubt versions join the
        back of their task's queue; waiting ones become due now. All or
        nothing: an id that cannot be retried raises IllegalTransition."""
        now = self._now(now)
        with self._write(durable=True):
            targets = [self._require(i) for i in ids]
            states = [s for s, on in (("failed", failed), ("in_doubt", in_doubt)) if on]
            for state in states:
                where, params = "state = ?", [state]
                if watch is not None:
                    where, params = where + " AND watch = ?", [*params, watch]
                targets += self._versions(where + " ORDER BY id", params)
            return [self._requeue(version, now) for version in targets]

    def _requeue(self, version: Version, now: float) -> Version:
        if version.state not in RETRYABLE:
            message = (
                f"version {version.id} ({version.path}) is {version.state}; only "
                f"{', '.join(RETRYABLE)} versions can be retried"
            )
            raise IllegalTransition(message)
        out_of_queue = version.state in ("failed", "in_doubt")
        return self._move(
            version,
            "ready",
            ready_at=now if out_of_queue else version.ready_at,
            next_attempt_at=None,
            first_failure_at=None,
            disposition=None,
            note="queued again by the operator",
        )

    def forget(self, ids: Iterable[int]) -> list[Version]:
        """Close in-doubt versions the operator checked by hand: `forgotten`,
        which, like `done`, is never uploaded again. All or nothing."""
        with self._write(durable=True):
            closed = []
            for version in [self._require(i) for i in ids]:
                note = "forgotten by the operator"
                closed.append(self._move(version, "forgotten", note=note))
            return closed

    def blocked_watches(self) -> dict[str, BlockedWatch]:
        """Every watch the hub refused, by name."""
        with self._lock:
            rows = list(self.db.query("SELECT * FROM blocked_watches"))
        return {row["watch"]: BlockedWatch(**row) for row in rows}

    def unblock(self, watch_name: str) -> int:
        """Clear a watch's blocked mark (its config was fixed) and make its
        blocked versions due now. Returns how many versions were released."""
        with self._write(durable=True):
            self.db.execute("DELETE FROM blocked_watches WHERE watch = ?", [watch_name])
            blocked = self._versions("watch = ? AND state = 'blocked'", [watch_name])
            for version in blocked:
                self._move(version, "ready", next_attempt_at=None)
            return len(blocked)

    def prune(self, retention: float, *, now: float | None = None) -> int:
        """Delete done, skipped and superseded versions (and settling rows)
        older than `retention` seconds, except each task's last success
        (replace dedupe needs it) and versions whose file is kept and still
        there (so it is not uploaded again). Returns how many rows went."""
        cutoff = self._now(now) - retention
        states = ", ".join(f"'{s}'" for s in PRUNABLE)
        with self._write():
            old = self._versions(
                f"state IN ({states}) AND"
                " COALESCE(done_at, started_at, ready_at, detected_at) < ?",
                [cutoff],
            )
            last = {v.id for v in old if v.state == "done"} & self._last_successes()
            doomed = [v.id for v in old if v.id not in last and not _still_kept(v)]
            stale = self.db.execute(
                "DELETE FROM versions WHERE state = 'detected' AND detected_at < ?",
                [cutoff],
            ).rowcount
            for chunk in range(0, len(doomed), 500):
                part = doomed[chunk : chunk + 500]
                marks = ", ".join("?" * len(part))
                self.db.execute(f"DELETE FROM versions WHERE id IN ({marks})", part)
        return len(doomed) + stale

    def _last_successes(self) -> set[int]:
        sql = """
            SELECT id FROM (
                SELECT id, ROW_NUMBER() OVER (
                    PARTITION BY task_id ORDER BY done_at DESC, id DESC) AS place
                FROM versions WHERE state = 'done')
            WHERE place = 1"""
        with self._lock:
            return {row[0] for row in self.db.conn.execute(sql)}

    # --- queries for the operator's commands --------------------------------

    def get(self, version_id: int) -> Version | None:
        """The version with this id, or None."""
        return self._one("id = ?", [version_id])

    def attempts(self, version_id: int) -> list[Attempt]:
        """The attempts of a version, oldest first."""
        with self._lock:
            rows = list(
                self.db.query(
                    "SELECT * FROM attempts WHERE version_id = ? ORDER BY id",
                    [version_id],
                )
            )
        return [_attempt(row) for row in rows]

    def history(
        self,
        *,
        watch: str | None = None,
        states: Iterable[str] = (),
        since: float | None = None,
        limit: int | None = 50,
    ) -> list[Version]:
        """Versions, newest first, filtered by watch, states and last change."""
        clauses, params = ["1"], []
        if watch is not None:
            clauses.append("watch = ?")
            params.append(watch)
        states = list(states)
        if states:
            clauses.append(f"state IN ({', '.join('?' * len(states))})")
            params += states
        if since is not None:
            clauses.append(f"{_LAST_CHANGE} >= ?")
            params.append(since)
        where = " AND ".join(clauses) + f" ORDER BY {_LAST_CHANGE} DESC, id DESC"
        if limit is not None:
            where += f" LIMIT {int(limit)}"
        return self._versions(where, params)

    def versions_at(self, watch_name: str, path: Path | str) -> list[Version]:
        """Every version recorded for one path of a watch, newest first."""
        return self._versions(
            "watch = ? AND path = ? ORDER BY id DESC", [watch_name, str(path)]
        )

    def find_disposed(self, path: Path | str) -> Version | None:
        """The version whose file was archived or moved to `path`."""
        return self._one("disposed_to = ? ORDER BY id DESC", [str(path)])

    def summary(self, watch_names: Iterable[str] = ()) -> list[WatchSummary]:
        """Per watch (the given names plus any in the ledger): counts by state,
        the next retry time, the blocked mark, last success and last error."""
        with self._lock:
            counted = list(
                self.db.query(
                    "SELECT watch, state, COUNT(*) AS n, MIN(next_attempt_at) AS next"
                    " FROM versions GROUP BY watch, state"
                )
            )
        names = list(dict.fromkeys([*watch_names, *(r["watch"] for r in counted)]))
        blocked = self.blocked_watches()
        return [self._summarise(name, counted, blocked.get(name)) for name in names]

    def _summarise(
        self, name: str, counted: list[dict[str, Any]], blocked: BlockedWatch | None
    ) -> WatchSummary:
        mine = [row for row in counted if row["watch"] == name]
        retrying = [r["next"] for r in mine if r["state"] == "retry_wait"]
        return WatchSummary(
            watch=name,
            counts={row["state"]: row["n"] for row in mine},
            next_retry_at=min(retrying) if retrying else None,
            blocked=blocked,
            last_success=self._one(
                "watch = ? AND state = 'done' ORDER BY done_at DESC, id DESC", [name]
            ),
            last_error=self._one(
                "watch = ? AND last_error IS NOT NULL AND state != 'done'"
                f" ORDER BY {_LAST_CHANGE} DESC, id DESC",
                [name],
            ),
        )


_LAST_CHANGE = "COALESCE(done_at, started_at, ready_at, detected_at)"


def _in_doubt_note(version_id: int, why: str) -> str:
    return (
        f"{why}; check the hub's table, then `hubwatchd retry {version_id}` to "
        f"upload it again or `hubwatchd forget {version_id}` to close it"
    )


def _attempt(row: dict[str, Any]) -> Attempt:
    return Attempt(**(row | {"body_complete": bool(row["body_complete"])}))


def _make_private_file(path: Path) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)


def _still_kept(version: Version) -> bool:
    """The file of a kept version is still where it was, unchanged."""
    if version.disposition != "kept":
        return False
    try:
        st = os.stat(version.path, follow_symlinks=False)
    except OSError:
        return False
    return (st.st_size, st.st_mtime_ns, st.st_ino) == (
        version.size,
        version.mtime_ns,
        version.inode,
    )
