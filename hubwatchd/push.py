"""One upload now, by hand: what `hubwatchd push` does besides parsing flags.

The same client and retry policy as the daemon, with two differences an
operator at a terminal needs: the total wait is capped (`max_wait`, not the
daemon's 24 h give-up age), and an append whose body was complete when it
failed is not retried, because the hub may already have appended the rows.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from hubwatchd import logs
from hubwatchd.config import HUB_MAX_BYTES, Config, Secret
from hubwatchd.errors import FileRefused
from hubwatchd.hub import CONTENT_TYPES, HubClient, Outcome
from hubwatchd.retry import RetryPolicy

log = logs.get_logger(__name__)


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
    outcome: Outcome
    attempts: int
    # An append failed after its whole body was sent: the rows may be in.
    in_doubt: bool = False


def check_file(path: Path, target: PushTarget) -> int:
    """The size of `path` if it may be pushed; FileRefused saying why not."""
    try:
        info = path.stat()
    except FileNotFoundError:
        raise FileRefused(f"{path}: no such file") from None
    except OSError as exc:
        raise FileRefused(f"{path}: cannot read: {exc.strerror}") from None
    if not path.is_file():
        raise FileRefused(f"{path}: not a regular file")
    if path.suffix.lower() not in CONTENT_TYPES:
        known = ", ".join(CONTENT_TYPES)
        raise FileRefused(f"{path}: the hub takes {known} files only")
    if info.st_size == 0 and not target.allow_empty:
        message = (
            f"{path}: empty file refused (an empty replace would wipe the table); "
            "pass --allow-empty if that is what you want"
        )
        raise FileRefused(message)
    if info.st_size > target.max_file_size:
        limit = target.max_file_size
        raise FileRefused(f"{path}: {info.st_size} bytes, over the {limit}-byte limit")
    return info.st_size


def push_file(
    client: HubClient,
    target: PushTarget,
    path: Path,
    size: int,
    *,
    policy: RetryPolicy,
    max_wait: float,
    progress: Callable[[int], None] | None = None,
    on_retry: Callable[[Outcome, float, int], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    rng: random.Random | None = None,
) -> PushResult:
    """Upload `path`, retrying per `policy` for at most `max_wait` seconds.

    `on_retry(outcome, delay, next_attempt)` is called before each wait.
    Returns the last outcome; raises FileRefused if the file cannot be opened.
    """
    deadline = clock() + min(max_wait, policy.give_up_after)
    attempt = 0
    while True:
        attempt += 1
        outcome = client.upload(
            path.resolve(),
            task_id=target.task_id,
            mode=target.mode,
            api_key=target.api_key,
            size=size,
            json_raw=target.json_raw,
            progress=progress,
            filename=path.name,
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


def record_in_ledger(
    config: Config, target: PushTarget, path: Path, size: int, result: PushResult
) -> None:
    """The seam where push records the version in the ledger. Not wired yet.

    The ledger (branch `ledger`) is not merged into this branch, so nothing is
    recorded: a pushed file inside a watched folder is still uploaded again by
    the daemon, and `history` does not show it. Once the ledger lands, this
    opens `Ledger.open(config.daemon.state_dir)`, records the version
    (`record_ready` with path, size, mtime_ns, ctime_ns, inode) and finishes
    it with `result.outcome`. For crash safety the row should then be
    committed as `uploading` before the request, so this becomes a pair
    (claim before, finish after) around `push_file`.
    """
    del config, target, path, size, result
