"""The ledger: every transition of its state machine and every rule."""

from __future__ import annotations

import os
import random
import sqlite3
import stat
import threading
from pathlib import Path

import pytest
from ledgerkit import POLICY, TASK_A, TASK_B, Clock, make_watch, open_ledger, ready

from hubwatchd.errors import IllegalTransition, LedgerError, LedgerLocked
from hubwatchd.ledger import (
    STATES,
    TRANSITIONS,
    Ledger,
    StateLock,
    check_local_filesystem,
    filesystem_type,
)
from hubwatchd.retry import RetryPolicy


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def ledger(tmp_path: Path, clock: Clock):
    with open_ledger(tmp_path / "state", clock) as opened:
        yield opened


def force_state(ledger: Ledger, version_id: int, state: str) -> None:
    ledger.db.execute("UPDATE versions SET state = ? WHERE id = ?", [state, version_id])


# --- opening, files, locks ---------------------------------------------------


def test_open_creates_a_private_wal_database_with_its_migrations(tmp_path: Path):
    state = tmp_path / "state"
    with Ledger.open(state) as ledger:
        mode = ledger.db.conn.execute("PRAGMA journal_mode").fetchone()[0]
        applied = [r["name"] for r in ledger.db["_sqlite_migrations"].rows]
    assert mode == "wal"
    assert applied == ["0001_versions_attempts_blocked"]
    assert stat.S_IMODE(os.stat(state).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(state / "ledger.db").st_mode) == 0o600
    with Ledger.open(state) as again:  # reopening applies nothing twice
        assert again.db["_sqlite_migrations"].count == 1


def test_open_tightens_a_database_file_others_could_read(tmp_path: Path):
    (tmp_path / "ledger.db").touch(mode=0o644)
    Ledger.open(tmp_path).close()
    assert stat.S_IMODE(os.stat(tmp_path / "ledger.db").st_mode) == 0o600


def test_open_without_create_refuses_a_missing_ledger(tmp_path: Path):
    with pytest.raises(LedgerError, match="no ledger at"):
        Ledger.open(tmp_path, create=False)
    assert not (tmp_path / "ledger.db").exists()


def test_open_refuses_a_file_that_is_not_sqlite(tmp_path: Path):
    (tmp_path / "ledger.db").write_bytes(b"not a database, just text " * 100)
    with pytest.raises(LedgerError, match="cannot open the ledger"):
        Ledger.open(tmp_path)


MOUNTINFO = """\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
40 22 0:35 / /srv/state rw,relatime shared:2 - nfs4 fs:/export rw,vers=4.2
41 22 0:36 / /mnt/smb\\040share rw - cifs //server/share rw
42 40 8:2 / /srv/state/local rw - xfs /dev/sdb1 rw
"""


@pytest.mark.parametrize(
    ("path", "fstype"),
    [
        ("/var/lib/hubwatchd", "ext4"),
        ("/srv/state/ledger", "nfs4"),
        ("/srv/statefoo", "ext4"),
        ("/mnt/smb share/x", "cifs"),
        ("/srv/state/local/x", "xfs"),
    ],
)
def test_filesystem_type_takes_the_deepest_mount(path: str, fstype: str):
    assert filesystem_type(Path(path), MOUNTINFO) == fstype


@pytest.mark.parametrize("path", ["/srv/state/ledger", "/mnt/smb share"])
def test_a_state_dir_on_nfs_or_smb_is_refused(path: str):
    with pytest.raises(LedgerError, match="network filesystem"):
        check_local_filesystem(Path(path), MOUNTINFO)
    check_local_filesystem(Path("/srv/state/local/x"), MOUNTINFO)


def test_a_second_daemon_on_the_state_dir_is_told_the_holders_pid(tmp_path: Path):
    holder = f"pid {os.getpid()}"
    with StateLock(tmp_path), pytest.raises(LedgerLocked, match=holder):
        StateLock(tmp_path).acquire()
    with StateLock(tmp_path):  # released: a later daemon gets it
        assert (tmp_path / "hubwatchd.lock").read_text() == f"{os.getpid()}\n"


# --- settling and readiness --------------------------------------------------


def test_a_settling_file_has_one_row_refreshed_then_promoted(ledger: Ledger):
    watch = make_watch()
    path = watch.path / "sales.csv"
    ledger.note_detected(watch, path, 10, 1, 1, 7, "growing")
    ledger.note_detected(watch, path, 20, 2, 2, 7, "quiet for 1s of 3s")
    [row] = ledger.versions_at("acme", path)
    assert (row.state, row.size, row.note) == ("detected", 20, "quiet for 1s of 3s")

    version, created = ledger.record_ready(watch, path, 30, 3, 3, 7)
    assert created and version.id == row.id
    assert (version.state, version.size, version.note) == ("ready", 30, None)
    assert ledger.known_identities("acme") == {(str(path), 30, 3, 7)}


def test_detecting_a_known_version_records_nothing(ledger: Ledger):
    watch = make_watch()
    version = ready(ledger, watch, "a.csv")
    ledger.note_detected(
        watch, version.path, version.size, version.mtime_ns, 0, version.inode
    )
    assert [v.id for v in ledger.versions_at("acme", version.path)] == [version.id]


def test_drop_detected_forgets_a_file_that_went_away(ledger: Ledger):
    watch = make_watch()
    ledger.note_detected(watch, watch.path / "x.csv", 1, 1, 1, 1)
    ledger.drop_detected("acme", watch.path / "x.csv")
    assert ledger.versions_at("acme", watch.path / "x.csv") == []


def test_record_ready_is_idempotent_on_identity(ledger: Ledger):
    watch = make_watch()
    first, created = ledger.record_ready(watch, watch.path / "a.csv", 5, 9, 9, 3)
    again, created_again = ledger.record_ready(watch, watch.path / "a.csv", 5, 9, 9, 3)
    assert created and not created_again and again == first
    changed, created = ledger.record_ready(watch, watch.path / "a.csv", 6, 10, 10, 3)
    assert created and changed.id != first.id


# --- the state machine ---------------------------------------------------------


@pytest.mark.parametrize("source", STATES)
@pytest.mark.parametrize("target", STATES)
def test_every_move_outside_the_state_machine_is_refused(
    ledger: Ledger, source: str, target: str
):
    version = ready(ledger, make_watch(), "a.csv")
    force_state(ledger, version.id, source)
    current = ledger.get(version.id)
    assert current is not None
    if target in TRANSITIONS[source]:
        assert ledger._move(current, target).state == target
    else:
        with pytest.raises(IllegalTransition, match=f"is {source}"):
            ledger._move(current, target)
        assert ledger.get(version.id) == current


def test_terminal_states_go_nowhere():
    for state in ("done", "skipped", "superseded", "forgotten"):
        assert TRANSITIONS[state] == frozenset()


def test_finishing_a_version_that_is_not_uploading_is_refused(ledger: Ledger):
    version = ready(ledger, make_watch(), "a.csv")
    with pytest.raises(IllegalTransition, match="not uploading"):
        ledger.finish(version.id, kind="success")
    with pytest.raises(IllegalTransition, match="not uploading"):
        ledger.mark_body_sent(version.id)
    with pytest.raises(LedgerError, match="no version 999"):
        ledger.finish(999, kind="success")


def test_success_is_done_with_rows_sha_and_a_closed_attempt(
    ledger: Ledger, clock: Clock
):
    version = ready(ledger, make_watch(), "a.csv")
    claimed = ledger.claim_next()
    assert claimed is not None and claimed.id == version.id
    assert claimed.state == "uploading" and claimed.started_at == clock.now
    clock.advance(2)
    ledger.mark_body_sent(version.id, 100)
    done = ledger.finish(
        version.id, kind="success", status=200, rows=42, bytes_sent=100, sha256="ab"
    )
    assert (done.state, done.rows, done.sha256, done.attempts) == ("done", 42, "ab", 1)
    assert (done.done_at, done.disposition) == (clock.now, "pending")
    [attempt] = ledger.attempts(version.id)
    assert (attempt.status, attempt.outcome, attempt.bytes_sent) == (
        200,
        "success",
        100,
    )
    assert attempt.body_complete and attempt.ended_at == clock.now


def test_a_done_version_is_never_queued_or_claimed_again(ledger: Ledger):
    watch = make_watch()
    version = ready(ledger, watch, "a.csv")
    ledger.claim_next()
    ledger.finish(version.id, kind="success", rows=1)
    again, created = ledger.record_ready(
        watch, version.path, version.size, version.mtime_ns, 0, version.inode
    )
    assert not created and again.state == "done"
    assert ledger.claim_next() is None
    with pytest.raises(IllegalTransition, match="is done"):
        ledger.retry([version.id])


def test_disposition_is_recorded_only_for_closed_versions(ledger: Ledger):
    version = ready(ledger, make_watch(), "a.csv")
    with pytest.raises(IllegalTransition):
        ledger.set_disposition(version.id, "archived", "/a/b")
    ledger.claim_next()
    ledger.finish(version.id, kind="success")
    moved = ledger.set_disposition(version.id, "archived", "/srv/drop/.a/a.csv")
    assert (moved.disposition, moved.disposed_to) == ("archived", "/srv/drop/.a/a.csv")
    with pytest.raises(ValueError, match="disposition"):
        ledger.set_disposition(version.id, "burnt")


def test_rejected_is_failed(ledger: Ledger):
    version = ready(ledger, make_watch(), "a.csv")
    ledger.claim_next()
    failed = ledger.finish(version.id, kind="rejected", status=400, error="bad csv")
    assert (failed.state, failed.last_status, failed.last_error) == (
        "failed",
        400,
        "bad csv",
    )
    assert ledger.claim_next() is None


def test_refusing_locally_fails_without_an_attempt(ledger: Ledger):
    first = ready(ledger, make_watch(), "a.csv")
    ledger.claim_next()
    failed = ledger.mark_failed(first.id, "a symlink, not a file")
    assert (failed.state, failed.last_error) == ("failed", "a symlink, not a file")
    assert ledger.attempts(first.id) == []
    second = ready(ledger, make_watch(), "b.csv")
    assert ledger.mark_failed(second.id, "empty file").state == "failed"


def test_a_retryable_failure_waits_with_jittered_backoff(ledger: Ledger, clock: Clock):
    version = ready(ledger, make_watch(), "a.csv")
    start = clock.now
    ledger.claim_next()
    waiting = ledger.finish(version.id, kind="retry", status=503, error="down")
    assert waiting.state == "retry_wait" and waiting.first_failure_at == start
    assert start <= waiting.next_attempt_at <= start + POLICY.initial_delay
    assert ledger.claim_next(start - 1) is None
    assert ledger.next_due_at() == waiting.next_attempt_at
    again = ledger.claim_next(waiting.next_attempt_at)
    assert again is not None and again.id == version.id and again.attempts == 1


def test_retry_after_wins_when_larger(ledger: Ledger, clock: Clock):
    version = ready(ledger, make_watch(), "a.csv")
    ledger.claim_next()
    waiting = ledger.finish(version.id, kind="retry", status=429, retry_after=120.0)
    assert waiting.next_attempt_at == clock.now + 120.0


def test_giving_up_after_give_up_after_since_the_first_failure(
    ledger: Ledger, clock: Clock
):
    version = ready(ledger, make_watch(), "a.csv")
    first_failure = clock.now
    ledger.claim_next()
    ledger.finish(version.id, kind="retry", status=502)
    while True:
        clock.advance(POLICY.max_delay)
        assert ledger.claim_next() is not None
        result = ledger.finish(version.id, kind="retry", status=502, error="gateway")
        if result.state != "retry_wait":
            break
        assert result.first_failure_at == first_failure
    assert result.state == "failed" and "gave up after 1h" in result.last_error
    assert clock.now - first_failure >= POLICY.give_up_after


def test_backoff_is_reproducible_with_an_injected_rng():
    policy = RetryPolicy(1.0, 8.0, 60.0)
    delays = [policy.delay(n, None, random.Random(7)) for n in range(1, 7)]
    assert delays == [policy.delay(n, None, random.Random(7)) for n in range(1, 7)]
    caps = [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    assert all(0.0 <= d <= cap for d, cap in zip(delays, caps, strict=True))
    assert policy.gave_up(0.0, 60.0) and not policy.gave_up(0.0, 59.9)


def test_blocked_marks_the_watch_and_probes_later(ledger: Ledger, clock: Clock):
    watch = make_watch()
    first = ready(ledger, watch, "a.csv")
    ledger.claim_next()
    blocked = ledger.finish(first.id, kind="blocked", status=401, error="bad key")
    ready(ledger, watch, "b.csv", mtime_ns=2)
    assert blocked.state == "blocked"
    assert blocked.next_attempt_at == clock.now + 300.0
    mark = ledger.blocked_watches()["acme"]
    assert (mark.status, mark.reason, mark.version_id) == (401, "bad key", first.id)
    assert ledger.claim_next() is None  # the rest of the task waits behind it

    assert ledger.unblock("acme") == 1
    assert ledger.blocked_watches() == {}
    # Replace mode: the probe takes the newest and supersedes the blocked one.
    probe = ledger.claim_next()
    assert probe is not None and probe.path.endswith("b.csv")
    assert ledger.get(first.id).state == "superseded"
    ledger.finish(probe.id, kind="blocked", status=403)
    assert ledger.claim_next(clock.now + 299.0) is None
    assert ledger.claim_next(clock.now + 300.0).id == probe.id
    ledger.finish(probe.id, kind="success")
    assert ledger.blocked_watches() == {}


@pytest.mark.parametrize(
    ("mode", "status", "state"),
    [
        ("append", None, "in_doubt"),
        ("append", 503, "retry_wait"),
        ("replace", None, "retry_wait"),
    ],
)
def test_no_answer_after_the_whole_body_is_in_doubt_only_for_append(
    ledger: Ledger, mode: str, status: int | None, state: str
):
    version = ready(ledger, make_watch(mode=mode), "a.csv")
    ledger.claim_next()
    ledger.mark_body_sent(version.id)
    result = ledger.finish(
        version.id, kind="retry", status=status, body_complete=True, error="timeout"
    )
    assert result.state == state


def test_finish_judges_by_the_outcome_not_the_body_sent_mark(ledger: Ledger):
    # The mark is made just before the final piece of the body; a live
    # failure that then reports an incomplete body wrote nothing at the hub.
    version = ready(ledger, make_watch(mode="append"), "a.csv")
    ledger.claim_next()
    ledger.mark_body_sent(version.id)
    result = ledger.finish(version.id, kind="retry", body_complete=False, error="cut")
    assert result.state == "retry_wait"
    [attempt] = ledger.attempts(version.id)
    assert attempt.body_complete  # the mark stays on record


def test_append_cut_off_mid_body_is_retried(ledger: Ledger):
    version = ready(ledger, make_watch(mode="append"), "a.csv")
    ledger.claim_next()
    result = ledger.finish(version.id, kind="retry", bytes_sent=10, error="reset")
    assert result.state == "retry_wait"


def test_unknown_outcome_kinds_are_a_programming_error(ledger: Ledger):
    with pytest.raises(ValueError, match="kind must be"):
        ledger.finish(1, kind="maybe")


# --- recovery -----------------------------------------------------------------


def test_recover_requeues_replace_and_holds_append_with_a_sent_body(ledger: Ledger):
    replace = ready(ledger, make_watch("r", TASK_A), "r.csv")
    sent = ready(ledger, make_watch("a", TASK_B, "append"), "sent.csv")
    ledger.claim_next()
    ledger.claim_next()
    ledger.mark_body_sent(replace.id)
    ledger.mark_body_sent(sent.id)
    assert ledger.recover() == {"ready": 1, "in_doubt": 1, "failed": 0}

    assert ledger.get(replace.id).state == "ready"
    doubt = ledger.get(sent.id)
    assert doubt.state == "in_doubt" and f"forget {sent.id}" in doubt.note
    assert [a.outcome for a in ledger.attempts(sent.id)] == ["interrupted"]
    assert ledger.claim_next().id == replace.id
    assert ledger.claim_next() is None  # in doubt: held for the operator


def test_recover_requeues_append_when_the_body_was_not_all_sent(ledger: Ledger):
    version = ready(ledger, make_watch(mode="append"), "a.csv")
    ledger.claim_next()
    ledger.recover()
    assert ledger.get(version.id).state == "ready"
    assert ledger.get(version.id).attempts == 1


# --- per-task order, coalescing, dedupe --------------------------------------


def test_one_task_in_ready_order_then_mtime_then_name(ledger: Ledger, clock: Clock):
    watch = make_watch(mode="append")
    late = ready(ledger, watch, "a.csv", mtime_ns=1)
    clock.advance(1)
    b = ready(ledger, watch, "b.csv", mtime_ns=5)
    a = ready(ledger, watch, "a2.csv", mtime_ns=5)
    c = ready(ledger, watch, "c.csv", mtime_ns=3)
    order = []
    while (claimed := ledger.claim_next()) is not None:
        order.append(claimed.id)
        assert ledger.claim_next() is None  # one upload per task at a time
        ledger.finish(claimed.id, kind="success")
    assert order == [late.id, c.id, a.id, b.id]


def test_two_watches_on_one_task_share_its_order(ledger: Ledger, clock: Clock):
    first = ready(ledger, make_watch("one", mode="append"), "x.csv")
    clock.advance(1)
    second = ready(ledger, make_watch("two", mode="append", path=Path("/b")), "x.csv")
    other = ready(ledger, make_watch("three", TASK_B), "y.csv")
    assert ledger.claim_next().id == first.id
    assert ledger.claim_next().id == other.id  # another task runs in parallel
    assert ledger.claim_next() is None
    ledger.finish(first.id, kind="success")
    assert ledger.claim_next().id == second.id


def test_a_retrying_head_holds_its_task_but_not_others(ledger: Ledger, clock: Clock):
    watch = make_watch(mode="append")
    head = ready(ledger, watch, "a.csv")
    ready(ledger, watch, "b.csv", mtime_ns=2)
    other = ready(ledger, make_watch("o", TASK_B), "c.csv")
    ledger.claim_next()
    ledger.finish(head.id, kind="retry", retry_after=60.0)
    assert ledger.claim_next().id == other.id
    assert ledger.claim_next() is None
    assert ledger.claim_next(clock.now + 60.0).id == head.id


def test_skip_tasks_and_next_due_at(ledger: Ledger, clock: Clock):
    a = ready(ledger, make_watch(), "a.csv")
    assert ledger.next_due_at({TASK_A}) is None
    assert ledger.claim_next(skip_tasks={TASK_A}) is None
    assert ledger.next_due_at() == a.ready_at
    assert ledger.claim_next(skip_tasks={TASK_B}).id == a.id


def test_replace_claims_the_newest_and_supersedes_the_rest(
    ledger: Ledger, clock: Clock
):
    watch = make_watch()
    older = [ready(ledger, watch, f"{n}.csv", mtime_ns=n) for n in range(3)]
    newest = ready(ledger, watch, "9.csv", mtime_ns=9)
    claimed = ledger.claim_next()
    assert claimed.id == newest.id
    for version in older:
        gone = ledger.get(version.id)
        assert gone.state == "superseded" and f"#{newest.id}" in gone.note


def test_append_never_coalesces(ledger: Ledger):
    watch = make_watch(mode="append")
    first = ready(ledger, watch, "a.csv")
    ready(ledger, watch, "b.csv", mtime_ns=2)
    assert ledger.claim_next().id == first.id


def finish_with(ledger: Ledger, watch, name: str, sha: str, size: int = 100):
    version = ready(ledger, watch, name, size=size)
    claimed = ledger.claim_next(skip_tasks={TASK_A, TASK_B} - {watch.task_id})
    assert claimed.id == version.id
    return ledger.finish(version.id, kind="success", sha256=sha)


def test_append_skips_content_already_appended(ledger: Ledger):
    watch = make_watch(mode="append")
    a = finish_with(ledger, watch, "1.csv", "A")
    finish_with(ledger, watch, "2.csv", "B")
    again = ready(ledger, watch, "3.csv")
    assert ledger.needs_prehash(again)
    assert ledger.duplicate_of(again, "A").id == a.id
    assert ledger.duplicate_of(again, "C") is None
    skipped = ledger.mark_skipped(again.id, duplicate=a, sha256="A")
    assert skipped.state == "skipped" and f"duplicate of #{a.id}" in skipped.note


def test_replace_skips_only_the_last_successes_content(ledger: Ledger):
    watch = make_watch()
    a = finish_with(ledger, watch, "1.csv", "A")
    same = ready(ledger, watch, "2.csv")
    assert ledger.duplicate_of(same, "A").id == a.id
    ledger.mark_skipped(same.id, duplicate=a, sha256="A")
    finish_with(ledger, watch, "3.csv", "B")
    a_again = ready(ledger, watch, "4.csv")
    assert ledger.duplicate_of(a_again, "A") is None  # A, B, A uploads A again


def test_dedupe_is_per_task(ledger: Ledger):
    finish_with(ledger, make_watch(mode="append"), "1.csv", "A")
    elsewhere = ready(ledger, make_watch("b", TASK_B, "append"), "1.csv")
    assert not ledger.needs_prehash(elsewhere)
    assert ledger.duplicate_of(elsewhere, "A") is None


def test_prehash_only_when_an_earlier_success_had_the_same_size(ledger: Ledger):
    watch = make_watch(mode="append")
    first = ready(ledger, watch, "1.csv", size=10)
    assert not ledger.needs_prehash(first)
    ledger.claim_next()
    ledger.finish(first.id, kind="success", sha256="A")
    assert not ledger.needs_prehash(ready(ledger, watch, "2.csv", size=11))
    assert ledger.needs_prehash(ready(ledger, watch, "3.csv", size=10))

    replace = make_watch("r", TASK_B)
    finish_with(ledger, replace, "1.csv", "X", size=10)
    finish_with(ledger, replace, "2.csv", "Y", size=20)
    assert not ledger.needs_prehash(ready(ledger, replace, "3.csv", size=10))
    assert ledger.needs_prehash(ready(ledger, replace, "4.csv", size=20))


# --- the operator's commands ----------------------------------------------------


def in_doubt(ledger: Ledger, watch, name: str):
    version = ready(ledger, watch, name)
    assert ledger.claim_next().id == version.id
    ledger.mark_body_sent(version.id)
    return ledger.finish(
        version.id, kind="retry", body_complete=True, error="no answer"
    )


def test_retry_requeues_failed_and_in_doubt_at_the_back(ledger: Ledger, clock: Clock):
    append = make_watch("a", TASK_A, "append")
    doubt = in_doubt(ledger, append, "1.csv")
    fail = ready(ledger, make_watch("b", TASK_B), "2.csv")
    ledger.claim_next()
    ledger.finish(fail.id, kind="rejected", status=400)
    clock.advance(10)
    later = ready(ledger, append, "3.csv")

    clock.advance(10)
    requeued = ledger.retry(failed=True, in_doubt=True)
    assert {v.id for v in requeued} == {doubt.id, fail.id}
    assert all(v.state == "ready" and v.ready_at == clock.now for v in requeued)
    assert ledger.claim_next().id == later.id  # waited less, goes first


def test_retry_by_id_and_watch_filter(ledger: Ledger):
    a = in_doubt(ledger, make_watch("a", TASK_A, "append"), "1.csv")
    b = in_doubt(ledger, make_watch("b", TASK_B, "append"), "1.csv")
    assert [v.id for v in ledger.retry(in_doubt=True, watch="b")] == [b.id]
    assert ledger.get(a.id).state == "in_doubt"
    assert [v.id for v in ledger.retry([a.id])] == [a.id]


def test_retry_is_all_or_nothing(ledger: Ledger):
    doubt = in_doubt(ledger, make_watch(mode="append"), "1.csv")
    waiting = ready(ledger, make_watch("b", TASK_B), "x.csv")
    with pytest.raises(IllegalTransition, match="is ready"):
        ledger.retry([doubt.id, waiting.id])
    assert ledger.get(doubt.id).state == "in_doubt"


def test_retry_makes_a_waiting_version_due_now_in_place(ledger: Ledger, clock: Clock):
    version = ready(ledger, make_watch(), "a.csv")
    ledger.claim_next()
    ledger.finish(version.id, kind="retry", retry_after=3600.0)
    [again] = ledger.retry([version.id])
    assert again.ready_at == version.ready_at and again.next_attempt_at is None
    assert ledger.claim_next().id == version.id


def test_forget_closes_an_in_doubt_version_for_good(ledger: Ledger):
    watch = make_watch(mode="append")
    doubt = in_doubt(ledger, watch, "1.csv")
    [gone] = ledger.forget([doubt.id])
    assert gone.state == "forgotten"
    again, created = ledger.record_ready(
        watch, doubt.path, doubt.size, doubt.mtime_ns, 0, doubt.inode
    )
    assert not created and again.state == "forgotten"
    assert ledger.claim_next() is None
    with pytest.raises(IllegalTransition, match="is forgotten"):
        ledger.retry([doubt.id])
    failed = ready(ledger, make_watch("b", TASK_B), "x.csv")
    with pytest.raises(IllegalTransition, match="is ready"):
        ledger.forget([failed.id])


# --- retention --------------------------------------------------------------------


DAY = 86400.0


def test_prune_keeps_the_last_success_per_task_and_kept_files(
    ledger: Ledger, clock: Clock, tmp_path: Path
):
    watch = make_watch(mode="append", path=tmp_path)
    old = finish_with(ledger, watch, "old.csv", "A")
    kept_file = tmp_path / "kept.csv"
    kept_file.write_text("x")
    st = kept_file.stat()
    kept, _ = ledger.record_ready(
        watch, kept_file, st.st_size, st.st_mtime_ns, 0, st.st_ino
    )
    ledger.claim_next()
    ledger.finish(kept.id, kind="success", sha256="K")
    ledger.set_disposition(kept.id, "kept")
    gone = finish_with(ledger, watch, "gone.csv", "G")
    ledger.set_disposition(gone.id, "kept")  # kept, but the file is not there
    last = finish_with(ledger, watch, "last.csv", "Z")
    skipped = ready(ledger, watch, "dup.csv")
    ledger.mark_skipped(skipped.id, reason="duplicate")
    failed = ready(ledger, watch, "bad.csv")
    ledger.mark_failed(failed.id, "empty")
    ledger.note_detected(watch, tmp_path / "stale.csv", 1, 1, 1, 1)

    assert ledger.prune(90 * DAY) == 0  # nothing is old yet
    clock.advance(91 * DAY)
    young = finish_with(ledger, watch, "young.csv", "Y")
    assert ledger.prune(90 * DAY) == 5  # old, gone, last, skipped, stale
    left = {v.id for v in ledger.history(limit=None)}
    assert left == {kept.id, failed.id, young.id}
    assert ledger.attempts(old.id) == []
    assert last.id not in left  # no longer the last success: young is


def test_prune_keeps_the_last_success_even_when_old(ledger: Ledger, clock: Clock):
    last = finish_with(ledger, make_watch(), "a.csv", "A")
    clock.advance(100 * DAY)
    assert ledger.prune(90 * DAY) == 0
    assert ledger.get(last.id).state == "done"


# --- concurrency and durability settings ----------------------------------------


def test_worker_threads_share_one_ledger(ledger: Ledger):
    watches = [
        make_watch(f"w{n}", f"{n:08d}-0000-4000-8000-000000000000") for n in range(8)
    ]
    errors: list[BaseException] = []

    def work(watch) -> None:
        try:
            for n in range(25):
                ready(ledger, watch, f"{n}.csv", mtime_ns=n)
                claimed = ledger.claim_next(skip_tasks=set())
                if claimed is not None:
                    ledger.finish(claimed.id, kind="success")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(w,)) for w in watches]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    while (claimed := ledger.claim_next()) is not None:
        ledger.finish(claimed.id, kind="success")
    counts = {s.watch: s.counts for s in ledger.summary()}
    assert sum(sum(c.values()) for c in counts.values()) == 200
    assert all(set(c) <= {"done", "superseded"} for c in counts.values())


def test_guarding_commits_are_synchronous_full(ledger: Ledger):
    def sync_level() -> int:
        return ledger.db.conn.execute("PRAGMA synchronous").fetchone()[0]

    version = ready(ledger, make_watch(), "a.csv")
    assert sync_level() == 1  # NORMAL
    ledger.claim_next()
    assert sync_level() == 1  # NORMAL: made durable by the body-sent mark
    ledger.mark_body_sent(version.id)
    assert sync_level() == 2  # FULL: before the last piece of the body leaves
    ledger.note_detected(make_watch(), "/srv/drop/b.csv", 1, 1, 1, 1)
    assert sync_level() == 1
    ledger.finish(version.id, kind="success")
    assert sync_level() == 2  # FULL: done before the file is moved


def test_a_failed_write_rolls_back_everything_in_its_transaction(ledger: Ledger):
    version = ready(ledger, make_watch(), "a.csv")
    with pytest.raises(sqlite3.IntegrityError), ledger._write():
        ledger.db["attempts"].insert({"version_id": version.id, "started_at": 1.0})
        ledger.db.execute("UPDATE versions SET state = 'bogus'")
    assert ledger.attempts(version.id) == []
    assert ledger.get(version.id).state == "ready"


def test_known_identities_lists_every_version_past_settling(ledger: Ledger):
    watch = make_watch()
    versions = [ready(ledger, watch, f"{n}.csv", size=n) for n in range(5)]
    ledger.note_detected(watch, watch.path / "settling.csv", 1, 1, 1, 1)
    assert ledger.known_identities("acme") == {
        (v.path, v.size, v.mtime_ns, v.inode) for v in versions
    }
    assert ledger.known_identities("other") == set()


# --- what the dispatcher and the watcher add ------------------------------------


@pytest.mark.parametrize(
    ("mode", "state"), [("append", "in_doubt"), ("replace", "done")]
)
def test_a_success_whose_file_changed_meanwhile(ledger: Ledger, mode: str, state: str):
    version = ready(ledger, make_watch(mode=mode), "a.csv")
    ledger.claim_next()
    result = ledger.finish(
        version.id, kind="success", status=200, rows=3, doubt="changed while sent"
    )
    assert result.state == state
    if state == "in_doubt":
        assert "changed while sent" in (result.note or "")


def test_a_claimed_version_whose_file_changed_is_superseded(ledger: Ledger):
    version = ready(ledger, make_watch(), "a.csv")
    ledger.claim_next()
    result = ledger.mark_superseded(version.id, "the file changed before upload")
    assert result.state == "superseded"
    assert ledger.attempts(version.id) == []


def test_release_puts_a_claimed_version_back_at_the_head(ledger: Ledger):
    watch = make_watch(mode="append")
    first = ready(ledger, watch, "a.csv", mtime_ns=1)
    ready(ledger, watch, "b.csv", mtime_ns=2)
    assert ledger.claim_next().id == first.id
    assert ledger.release(first.id, "internal error").state == "ready"
    assert ledger.claim_next().id == first.id


def test_claims_only_for_the_watches_given(ledger: Ledger):
    gone = make_watch(name="gone", task_id=TASK_A)
    kept = make_watch(name="kept", task_id=TASK_B, path=Path("/srv/other"))
    ready(ledger, gone, "a.csv")
    mine = ready(ledger, kept, "b.csv")
    assert ledger.next_due_at(watches={"kept"}) is not None
    assert ledger.claim_next(watches={"kept"}).id == mine.id
    assert ledger.claim_next(watches={"kept"}) is None


def test_refused_files_are_failed_once_with_their_reason(ledger: Ledger):
    watch = make_watch()
    args = (watch, watch.path / "link.csv", 0, 5, 5, 77, "a symbolic link")
    version, created = ledger.record_refused(*args)
    assert created and version.state == "failed"
    assert version.last_error == "a symbolic link"
    assert version.disposition == "pending"
    again, created = ledger.record_refused(*args)
    assert not created and again.id == version.id
    assert [v.id for v in ledger.pending_dispositions()] == [version.id]
    ledger.set_disposition(version.id, "failed_folder", "/srv/drop/failed/link.csv")
    assert ledger.pending_dispositions() == []


def test_counts_by_state(ledger: Ledger):
    watch = make_watch(mode="append")
    ready(ledger, watch, "a.csv", mtime_ns=1)
    ready(ledger, watch, "b.csv", mtime_ns=2)
    ledger.claim_next()
    assert ledger.counts() == {"ready": 1, "uploading": 1}


def test_pending_moves_of_other_watches_or_waiting_a_retry_do_not_crowd_out(
    ledger: Ledger,
):
    gone = make_watch(name="gone", task_id=TASK_A)
    kept = make_watch(name="kept", task_id=TASK_B, path=Path("/srv/other"))
    for n in range(3):
        ledger.record_refused(gone, f"/srv/drop/{n}.csv", 1, n, n, 100 + n, "why")
    stuck, _ = ledger.record_refused(kept, "/srv/other/stuck.csv", 1, 1, 1, 7, "why")
    mine, _ = ledger.record_refused(kept, "/srv/other/mine.csv", 1, 1, 1, 8, "why")
    assert len(ledger.pending_dispositions(limit=2)) == 2
    found = ledger.pending_dispositions(watches=["kept"], skip_ids=[stuck.id], limit=1)
    assert [v.id for v in found] == [mine.id]


def test_recover_fails_an_interrupted_push_outside_every_watch(ledger: Ledger):
    """No daemon uploads a "(push)" version: queued again, it would hold its
    task's queue for good; it is failed, its file left where it is."""
    from hubwatchd.ledger import ADHOC_WATCH

    adhoc = make_watch(name=ADHOC_WATCH, mode="replace")
    pushed = ready(ledger, adhoc, "by-hand.csv")
    ledger.claim(pushed.id)
    assert ledger.recover() == {"ready": 0, "in_doubt": 0, "failed": 1}
    closed = ledger.get(pushed.id)
    assert closed.state == "failed" and closed.disposition == "kept"
    assert "push the file again" in closed.last_error
    watch = make_watch(mode="replace")
    queued = ready(ledger, watch, "nightly.csv", mtime_ns=5)
    assert ledger.claim_next(watches={watch.name}).id == queued.id


def test_claim_next_for_one_task_only_and_never_beside_an_upload(ledger: Ledger):
    a = make_watch(name="a", task_id=TASK_A, mode="append")
    b = make_watch(name="b", task_id=TASK_B, mode="append", path=Path("/srv/b"))
    ready(ledger, a, "a1.csv", mtime_ns=1)
    b1 = ready(ledger, b, "b1.csv", mtime_ns=2)
    b2 = ready(ledger, b, "b2.csv", mtime_ns=3)
    assert ledger.claim_next(only_task=TASK_B).id == b1.id
    assert ledger.claim_next(only_task=TASK_B) is None  # b1 is uploading
    ledger.finish(b1.id, kind="success", status=200)
    assert ledger.claim_next(only_task=TASK_B).id == b2.id


def test_state_lock_holder_is_the_running_daemon_only(tmp_path: Path):
    # A running daemon's pid is shown: see test_daemon.py. Here, what is not.
    state = tmp_path / "state"
    assert StateLock.holder(state) is None  # no lock file yet
    with StateLock(state):
        pass  # leaves the file, with a pid, behind
    (state / "hubwatchd.lock").write_text("999999999\n")  # no such process
    assert StateLock.holder(state) is None
    (state / "hubwatchd.lock").write_text("not a pid\n")
    assert StateLock.holder(state) is None
