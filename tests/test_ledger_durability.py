"""The ledger under arbitrary event sequences, and under SIGKILL."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ledgerkit import TASK_A, TASK_B, Clock, make_watch, open_ledger

from hubwatchd.ledger import Ledger, Version

WATCHES = [
    make_watch("r1", TASK_A, "replace", Path("/r1")),
    make_watch("r2", TASK_A, "replace", Path("/r2")),  # shares r1's task
    make_watch("a1", TASK_B, "append", Path("/a1")),
]
KINDS = ("success", "success", "retry", "rejected", "blocked")

events = st.lists(
    st.one_of(
        st.tuples(st.just("ready"), st.integers(0, 2), st.integers(0, 3)),
        st.tuples(st.just("batch"), st.integers(0, 2), st.integers(2, 4)),
        st.tuples(st.just("claim"), st.just(0), st.just(0)),
        st.tuples(st.just("claim"), st.just(0), st.just(0)),
        st.tuples(st.just("finish"), st.integers(0, 4), st.integers(0, 3)),
        st.tuples(st.just("recover"), st.just(0), st.just(0)),
        st.tuples(st.just("retry"), st.just(0), st.just(0)),
        st.tuples(st.just("wait"), st.integers(1, 4000), st.just(0)),
    ),
    max_size=60,
)


class Model:
    """Runs events against a ledger and checks the invariants after each."""

    def __init__(self, ledger: Ledger, clock: Clock) -> None:
        self.ledger = ledger
        self.clock = clock
        self.closed: set[int] = set()
        self.last_claim: dict[str, tuple] = {}
        self.files = 0

    def ready(self, watch_index: int, mtime: int) -> None:
        watch = WATCHES[watch_index]
        self.files += 1
        path = watch.path / f"{self.files}.csv"
        self.ledger.record_ready(watch, path, 10, mtime, mtime, self.files)

    def claim(self) -> None:
        claimed = self.ledger.claim_next()
        if claimed is None:
            return
        assert claimed.id not in self.closed, "a closed version was claimed again"
        last = self.last_claim.get(claimed.task_id)
        assert last is None or claimed.order_key >= last, "per-task order broken"
        self.last_claim[claimed.task_id] = claimed.order_key
        uploading = self.ledger.history(states=["uploading"], limit=None)
        tasks = [v.task_id for v in uploading]
        assert len(tasks) == len(set(tasks)), "two uploads for one task"

    def finish(self, kind_index: int, flags: int) -> None:
        uploading = self.ledger.history(states=["uploading"], limit=None)
        if not uploading:
            return
        version = uploading[flags % len(uploading)]
        if flags & 1:
            self.ledger.mark_body_sent(version.id)
        status = None if flags & 2 else 503
        result = self.ledger.finish(version.id, kind=KINDS[kind_index], status=status)
        self.note_closed(result)

    def note_closed(self, version: Version) -> None:
        if version.state in ("done", "skipped", "superseded", "forgotten"):
            self.closed.add(version.id)

    def run(self, event: tuple[str, int, int]) -> None:
        name, a, b = event
        if name not in ("ready", "batch"):  # ready at one instant: mtime decides
            self.clock.advance(1)
        if name == "ready":
            self.ready(a, b)
        elif name == "batch":
            for mtime in range(b, 0, -1):
                self.ready(a, mtime)
        elif name == "claim":
            self.claim()
        elif name == "finish":
            self.finish(a, b)
        elif name == "recover":
            self.ledger.recover()
        elif name == "retry":
            self.ledger.retry(failed=True, in_doubt=True)
        else:
            self.clock.advance(a)
        for version in self.ledger.history(limit=None):
            self.note_closed(version)
            if version.id in self.closed:
                assert version.state in ("done", "skipped", "superseded", "forgotten")


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(events)
def test_no_claim_after_done_and_per_task_order_hold(sequence):
    with tempfile.TemporaryDirectory() as tmp:
        clock = Clock()
        with open_ledger(Path(tmp), clock) as ledger:
            model = Model(ledger, clock)
            for event in sequence:
                model.run(event)
            # Drain: everything left either finishes or stays held.
            for _ in range(200):
                model.clock.advance(10_000)
                model.claim()
                model.finish(0, 0)


CHILD = textwrap.dedent("""
    import sys
    from pathlib import Path
    from hubwatchd.config import Secret, WatchConfig
    from hubwatchd.ledger import Ledger

    tasks = ["%08d-0000-4000-8000-000000000000" % n for n in range(4)]
    watches = [
        WatchConfig(name=f"w{n}", path=Path(f"/w{n}"), task_id=task,
                    api_key=Secret("k", "api_key"), mode="append")
        for n, task in enumerate(tasks)
    ]
    ledger = Ledger.open(Path(sys.argv[1]))
    out = sys.stdout
    n = 0
    while True:
        n += 1
        watch = watches[n % 4]
        version, _ = ledger.record_ready(watch, f"/w/{n}.csv", n, n, n, n)
        out.write(f"{version.id} ready\\n"); out.flush()
        claimed = ledger.claim_next()
        if claimed is None:
            continue
        out.write(f"{claimed.id} uploading\\n"); out.flush()
        ledger.mark_body_sent(claimed.id)
        done = ledger.finish(claimed.id, kind="success", rows=n, sha256=str(n))
        out.write(f"{done.id} done\\n"); out.flush()
""")
ORDER = {"ready": 0, "uploading": 1, "done": 2}


def test_sigkill_mid_transitions_loses_nothing_acknowledged(tmp_path: Path):
    state = tmp_path / "state"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(state)],
        stdout=subprocess.PIPE,
        text=True,
    )
    acknowledged: dict[int, str] = {}
    try:
        assert child.stdout is not None
        for line in child.stdout:
            version_id, state_name = line.split()
            acknowledged[int(version_id)] = state_name
            if len(acknowledged) >= 3000:
                os.kill(child.pid, signal.SIGKILL)
                break
        # Whatever the child wrote before it died was committed first.
        for line in child.stdout:
            version_id, state_name = line.split()
            acknowledged[int(version_id)] = state_name
    finally:
        child.kill()
        child.wait()
        if child.stdout is not None:
            child.stdout.close()
    assert child.returncode == -signal.SIGKILL

    conn = sqlite3.connect(state / "ledger.db")
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        rows = dict(conn.execute("SELECT id, state FROM versions").fetchall())
    finally:
        conn.close()
    lost = [
        (version_id, acked, rows.get(version_id))
        for version_id, acked in acknowledged.items()
        if rows.get(version_id) not in ORDER or ORDER[rows[version_id]] < ORDER[acked]
    ]
    assert lost == []
    with Ledger.open(state) as reopened:  # and it is usable afterwards
        reopened.recover()
        assert reopened.history(states=["uploading"]) == []
