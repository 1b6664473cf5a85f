"""One upload now, by hand: what `hubwatchd push` does besides parsing flags.

The same client and retry policy as the daemon, with two differences an
operator at a terminal needs: the total wait is capped (`max_wait`, not the
daemon's 24 h give-up age), and an append whose body was complete when it
failed without an answer is not retried, because the hub may already have
appended the rows.

Every push goes through the ledger, like the daemon's uploads, so that the
daemon never uploads a pushed version again and `history` shows it:

- The file is opened once (never through a symlink at its last component);
  its identity (size, mtime_ns, ctime_ns, inode) comes from that descriptor
  and the same descriptor is sent, so what is recorded is what is sent.
- It is recorded under the watch whose daemon would upload it (inside its
  folder, matching its patterns, same task, mode and key; with --watch,
  that watch only), with the path as that daemon records it. Any other file is
  recorded under the watch name `(push)` (PUSH_WATCH), which no watch can
  have (watch names are letters, digits, `.`, `_`, `-`), so no daemon ever
  claims or moves it.
- A version already done, forgotten, skipped or superseded is not sent
  again (there is no --force: a new version, `touch`ed, is sent); one in
  doubt or being uploaded is not touched. Like the daemon, a watch with
  dedupe skips content its task already has. A failed or blocked
  one is queued again first (as `hubwatchd retry` would).
- Each request is one attempt: `Ledger.claim` (durably `uploading`; it
  refuses while another upload of the task runs), the
  upload with the daemon's `mark_body_sent` hook and SHA-256 while streaming,
  then `Ledger.finish`, whose verdict (done, retry_wait, failed, blocked,
  in_doubt) push follows. Between attempts the version waits in
  `retry_wait`; push claims it again when the ledger's next attempt is due.
  A crash mid-push leaves `uploading`, which the daemon's `recover()` sorts
  out at its next start, like its own; Ctrl-C is recorded as a cut-off
  attempt (in doubt for an append once the body-sent mark was made).
- When `max_wait` runs out, a version of a watch stays `retry_wait`: the
  daemon goes on with it. A `(push)` version has no daemon, so it is closed
  `failed` instead (and a blocked one too), and its file is `kept`: push
  never moves files. A watch's version keeps its after-action pending, so
  the daemon archives or deletes it (or moves it to the failed folder) on
  its next pass, per the watch's settings.
- No StateLock: it is the daemon's alone; SQLite (WAL, busy timeout) lets
  push write beside a running daemon. If the ledger cannot be opened at all
  (no write access to state_dir, a network filesystem), push still uploads,
  unrecorded (`push_file`), and the command line warns.
"""

from __future__ import annotations

import hashlib
import io
import os
import random
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, BinaryIO

from hubwatchd import logs, settle
from hubwatchd.config import HUB_MAX_BYTES, Config, Secret, WatchConfig
from hubwatchd.errors import FileRefused, IllegalTransition, LedgerError
from hubwatchd.hub import CONTENT_TYPES, HubClient, Outcome, open_regular, sha256_fd
from hubwatchd.ledger import ADHOC_WATCH, Ledger, Version
from hubwatchd.retry import RetryPolicy

log = logs.get_logger(__name__)

# The ledger's watch name for a file pushed from outside every watch; the
# parentheses keep it apart from every configured watch's name.
PUSH_WATCH = ADHOC_WATCH


@dataclass(frozen=True)
class PushTarget:
    """Where files go and under which rules: from --task flags or a watch."""

    task_id: str
    mode: str
    api_key: Secret
    json_raw: bool = False
    allow_empty: bool = False
    max_file_size: int = HUB_MAX_BYTES
    watch: str | None = None


@dataclass(frozen=True)
class PushResult:
    """How one push went.

    outcome: the last answer, None when nothing was sent.
    attempts: requests made by this push.
    in_doubt: an append failed after its whole body was sent, without an
        answer: the rows may be in.
    version: the ledger's row afterwards (None when unrecorded).
    sent: False when the ledger's record stopped the upload (done before,
        in doubt, being uploaded, a duplicate).
    busy: why the version could not be claimed (another upload of its task,
        or the daemon took it over between attempts).
    owner: the watch the version is recorded under, None for PUSH_WATCH.
    """

    outcome: Outcome | None
    attempts: int = 0
    in_doubt: bool = False
    version: Version | None = None
    sent: bool = True
    busy: str | None = None
    owner: WatchConfig | None = None
    # Recorded under PUSH_WATCH although this watch would take the file too
    # (pushed with another task, mode or key): its daemon uploads it as well.
    also_watched: str | None = None


@dataclass
class PushFile:
    """A file opened for push: its descriptor and the identity read from it."""

    handle: BinaryIO
    path: Path  # resolved: the file itself, no symlink left in it
    name: str  # the name the operator gave, sent as the form's filename
    size: int
    mtime_ns: int
    ctime_ns: int
    inode: int

    def close(self) -> None:
        self.handle.close()

    def __enter__(self) -> PushFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def changed(self) -> bool:
        """The file was written to since it was opened (what was sent may
        be a mix of old and new bytes)."""
        st = os.fstat(self.handle.fileno())
        return (st.st_size, st.st_mtime_ns, st.st_ctime_ns) != (
            self.size,
            self.mtime_ns,
            self.ctime_ns,
        )


def open_file(path: Path, target: PushTarget) -> PushFile:
    """Open `path` for upload, or raise FileRefused saying why not.

    Its folder is resolved (an operator may reach it through a linked
    folder); the file itself is opened without following a symlink, as the
    daemon does (an SFTP user can plant a link to any file in a drop
    folder), and must be a regular file.
    """
    if path.suffix.lower() not in CONTENT_TYPES:
        known = ", ".join(CONTENT_TYPES)
        raise FileRefused(f"{path}: the hub takes {known} files only")
    try:
        resolved = path.absolute().parent.resolve() / path.name
    except OSError as exc:
        raise FileRefused(f"{path}: cannot resolve: {exc.strerror}") from None
    if resolved.is_symlink():
        message = (
            f"{path}: it is a symbolic link; hubwatchd never follows a link to "
            f"a file: push the file itself ({os.path.realpath(resolved)})"
        )
        raise FileRefused(message)
    fd = open_regular(resolved, shown=path)
    handle = io.FileIO(fd, "rb", closefd=True)
    st = os.fstat(fd)
    opened = PushFile(
        handle,
        resolved,
        path.name,
        st.st_size,
        st.st_mtime_ns,
        st.st_ctime_ns,
        st.st_ino,
    )
    try:
        _check_size(path, st.st_size, target)
    except FileRefused:
        opened.close()
        raise
    return opened


def _check_size(path: Path, size: int, target: PushTarget) -> None:
    if size == 0 and not target.allow_empty:
        message = (
            f"{path}: empty file refused (an empty replace would wipe the table); "
            "pass --allow-empty if that is what you want"
        )
        raise FileRefused(message)
    if size > target.max_file_size:
        limit = target.max_file_size
        raise FileRefused(f"{path}: {size} bytes, over the {limit}-byte limit")


# --- the ledger ---------------------------------------------------------------


@dataclass(frozen=True)
class _Adhoc:
    """What `Ledger.record_ready` reads of a watch, for PUSH_WATCH."""

    name: str
    task_id: str
    mode: str


def open_ledger(config: Config) -> tuple[Ledger | None, str | None]:
    """The ledger of `config` with the daemon's retry rules, or None and why
    it cannot be opened (push then uploads unrecorded). No StateLock."""
    try:
        ledger = Ledger.open(
            config.daemon.state_dir,
            policy=RetryPolicy.from_config(config.retry),
            blocked_probe_interval=config.daemon.blocked_probe_interval,
        )
    except LedgerError as exc:
        return None, str(exc)
    except (OSError, sqlite3.Error) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        return None, f"cannot open the ledger in {config.daemon.state_dir}: {reason}"
    return ledger, None


def owning_watch(
    config: Config, target: PushTarget, path: Path
) -> tuple[WatchConfig, str] | None:
    """The watch whose daemon would upload `path` (a resolved file) as this
    push does (same task id, mode and key), and the path as that daemon
    records it.

    With `target.watch` only that watch is asked. None when no watch would
    take the file the same way: outside its folder, in its archive or failed
    folder, not matching its patterns, or to another task, in another mode,
    with another key (a refusal of another key must not block the watch).
    """
    for watch in config.watches:
        if target.watch is not None and watch.name != target.watch:
            continue
        same = (watch.task_id, watch.mode, watch.api_key.value) == (
            target.task_id,
            target.mode,
            target.api_key.value,
        )
        where = watch_path(watch, path)
        if same and where is not None:
            return watch, where
    return None


def watch_path(watch: WatchConfig, path: Path) -> str | None:
    """`path` (resolved) as `watch`'s daemon records it, if it is input for
    that watch; else None."""
    relative = os.path.relpath(path, os.path.realpath(watch.path))
    if relative == os.pardir or relative.startswith(os.pardir + os.sep):
        return None
    as_daemon = os.path.join(str(watch.path), relative)
    return as_daemon if settle.is_input(watch, as_daemon) else None


def push_recorded(
    client: HubClient,
    ledger: Ledger,
    config: Config,
    target: PushTarget,
    file: PushFile,
    *,
    max_wait: float,
    progress: Callable[[int], None] | None = None,
    on_retry: Callable[[Outcome, float, int], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> PushResult:
    """Record `file` in the ledger and upload it there, attempt by attempt.

    Retries follow the ledger's verdict and timing (its policy is the
    daemon's) for at most `max_wait` seconds. See the module docstring.
    """
    options: dict[str, Any] = {
        "max_wait": max_wait,
        "progress": progress,
        "on_retry": on_retry,
        "sleep": sleep,
        "clock": clock,
    }
    found = owning_watch(config, target, file.path)
    if found is not None:
        owner, where = found
        return _send_recorded(client, ledger, target, file, owner, where, **options)
    result = _send_recorded(
        client, ledger, target, file, None, str(file.path), **options
    )
    watched = [w.name for w in config.watches if watch_path(w, file.path)]
    return replace(result, also_watched=watched[0] if watched else None)


def _send_recorded(
    client: HubClient,
    ledger: Ledger,
    target: PushTarget,
    file: PushFile,
    owner: WatchConfig | None,
    where: str,
    *,
    max_wait: float,
    progress: Callable[[int], None] | None,
    on_retry: Callable[[Outcome, float, int], None] | None,
    sleep: Callable[[float], None],
    clock: Callable[[], float],
) -> PushResult:
    record_as = owner or _Adhoc(PUSH_WATCH, target.task_id, target.mode)
    version, _ = ledger.record_ready(
        record_as,  # type: ignore[arg-type]
        where,
        file.size,
        file.mtime_ns,
        file.ctime_ns,
        file.inode,
    )
    try:
        if version.state in ("failed", "blocked"):
            [version] = ledger.retry([version.id])
    except IllegalTransition as exc:  # changed under us: the daemon is on it
        return PushResult(None, version=ledger.get(version.id), busy=str(exc))
    if version.state not in ("ready", "retry_wait"):
        return PushResult(None, version=version, sent=False, owner=owner)

    prehashed = None
    dedupe = owner is not None and owner.dedupe and version.state == "ready"
    if dedupe and ledger.needs_prehash(version):
        # As the daemon does: an earlier success of equal size may be a repeat.
        prehashed = _sha256(file)
        duplicate = ledger.duplicate_of(version, prehashed)
        if duplicate is not None:
            skipped = ledger.mark_skipped(
                version.id, duplicate=duplicate, sha256=prehashed
            )
            return PushResult(None, version=skipped, sent=False, owner=owner)

    deadline = clock() + max_wait
    attempts = 0
    outcome: Outcome | None = None
    while True:
        try:
            ledger.claim(version.id)
        except IllegalTransition as exc:
            current = ledger.get(version.id)
            return PushResult(
                outcome, attempts, version=current, busy=str(exc), owner=owner
            )
        attempts += 1
        try:
            outcome, sha = _attempt(
                client, ledger, target, file, version.id, prehashed, progress
            )
        except BaseException as exc:
            _interrupted(ledger, version.id, owner, exc)
            raise
        doubt = None
        if outcome.ok and file.changed():
            doubt = "the file changed while it was being sent"
        version = ledger.finish(
            version.id, **outcome.ledger_fields(), sha256=sha, doubt=doubt
        )
        if version.state != "retry_wait":
            break
        delay = max(0.0, (version.next_attempt_at or 0.0) - ledger.clock())
        if clock() + delay > deadline:
            break
        if on_retry is not None:
            on_retry(outcome, delay, attempts + 1)
        sleep(delay)
    if owner is None:
        version = _close_adhoc(ledger, version)
    return PushResult(
        outcome,
        attempts,
        in_doubt=version.state == "in_doubt",
        version=version,
        owner=owner,
    )


def _attempt(
    client: HubClient,
    ledger: Ledger,
    target: PushTarget,
    file: PushFile,
    version_id: int,
    sha: str | None,
    progress: Callable[[int], None] | None,
) -> tuple[Outcome, str | None]:
    """One request of a claimed version, as the daemon makes it: the durable
    body-sent mark, and the SHA-256 taken while the body streams (unless it
    was taken before, for dedupe). Returns the outcome and the SHA-256."""
    hasher = hashlib.sha256() if sha is None else None
    outcome = client.upload(
        file.handle,
        task_id=target.task_id,
        mode=target.mode,
        api_key=target.api_key,
        size=file.size,
        json_raw=target.json_raw,
        progress=progress,
        hasher=hasher,
        on_body_sent=lambda: ledger.mark_body_sent(version_id),
        filename=file.name,
    )
    if hasher is not None and outcome.body_complete:
        sha = hasher.hexdigest()
    return outcome, sha


def _interrupted(
    ledger: Ledger, version_id: int, owner: WatchConfig | None, exc: BaseException
) -> None:
    """Record an attempt that push itself cut off (Ctrl-C, a failing ledger).

    Whether the final piece of the body went is unknown once the body-sent
    mark is made, so the mark counts as a whole body: an append is then
    `in_doubt`, the safe side. If the ledger fails here too, the version
    stays `uploading` for the daemon's `recover()`.
    """
    why = "interrupted" if isinstance(exc, KeyboardInterrupt) else str(exc)
    try:
        attempts = ledger.attempts(version_id)
        marked = bool(attempts) and attempts[-1].body_complete
        version = ledger.finish(
            version_id,
            kind="retry",
            body_complete=marked,
            error=f"push stopped: {why or exc.__class__.__name__}",
        )
        if owner is None:
            _close_adhoc(ledger, version)
    except Exception:
        log.exception("push.record_failed", id=version_id)


def _close_adhoc(ledger: Ledger, version: Version) -> Version:
    """A PUSH_WATCH version has no daemon to go on with it: what would wait
    (retry_wait, blocked) is closed `failed`, and its file is `kept`."""
    if version.state in ("retry_wait", "blocked"):
        blocked = version.state == "blocked"
        reason = f"push gave up: {version.last_error or 'no answer'}"
        version = ledger.mark_failed(version.id, reason)
        if blocked:
            ledger.unblock(PUSH_WATCH)  # no watch of that name to hold
    if version.disposition == "pending":
        version = ledger.set_disposition(version.id, "kept")
    return version


def _sha256(file: PushFile) -> str:
    return sha256_fd(file.handle.fileno(), file.size)


# --- without the ledger -------------------------------------------------------


def push_file(
    client: HubClient,
    target: PushTarget,
    file: PushFile,
    *,
    policy: RetryPolicy,
    max_wait: float,
    progress: Callable[[int], None] | None = None,
    on_retry: Callable[[Outcome, float, int], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    rng: random.Random | None = None,
) -> PushResult:
    """Upload `file` unrecorded (the ledger cannot be opened), retrying per
    `policy` for at most `max_wait` seconds.

    `on_retry(outcome, delay, next_attempt)` is called before each wait. An
    append whose whole body went is not retried: with no ledger to hold it
    in doubt, any failure after the last byte counts as one.
    """
    deadline = clock() + min(max_wait, policy.give_up_after)
    attempt = 0
    while True:
        attempt += 1
        outcome = client.upload(
            file.handle,
            task_id=target.task_id,
            mode=target.mode,
            api_key=target.api_key,
            size=file.size,
            json_raw=target.json_raw,
            progress=progress,
            filename=file.name,
        )
        if outcome.kind != "retry":
            return PushResult(outcome, attempt)
        if target.mode == "append" and outcome.body_complete:
            return PushResult(outcome, attempt, in_doubt=True)
        delay = policy.delay(attempt, outcome.retry_after, rng)
        if clock() + delay > deadline:
            return PushResult(outcome, attempt)
        if on_retry is not None:
            on_retry(outcome, delay, attempt + 1)
        sleep(delay)
