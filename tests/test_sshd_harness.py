"""The SFTP test harness itself: a real sshd, a real sftp client."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from sshd_fixture import SftpServer, sshd_server  # noqa: F401  (registers "sshd")

pytestmark = pytest.mark.sshd


@pytest.fixture
def payload(tmp_path: Path) -> Path:
    local = tmp_path / "local.csv"
    local.write_bytes(b"id,value\n" + os.urandom(100_000).hex().encode() + b"\n")
    local.chmod(0o644)
    return local


@pytest.fixture
def drop(tmp_path: Path) -> Path:
    folder = tmp_path / "drop"
    folder.mkdir()
    return folder


def test_upload_lands_byte_for_byte(
    sshd: SftpServer, payload: Path, drop: Path
) -> None:
    sshd.upload(payload, drop / "sales.csv")

    uploaded = drop / "sales.csv"
    assert uploaded.read_bytes() == payload.read_bytes()
    # The server's `internal-sftp -u 0007` leaves nothing for others.
    assert stat.S_IMODE(uploaded.stat().st_mode) == 0o640


def test_rate_limited_upload_under_a_temp_name_then_renamed(
    sshd: SftpServer, payload: Path, drop: Path
) -> None:
    sshd.upload(
        payload, drop / "sales.csv", temp_name="sales.csv.part", limit_kbit=8000
    )

    assert sorted(p.name for p in drop.iterdir()) == ["sales.csv"]
    assert (drop / "sales.csv").read_bytes() == payload.read_bytes()


def test_a_failing_batch_command_fails_the_upload(
    sshd: SftpServer, payload: Path, tmp_path: Path
) -> None:
    with pytest.raises(AssertionError, match="sftp upload"):
        sshd.upload(payload, tmp_path / "no-such-folder" / "sales.csv")
