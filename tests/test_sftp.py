"""SFTP end to end: OpenSSH's sshd, the `sftp` client, the daemon, devhub.

A partner's throttled `sftp` upload of a large CSV into a watched folder
must reach the hub once, whole, and only after the transfer has ended. The
daemon runs as operators run it (`python -m hubwatchd run -c CONFIG`, JSON
log lines on stdout), against the session's devhub.

A cut-off transfer is the case no watcher can judge: the SFTP server closes
the partial file and it stays quiet, exactly like a finished one (a
close after the last write is no proof). Only a ready marker sent last makes it
certain, so that is what the cut-off test exercises.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import DevhubProcess
from hubdata import SALES_KEY, SALES_TABLE, SALES_TASK
from servicekit import POLL, DaemonProcess, daemon_config, wait_for
from sshd_fixture import RunningSftp, SftpServer, quote, sshd_server  # noqa: F401  ("sshd")

from hubwatchd.ledger import Version

pytestmark = pytest.mark.sshd

MiB = 1024 * 1024
WATCH = "sftp"
SETTLE = 1.0  # the watch's quiet period, seconds
# sftp -l caps the client at this many Kbit/s: 80 000 Kbit/s is 10 MB/s, so
# BIG (64 MiB) takes ~7 s on the wire, several times SETTLE.
RATE_KBIT = 80_000
BIG = 64 * MiB
MEDIUM = 32 * MiB


def make_csv(path: Path, size: int) -> tuple[str, int]:
    """A CSV of about `size` bytes (random text, so no two runs match); its
    sha256 and data row count. Made in well under a second."""
    width = 4000
    noise = os.urandom(size // 2 + width).hex().encode()
    digest = hashlib.sha256()
    rows = 0
    with path.open("wb") as out:
        header = b"id,payload\n"
        out.write(header)
        digest.update(header)
        written = len(header)
        while written < size:
            start = rows * width
            line = b"%d," % rows + noise[start : start + width] + b"\n"
            out.write(line)
            digest.update(line)
            written += len(line)
            rows += 1
    path.chmod(0o644)  # sftp sends the mode along; the daemon must read it
    return digest.hexdigest(), rows


def devhub_time(entry: dict[str, Any]) -> float:
    """A devhub request's arrival, as a Unix time."""
    return datetime.datetime.fromisoformat(entry["time"]).timestamp()


@pytest.fixture
def drop(tmp_path: Path) -> Path:
    folder = tmp_path / "drop"
    folder.mkdir()
    return folder


@pytest.fixture
def run_daemon(
    tmp_path: Path, drop: Path, devhub: DevhubProcess
) -> Iterator[Callable[..., DaemonProcess]]:
    """Start the daemon watching `drop` for the Sales task (replace mode);
    keyword arguments go into the watch. Stopped when the test ends."""
    started: list[DaemonProcess] = []

    def start(**watch: Any) -> DaemonProcess:
        config = daemon_config(tmp_path, devhub.url)
        config["watch"] = [
            {
                "name": WATCH,
                "path": str(drop),
                "task_id": SALES_TASK,
                "mode": "replace",
                "api_key": SALES_KEY,
                "settle": f"{SETTLE}s",
                **watch,
            }
        ]
        daemon = DaemonProcess(tmp_path, config)
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        daemon.stop()


def uploads_of(devhub: DevhubProcess, name: str) -> list[dict[str, Any]]:
    return [r for r in devhub.requests() if r["filename"] == name]


def finished_upload(
    devhub: DevhubProcess, daemon: DaemonProcess, remote: Path
) -> dict[str, Any]:
    """devhub's one request for `remote`, once the daemon has uploaded and
    archived the file: from then on no other version of it can appear, so
    a count taken now is final."""

    def archived() -> bool:
        return any(
            v.disposition == "archived" for v in daemon.versions_at(WATCH, remote)
        )

    wait_for(f"{remote.name} uploaded and archived", archived)
    assert not remote.exists()
    entries = uploads_of(devhub, remote.name)
    assert len(entries) == 1, entries
    return entries[0]


def grew_while_sent(sftp: RunningSftp, remote: Path, size: int) -> bool:
    """Poll until sftp exits; whether `remote` was seen partly written."""
    seen_partial = False
    while sftp.process.poll() is None:
        with contextlib.suppress(FileNotFoundError):
            seen_partial |= 0 < remote.stat().st_size < size
        time.sleep(POLL)
    return seen_partial


def test_throttled_upload_goes_to_the_hub_once_whole_after_it_ends(
    sshd: SftpServer,
    run_daemon: Callable[..., DaemonProcess],
    devhub: DevhubProcess,
    drop: Path,
    tmp_path: Path,
) -> None:
    source = tmp_path / "big.csv"
    sha, rows = make_csv(source, BIG)
    daemon = run_daemon()
    remote = drop / "big.csv"

    with sshd.sftp_running(
        [f"put {quote(source)} {quote(remote)}"], limit_kbit=RATE_KBIT
    ) as sftp:
        # The daemon had a growing file in front of it for seconds.
        assert grew_while_sent(sftp, remote, BIG), "the transfer was too fast to see"
        sftp_exited = time.time()  # no earlier than the real exit: a safe bound
        assert sftp.wait() == 0, f"sftp failed: {sftp.output()}"

    entry = finished_upload(devhub, daemon, remote)
    assert entry["status"] == 200, entry
    assert entry["sha256"] == sha
    assert entry["bytes"] == source.stat().st_size
    assert devhub.tables()[SALES_TABLE] == rows
    # Ordering, not duration: the daemon judged the file ready, and devhub
    # saw the request, only after the sftp client had finished.
    ready = daemon.wait_event("file.ready")
    assert ready["bytes"] == source.stat().st_size
    assert datetime.datetime.fromisoformat(ready["timestamp"]).timestamp() > (
        sftp_exited
    )
    assert devhub_time(entry) > sftp_exited
    assert len(daemon.events("upload.succeeded")) == 1


def test_upload_under_a_temp_name_goes_out_once_after_the_rename(
    sshd: SftpServer,
    run_daemon: Callable[..., DaemonProcess],
    devhub: DevhubProcess,
    drop: Path,
    tmp_path: Path,
) -> None:
    source = tmp_path / "big.csv"
    sha, rows = make_csv(source, MEDIUM)
    daemon = run_daemon()
    remote = drop / "big.csv"
    temp = drop / "big.csv.part"

    with sshd.sftp_running(
        [
            f"put {quote(source)} {quote(temp)}",
            f"rename {quote(temp)} {quote(remote)}",
        ],
        limit_kbit=RATE_KBIT,
    ) as sftp:
        assert grew_while_sent(sftp, temp, MEDIUM), "the transfer was too fast to see"
        assert sftp.wait() == 0, f"sftp failed: {sftp.output()}"

    entry = finished_upload(devhub, daemon, remote)
    assert [r["filename"] for r in devhub.requests()] == ["big.csv"]
    assert entry["sha256"] == sha
    assert entry["bytes"] == source.stat().st_size
    assert devhub.tables()[SALES_TABLE] == rows
    # The rename is the file's last change, so its ctime is when the final
    # name appeared; the upload came after that.
    (version,) = daemon.versions_at(WATCH, remote)
    assert version.state == "done"
    assert version.started_at is not None
    assert version.started_at > version.ctime_ns / 1e9
    assert devhub_time(entry) > version.ctime_ns / 1e9


def test_cut_off_upload_without_its_marker_is_never_sent(
    sshd: SftpServer,
    run_daemon: Callable[..., DaemonProcess],
    devhub: DevhubProcess,
    drop: Path,
    tmp_path: Path,
) -> None:
    source = tmp_path / "big.csv"
    sha, rows = make_csv(source, MEDIUM)
    marker_source = tmp_path / "empty"
    marker_source.touch(mode=0o644)
    daemon = run_daemon(ready_marker=".done")
    remote = drop / "big.csv"

    # The partner's connection breaks a quarter of the way in: kill sftp.
    with sshd.sftp_running(
        [
            f"put {quote(source)} {quote(remote)}",
            f"put {quote(marker_source)} {quote(drop / 'big.csv.done')}",
        ],
        limit_kbit=RATE_KBIT // 2,
    ) as sftp:
        wait_for(
            "a quarter of the file on the server",
            lambda: remote.exists() and remote.stat().st_size >= MEDIUM // 4,
        )
        sftp.kill()

    # The server closes the partial file (the daemon would otherwise note it
    # waits for the writer to close it); once it has been quiet for SETTLE
    # the daemon holds it for its marker: a note in the ledger, as `explain`
    # shows it. Without the marker it would be judged ready here.
    def held() -> Version | None:
        if daemon.events("file.ready"):
            pytest.fail(f"the cut-off file was judged ready:\n{daemon.log()}")
        versions = daemon.versions_at(WATCH, remote)
        return next((v for v in versions if v.note == "waiting for big.csv.done"), None)

    version = wait_for("the daemon to hold the cut-off file", held)
    partial = remote.stat().st_size
    assert 0 < partial < source.stat().st_size
    assert version.size == partial
    # A negative check needs a wait. The hold above is the daemon's verdict
    # after its quiet period, and only a new event (the marker, a change)
    # would revisit it, so a short watch suffices: three more settle periods,
    # in case an upload were already on its way.
    deadline = time.monotonic() + 3 * SETTLE
    while time.monotonic() < deadline:
        assert devhub.requests() == []
        assert daemon.events("file.ready") == []
        time.sleep(POLL)
    assert [v.state for v in daemon.versions_at(WATCH, remote)] == ["detected"]

    # The partner sends it again, whole, then the marker: one upload.
    sshd.upload(source, remote)
    sshd.upload(marker_source, remote.with_name("big.csv.done"))

    entry = finished_upload(devhub, daemon, remote)
    assert len(devhub.requests()) == 1
    assert entry["sha256"] == sha
    assert entry["bytes"] == source.stat().st_size
    assert devhub.tables()[SALES_TABLE] == rows
    ready = daemon.events("file.ready")
    assert [e["bytes"] for e in ready] == [source.stat().st_size]
