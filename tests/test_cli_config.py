"""`hubwatchd check` and `hubwatchd init` as an operator runs them."""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

import pytest
import tomli_w

TASK = "0f8e3a52-6c1d-4a8e-9a53-2c1b7d1e9f40"
TASK2 = "7a1c2b3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"
KEY = "sk-live-cli-4242424242"


def hubwatchd(
    *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "hubwatchd", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    (tmp_path / "drop").mkdir()
    (tmp_path / "key").write_text(KEY)
    data = {
        "hub": {"url": "http://127.0.0.1:8080", "api_key_file": str(tmp_path / "key")},
        "daemon": {"state_dir": str(tmp_path / "state")},
        "watch": [{"name": "drop", "path": str(tmp_path / "drop"), "task_id": TASK}],
    }
    path = tmp_path / "config.toml"
    path.write_text(tomli_w.dumps(data))
    return path


def test_check_prints_effective_config_without_key(config_file):
    result = hubwatchd("check", "-c", str(config_file))
    assert result.returncode == 0, result.stderr
    assert "valid" in result.stdout
    assert 'settle = "3s"' in result.stdout  # a default filled in
    assert "redacted" in result.stdout
    assert KEY not in result.stdout + result.stderr


def test_check_exits_78_and_lists_problems(config_file):
    text = (
        config_file.read_text()
        .replace(TASK, "not-a-guid")
        .replace('"drop"', '"d r"', 1)
    )
    config_file.write_text(text)
    result = hubwatchd("check", "-c", str(config_file))
    assert result.returncode == 78
    assert "2 problems" in result.stderr
    assert "task_id: must be a GUID" in result.stderr
    assert "name: must be letters" in result.stderr


def test_check_reports_missing_folder(config_file, tmp_path):
    (tmp_path / "drop").rmdir()
    result = hubwatchd("check", "-c", str(config_file))
    assert result.returncode == 78
    assert f"{tmp_path / 'drop'} does not exist" in result.stderr


def test_check_reads_config_path_from_environment(config_file):
    import os

    env = dict(os.environ, HUBWATCHD_CONFIG=str(config_file))
    result = hubwatchd("check", env=env)
    assert result.returncode == 0, result.stderr


def test_init_output_round_trips_through_check(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "hub.key").write_text(KEY)
    target = tmp_path / "out.toml"
    result = hubwatchd(
        "init",
        "--url",
        "https://datahub.example.com",
        "--watch",
        f"{tmp_path / 'a'}={TASK}",
        "--watch",
        f"{tmp_path / 'b'}={TASK2}:append",
        "--api-key-file",
        str(tmp_path / "hub.key"),
        "--state-dir",
        str(tmp_path / "state"),
        "-o",
        str(target),
    )
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE(target.stat().st_mode) == 0o600

    checked = hubwatchd("check", "-c", str(target))
    assert checked.returncode == 0, checked.stderr
    assert 'mode = "append"' in checked.stdout
    assert f'task_id = "{TASK2}"' in checked.stdout


def test_init_refuses_to_overwrite(tmp_path):
    target = tmp_path / "out.toml"
    target.write_text("# mine\n")
    args = [
        "init",
        "--url",
        "https://h",
        "--watch",
        f"/srv/a={TASK}",
        "-o",
        str(target),
    ]
    result = hubwatchd(*args)
    assert result.returncode == 73
    assert "--force" in result.stderr
    assert target.read_text() == "# mine\n"
    assert hubwatchd(*args, "--force").returncode == 0
    assert "[hub]" in target.read_text()


@pytest.mark.parametrize(
    ("flag", "words"),
    [
        ("/srv/a=nope", "GUID"),
        (f"relative={TASK}", "absolute"),
        (f"/srv/a={TASK}:sideways", "mode"),
        ("/srv/a", "PATH=TASK_ID"),
    ],
)
def test_init_rejects_bad_watch_flags(tmp_path, flag, words):
    result = hubwatchd(
        "init", "--url", "https://h", "--watch", flag, "-o", str(tmp_path / "c")
    )
    assert result.returncode == 64
    assert words in result.stderr
    assert not (tmp_path / "c").exists()


def test_a_state_dir_on_a_network_filesystem_is_a_config_error(
    config_file, monkeypatch
):
    """run and check exit 78 (no restart loop) for a ledger on NFS or SMB.

    No NFS mount can be had here, so the ledger's own check (tested against
    mountinfo text in test_ledger.py) is made to answer as it would on NFS.
    """
    from click.testing import CliRunner

    from hubwatchd import cli
    from hubwatchd.errors import LedgerError

    def on_nfs(state_dir):
        raise LedgerError(f"state_dir {state_dir} is on a network filesystem (nfs4)")

    monkeypatch.setattr(cli, "check_local_filesystem", on_nfs)
    result = CliRunner().invoke(cli.main, ["check", "-c", str(config_file)])
    assert result.exit_code == 78
    assert "[daemon]: state_dir: " in result.output
    assert "network filesystem (nfs4)" in result.output
