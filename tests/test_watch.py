"""Detection end to end: real watchdog observers, real files, a real Settler."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
from structlog.testing import capture_logs
from watchkit import WAIT, Collector, make_watch, threads_now, wait_for

from hubwatchd import settle, watch
from hubwatchd.settle import Settler
from hubwatchd.watch import Watcher, filesystem_type, scan, wants_polling

SETTLE = 0.3
QUIET = SETTLE * 4  # long enough that a wrongly ready file would have shown up
ROW = b"1,alpha\n"
CSV = b"id,name\n" + ROW * 3


@pytest.fixture
def detector():
    """Start a Settler and a Watcher; stop both and check no thread is left."""
    before = threads_now()
    started = []

    def start(*watches, sink=None, known=None, **options):
        got = Collector()
        settler = Settler(got.on_ready, on_refused=got.on_refused, watches=watches)
        options.setdefault("poll_interval", 0.1)
        options.setdefault("rescan_interval", 3600.0)
        watcher = Watcher(
            watches, sink(settler) if sink else settler, known=known, **options
        )
        settler.start()
        started.append(settler)
        watcher.start()
        started.append(watcher)
        assert watcher.scanned.wait(WAIT)
        return SimpleNamespace(watcher=watcher, settler=settler, got=got)

    yield start
    for item in reversed(started):
        item.stop()
    wait_for(lambda: threads_now() <= before)


def write(path: Path, data: bytes = CSV) -> Path:
    with path.open("wb") as out:
        out.write(data)
    return path


# --- writers -------------------------------------------------------------------


def test_writer_pausing_with_the_file_open_is_waited_for(detector, tmp_path):
    d = detector(make_watch(tmp_path))
    path = tmp_path / "export.csv"
    with path.open("wb") as out:
        out.write(b"id,name\n" + ROW)
        out.flush()
        assert d.got.nothing_within(QUIET)  # the writer pauses, file still open
        out.write(ROW)
    [candidate] = d.got.take()
    assert candidate.size == len(b"id,name\n" + ROW * 2)


def test_close_and_reopen_within_settle_is_reported_once(detector, tmp_path):
    d = detector(make_watch(tmp_path))
    path = write(tmp_path / "export.csv", b"id,name\n")
    with path.open("ab") as out:
        out.write(ROW * 2)
    [candidate] = d.got.take()
    assert candidate.size == path.stat().st_size
    assert d.got.nothing_within(QUIET)


def test_append_after_ready_is_a_new_version(detector, tmp_path):
    d = detector(make_watch(tmp_path))
    path = write(tmp_path / "export.csv")
    [first] = d.got.take()
    with path.open("ab") as out:
        out.write(ROW)
    [second] = d.got.take()
    assert (first.path, second.path) == (str(path), str(path))
    assert second.size == first.size + len(ROW)


def test_temp_name_then_rename_is_ready_promptly(detector, tmp_path):
    # settle is long: only the rename rule can make it ready within WAIT.
    d = detector(make_watch(tmp_path, settle=60.0))
    temp = write(tmp_path / "export.csv.tmp")
    temp.rename(tmp_path / "export.csv")
    [candidate] = d.got.take()
    assert candidate.path == str(tmp_path / "export.csv")
    assert d.got.nothing_within(QUIET)


def test_filepart_is_ignored_until_renamed(detector, tmp_path):
    d = detector(make_watch(tmp_path))
    part = write(tmp_path / "export.csv.filepart")
    assert d.got.nothing_within(QUIET)
    part.rename(tmp_path / "export.csv")
    [candidate] = d.got.take()
    assert candidate.path == str(tmp_path / "export.csv")


def test_marker_after_file(detector, tmp_path):
    d = detector(make_watch(tmp_path, ready_marker=".done"))
    path = write(tmp_path / "export.csv")
    assert d.got.nothing_within(QUIET)
    write(tmp_path / "export.csv.done", b"")
    [candidate] = d.got.take()
    assert (candidate.path, candidate.marker) == (str(path), f"{path}.done")


def test_marker_before_file(detector, tmp_path):
    d = detector(make_watch(tmp_path, ready_marker=".done"))
    write(tmp_path / "export.csv.done", b"")
    path = write(tmp_path / "export.csv")
    [candidate] = d.got.take()
    assert (candidate.path, candidate.marker) == (str(path), f"{path}.done")


def test_preallocated_file_is_not_ready_until_filled(detector, tmp_path):
    d = detector(make_watch(tmp_path))
    path = tmp_path / "export.csv"
    size = 64 * 1024
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    os.posix_fallocate(fd, 0, size)
    os.pwrite(fd, b"id,name\n" + ROW, 0)  # Samba writes the first block ...
    os.close(fd)
    assert d.got.nothing_within(QUIET)
    body = b"id,name\n" + b"x" * (size - 9) + b"\n"
    with path.open("r+b") as out:  # ... and the rest later
        out.write(body)
    [candidate] = d.got.take()
    assert candidate.size == size


def test_truncated_to_size_file_is_not_ready_until_filled(detector, tmp_path):
    d = detector(make_watch(tmp_path))
    path = tmp_path / "export.csv"
    with path.open("wb") as out:
        out.truncate(32 * 1024)
    assert d.got.nothing_within(QUIET)
    with path.open("r+b") as out:
        out.write(b"id,name\n" + b"y" * (32 * 1024 - 9) + b"\n")
    [candidate] = d.got.take()
    assert candidate.size == 32 * 1024


def test_two_thousand_files_at_once_are_each_reported_once(detector, tmp_path):
    d = detector(make_watch(tmp_path))
    for number in range(2000):
        write(tmp_path / f"file-{number:04}.csv")
    found = d.got.take(2000, timeout=60)
    assert len({c.path for c in found}) == 2000
    assert d.got.nothing_within(QUIET)


def test_files_present_before_start_are_found(detector, tmp_path):
    for name in ("a.csv", "b.json", "c.txt"):
        write(tmp_path / name, b"[1]" if name.endswith("json") else CSV)
    d = detector(make_watch(tmp_path))
    found = d.got.take(2)
    assert sorted(Path(c.path).name for c in found) == ["a.csv", "b.json"]


def test_files_already_in_the_ledger_are_not_fed_again(detector, tmp_path):
    old = write(tmp_path / "old.csv")
    write(tmp_path / "new.csv")
    st = old.stat()
    known = {(str(old), st.st_size, st.st_mtime_ns, st.st_ino)}
    d = detector(make_watch(tmp_path), known=lambda name: known)
    [candidate] = d.got.take()
    assert candidate.path == str(tmp_path / "new.csv")
    assert d.got.nothing_within(QUIET)


def test_polling_watch_finds_and_settles_files(detector, tmp_path):
    d = detector(make_watch(tmp_path, polling=True))
    assert d.watcher.polling("w")
    path = write(tmp_path / "export.csv")
    [candidate] = d.got.take()
    assert candidate.path == str(path)


def test_symlink_fifo_and_empty_file_are_refused_with_reasons(detector, tmp_path):
    d = detector(make_watch(tmp_path))
    (tmp_path / "link.csv").symlink_to("/etc/passwd")
    os.mkfifo(tmp_path / "pipe.csv")
    write(tmp_path / "empty.csv", b"")
    reasons = dict(d.got.take_refused(3))
    assert "symbolic link" in reasons[str(tmp_path / "link.csv")]
    assert "named pipe" in reasons[str(tmp_path / "pipe.csv")]
    assert "empty" in reasons[str(tmp_path / "empty.csv")]
    assert d.got.nothing_within(QUIET)


@pytest.mark.parametrize(
    "name", ["with spaces.csv", "ünïcødé-数据.csv", "new\nline.csv", "  lead.csv"]
)
def test_unusual_names_are_handled(detector, tmp_path, name):
    d = detector(make_watch(tmp_path))
    write(tmp_path / name)
    [candidate] = d.got.take()
    assert candidate.path == str(tmp_path / name)


# --- recursion -------------------------------------------------------------------


def test_recursive_watch_sees_subfolders_but_not_archive_or_failed(detector, tmp_path):
    d = detector(make_watch(tmp_path, recursive=True))
    (tmp_path / "sub" / "deeper").mkdir(parents=True)
    for folder in (".hubwatchd-archive", ".hubwatchd-failed"):
        (tmp_path / folder).mkdir()
        write(tmp_path / folder / "old.csv")
    path = write(tmp_path / "sub" / "deeper" / "a.csv")
    [candidate] = d.got.take()
    assert candidate.path == str(path)
    assert d.got.nothing_within(QUIET)


def test_folder_moved_into_a_recursive_watch_is_scanned(detector, tmp_path):
    drop = tmp_path / "drop"
    drop.mkdir()
    outside = tmp_path / "staging"
    outside.mkdir()
    write(outside / "a.csv")
    d = detector(make_watch(drop, recursive=True))
    shutil.move(outside, drop / "batch")
    [candidate] = d.got.take()
    assert candidate.path == str(drop / "batch" / "a.csv")


def test_non_recursive_watch_ignores_subfolders(detector, tmp_path):
    (tmp_path / "sub").mkdir()
    write(tmp_path / "sub" / "early.csv")
    d = detector(make_watch(tmp_path))
    write(tmp_path / "sub" / "a.csv")
    write(tmp_path / "top.csv")
    [candidate] = d.got.take()
    assert candidate.path == str(tmp_path / "top.csv")
    assert d.got.nothing_within(QUIET)


# --- watchdog's traps -----------------------------------------------------------


class Lossy:
    """A sink that loses the events of one file, as a full inotify queue would."""

    def __init__(self, settler: Settler, lose: str) -> None:
        self.settler = settler
        self.lose = lose

    def feed(self, watch, path, kind, **kw):
        if path.endswith(self.lose) and kind != settle.SCAN:
            return
        self.settler.feed(watch, path, kind, **kw)

    def set_watches(self, watches):
        self.settler.set_watches(watches)


def test_inotify_overflow_triggers_a_rescan(detector, tmp_path):
    d = detector(make_watch(tmp_path), sink=lambda s: Lossy(s, "lost.csv"))
    write(tmp_path / "lost.csv")
    assert d.got.nothing_within(QUIET)
    scans = d.watcher.scans
    logging.getLogger("watchdog.observers.inotify_c").warning(
        "Inotify queue overflowed; filesystem events were lost"
    )
    [candidate] = d.got.take()
    assert candidate.path == str(tmp_path / "lost.csv")
    assert d.watcher.scans > scans


class Exploding:
    """A sink whose first event raises, as a bug in a handler would."""

    def __init__(self, settler: Settler) -> None:
        self.settler = settler
        self.raised = 0

    def feed(self, watch, path, kind, **kw):
        if kind != settle.SCAN and not self.raised:
            self.raised += 1
            raise RuntimeError("bug in a handler")
        self.settler.feed(watch, path, kind, **kw)

    def set_watches(self, watches):
        self.settler.set_watches(watches)


def test_handler_exception_does_not_kill_detection(detector, tmp_path):
    sinks = []
    d = detector(
        make_watch(tmp_path), sink=lambda s: sinks.append(Exploding(s)) or sinks[0]
    )
    with capture_logs() as logged:
        write(tmp_path / "first.csv")
        write(tmp_path / "second.csv")
        found = d.got.take(2)
    assert sinks[0].raised == 1
    assert {Path(c.path).name for c in found} == {"first.csv", "second.csv"}
    assert any(e["event"] == "watch.handler_failed" for e in logged)
    assert d.watcher.alive()


def test_dead_observer_is_restarted_and_its_folder_rescanned(detector, tmp_path):
    d = detector(make_watch(tmp_path), supervise_interval=3600.0)
    observer = d.watcher._observed["w"].observer
    observer.stop()
    observer.join()
    assert not d.watcher.alive()
    write(tmp_path / "while-dead.csv")
    with capture_logs() as logged:
        assert d.watcher.supervise() == ["w"]
    assert any(e["event"] == "watch.observer_dead" for e in logged)
    assert d.watcher.alive()
    [candidate] = d.got.take()
    assert candidate.path == str(tmp_path / "while-dead.csv")
    write(tmp_path / "after.csv")
    [candidate] = d.got.take()
    assert candidate.path == str(tmp_path / "after.csv")


def test_vanished_folder_is_watched_again_when_it_returns(detector, tmp_path):
    drop = tmp_path / "drop"
    drop.mkdir()
    d = detector(make_watch(drop), supervise_interval=3600.0)
    shutil.rmtree(drop)
    wait_for(lambda: not d.watcher.alive())  # inotify stops at IN_DELETE_SELF
    assert d.watcher.supervise() == []
    assert d.watcher.unavailable() == ["w"]
    assert d.watcher.alive()  # a restart of the daemon would not help
    drop.mkdir()
    write(drop / "a.csv")
    assert d.watcher.supervise() == ["w"]
    [candidate] = d.got.take()
    assert candidate.path == str(drop / "a.csv")


def test_recursive_watch_over_the_inotify_limit_logs_the_sysctl(
    detector, tmp_path, monkeypatch
):
    for name in ("a", "b", "c"):
        (tmp_path / name).mkdir()
    monkeypatch.setattr(watch, "inotify_watch_limit", lambda: 2)
    with capture_logs() as logged:
        detector(make_watch(tmp_path, recursive=True))
    [error] = [e for e in logged if e["event"] == "watch.inotify_limit"]
    assert error["log_level"] == "error"
    assert error["needed"] == 4
    assert error["fix"].startswith("sysctl fs.inotify.max_user_watches=")


# --- reloads -----------------------------------------------------------------------


def test_update_keeps_settling_paths_and_adds_and_removes_watches(detector, tmp_path):
    one, two, three = (tmp_path / n for n in ("one", "two", "three"))
    for folder in (one, two, three):
        folder.mkdir()
    d = detector(make_watch(one, "one"), make_watch(two, "two"))
    out = (one / "slow.csv").open("wb")
    out.write(b"id,name\n")
    out.flush()
    d.watcher.update(
        [make_watch(one, "one", ignore=("*.tmp",)), make_watch(three, "three")]
    )
    write(two / "gone.csv")
    write(three / "new.csv")
    [candidate] = d.got.take()
    assert candidate.path == str(three / "new.csv")
    out.write(ROW)
    out.close()
    [candidate] = d.got.take()
    assert candidate.path == str(one / "slow.csv")
    assert d.got.nothing_within(QUIET)


def test_update_replaces_the_observer_when_polling_changes(detector, tmp_path):
    d = detector(make_watch(tmp_path))
    assert not d.watcher.polling("w")
    d.watcher.update([make_watch(tmp_path, polling=True)])
    assert d.watcher.polling("w")
    path = write(tmp_path / "a.csv")
    [candidate] = d.got.take()
    assert candidate.path == str(path)


# --- filesystems and scans ---------------------------------------------------------


MOUNTINFO = """\
22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 8:1 / / rw,relatime - ext4 /dev/sda1 rw
40 27 0:50 / /srv/sftp rw,relatime - nfs4 filer:/export rw,vers=4.2
41 40 0:51 / /srv/sftp/local\\040disk rw,relatime - xfs /dev/sdb1 rw
42 27 0:52 / /mnt/box rw - fuse.sshfs user@box: rw
"""


@pytest.mark.parametrize(
    ("path", "fstype", "poll"),
    [
        ("/srv/sftp/acme/upload", "nfs4", True),
        ("/srv/sftp/local disk/in", "xfs", False),
        ("/mnt/box/in", "fuse.sshfs", True),
        ("/var/lib/drop", "ext4", False),
    ],
)
def test_filesystem_type_picks_the_longest_mount_point(tmp_path, path, fstype, poll):
    info = tmp_path / "mountinfo"
    info.write_text(MOUNTINFO)
    assert filesystem_type(path, str(info)) == fstype
    assert wants_polling(make_watch(Path(path)), str(info))[0] is poll
    forced = make_watch(Path(path), polling=not poll)
    assert wants_polling(forced, str(info))[0] is not poll


def test_watch_on_a_network_filesystem_polls(detector, tmp_path):
    info = tmp_path / "mountinfo"
    info.write_text(f"50 1 0:60 / {tmp_path} rw - cifs //srv/share rw\n")
    drop = tmp_path / "drop"
    drop.mkdir()
    d = detector(make_watch(drop), mountinfo=str(info))
    assert d.watcher.polling("w")
    write(drop / "a.csv")
    assert len(d.got.take()) == 1


def test_scan_skips_known_identities_with_one_lookup_each(tmp_path):
    for number in range(50):
        write(tmp_path / f"f{number}.csv")
    watch_config = make_watch(tmp_path)
    fed = []
    first = scan(watch_config, lambda *a, **k: fed.append(a[1]))
    assert (first.files, first.known, first.fed) == (50, 0, 50)
    known = set()
    for entry in os.scandir(tmp_path):
        st = entry.stat()
        known.add((entry.path, st.st_size, st.st_mtime_ns, st.st_ino))
    again = scan(watch_config, lambda *a, **k: fed.append(a[1]), known=known)
    assert (again.files, again.known, again.fed) == (50, 50, 0)
