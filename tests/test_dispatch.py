"""The dispatcher with a real ledger and real files, and a stand-in hub client
whose behaviour each test chooses: what an end-to-end run cannot pin down."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from daemonkit import poll
from watchkit import make_watch

from hubwatchd import files
from hubwatchd.config import Config, DaemonConfig, HubConfig, RetryConfig
from hubwatchd.dispatch import Dispatcher
from hubwatchd.hub import Outcome
from hubwatchd.ledger import Ledger, Version
from hubwatchd.retry import RetryPolicy


class FakeHub:
    """Answers each upload with `answer(path, kwargs)`; records the calls."""

    def __init__(self, answer: Callable[[Path, dict[str, Any]], Outcome]) -> None:
        self.answer = answer
        self.calls: list[Path] = []

    def upload(self, source: Any, **kwargs: Any) -> Outcome:
        # The dispatcher hands over the file it opened and checked.
        path = Path(source.name)
        self.calls.append(path)
        return self.answer(path, kwargs)


def success(_path: Path, _kwargs: dict[str, Any]) -> Outcome:
    return Outcome("success", status=200, rows=1, body_complete=True)


class Rig:
    """A ledger, a drop folder and a dispatcher over them."""

    def __init__(self, root: Path, hub: FakeHub, mode: str = "append") -> None:
        self.folder = root / "drop"
        self.folder.mkdir(parents=True)
        self.watch = make_watch(self.folder, name="w", mode=mode)
        self.config = Config(
            source=root / "config.toml",
            hub=HubConfig(url="http://127.0.0.1:9", api_key=None),
            daemon=DaemonConfig(state_dir=root / "state", workers=2),
            retry=RetryConfig(),
            watches=(self.watch,),
        )
        self.ledger = Ledger.open(root / "state", policy=RetryPolicy(0.05, 0.1, 3600.0))
        self.dispatcher = Dispatcher(self.config, self.ledger, hub)

    def drop(self, name: str, text: str = "a,b\n1,2\n") -> Version:
        path = self.folder / name
        path.write_text(text)
        st = path.stat()
        version, _ = self.ledger.record_ready(
            self.watch, path, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino
        )
        self.dispatcher.wake()
        return version

    def state(self, version: Version) -> Version:
        found = self.ledger.get(version.id)
        assert found is not None
        return found


@pytest.fixture
def make_rig(tmp_path: Path) -> Iterator[Callable[..., Rig]]:
    rigs: list[Rig] = []

    def factory(hub: FakeHub, mode: str = "append") -> Rig:
        rig = Rig(tmp_path / f"rig-{len(rigs)}", hub, mode)
        rigs.append(rig)
        return rig

    yield factory
    for rig in rigs:
        rig.dispatcher.stop(grace=5.0)
        rig.ledger.close()


def test_only_the_scheduler_thread_moves_files(make_rig, monkeypatch):
    movers: list[str] = []
    real_archive = files.archive

    def archive(watch, path, when=None):
        movers.append(threading.current_thread().name)
        return real_archive(watch, path, when)

    monkeypatch.setattr(files, "archive", archive)
    rig = make_rig(FakeHub(success))
    rig.dispatcher.start()
    versions = [rig.drop(f"f{n}.csv", f"n\n{n}\n") for n in range(5)]

    poll(
        lambda: all(rig.state(v).disposition == "archived" for v in versions),
        what="all archived",
    )
    assert movers == ["hubwatchd-dispatch"] * 5
    assert list(rig.folder.glob("*.csv")) == []


def test_a_file_swapped_for_a_link_after_it_settled_is_refused_not_sent(
    make_rig, tmp_path
):
    # An SFTP user can replace a settled file with a link to any file: it is
    # never opened through the link, refused once, and the failed folder
    # says why.
    hub = FakeHub(success)
    rig = make_rig(hub)
    version = rig.drop("swapped.csv")
    secret = tmp_path / "secret.csv"
    secret.write_text("not,theirs\n1,2\n")
    (rig.folder / "swapped.csv").unlink()
    (rig.folder / "swapped.csv").symlink_to(secret)
    rig.dispatcher.start()

    poll(lambda: rig.state(version).disposition == "failed_folder", what="failed")
    assert rig.state(version).state == "failed"
    assert "cannot open" in rig.state(version).last_error
    assert hub.calls == []
    assert (rig.folder / ".hubwatchd-failed" / "swapped.csv.reason.txt").exists()


def test_a_file_renamed_over_after_it_settled_is_not_sent_in_its_place(make_rig):
    # Another file of the same size renamed over it: the descriptor's inode
    # tells them apart; the newcomer gets its own version when it settles.
    hub = FakeHub(success)
    rig = make_rig(hub)
    version = rig.drop("daily.csv", "a,b\n1,2\n")
    newcomer = rig.folder / "daily.csv.tmp"
    newcomer.write_text("a,b\n9,9\n")
    os.rename(newcomer, rig.folder / "daily.csv")
    rig.dispatcher.start()

    poll(lambda: rig.state(version).state == "superseded", what="superseded")
    assert hub.calls == []


def test_stop_cancels_a_body_still_streaming_and_records_it(make_rig):
    started = threading.Event()

    def streaming(_path: Path, kwargs: dict[str, Any]) -> Outcome:
        started.set()
        kwargs["cancel"].wait(30)  # the client checks cancel between chunks
        return Outcome("retry", error="cancelled: shutting down", bytes_sent=10)

    rig = make_rig(FakeHub(streaming))
    rig.dispatcher.start()
    version = rig.drop("big.csv")
    assert started.wait(10)

    abandoned = rig.dispatcher.stop(grace=0.1)

    assert abandoned == []
    assert rig.state(version).state == "retry_wait"


def test_stop_abandons_an_upload_waiting_for_an_answer(make_rig):
    # httpx cannot be interrupted while it waits for the answer: stop must
    # not wait for it (answer_timeout may be 30 minutes), nor may the ledger
    # row be touched; recover() decides at the next start.
    started, answer = threading.Event(), threading.Event()

    def waiting(_path: Path, kwargs: dict[str, Any]) -> Outcome:
        kwargs["on_body_sent"]()
        started.set()
        answer.wait(30)  # ignores cancel, as a blocked socket read does
        return Outcome("success", status=200, rows=1, body_complete=True)

    rig = make_rig(FakeHub(waiting))
    rig.dispatcher.start()
    version = rig.drop("slow.csv")
    assert started.wait(10)

    try:
        abandoned = rig.dispatcher.stop(grace=0.1)
        assert abandoned == [str(rig.folder / "slow.csv")]
        assert rig.state(version).state == "uploading"
        assert rig.ledger.recover()["in_doubt"] == 1
    finally:
        answer.set()
        poll(lambda: rig.dispatcher.in_flight() == 0, what="the thread's end")


def test_what_finishes_during_the_grace_is_archived_before_stop_returns(make_rig):
    started, answer = threading.Event(), threading.Event()

    def slow(path: Path, kwargs: dict[str, Any]) -> Outcome:
        started.set()
        answer.wait(30)
        return success(path, kwargs)

    rig = make_rig(FakeHub(slow))
    rig.dispatcher.start()
    version = rig.drop("a.csv")
    assert started.wait(10)

    threading.Timer(0.2, answer.set).start()
    assert rig.dispatcher.stop(grace=10.0) == []

    assert rig.state(version).state == "done"
    assert rig.state(version).disposition == "archived"
    assert not (rig.folder / "a.csv").exists()


def test_a_task_backlog_is_served_in_order_by_one_worker(make_rig):
    # Five files of one task, all due before the dispatcher starts: the
    # worker that takes the first goes on with the rest, in ready order,
    # without a scheduler pass and a new thread per file.
    threads: list[str] = []

    def answer(_path: Path, _kwargs: dict[str, Any]) -> Outcome:
        threads.append(threading.current_thread().name)
        return Outcome("success", status=200, rows=1, body_complete=True)

    hub = FakeHub(answer)
    rig = make_rig(hub)
    versions = [rig.drop(f"f{n}.csv", f"n\n{n}\n") for n in range(5)]
    rig.dispatcher.start()

    poll(lambda: all(rig.state(v).state == "done" for v in versions), what="done")
    assert hub.calls == [rig.folder / f"f{n}.csv" for n in range(5)]
    assert len(set(threads)) == 1


def test_a_refused_file_queued_again_by_hand_is_checked_again(make_rig):
    # `hubwatchd retry` on an empty file put back unchanged must not send it:
    # an empty replace would wipe the table. The settle checks run again on
    # the descriptor the upload would use.
    hub = FakeHub(success)
    rig = make_rig(hub, mode="replace")
    path = rig.folder / "empty.csv"
    path.write_text("")
    st = path.stat()
    version, _ = rig.ledger.record_refused(
        rig.watch, path, 0, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, "it is empty"
    )
    rig.ledger.set_disposition(version.id, "kept")  # as if moved back by hand
    rig.ledger.retry([version.id])
    rig.dispatcher.start()

    poll(lambda: rig.state(version).state == "failed", what="refused again")
    assert "it is empty" in rig.state(version).last_error
    assert hub.calls == []
