"""The ledger's side of `hubwatchd push`: claiming one given version."""

from __future__ import annotations

from pathlib import Path

import pytest
from ledgerkit import TASK_A, TASK_B, Clock, make_watch, open_ledger, ready

from hubwatchd.errors import IllegalTransition
from hubwatchd.ledger import Ledger


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def ledger(tmp_path: Path, clock: Clock):
    with open_ledger(tmp_path / "state", clock) as opened:
        yield opened


def test_claim_takes_exactly_that_version_with_an_attempt(ledger: Ledger, clock):
    watch = make_watch(mode="append")
    first = ready(ledger, watch, "1.csv")
    second = ready(ledger, watch, "2.csv")
    claimed = ledger.claim(second.id)
    assert (claimed.id, claimed.state, claimed.started_at) == (
        second.id,
        "uploading",
        clock.now,
    )
    [attempt] = ledger.attempts(second.id)
    assert attempt.ended_at is None and not attempt.body_complete
    assert ledger.get(first.id).state == "ready"  # an append keeps its place
    # One upload per task: the daemon waits for the task, push for nothing.
    assert ledger.claim_next() is None
    ledger.finish(second.id, kind="success", status=200, rows=1)
    assert ledger.claim_next().id == first.id


def test_claim_is_refused_for_anything_not_queued(ledger: Ledger):
    version = ready(ledger, make_watch(mode="append"), "1.csv")
    ledger.claim(version.id)
    with pytest.raises(IllegalTransition, match="is uploading"):
        ledger.claim(version.id)
    ledger.mark_body_sent(version.id)
    ledger.finish(version.id, kind="retry", body_complete=True, error="no answer")
    assert ledger.get(version.id).state == "in_doubt"
    with pytest.raises(IllegalTransition, match="is in_doubt"):
        ledger.claim(version.id)
    assert ledger.get(version.id).state == "in_doubt"
    assert len(ledger.attempts(version.id)) == 1


def test_claim_of_a_done_version_changes_nothing(ledger: Ledger):
    version = ready(ledger, make_watch(), "1.csv")
    ledger.claim(version.id)
    done = ledger.finish(version.id, kind="success", status=200)
    with pytest.raises(IllegalTransition, match="is done"):
        ledger.claim(version.id)
    assert ledger.get(version.id) == done


def test_claim_retries_its_own_retry_wait_at_once(ledger: Ledger, clock):
    version = ready(ledger, make_watch(), "1.csv")
    ledger.claim(version.id)
    waiting = ledger.finish(version.id, kind="retry", status=503, error="busy")
    assert waiting.state == "retry_wait" and waiting.next_attempt_at > clock.now
    again = ledger.claim(version.id)
    assert (again.state, again.next_attempt_at, again.attempts) == (
        "uploading",
        None,
        1,
    )
    assert [a.outcome for a in ledger.attempts(version.id)] == ["retry", None]


def test_claim_waits_for_another_upload_of_the_same_task(ledger: Ledger):
    watch = make_watch()
    busy = ready(ledger, watch, "1.csv")
    other_task = ready(ledger, make_watch("b", TASK_B), "x.csv")
    assert ledger.claim_next().id == busy.id
    pushed = ready(ledger, watch, "2.csv")
    with pytest.raises(IllegalTransition, match=f"#{busy.id}"):
        ledger.claim(pushed.id)
    assert ledger.get(pushed.id).state == "ready"
    assert ledger.claim(other_task.id).state == "uploading"


def test_a_claimed_replace_supersedes_the_older_waiting_ones(ledger: Ledger, clock):
    watch = make_watch(mode="replace")
    older = ready(ledger, watch, "old.csv")
    ledger.claim(older.id)
    ledger.finish(older.id, kind="retry", status=503)  # the daemon waits on it
    clock.advance(1)
    pushed = ready(ledger, watch, "new.csv")
    clock.advance(1)
    newer = ready(ledger, watch, "newer.csv")
    ledger.claim(pushed.id)
    gone = ledger.get(older.id)
    assert gone.state == "superseded" and f"#{pushed.id}" in gone.note
    assert gone.disposition == "pending"
    assert ledger.get(newer.id).state == "ready"  # later data still goes after
    ledger.finish(pushed.id, kind="success", status=200)
    assert ledger.claim_next().id == newer.id


def test_a_pushed_version_done_is_never_claimed_by_the_daemon(ledger: Ledger):
    watch = make_watch(task_id=TASK_A)
    version = ready(ledger, watch, "1.csv")
    ledger.claim(version.id)
    ledger.finish(version.id, kind="success", status=200, sha256="ab")
    again, created = ledger.record_ready(
        watch,
        version.path,
        version.size,
        version.mtime_ns,
        version.ctime_ns,
        version.inode,
    )
    assert (again.id, again.state, created) == (version.id, "done", False)
    assert ledger.claim_next() is None
    assert [v.id for v in ledger.pending_dispositions()] == [version.id]


def test_recover_holds_a_marked_append_whose_body_may_be_whole(ledger: Ledger):
    # The mark is made just before the final piece: after a crash it cannot
    # tell whether that piece went, so an append is held, never resent.
    version = ready(ledger, make_watch(mode="append"), "1.csv")
    ledger.claim(version.id)
    ledger.mark_body_sent(version.id)
    assert ledger.recover() == {"ready": 0, "in_doubt": 1, "failed": 0}
    assert ledger.get(version.id).state == "in_doubt"
    assert ledger.claim_next() is None
