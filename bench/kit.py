"""What the daemon benchmarks share: a devhub, a daemon, its log and ledger.

Every process started here is a context manager that stops it on the way
out, Ctrl-C included; every wait has a deadline. Only 127.0.0.1 is used.
"""

from __future__ import annotations

import json
import os
import platform
import signal
import sqlite3
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import tomli_w

from hubwatchd.ledger import DB_NAME

KEY = "bench-key-0123456789"
STOP_SECONDS = 10.0


def task_id(number: int) -> str:
    """A distinct, valid task id for each small number."""
    return f"0f8e3a52-6c1d-4a8e-9a53-{number:012x}"


def machine() -> str:
    """One line naming the machine the figures came from."""
    model = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    meminfo = Path("/proc/meminfo").read_text().split()
    mem_gib = int(meminfo[meminfo.index("MemTotal:") + 1]) / 1024 / 1024
    return (
        f"{os.cpu_count()} CPUs ({model}), {mem_gib:.0f} GiB RAM, "
        f"Linux {platform.release()}, Python {platform.python_version()}"
    )


def wait_for(condition: Callable[[], Any], seconds: float, what: str) -> Any:
    """Poll `condition` until it is truthy; its value. Raises on the deadline."""
    deadline = time.monotonic() + seconds
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {seconds:.0f} s")
        time.sleep(0.01)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


# --- devhub -------------------------------------------------------------


class Devhub:
    """A devhub process and its /_devhub/ paths."""

    def __init__(self, proc: subprocess.Popen[bytes], url: str, discard: bool):
        self.proc = proc
        self.pid = proc.pid
        self.url = url
        self.discard = discard
        self.http = httpx.Client(base_url=url, timeout=60)

    def describe(self) -> str:
        mode = "--discard (reads every byte, stores none)" if self.discard else ""
        return f"devhub {mode or '(parses and stores rows)'} at {self.url}"

    def endpoint(self, task: str, mode: str = "append") -> str:
        return f"{self.url}/v1/Tasks/{task}/data?mode={mode}"

    def requests(self) -> list[dict[str, Any]]:
        return self._get("/_devhub/requests")["requests"]

    def clear_requests(self) -> None:
        self.http.delete("/_devhub/requests").raise_for_status()

    def rows(self, table: str) -> list[dict[str, Any]]:
        return self._get(f"/_devhub/tables/{table}/rows")["rows"]

    def set_fault(self, kind: str, **spec: Any) -> None:
        response = self.http.post("/_devhub/faults", json={"kind": kind, **spec})
        response.raise_for_status()

    def clear_faults(self) -> None:
        self.http.delete("/_devhub/faults").raise_for_status()

    def reset(self) -> None:
        self.http.post("/_devhub/reset").raise_for_status()

    def _get(self, path: str) -> Any:
        response = self.http.get(path)
        response.raise_for_status()
        return response.json()


@contextmanager
def devhub(workdir: Path, tasks: dict[str, str], *, discard: bool) -> Iterator[Devhub]:
    """A devhub serving `tasks` (task id -> table) with one key for all."""
    workdir.mkdir(parents=True, exist_ok=True)
    config = {
        "task": [
            {"id": task, "name": table, "table": table} for task, table in tasks.items()
        ],
        "key": [{"name": "bench", "value": KEY}],
    }
    config_path = workdir / "devhub.toml"
    config_path.write_text(tomli_w.dumps(config))
    ready = workdir / "devhub-ready.json"
    command = [
        sys.executable, "-m", "hubwatchd", "devhub", "--port", "0",
        "--config", str(config_path), "--ready-file", str(ready),
        "--data-dir", str(workdir / "devhub-data"),
    ]  # fmt: skip
    if discard:
        command.append("--discard")
    with (workdir / "devhub.log").open("wb") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    hub = None
    try:
        wait_for(lambda: ready.exists() or proc.poll() is not None, 30, "devhub")
        if proc.poll() is not None:
            raise RuntimeError(f"devhub exited; see {workdir / 'devhub.log'}")
        hub = Devhub(proc, json.loads(ready.read_text())["url"], discard)
        yield hub
    finally:
        if hub is not None:
            hub.http.close()
        stop(proc)


def stop(proc: subprocess.Popen[Any]) -> None:
    """SIGTERM, then SIGKILL after STOP_SECONDS; idempotent."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(STOP_SECONDS)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(STOP_SECONDS)


# --- the daemon ---------------------------------------------------------


def write_config(
    workdir: Path,
    url: str,
    watches: list[dict[str, Any]],
    *,
    daemon: dict[str, Any] | None = None,
    retry: dict[str, Any] | None = None,
) -> Path:
    """A daemon config (JSON logs, state in workdir/state) with `watches`."""
    key = workdir / "hub.key"
    key.write_text(KEY)
    key.chmod(0o600)
    config: dict[str, Any] = {
        "hub": {"url": url, "api_key_file": str(key)},
        "daemon": {
            "state_dir": str(workdir / "state"),
            "log_format": "json",
            **(daemon or {}),
        },
        "watch": watches,
    }
    if retry:
        config["retry"] = retry
    path = workdir / "config.toml"
    path.write_text(tomli_w.dumps(config))
    path.chmod(0o600)
    return path


class Daemon:
    """`hubwatchd run` as a child process, its JSON log in a file."""

    def __init__(self, config: Path, log_path: Path) -> None:
        self.config = config
        self.log_path = log_path
        self.started = time.time()
        with log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "hubwatchd", "run", "-c", str(config)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.pid = self.proc.pid
        self._offset = log_path.stat().st_size
        self._profiler = _profile(self.pid, log_path)

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        """This run's log lines (from its start on), parsed; those named `name`."""
        with self.log_path.open("rb") as log:
            log.seek(self._offset)
            lines = log.read().splitlines()
        found = []
        for line in lines:
            start = line.find(b"{")
            if start < 0:
                continue
            try:
                event = json.loads(line[start:])
            except ValueError:
                continue
            if name is None or event.get("event") == name:
                found.append(event)
        return found

    def wait_ready(self, seconds: float = 120.0) -> dict[str, Any]:
        """The daemon.ready event, once logged; raises when the daemon died."""

        def ready() -> dict[str, Any] | None:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the daemon exited; see {self.log_path}")
            found = self.events("daemon.ready")
            return found[0] if found else None

        return wait_for(ready, seconds, "daemon.ready")

    def cpu_seconds(self) -> float:
        """utime + stime of the daemon so far, from /proc/PID/stat."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def kill(self) -> None:
        """SIGKILL: no shutdown, the ledger's recovery gets the rest."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(STOP_SECONDS)

    def stop(self) -> None:
        if self._profiler is not None and self._profiler.poll() is None:
            self._profiler.send_signal(signal.SIGINT)  # py-spy writes on SIGINT
            try:
                self._profiler.wait(STOP_SECONDS)
            except subprocess.TimeoutExpired:
                self._profiler.kill()
                self._profiler.wait()
        stop(self.proc)


def _profile(pid: int, log_path: Path) -> subprocess.Popen[bytes] | None:
    """With BENCH_PYSPY=DIR, py-spy samples the daemon into DIR/NAME.txt
    (collapsed stacks, threads apart, idle frames left out)."""
    folder = os.environ.get("BENCH_PYSPY")
    if not folder:
        return None
    out = Path(folder) / f"{log_path.parent.name}-{pid}.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    command = [
        str(Path(sys.executable).with_name("py-spy")), "record", "--pid", str(pid),
        "--format", "raw", "--threads", "--rate", "250", "-o", str(out),
    ]  # fmt: skip
    return subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


@contextmanager
def daemon(config: Path, log_path: Path) -> Iterator[Daemon]:
    running = Daemon(config, log_path)
    try:
        yield running
    finally:
        running.stop()


def log_time(event: dict[str, Any]) -> float:
    """The epoch seconds of a JSON log event's ISO timestamp."""
    return iso_time(event["timestamp"])


def iso_time(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def ledger_counts(state_dir: Path, watch: str | None = None) -> dict[str, int]:
    """Versions per state, read-only (safe while the daemon writes)."""
    db = state_dir / DB_NAME
    if not db.exists():
        return {}
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        sql = "SELECT state, COUNT(*) FROM versions"
        args: tuple[str, ...] = ()
        if watch is not None:
            sql += " WHERE watch = ?"
            args = (watch,)
        return dict(conn.execute(sql + " GROUP BY state", args).fetchall())
    except sqlite3.OperationalError:
        return {}  # not migrated yet
    finally:
        conn.close()
