"""The daemon as operators run it: `python -m hubwatchd run -c CONFIG`.

    config = daemon_config(tmp_path, devhub.url)   # [hub], [daemon], [retry]
    config["watch"] = [{...}]
    daemon = DaemonProcess(tmp_path, config)       # waits for daemon.ready
    daemon.wait_event("upload.succeeded")
    daemon.stop()                                  # the fixture's job

Its JSON log lines go to tmp_path/daemon.log; the ledger can be read while
it runs (WAL). Waits poll with deadlines; nothing sleeps in their place.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from hubwatchd.ledger import Ledger, Version

START_SECONDS = 30.0
STOP_SECONDS = 30.0
# Deadline for any one thing the daemon or devhub should do; generous, as
# devhub parses and stores tens of MiB of CSV before it answers.
DEADLINE = 120.0
POLL = 0.05  # poll interval while waiting on a deadline


def wait_for(what: str, check: Callable[[], Any], timeout: float = DEADLINE) -> Any:
    """Poll `check` until it returns something truthy; fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(POLL)


def daemon_config(folder: Path, hub_url: str) -> dict[str, Any]:
    """A config without watches: JSON logs, a ledger in `folder`, quick
    retries."""
    return {
        "hub": {"url": hub_url},
        "daemon": {"state_dir": str(folder / "state"), "log_format": "json"},
        "retry": {"initial_delay": "100ms", "max_delay": "1s"},
    }


class DaemonProcess:
    """The daemon in a child process, started and ready on construction."""

    def __init__(self, folder: Path, config: dict[str, Any]) -> None:
        self.config_path = folder / "config.toml"
        self.state_dir = Path(config["daemon"]["state_dir"])
        self.log_path = folder / "daemon.log"
        self.write_config(config)
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "hubwatchd", "run", "-c", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            self.wait_event("daemon.ready", START_SECONDS)
        except BaseException:
            self.stop()
            raise

    def write_config(self, config: dict[str, Any]) -> None:
        self.config_path.write_text(tomli_w.dumps(config))
        self.config_path.chmod(0o600)  # inline keys: a file only its owner reads

    def reload(self, config: dict[str, Any]) -> None:
        """Write `config` and send SIGHUP, as `systemctl reload` does."""
        self.write_config(config)
        self.proc.send_signal(signal.SIGHUP)

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        """The daemon's JSON log lines so far (those named `name`, if given)."""
        found = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue  # not a log line (a traceback), or one still being written
            if isinstance(event, dict) and name in (None, event.get("event")):
                found.append(event)
        return found

    def wait_event(self, name: str, timeout: float = DEADLINE) -> dict[str, Any]:
        """The first log line named `name`, waiting for it if need be."""

        def check() -> dict[str, Any] | None:
            if self.proc.poll() is not None:
                pytest.fail(f"the daemon exited {self.proc.returncode}:\n{self.log()}")
            events = self.events(name)
            return events[0] if events else None

        return wait_for(f"the daemon's {name}", check, timeout)

    def versions(self, watch: str, path: Path) -> list[Version]:
        """The ledger's rows for `path`, newest first (read while it runs)."""
        ledger = Ledger.open(self.state_dir, create=False)
        try:
            return ledger.versions_at(watch, path)
        finally:
            ledger.close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after STOP_SECONDS; idempotent."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(STOP_SECONDS)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(STOP_SECONDS)
