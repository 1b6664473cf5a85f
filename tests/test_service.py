"""What README "Running as a service" says a reload does, against the daemon
as systemd runs it (a child process; SIGHUP as `systemctl reload` sends)."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import DevhubProcess
from hubdata import SALES_KEY, SALES_TASK
from servicekit import DaemonProcess, daemon_config, wait_for

SAMPLE = b"region,units\nnorth,12\nsouth,7\n"


Service = tuple[DaemonProcess, dict[str, Any], Path]


@pytest.fixture
def service(tmp_path: Path, devhub: DevhubProcess) -> Iterator[Service]:
    """The daemon watching one folder for the Sales task: (daemon, its
    config, the folder); stopped when the test ends."""
    drop = tmp_path / "drop"
    drop.mkdir()
    config = daemon_config(tmp_path, devhub.url)
    config["watch"] = [
        {
            "name": "sales",
            "path": str(drop),
            "task_id": SALES_TASK,
            "mode": "replace",
            "api_key": SALES_KEY,
            "settle": "200ms",
        }
    ]
    daemon = DaemonProcess(tmp_path, config)
    yield daemon, config, drop
    daemon.stop()


def drop_and_wait(daemon: DaemonProcess, drop: Path, name: str) -> None:
    """Drop a small CSV; return once the daemon has logged its upload."""
    path = drop / name
    path.write_bytes(SAMPLE)

    def succeeded() -> bool:
        return any(
            e.get("path") == str(path) for e in daemon.events("upload.succeeded")
        )

    wait_for(f"{name} uploaded", succeeded)


def test_a_broken_config_on_reload_leaves_the_old_one_in_force(
    service: Service, devhub: DevhubProcess
) -> None:
    daemon, config, drop = service
    broken = copy.deepcopy(config)
    broken["watch"][0]["task_id"] = "not-a-task-id"

    daemon.reload(broken)

    failed = daemon.wait_event("config.reload_failed")
    assert failed["problems"], failed
    assert daemon.events("config.reloaded") == []
    drop_and_wait(daemon, drop, "after.csv")
    assert [(r["task"], r["filename"]) for r in devhub.requests()] == [
        (SALES_TASK, "after.csv")
    ]


def test_a_reload_sends_later_uploads_to_a_changed_hub_url(
    service: Service,
    devhub: DevhubProcess,
    devhub_factory: Callable[..., DevhubProcess],
) -> None:
    daemon, config, drop = service
    other = devhub_factory()
    moved = copy.deepcopy(config)
    moved["hub"]["url"] = other.url

    daemon.reload(moved)
    daemon.wait_event("config.reloaded")
    drop_and_wait(daemon, drop, "after.csv")

    assert devhub.requests() == []
    assert [r["filename"] for r in other.requests()] == ["after.csv"]
