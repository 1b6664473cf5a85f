"""files.py: archive, delete and the failed folder, on real folders."""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from watchkit import make_watch

from hubwatchd import files

WHEN = time.mktime((2026, 3, 14, 12, 0, 0, 0, 0, -1))
DAY = "2026-03-14"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_archive_never_overwrites_a_name_already_taken(tmp_path):
    watch = make_watch(tmp_path)
    moved = [
        files.archive(watch, write(tmp_path / "sales.2026.csv", f"v{n}"), when=WHEN)
        for n in range(3)
    ]
    folder = tmp_path / ".hubwatchd-archive" / DAY
    assert [p.name for p in moved] == [
        "sales.2026.csv",
        "sales-2.2026.csv",
        "sales-3.2026.csv",
    ]
    assert [p.parent for p in moved] == [folder] * 3
    assert [p.read_text() for p in moved] == ["v0", "v1", "v2"]
    assert not (tmp_path / "sales.2026.csv").exists()


def test_archive_keeps_the_subfolder_of_a_recursive_watch(tmp_path):
    watch = make_watch(tmp_path, recursive=True)
    moved = files.archive(watch, write(tmp_path / "eu" / "de" / "a.csv", "x"), WHEN)
    assert moved == tmp_path / ".hubwatchd-archive" / DAY / "eu" / "de" / "a.csv"


def test_the_ready_marker_moves_with_the_file(tmp_path):
    watch = make_watch(tmp_path, ready_marker=".done")
    path = write(tmp_path / "sales.csv", "data")
    write(tmp_path / "sales.csv.done", "")

    moved = files.archive(watch, path, when=WHEN)

    assert sorted(p.name for p in moved.parent.iterdir()) == [
        "sales.csv",
        "sales.csv.done",
    ]
    assert list(tmp_path.glob("sales*")) == []


def test_a_marker_whose_file_is_gone_is_archived_all_the_same(tmp_path):
    # A crash after the file's move but before the marker's: the next attempt
    # finds no file and must not leave the marker behind in the drop folder.
    watch = make_watch(tmp_path, ready_marker=".done")
    write(tmp_path / "sales.csv.done", "")

    with pytest.raises(FileNotFoundError):
        files.archive(watch, tmp_path / "sales.csv", when=WHEN)

    assert not (tmp_path / "sales.csv.done").exists()
    assert (tmp_path / ".hubwatchd-archive" / DAY / "sales.csv.done").exists()


def test_delete_removes_the_file_and_its_marker_and_accepts_either_gone(tmp_path):
    watch = make_watch(tmp_path, ready_marker=".ok")
    path = write(tmp_path / "a.csv", "x")
    write(tmp_path / "a.csv.ok", "")
    files.delete(watch, path)
    files.delete(watch, path)
    assert list(tmp_path.iterdir()) == []


def test_the_failed_folder_gets_the_file_and_a_reason_beside_it(tmp_path):
    watch = make_watch(tmp_path, ready_marker=".done")
    path = write(tmp_path / "bad.csv", "x")
    write(tmp_path / "bad.csv.done", "")

    moved = files.move_to_failed(watch, path, "HTTP 400: column count differs", 7)

    assert moved == tmp_path / ".hubwatchd-failed" / "bad.csv"
    assert moved.read_text() == "x"
    reason = (moved.parent / "bad.csv.reason.txt").read_text()
    assert "why:    HTTP 400: column count differs" in reason
    assert "move it\nback, then run: hubwatchd retry 7" in reason
    assert (moved.parent / "bad.csv.done").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".hubwatchd-failed"]


def test_a_failed_file_already_gone_still_leaves_its_reason(tmp_path):
    watch = make_watch(tmp_path)
    write(tmp_path / ".hubwatchd-failed" / "gone.csv", "an older one")

    moved = files.move_to_failed(watch, tmp_path / "gone.csv", "vanished")

    assert moved.name == "gone-2.csv"
    assert not moved.exists()
    assert "why:    vanished" in (moved.parent / "gone-2.csv.reason.txt").read_text()


def test_a_crash_between_link_and_unlink_is_healed_by_the_next_attempt(tmp_path):
    watch = make_watch(tmp_path)
    path = write(tmp_path / "sales.csv", "mine")
    folder = tmp_path / ".hubwatchd-archive" / DAY
    write(folder / "sales.csv", "someone else's")
    os.link(path, folder / "sales-2.csv")  # the first attempt got this far

    moved = files.archive(watch, path, when=WHEN)

    assert moved == folder / "sales-2.csv"
    assert not path.exists()
    assert sorted(p.name for p in folder.iterdir()) == ["sales-2.csv", "sales.csv"]
    assert (folder / "sales.csv").read_text() == "someone else's"


@pytest.fixture
def other_filesystem(tmp_path: Path) -> Iterator[Path]:
    """A folder on another filesystem than tmp_path (tmpfs), or a skip."""
    if not Path("/dev/shm").is_dir():
        pytest.skip("no /dev/shm")
    folder = Path(tempfile.mkdtemp(prefix="hubwatchd-test-", dir="/dev/shm"))
    try:
        if folder.stat().st_dev == tmp_path.stat().st_dev:
            pytest.skip("/dev/shm is on the same filesystem as tmp_path")
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_an_archive_on_another_filesystem_fails_and_the_file_stays(
    tmp_path, other_filesystem
):
    watch = make_watch(tmp_path, archive_dir=other_filesystem)
    path = write(tmp_path / "sales.csv", "data")

    with pytest.raises(OSError) as caught:
        files.archive(watch, path, when=WHEN)

    assert caught.value.errno == errno.EXDEV
    assert path.read_text() == "data"
    assert files_in(other_filesystem) == []


def files_in(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()]
