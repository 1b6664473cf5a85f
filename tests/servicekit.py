"""The daemon as operators run it, for the service and SFTP tests.

    config = daemon_config(tmp_path, devhub.url)   # [hub], [daemon], [retry]
    config["watch"] = [{...}]
    daemon = DaemonProcess(tmp_path, config)       # waits for daemon.ready
    daemon.wait_event("upload.succeeded")
    daemon.stop()                                  # the fixture's job

daemonkit's DaemonProcess, ready on construction, with the few helpers
these tests read best with. Waits poll with deadlines; nothing sleeps in
their place.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import daemonkit
from daemonkit import poll

from hubwatchd.ledger import Version

# Deadline for any one thing the daemon or devhub should do; generous, as
# devhub parses and stores tens of MiB of CSV before it answers.
DEADLINE = 120.0
POLL = 0.05  # poll interval while waiting on a deadline


def wait_for(what: str, check: Callable[[], Any], timeout: float = DEADLINE) -> Any:
    """Poll `check` until it returns something truthy; fail after `timeout`."""
    return poll(check, timeout, what, POLL)


def daemon_config(folder: Path, hub_url: str) -> dict[str, Any]:
    """A config without watches: JSON logs, a ledger in `folder`, quick
    retries."""
    return {
        "hub": {"url": hub_url},
        "daemon": {"state_dir": str(folder / "state"), "log_format": "json"},
        "retry": {"initial_delay": "100ms", "max_delay": "1s"},
    }


class DaemonProcess(daemonkit.DaemonProcess):
    """The daemon in a child process, started and ready on construction."""

    def __init__(self, folder: Path, config: dict[str, Any]) -> None:
        super().__init__(folder, config)
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise

    def wait_event(self, name: str, timeout: float = DEADLINE) -> dict[str, Any]:
        """The first log line named `name`, waiting for it if need be."""
        return self.wait_for(lambda: self.event(name), timeout, f"the daemon's {name}")

    def versions_at(self, watch: str, path: Path) -> list[Version]:
        """The ledger's rows for `path`, newest first (read while it runs)."""
        with self.ledger() as ledger:
            return ledger.versions_at(watch, path)

    def log(self) -> str:
        return self.tail(10_000)
