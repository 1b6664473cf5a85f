"""The files in systemd/: systemd's own checks, and agreement with the code.

The systemd-analyze checks are .ci/systemd-check itself, run from here so
that `pytest` alone covers them wherever systemd is installed; CI installs
it, so there they always run.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from hubwatchd.cli import EX_CONFIG
from hubwatchd.config import DEFAULT_CONFIG_PATH, DaemonConfig, parse_duration

ROOT = Path(__file__).resolve().parent.parent
UNITS = ROOT / "systemd"
CHECK = ROOT / ".ci" / "systemd-check"

needs_systemd = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None,
    reason="systemd-analyze not installed (apt-get install systemd; CI does)",
)

# Lines of the template that are about the instance; everything else must
# match hubwatchd.service word for word.
INSTANCE_KEYS = {"Description", "RequiresMountsFor", "ExecStart", "StateDirectory"}


def parse_unit(path: Path) -> list[tuple[str, str, str]]:
    """(section, key, value) for every setting, in order, repeats kept."""
    settings = []
    section = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        settings.append((section, key, value))
    return settings


def values(path: Path, key: str) -> list[str]:
    return [v for _, k, v in parse_unit(path) if k == key]


def run_check(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(root / ".ci" / "systemd-check")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@needs_systemd
def test_ci_check_passes_silently() -> None:
    result = run_check(ROOT)

    assert result.returncode == 0, result.stderr
    assert result.stdout + result.stderr == ""


@needs_systemd
@pytest.mark.parametrize(
    ("unit", "old", "new", "complaint"),
    [
        (
            "hubwatchd.service",
            "LockPersonality=yes",
            "LockPersonalty=yes",
            "Unknown key 'LockPersonalty'",
        ),
        (
            "hubwatchd@.service",
            "ProtectProc=invisible",
            "ProtectProc=default",
            "exposure above 1.2",
        ),
        (
            "hubwatchd.tmpfiles",
            "2770 hubwatchd hubdrop",
            "3770 hubwatchd hubdrop",
            "/srv/hubwatchd/drop is 3770",
        ),
    ],
    ids=["misspelt-key", "weaker-sandbox", "sticky-drop-folder"],
)
def test_ci_check_fails_on_a_broken_file(
    tmp_path: Path, unit: str, old: str, new: str, complaint: str
) -> None:
    shutil.copytree(UNITS, tmp_path / "systemd")
    shutil.copytree(ROOT / ".ci", tmp_path / ".ci")
    broken = tmp_path / "systemd" / unit
    text = broken.read_text(encoding="utf-8")
    assert text.count(old) == 1
    broken.write_text(text.replace(old, new), encoding="utf-8")

    result = run_check(tmp_path)

    assert result.returncode != 0
    assert complaint in result.stderr


def test_template_matches_the_plain_unit_except_for_the_instance() -> None:
    def shared(path: Path) -> list[tuple[str, str, str]]:
        return [s for s in parse_unit(path) if s[1] not in INSTANCE_KEYS]

    assert shared(UNITS / "hubwatchd@.service") == shared(UNITS / "hubwatchd.service")
    assert values(UNITS / "hubwatchd@.service", "ExecStart") == [
        "/opt/hubwatchd/bin/hubwatchd run -c /etc/hubwatchd/%i.toml"
    ]
    assert values(UNITS / "hubwatchd@.service", "StateDirectory") == ["hubwatchd/%i"]


def test_unit_agrees_with_the_daemon_defaults() -> None:
    unit = UNITS / "hubwatchd.service"

    # hubwatchd.systemd speaks for the main process; the watchdog needs it.
    assert values(unit, "Type") == ["notify"]
    assert values(unit, "NotifyAccess") == ["main"]
    assert parse_duration(values(unit, "WatchdogSec")[0]) > 0
    [exec_start] = values(unit, "ExecStart")
    assert exec_start.endswith(f" run -c {DEFAULT_CONFIG_PATH}")
    assert values(unit, "RestartPreventExitStatus") == [str(EX_CONFIG)]
    [timeout_stop] = values(unit, "TimeoutStopSec")
    assert parse_duration(timeout_stop) > DaemonConfig().shutdown_grace
    [state] = values(unit, "StateDirectory")
    assert Path("/var/lib", state) == DaemonConfig().state_dir


def test_drop_tree_is_the_one_writable_path() -> None:
    # One bind mount for drop, archive and failed folders: a rename between
    # two ReadWritePaths= mounts fails with EXDEV.
    assert values(UNITS / "hubwatchd.service", "ReadWritePaths") == ["/srv/hubwatchd"]
    entries = {}
    for line in (UNITS / "hubwatchd.tmpfiles").read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            kind, path, mode, user, group, _age = line.split()
            entries[path] = (kind, mode, user, group)
    srv = [path for path in entries if path.startswith("/srv/")]
    assert all(Path(path).is_relative_to("/srv/hubwatchd") for path in srv)
    assert entries["/srv/hubwatchd/drop"] == ("d", "2770", "hubwatchd", "hubdrop")
