"""The Settler's rules on a fake clock, and inspect()'s refusals, on real files."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
from watchkit import Collector, FakeClock, make_watch, wait_for

from hubwatchd import settle
from hubwatchd.errors import FileRefused
from hubwatchd.settle import (
    ATTRIB,
    CLOSED_NO_WRITE,
    CLOSED_WRITE,
    CREATED,
    DELETED,
    MODIFIED,
    MOVED_IN,
    OPENED,
    SCAN,
    Settler,
    inspect,
    is_input,
)

CSV = b"id,name\n1,alpha\n2,beta\n"


@pytest.fixture
def rig(tmp_path: Path):
    """A Settler driven by hand on a fake clock, for one watch on tmp_path."""

    class Rig:
        def __init__(self, **options):
            self.clock = FakeClock()
            self.got = Collector()
            self.watch = make_watch(tmp_path, settle=3.0, **options)
            self.settler = Settler(
                self.got.on_ready,
                on_refused=self.got.on_refused,
                on_note=self.got.on_note,
                watches=[self.watch],
                clock=self.clock,
            )

        def feed(self, path: Path, kind: str, **kw) -> None:
            self.settler.feed("w", str(path), kind, **kw)

        def after(self, seconds: float) -> list:
            self.clock.advance(seconds)
            self.settler.check_due()
            out = []
            while not self.got.ready.empty():
                out.append(self.got.ready.get_nowait())
            return out

    return Rig


def write(path: Path, data: bytes = CSV) -> Path:
    path.write_bytes(data)
    return path


# --- the quiet period --------------------------------------------------------


def test_ready_after_quiet_period_and_close(rig, tmp_path):
    r = rig()
    f = write(tmp_path / "sales.csv")
    r.feed(f, CREATED)
    r.feed(f, MODIFIED)
    r.feed(f, CLOSED_WRITE)
    assert r.after(2.9) == []
    [candidate] = r.after(0.2)
    st = f.stat()
    assert candidate == settle.Candidate(
        watch="w",
        path=str(f),
        size=st.st_size,
        mtime_ns=st.st_mtime_ns,
        ctime_ns=st.st_ctime_ns,
        inode=st.st_ino,
        marker=None,
    )


def test_each_event_restarts_the_quiet_period(rig, tmp_path):
    r = rig()
    f = write(tmp_path / "a.csv")
    r.feed(f, CREATED)
    r.feed(f, CLOSED_WRITE)
    r.clock.advance(2.0)
    r.feed(f, ATTRIB)
    assert r.after(2.0) == []
    assert len(r.after(1.1)) == 1


def test_change_without_event_restarts_the_quiet_period(rig, tmp_path):
    r = rig()
    f = write(tmp_path / "a.csv")
    r.feed(f, CLOSED_WRITE)
    with f.open("ab") as out:  # as an mmap writer would: no event reaches us
        out.write(b"3,gamma\n")
    assert r.after(3.1) == []
    [candidate] = r.after(3.1)
    assert candidate.size == f.stat().st_size


def test_written_file_waits_for_close(rig, tmp_path):
    r = rig()
    f = write(tmp_path / "a.csv")
    r.feed(f, CREATED)
    r.feed(f, MODIFIED)
    assert r.after(3.1) == []
    assert r.after(60) == []
    assert r.settler.pending()[0].waiting_for_close
    assert ("" + str(f), "waiting for the writer to close it") in r.got.notes
    r.feed(f, CLOSED_WRITE)
    assert len(r.after(3.1)) == 1


def test_open_cap_ends_the_wait_for_a_close(rig, tmp_path):
    r = rig()
    cap = settle.default_open_cap(3.0)
    assert cap == 3600.0
    f = write(tmp_path / "a.csv")
    r.feed(f, MODIFIED)
    assert r.after(cap - 10) == []
    assert r.after(15) != []


def test_polling_watch_needs_no_close(rig, tmp_path):
    r = rig()
    f = write(tmp_path / "a.csv")
    r.feed(f, CREATED, closes=False)
    r.feed(f, MODIFIED, closes=False)
    assert len(r.after(3.1)) == 1


def test_opens_and_read_closes_are_no_activity(rig, tmp_path):
    r = rig()
    f = write(tmp_path / "a.csv")
    r.feed(f, CLOSED_WRITE)
    r.clock.advance(2.0)
    r.feed(f, OPENED)
    r.feed(f, CLOSED_NO_WRITE)
    assert len(r.after(1.1)) == 1


def test_rename_into_place_is_ready_promptly(rig, tmp_path):
    r = rig()
    temp = write(tmp_path / "a.csv.tmp")
    r.feed(temp, CREATED)
    r.feed(temp, MODIFIED)
    r.feed(temp, CLOSED_WRITE)
    final = tmp_path / "a.csv"
    temp.rename(final)
    r.feed(final, MOVED_IN, src=str(temp))
    [candidate] = r.after(settle.RENAME_GRACE + 0.01)
    assert candidate.path == str(final)


def test_rename_of_a_file_still_open_waits_for_its_close(rig, tmp_path):
    r = rig()
    temp = write(tmp_path / "a.csv.part")
    r.feed(temp, CREATED)
    r.feed(temp, MODIFIED)
    final = tmp_path / "a.csv"
    temp.rename(final)
    r.feed(final, MOVED_IN, src=str(temp))
    assert r.after(10) == []
    r.feed(final, CLOSED_WRITE)
    assert len(r.after(3.1)) == 1


def test_deleted_path_is_forgotten(rig, tmp_path):
    r = rig()
    f = write(tmp_path / "a.csv")
    r.feed(f, CLOSED_WRITE)
    f.unlink()
    r.feed(f, DELETED)
    assert r.after(10) == []
    assert r.settler.pending() == []


def test_same_version_is_reported_once_and_a_new_one_again(rig, tmp_path):
    r = rig()
    f = write(tmp_path / "a.csv")
    r.feed(f, CLOSED_WRITE)
    assert len(r.after(3.1)) == 1
    r.feed(f, SCAN)  # a rescan before the ledger has it
    r.feed(f, OPENED)
    assert r.after(3.1) == []
    with f.open("ab") as out:
        out.write(b"3,gamma\n")
    r.feed(f, MODIFIED)
    r.feed(f, CLOSED_WRITE)
    [second] = r.after(3.1)
    assert second.size == len(CSV) + 8


def test_scan_event_is_no_activity_for_a_settling_path(rig, tmp_path):
    r = rig()
    f = write(tmp_path / "a.csv")
    r.feed(f, CLOSED_WRITE)
    r.clock.advance(2.0)
    r.feed(f, SCAN)
    assert len(r.after(1.1)) == 1


# --- markers -----------------------------------------------------------------


def test_marker_after_file(rig, tmp_path):
    r = rig(ready_marker=".done")
    f = write(tmp_path / "a.csv")
    r.feed(f, CLOSED_WRITE)
    assert r.after(10) == []
    assert r.settler.pending()[0].note == "waiting for a.csv.done"
    marker = write(tmp_path / "a.csv.done", b"")
    r.feed(marker, CREATED)
    [candidate] = r.after(0)
    assert candidate.marker == str(marker)


def test_marker_before_file(rig, tmp_path):
    r = rig(ready_marker=".done")
    marker = write(tmp_path / "a.csv.done", b"")
    r.feed(marker, CREATED)
    f = write(tmp_path / "a.csv")
    r.feed(f, CLOSED_WRITE)
    [candidate] = r.after(3.1)
    assert candidate.marker == str(marker)


def test_marker_does_not_skip_the_quiet_period(rig, tmp_path):
    r = rig(ready_marker=".done")
    f = write(tmp_path / "a.csv")
    r.feed(f, CLOSED_WRITE)
    marker = write(tmp_path / "a.csv.done", b"")
    r.feed(marker, CREATED)
    assert r.after(1.0) == []
    assert len(r.after(2.1)) == 1


def test_marker_for_a_file_settled_before_start_is_picked_up(rig, tmp_path):
    r = rig(ready_marker=".done")
    write(tmp_path / "a.csv")
    marker = write(tmp_path / "a.csv.done", b"")
    r.feed(marker, CREATED)
    assert len(r.after(3.1)) == 1


# --- preallocation -------------------------------------------------------------


def test_preallocated_file_keeps_settling_until_filled(rig, tmp_path):
    r = rig()
    f = tmp_path / "a.csv"
    fd = os.open(f, os.O_RDWR | os.O_CREAT, 0o644)
    os.posix_fallocate(fd, 0, 100_000)
    os.close(fd)
    r.feed(f, CLOSED_WRITE)
    assert r.after(3.1) == []
    assert "all zero" in r.settler.pending()[0].note
    assert r.after(3.1) == []
    body = CSV + b"x" * (100_000 - len(CSV) - 1) + b"\n"
    with f.open("r+b") as out:
        out.write(body)
    r.feed(f, MODIFIED)
    r.feed(f, CLOSED_WRITE)
    [candidate] = r.after(3.1)
    assert candidate.size == 100_000


def test_sparse_file_with_a_hole_keeps_settling(rig, tmp_path):
    r = rig()
    f = tmp_path / "a.csv"
    with f.open("wb") as out:
        out.truncate(1_000_000)
        out.seek(1_000_000 - 4096)
        out.write(b"y" * 4095 + b"\n")  # the end arrived first
    if os.stat(f).st_blocks * 512 >= 1_000_000:
        pytest.skip("this filesystem does not keep sparse files sparse")
    r.feed(f, CLOSED_WRITE)
    assert r.after(3.1) == []
    assert "hole" in r.settler.pending()[0].note


# --- callbacks -----------------------------------------------------------------


def test_failing_callback_is_logged_and_the_version_reported_again(tmp_path):
    clock = FakeClock()
    calls = []

    def on_ready(watch, candidate):
        calls.append(candidate)
        if len(calls) == 1:
            raise RuntimeError("ledger unavailable")

    watch = make_watch(tmp_path, settle=3.0)
    settler = Settler(on_ready, watches=[watch], clock=clock)
    f = write(tmp_path / "a.csv")
    settler.feed("w", str(f), CLOSED_WRITE)
    clock.advance(3.1)
    settler.check_due()
    settler.feed("w", str(f), SCAN)  # the next rescan
    clock.advance(3.1)
    settler.check_due()
    assert len(calls) == 2


def test_settler_thread_wakes_at_each_deadline(tmp_path):
    got = Collector()
    watch = make_watch(tmp_path, settle=0.2)
    settler = Settler(got.on_ready, watches=[watch])
    settler.start()
    try:
        assert settler.alive()
        for name in ("a.csv", "b.csv"):
            f = write(tmp_path / name)
            settler.feed("w", str(f), CLOSED_WRITE)
        assert sorted(c.path for c in got.take(2)) == [
            str(tmp_path / "a.csv"),
            str(tmp_path / "b.csv"),
        ]
    finally:
        settler.stop()
    wait_for(lambda: not settler.alive())


def test_removed_watch_drops_what_was_settling(rig, tmp_path):
    r = rig()
    f = write(tmp_path / "a.csv")
    r.feed(f, CLOSED_WRITE)
    r.settler.set_watches([])
    assert r.after(10) == []
    assert r.settler.pending() == []


# --- names -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("relative", "expected"),
    [
        ("sales.csv", True),
        ("SALES.CSV", True),
        ("report.Json", True),
        ("book.xlsx", True),
        ("notes.txt", False),
        ("sales.csv.filepart", False),
        ("sales.csv.tmp", False),
        ("sales.csv.part", False),
        (".sales.csv", False),
        ("~$book.xlsx", False),
        ("sub/sales.csv", False),
        (".hubwatchd-archive/2024-01-01/sales.csv", False),
        ("name with spaces.csv", True),
        ("umlaut-äöü-数据.csv", True),
        ("line\nbreak.csv", True),
    ],
)
def test_which_names_are_input(tmp_path, relative, expected):
    watch = make_watch(tmp_path)
    assert is_input(watch, str(tmp_path / relative)) is expected


def test_recursive_watch_takes_subfolders_but_not_hidden_or_archive(tmp_path):
    archive = tmp_path / "done"
    watch = make_watch(tmp_path, recursive=True, archive_dir=archive)
    assert is_input(watch, str(tmp_path / "sub" / "a.csv"))
    assert not is_input(watch, str(tmp_path / ".git" / "a.csv"))
    assert not is_input(watch, str(archive / "a.csv"))
    assert not is_input(watch, str(tmp_path / ".hubwatchd-failed" / "a.csv"))
    assert not is_input(watch, "/elsewhere/a.csv")


def test_marker_names_are_never_input(tmp_path):
    watch = make_watch(tmp_path, patterns=("*",), ready_marker=".done")
    assert not is_input(watch, str(tmp_path / "a.csv.done"))
    assert is_input(watch, str(tmp_path / "a.csv"))


# --- inspect -------------------------------------------------------------------


def refused(watch, path) -> str:
    with pytest.raises(FileRefused) as info:
        inspect(watch, path)
    return info.value.reason


def test_inspect_accepts_a_plain_csv(tmp_path):
    f = write(tmp_path / "a.csv", b"\xef\xbb\xbfid,name\n1,\xc3\xa4\n")
    candidate = inspect(make_watch(tmp_path), f)
    assert candidate.size == f.stat().st_size
    assert candidate.inode == f.stat().st_ino


def test_inspect_refuses_a_symlink(tmp_path):
    target = write(tmp_path / "real.csv")
    link = tmp_path / "link.csv"
    link.symlink_to(target)
    assert "symbolic link" in refused(make_watch(tmp_path), link)


def test_inspect_refuses_a_fifo_without_blocking(tmp_path):
    fifo = tmp_path / "pipe.csv"
    os.mkfifo(fifo)
    assert "named pipe (FIFO)" in refused(make_watch(tmp_path), fifo)


def test_inspect_refuses_a_socket(tmp_path):
    path = tmp_path / "s.csv"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(path))
        assert "socket" in refused(make_watch(tmp_path), path)


def test_inspect_refuses_a_folder(tmp_path):
    (tmp_path / "d.csv").mkdir()
    assert "a folder" in refused(make_watch(tmp_path), tmp_path / "d.csv")


def test_inspect_refuses_a_path_through_a_linked_folder(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    write(outside / "a.csv")
    drop = tmp_path / "drop"
    drop.mkdir()
    (drop / "sub").symlink_to(outside)
    reason = refused(make_watch(drop, recursive=True), drop / "sub" / "a.csv")
    assert "outside the watched folder" in reason


def test_inspect_refuses_an_empty_file_unless_allowed(tmp_path):
    f = write(tmp_path / "a.csv", b"")
    assert "empty" in refused(make_watch(tmp_path), f)
    assert "allow_empty" in refused(make_watch(tmp_path), f)
    assert inspect(make_watch(tmp_path, allow_empty=True), f).size == 0


def test_inspect_refuses_a_file_over_the_size_limit(tmp_path):
    f = write(tmp_path / "a.csv")
    assert "max_file_size" in refused(make_watch(tmp_path, max_file_size=10), f)


@pytest.mark.parametrize(
    ("name", "data", "words"),
    [
        ("a.csv", b"id;name\n\xff\xfe\n", "not UTF-8"),
        ("a.csv", b"\xff\xfei\x00d\x00", "NUL byte"),
        ("a.csv", b"\n\n1,2\n", "no header line"),
        ("a.json", b"  id,name\n", "does not look like JSON"),
        ("a.xlsx", b"id,name\n1,2\n", "not an XLSX workbook"),
    ],
)
def test_inspect_refuses_content_that_is_not_its_type(tmp_path, name, data, words):
    f = write(tmp_path / name, data)
    assert words in refused(make_watch(tmp_path), f)


def test_inspect_json_object_only_for_multipart(tmp_path):
    f = write(tmp_path / "a.json", b'\n {"rows": []}')
    assert inspect(make_watch(tmp_path), f).size > 0
    reason = refused(make_watch(tmp_path, json_upload="raw"), f)
    assert "raw JSON" in reason
    g = write(tmp_path / "b.json", b'[{"id": 1}]')
    assert inspect(make_watch(tmp_path, json_upload="raw"), g).size > 0


def test_inspect_reads_only_the_head_of_a_large_csv(tmp_path):
    f = tmp_path / "big.csv"
    with f.open("wb") as out:
        out.write(b"id,text\n")
        out.write(b"1," + "ä".encode() * 40_000 + b"\n")  # splits a character at 64 KiB
        out.write(b"\xff" * 10)  # bad bytes after the head are not read
    assert inspect(make_watch(tmp_path), f).size == f.stat().st_size


def test_xlsx_with_zip_magic_is_accepted(tmp_path):
    f = write(tmp_path / "a.xlsx", b"PK\x03\x04" + b"\x00" * 100 + b"end")
    assert inspect(make_watch(tmp_path), f).size == 107


def test_a_name_created_without_a_writer_needs_no_close(rig, tmp_path):
    r = rig()
    original = write(tmp_path / "elsewhere.txt")
    linked = tmp_path / "a.csv"
    os.link(original, linked)  # IN_CREATE, and no close ever follows
    r.feed(linked, CREATED)
    [candidate] = r.after(3.1)
    assert candidate.path == str(linked)


def test_an_empty_new_file_is_held_open_by_its_writer(rig, tmp_path):
    r = rig()
    f = write(tmp_path / "a.csv", b"")
    r.feed(f, CREATED)
    assert r.after(3.1) == []
    assert r.settler.pending()[0].waiting_for_close
