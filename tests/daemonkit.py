"""The daemon as a subprocess, for end-to-end tests.

    with DaemonKit(tmp_path) as kit:
        daemon = kit.start(config)              # waits for daemon.ready
        daemon.wait_for(lambda: daemon.event("upload.succeeded"))
        with daemon.ledger() as ledger: ...
        daemon.signal(signal.SIGHUP)

`config` is a dict in the shape of the TOML file (durations as strings); it
is written to WORKDIR/config.toml. stdout (JSON lines, log_format "json")
and stderr go to files beside it. Every daemon started is stopped when the
kit closes: SIGTERM, a wait, then SIGKILL.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import tomli_w

from hubwatchd.ledger import Ledger, Version

START_SECONDS = 30.0
STOP_SECONDS = 15.0
WAIT = 30.0  # the longest a test waits for something that must happen
POLL = 0.02

T = TypeVar("T")


def write_config(path: Path, config: dict[str, Any]) -> Path:
    """Write `config` as TOML, private (key sources may sit inline)."""
    path.write_text(tomli_w.dumps(config), encoding="utf-8")
    path.chmod(0o600)
    return path


def poll(
    predicate: Callable[[], T],
    deadline: float = WAIT,
    what: str = "a condition",
    interval: float = POLL,
) -> T:
    """Call `predicate` until it returns something truthy; return that.

    Raises AssertionError after `deadline` seconds.
    """
    end = time.monotonic() + deadline
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"{what} did not happen within {deadline:g}s")
        time.sleep(interval)


class DaemonProcess:
    """One `hubwatchd run` child and what a test needs to watch it."""

    def __init__(
        self,
        workdir: Path,
        config: dict[str, Any],
        *,
        args: tuple[str, ...] = (),
        env: dict[str, str | None] | None = None,
    ) -> None:
        self.workdir = workdir
        self.config = config
        self.config_path = write_config(workdir / "config.toml", config)
        self.stdout_path = workdir / "daemon.out"
        self.stderr_path = workdir / "daemon.err"
        self.state_dir = Path(config["daemon"]["state_dir"])
        self._lines: list[dict[str, Any]] = []
        self._offset = 0
        command = [
            sys.executable, "-m", "hubwatchd", "run",
            "-c", str(self.config_path), *args,
        ]  # fmt: skip
        environ = {**os.environ, **(env or {})}
        environ = {k: v for k, v in environ.items() if v is not None}
        with (
            self.stdout_path.open("ab") as out,
            self.stderr_path.open("ab") as err,
        ):
            self.proc = subprocess.Popen(command, stdout=out, stderr=err, env=environ)
        self.pid = self.proc.pid

    # --- lifecycle ------------------------------------------------------

    def wait_ready(self, deadline: float = START_SECONDS) -> None:
        self.wait_for(lambda: self.event("daemon.ready"), deadline, "daemon.ready")

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def wait_exit(self, deadline: float = STOP_SECONDS) -> int:
        """The exit code, once the process ends within `deadline` seconds."""
        try:
            return self.proc.wait(deadline)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"the daemon did not exit within {deadline:g}s\n{self.tail()}"
            ) from None

    def kill(self) -> None:
        """SIGKILL, as a crash or the OOM killer would."""
        self.proc.kill()
        self.proc.wait()

    def stop(self) -> None:
        """SIGTERM, a wait, then SIGKILL; idempotent."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(STOP_SECONDS)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def reload(self, config: dict[str, Any]) -> None:
        """Write a new config and send SIGHUP."""
        self.config = config
        write_config(self.config_path, config)
        self.signal(signal.SIGHUP)

    # --- logs -----------------------------------------------------------

    def logs(self) -> list[dict[str, Any]]:
        """Every JSON log line so far, parsed (other lines are skipped)."""
        with self.stdout_path.open("rb") as out:
            out.seek(self._offset)
            data = out.read()
        end = data.rfind(b"\n") + 1
        self._offset += end
        for raw in data[:end].splitlines():
            with contextlib.suppress(ValueError):
                line = json.loads(raw.decode("utf-8", "replace").lstrip("<0123456789>"))
                if isinstance(line, dict):
                    self._lines.append(line)
        return list(self._lines)

    def events(self, name: str, **fields: Any) -> list[dict[str, Any]]:
        """The log lines of event `name` whose fields include `fields`."""
        return [
            line
            for line in self.logs()
            if line.get("event") == name
            and all(line.get(k) == v for k, v in fields.items())
        ]

    def event(self, name: str, **fields: Any) -> dict[str, Any] | None:
        """The first such line, or None."""
        found = self.events(name, **fields)
        return found[0] if found else None

    def tail(self, lines: int = 40) -> str:
        out = self.stdout_path.read_text(errors="replace").splitlines()[-lines:]
        err = self.stderr_path.read_text(errors="replace").splitlines()[-lines:]
        return "stdout:\n" + "\n".join(out) + "\nstderr:\n" + "\n".join(err)

    def wait_for(
        self,
        predicate: Callable[[], T],
        deadline: float = WAIT,
        what: str = "a condition",
        interval: float = POLL,
    ) -> T:
        """Poll `predicate` until truthy; fail early if the daemon died."""

        def check() -> T:
            value = predicate()
            if not value and self.proc.poll() is not None:
                message = f"the daemon exited ({self.proc.returncode}) before {what}"
                raise AssertionError(f"{message}\n{self.tail()}")
            return value

        try:
            return poll(check, deadline, what, interval)
        except AssertionError as exc:
            if "did not happen" in str(exc):
                raise AssertionError(f"{exc}\n{self.tail()}") from None
            raise

    # --- the ledger -----------------------------------------------------

    @contextlib.contextmanager
    def ledger(self) -> Iterator[Ledger]:
        """The daemon's ledger, read through a connection of our own (WAL)."""
        ledger = Ledger.open(self.state_dir, create=False)
        try:
            yield ledger
        finally:
            ledger.close()

    def versions(self, watch: str | None = None) -> list[Version]:
        """Every version past settling, in ready order (per the ledger)."""
        with self.ledger() as ledger:
            where = "state != 'detected'"
            params: list[Any] = []
            if watch is not None:
                where += " AND watch = ?"
                params.append(watch)
            order = " ORDER BY ready_at, mtime_ns, path, id"
            return ledger._versions(where + order, params)

    def states(self, watch: str | None = None) -> dict[str, str]:
        """File name -> state of its (last) version."""
        return {Path(v.path).name: v.state for v in self.versions(watch)}


class DaemonKit:
    """Starts daemons and stops every one of them on close."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.started: list[DaemonProcess] = []

    def start(
        self,
        config: dict[str, Any],
        *,
        args: tuple[str, ...] = (),
        env: dict[str, str | None] | None = None,
        ready: bool = True,
    ) -> DaemonProcess:
        """Start `hubwatchd run` with `config`; wait for daemon.ready unless
        `ready` is false. `env` adds to this process's environment (a None
        value removes a variable)."""
        workdir = self.workdir / f"daemon-{len(self.started)}"
        workdir.mkdir(parents=True, exist_ok=True)
        daemon = DaemonProcess(workdir, config, args=args, env=env)
        self.started.append(daemon)
        if ready:
            daemon.wait_ready()
        return daemon

    def close(self) -> None:
        for daemon in self.started:
            daemon.stop()

    def __enter__(self) -> DaemonKit:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


# --- configs and files -------------------------------------------------------


def daemon_config(
    hub_url: str,
    root: Path,
    watches: list[dict[str, Any]],
    **daemon: Any,
) -> dict[str, Any]:
    """A test config: JSON logs, quick retries, state under `root`."""
    section = {
        "state_dir": str(root / "state"),
        "workers": 4,
        "log_format": "json",
        "shutdown_grace": "10s",
        "blocked_probe_interval": "1s",
    }
    return {
        "hub": {"url": hub_url, "answer_timeout": "30s"},
        "daemon": section | daemon,
        "retry": {"initial_delay": "100ms", "max_delay": "1s"},
        "watch": watches,
    }


def watch_entry(
    root: Path, name: str, task_id: str, key: str, mode: str, **options: Any
) -> dict[str, Any]:
    """A [[watch]] table with its own folder root/drop/NAME and key file."""
    folder = root / "drop" / name
    folder.mkdir(parents=True, exist_ok=True)
    key_file = write_key(root, name, key)
    entry = {
        "name": name,
        "path": str(folder),
        "task_id": task_id,
        "mode": mode,
        "settle": "200ms",
        "api_key_file": str(key_file),
    }
    return entry | options


def write_key(root: Path, name: str, key: str) -> Path:
    keys = root / "keys"
    keys.mkdir(exist_ok=True)
    key_file = keys / f"{name}.key"
    key_file.write_text(key + "\n")
    key_file.chmod(0o600)
    return key_file


def drop(folder: Path, name: str, text: str) -> Path:
    """Write a file the careful way (temp name, rename), as exporters do."""
    final = folder / name
    temp = folder / f".{name}.part"
    temp.write_text(text, encoding="utf-8")
    temp.rename(final)
    return final


def csv_rows(tag: str, rows: int = 2) -> str:
    """A small CSV whose content is unique to `tag`."""
    lines = ["tag,n,value"]
    lines += [f"{tag},{n},{n * 7}" for n in range(rows)]
    return "\n".join(lines) + "\n"


def files_under(folder: Path) -> list[Path]:
    """Every regular file below `folder`, archive and failed folders included."""
    return sorted(p for p in folder.rglob("*") if p.is_file())
