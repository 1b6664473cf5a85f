"""The dispatcher: a bounded pool of uploads, one at a time per task, in order.

One scheduler thread asks the ledger for the next due version of every task
with nothing in flight, hands it to a worker, and sleeps until a worker
finishes, new work arrives, or the next retry or probe falls due. Waiting
retries hold no worker. The ledger decides order, coalescing, retry times
and blocked probes; this module decides when to ask, runs each upload, and
carries out the after-action once the ledger has recorded the outcome.

Threads: each upload runs on a daemon thread of its own (at most `workers`
at a time), and only the scheduler thread moves files. An upload waiting
for the hub's answer cannot be interrupted (httpx checks nothing while it
reads), so at shutdown such a thread is abandoned rather than joined: a
pool's non-daemon threads would hold the process for up to answer_timeout.
Its ledger row stays `uploading`, which `Ledger.recover` settles at the next
start.
"""

from __future__ import annotations

import hashlib
import io
import os
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import structlog

from hubwatchd import files, logs, settle
from hubwatchd.config import Config, WatchConfig
from hubwatchd.errors import FileRefused
from hubwatchd.hub import Outcome, ProgressLog, open_regular, sha256_fd
from hubwatchd.ledger import Ledger, Version

log = logs.get_logger(__name__)

# A move that failed (disk full, permissions) is tried again after this long.
MOVE_RETRY = 60.0
# The longest the scheduler sleeps without being woken: a safety net only.
IDLE_WAIT = 30.0
# After the grace, how long cancelled uploads get to stop between chunks and
# record their outcome before they are abandoned.
CANCEL_WAIT = 2.0


class Uploader(Protocol):
    """What the dispatcher needs of a hub client (HubClient, or a dry run's)."""

    def upload(self, source: Any, **kwargs: Any) -> Outcome: ...


class Dispatcher:
    """Runs uploads for the ledger's queued versions on `workers` threads."""

    def __init__(
        self,
        config: Config,
        ledger: Ledger,
        client: Uploader,
        *,
        touch_files: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._config = config
        self._watches = {w.name: w for w in config.watches}
        self._ledger = ledger
        self._client = client
        self._touch_files = touch_files
        self._clock = clock
        self._busy: dict[str, str] = {}  # task id -> path in flight
        self._move_failed: dict[int, float] = {}  # version id -> when to try again
        self._cond = threading.Condition()
        self._woken = False
        self._stopping = threading.Event()
        self._cancel = threading.Event()
        self._thread = threading.Thread(
            target=self._loop, name="hubwatchd-dispatch", daemon=True
        )

    # --- lifecycle ------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        """New work may be waiting: look at the ledger again now."""
        with self._cond:
            self._woken = True
            self._cond.notify_all()

    def alive(self) -> bool:
        """True while the scheduler runs (for the systemd watchdog)."""
        return self._thread.is_alive()

    def in_flight(self) -> int:
        with self._cond:
            return len(self._busy)

    def stop(self, grace: float) -> list[str]:
        """Take no new work; give uploads in flight `grace` seconds, then cancel.

        A cancelled upload stops between chunks and is recorded by the
        ledger's rules (an unfinished body is no upload). One still waiting
        for the hub's answer after CANCEL_WAIT more is abandoned: its thread
        is left running and its row stays `uploading`. Returns the paths of
        abandoned uploads; while there are any, the ledger must stay open
        (the thread may still record its outcome) until the process ends.
        """
        self._stopping.set()
        self.wake()
        if self._thread.is_alive():
            self._thread.join()
        if not self._wait_idle(grace):
            with self._cond:
                paths = list(self._busy.values())
            log.warning("dispatch.cancelling", uploads=len(paths), paths=paths)
            self._cancel.set()
            self._wait_idle(CANCEL_WAIT)
        # The scheduler has stopped: this thread is now the only mover, and
        # what finished during the grace is archived now, not at next start.
        self.finish_dispositions()
        with self._cond:
            return list(self._busy.values())

    def _wait_idle(self, seconds: float) -> bool:
        """Wait up to `seconds` for every upload to finish; True if they did."""
        deadline = time.monotonic() + seconds
        with self._cond:
            while self._busy and (left := deadline - time.monotonic()) > 0:
                self._cond.wait(left)
            return not self._busy

    def update(self, config: Config, client: Uploader | None = None) -> None:
        """Take a reloaded config, and a new client when the hub settings or
        the worker count changed (uploads in flight finish on the old one).
        A watch whose settings changed (a fixed key or task id) is unblocked
        at once; removed watches' files stay queued."""
        old = self._watches
        with self._cond:
            self._config = config
            self._watches = {w.name: w for w in config.watches}
            if client is not None:
                self._client = client
        for name in self._ledger.blocked_watches():
            if name in self._watches and self._watches[name] != old.get(name):
                released = self._ledger.unblock(name)
                log.info(
                    "watch.unblocked", watch=name, why="config reloaded", files=released
                )
        self.wake()

    # --- the scheduler --------------------------------------------------

    def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                wait = self._schedule()
            except Exception:
                log.exception("dispatch.error")
                wait = 5.0
            with self._cond:
                if not self._woken and not self._stopping.is_set():
                    self._cond.wait(wait)
                self._woken = False

    def _schedule(self) -> float:
        """Start what can start, then do the moves that are due; return how
        long to sleep before looking again. Uploads first: a move is never
        urgent, and a task's next upload waits for this pass."""
        now = self._clock()
        with self._cond:
            watches = dict(self._watches)
            while len(self._busy) < self._config.daemon.workers:
                version = self._ledger.claim_next(
                    now, skip_tasks=set(self._busy), watches=watches
                )
                if version is None:
                    break
                self._busy[version.task_id] = version.path
                worker = threading.Thread(
                    target=self._run,
                    args=(version, watches[version.watch]),
                    name=f"hubwatchd-upload-{version.id}",
                    daemon=True,
                )
                worker.start()
            due = self._ledger.next_due_at(skip_tasks=set(self._busy), watches=watches)
        self.finish_dispositions()
        if due is None:
            return IDLE_WAIT
        return max(0.0, min(IDLE_WAIT, due - now))

    def _run(self, version: Version, watch: WatchConfig) -> None:
        """Upload `version`, then go on with its task's next due version in
        this same thread while there is one: a backlog of one task needs no
        scheduler pass and no new thread per file."""
        task_id = version.task_id
        try:
            while True:
                self._run_one(version, watch)
                with self._cond:
                    self._woken = True  # the scheduler does the moves
                    self._cond.notify_all()
                    if self._stopping.is_set():
                        return
                    watches = dict(self._watches)
                    version = self._ledger.claim_next(
                        self._clock(), only_task=task_id, watches=watches
                    )
                    if version is None:
                        return
                    watch = watches[version.watch]
                    self._busy[task_id] = version.path
        finally:
            with self._cond:
                self._busy.pop(task_id, None)
                self._woken = True
                self._cond.notify_all()

    def _run_one(self, version: Version, watch: WatchConfig) -> None:
        bound = log.bind(
            watch=watch.name, task_id=version.task_id, path=version.path, id=version.id
        )
        try:
            # The client's own lines (upload.succeeded, upload.progress) carry
            # the watch and the version too: context of this thread only.
            with structlog.contextvars.bound_contextvars(
                watch=watch.name, id=version.id
            ):
                self._upload(version, watch, bound)
        except Exception:
            bound.exception("upload.crashed")
            try:
                self._ledger.release(version.id, "internal error before the upload")
            except Exception:
                bound.exception("ledger.release_failed")

    # --- one upload -----------------------------------------------------

    def _upload(self, version: Version, watch: WatchConfig, bound: Any) -> None:
        path = Path(version.path)
        handle = self._open(version, watch, path, bound)
        if handle is None:
            return
        with handle:
            outcome, sha = self._send(version, watch, handle, bound)
            if outcome is None:
                return
            doubt = None
            if outcome.kind == "success" and self._changed(version, handle):
                doubt = "the file changed while it was being sent"
        finished = self._ledger.finish(
            version.id, **outcome.ledger_fields(), sha256=sha, doubt=doubt
        )
        self._report(finished, watch, outcome, bound)

    def _open(
        self, version: Version, watch: WatchConfig, path: Path, bound: Any
    ) -> io.FileIO | None:
        """The queued version, opened once: what is checked is what is sent.

        The descriptor is taken without following a symlink and compared
        with the version's identity, so a file swapped in after it settled
        (another file renamed over it, a folder replaced by a link) is never
        sent in its place. Records why when it cannot be sent.
        """
        try:
            fd = open_regular(path)
        except FileRefused as exc:
            if not os.path.lexists(path):
                self._ledger.mark_failed(
                    version.id, "the file disappeared before upload"
                )
                bound.warning("upload.vanished")
            else:
                self._ledger.mark_failed(version.id, exc.reason)
                bound.warning("upload.refused", reason=exc.reason)
            return None
        handle = io.FileIO(fd, "rb", closefd=True)
        handle.name = str(path)  # for the log lines; the descriptor is what counts
        st = os.fstat(fd)
        if (st.st_size, st.st_mtime_ns, st.st_ino) != (
            version.size,
            version.mtime_ns,
            version.inode,
        ):
            handle.close()
            # Its newer version gets its own row once it settles.
            self._ledger.mark_superseded(version.id, "the file changed before upload")
            bound.info("upload.stale")
            return None
        try:
            settle.check_open(watch, version.path, fd, version.size)
        except FileRefused as exc:
            handle.close()
            self._ledger.mark_failed(version.id, exc.reason)
            bound.warning("upload.refused", reason=exc.reason)
            return None
        return handle

    def _send(
        self, version: Version, watch: WatchConfig, handle: io.FileIO, bound: Any
    ) -> tuple[Outcome | None, str | None]:
        """Dedupe, then the request; (None, sha) when the version was skipped."""
        sha: str | None = None
        if watch.dedupe and self._ledger.needs_prehash(version):
            sha = sha256_fd(handle.fileno(), version.size)
            duplicate = self._ledger.duplicate_of(version, sha)
            if duplicate is not None:
                self._ledger.mark_skipped(version.id, duplicate=duplicate, sha256=sha)
                bound.info("upload.skipped", duplicate_of=duplicate.id)
                return None, sha

        hasher = hashlib.sha256() if sha is None else None
        progress = ProgressLog(
            path=version.path,
            size=version.size,
            interval=self._config.daemon.progress_interval,
            watch=watch.name,
            task_id=version.task_id,
        )
        outcome = self._client.upload(
            handle,
            task_id=version.task_id,
            mode=version.mode,
            api_key=watch.api_key,
            size=version.size,
            json_raw=watch.json_upload == "raw",
            hasher=hasher,
            progress=progress,
            cancel=self._cancel,
            on_body_sent=lambda: self._ledger.mark_body_sent(version.id),
            filename=Path(version.path).name,
        )
        if hasher is not None and outcome.body_complete:
            sha = hasher.hexdigest()
        return outcome, sha

    def _report(
        self, version: Version, watch: WatchConfig, outcome: Outcome, bound: Any
    ) -> None:
        if version.state == "blocked":
            bound.error(
                "watch.blocked",
                status=outcome.status,
                error=outcome.error,
                action="check the watch's key and task id, then reload",
            )
        elif version.state == "in_doubt":
            bound.error(
                "upload.in_doubt",
                note=version.note,
                action=f"check the hub's table, then: hubwatchd retry {version.id}"
                f" or hubwatchd forget {version.id}",
            )
        elif version.state == "retry_wait":
            at = version.next_attempt_at or 0.0
            bound.warning(
                "upload.retrying",
                error=outcome.error,
                attempts=version.attempts,
                next_attempt_at=datetime.fromtimestamp(at, UTC).isoformat(),
                in_seconds=round(max(0.0, at - self._clock()), 1),
            )

    def _changed(self, version: Version, handle: io.FileIO) -> bool:
        """The open file was written to while it was sent (what went out may
        mix old and new bytes)."""
        st = os.fstat(handle.fileno())
        now = (st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        return now != (version.size, version.mtime_ns, version.ctime_ns)

    # --- after the ledger has spoken ------------------------------------

    def finish_dispositions(self) -> None:
        """Carry out every pending after-action: archive, delete, keep, or the
        failed folder. A move that fails stays pending and is tried again.

        Runs on the scheduler thread only (each pass: after every upload, and
        whenever the daemon wakes it), so no two threads move one file.
        """
        if not self._touch_files:
            return
        now = time.monotonic()
        self._move_failed = {i: t for i, t in self._move_failed.items() if t > now}
        pending = self._ledger.pending_dispositions(
            watches=list(self._watches), skip_ids=list(self._move_failed)
        )
        for version in pending:
            watch = self._watches[version.watch]
            if not self._dispose(watch, version):
                self._move_failed[version.id] = now + MOVE_RETRY
            else:
                self._move_failed.pop(version.id, None)

    def _dispose(self, watch: WatchConfig, version: Version) -> bool:
        """The after-action for one version; False when the move failed."""
        path = Path(version.path)
        try:
            if version.state == "failed":
                reason = version.last_error or "refused"
                target = files.move_to_failed(watch, path, reason, version.id)
                self._ledger.set_disposition(version.id, "failed_folder", target)
                log.error(
                    "file.failed",
                    watch=watch.name,
                    path=version.path,
                    reason=reason,
                    moved_to=str(target),
                )
            elif watch.after_success == "archive":
                target = files.archive(watch, path)
                self._ledger.set_disposition(version.id, "archived", target)
            elif watch.after_success == "delete":
                files.delete(watch, path)
                self._ledger.set_disposition(version.id, "deleted")
            else:
                self._ledger.set_disposition(version.id, "kept")
        except FileNotFoundError:
            self._ledger.set_disposition(version.id, "gone")
        except OSError as exc:
            log.error(
                "file.move_failed",
                watch=watch.name,
                path=version.path,
                error=exc.strerror or str(exc),
                action="free space or fix permissions; the move is tried again",
            )
            return False
        return True
