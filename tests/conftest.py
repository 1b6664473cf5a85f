"""Shared fixtures. `devhub` / `devhub_factory`: a real devhub in its own process.

    def test_upload(devhub):                      # the standard setup of hubdata
        httpx.post(devhub.endpoint(SALES_TASK), ...)
        assert devhub.rows(SALES_TABLE) == [...]

    def test_slow_hub(devhub_factory):
        hub = devhub_factory(config={...}, discard=False, max_body_size=1000)
        hub.set_fault("status", status=503, retry_after=5, count=2)

The process is started with `python -m hubwatchd devhub --port 0 --ready-file`,
waited for until it answers, and stopped (SIGTERM, then SIGKILL) when the test
ends. Its stdout and stderr go to files in tmp_path (`.log_path`).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import tomli_w
from hubdata import STANDARD_CONFIG

START_SECONDS = 20.0
STOP_SECONDS = 10.0


class DevhubProcess:
    """A running devhub and helpers over its /_devhub/ paths."""

    def __init__(
        self,
        proc: subprocess.Popen[bytes],
        url: str,
        config: dict[str, Any],
        log_path: Path,
    ) -> None:
        self.proc = proc
        self.pid = proc.pid
        self.url = url
        self.log_path = log_path
        self.config = config
        #: task id -> the task's config entry (id, name, type, table)
        self.tasks = {t["id"]: t for t in config.get("task", [])}
        #: key value -> the key's config entry (name, value, tables)
        self.keys = {k["value"]: k for k in config.get("key", [])}
        self._client = httpx.Client(base_url=url, timeout=30)

    def endpoint(self, task_id: str, mode: str | None = None) -> str:
        """The upload URL of `task_id`, with `?mode=` when given."""
        query = f"?mode={mode}" if mode else ""
        return f"{self.url}/v1/Tasks/{task_id}/data{query}"

    def set_fault(self, kind: str, **spec: Any) -> list[dict[str, Any]]:
        """Add a fault (see hubwatchd/devhub/faults.py); the faults in force."""
        response = self._client.post("/_devhub/faults", json={"kind": kind, **spec})
        response.raise_for_status()
        return response.json()["faults"]

    def faults(self) -> list[dict[str, Any]]:
        return self._get("/_devhub/faults")["faults"]

    def clear_faults(self, task: str | None = None) -> None:
        params = {"task": task} if task else None
        self._client.delete("/_devhub/faults", params=params).raise_for_status()

    def rows(self, table: str) -> list[dict[str, Any]]:
        """Every row of `table`, in upload order ([] when never written)."""
        return self._get(f"/_devhub/tables/{table}/rows")["rows"]

    def columns(self, table: str) -> list[str]:
        return self._get(f"/_devhub/tables/{table}/rows?limit=0")["columns"]

    def tables(self) -> dict[str, int]:
        """Each configured table and its row count."""
        return {t["name"]: t["rows"] for t in self._get("/_devhub/tables")["tables"]}

    def requests(self) -> list[dict[str, Any]]:
        """The upload request log, oldest first (see README: devhub)."""
        return self._get("/_devhub/requests")["requests"]

    def clear_requests(self) -> None:
        self._client.delete("/_devhub/requests").raise_for_status()

    def _get(self, path: str) -> Any:
        response = self._client.get(path)
        response.raise_for_status()
        return response.json()

    def reset(self) -> None:
        """Empty every table and the request log; faults back to the config's."""
        self._client.post("/_devhub/reset").raise_for_status()

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after STOP_SECONDS; idempotent."""
        self._client.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(STOP_SECONDS)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(STOP_SECONDS)


def start_devhub(
    workdir: Path,
    config: dict[str, Any] | None = None,
    *,
    discard: bool = False,
    max_body_size: int | None = None,
    data_dir: Path | None = None,
) -> DevhubProcess:
    """Start devhub serving `config` (default: hubdata.STANDARD_CONFIG)."""
    config = STANDARD_CONFIG if config is None else config
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / "devhub.toml"
    config_path.write_text(tomli_w.dumps(config), encoding="utf-8")
    ready = workdir / "ready.json"
    ready.unlink(missing_ok=True)
    command = [
        sys.executable, "-m", "hubwatchd", "devhub", "--port", "0",
        "--config", str(config_path), "--ready-file", str(ready),
        "--data-dir", str(data_dir or workdir / "data"),
    ]  # fmt: skip
    if discard:
        command.append("--discard")
    if max_body_size is not None:
        command += ["--max-body-size", str(max_body_size)]
    log_path = workdir / "devhub.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + START_SECONDS
    try:
        url = _wait_until_ready(proc, ready, deadline, log_path)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return DevhubProcess(proc, url, config, log_path)


def _wait_until_ready(
    proc: subprocess.Popen[bytes], ready: Path, deadline: float, log_path: Path
) -> str:
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            output = log_path.read_text(errors="replace")
            raise RuntimeError(f"devhub exited with {proc.returncode}:\n{output}")
        if ready.exists():
            url = json.loads(ready.read_text())["url"]
            try:
                httpx.get(f"{url}/_devhub/tasks", timeout=2).raise_for_status()
                return url
            except httpx.HTTPError:
                pass
        time.sleep(0.02)
    raise RuntimeError(f"devhub did not answer within {START_SECONDS}s")


@pytest.fixture
def devhub_factory(tmp_path: Path) -> Iterator[Callable[..., DevhubProcess]]:
    """Start devhubs: `devhub_factory(config=None, discard=False, **opts)`.

    opts: max_body_size (bytes), data_dir. Every devhub started is stopped
    when the test ends.
    """
    started: list[DevhubProcess] = []

    def factory(
        config: dict[str, Any] | None = None, discard: bool = False, **opts: Any
    ) -> DevhubProcess:
        hub = start_devhub(
            tmp_path / f"devhub-{len(started)}", config, discard=discard, **opts
        )
        started.append(hub)
        return hub

    yield factory
    for hub in started:
        hub.stop()


@pytest.fixture(scope="session")
def _standard_devhub(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[DevhubProcess]:
    hub = start_devhub(tmp_path_factory.mktemp("devhub-standard"))
    yield hub
    hub.stop()


@pytest.fixture
def devhub(_standard_devhub: DevhubProcess) -> DevhubProcess:
    """A devhub serving hubdata.STANDARD_CONFIG, fresh for each test.

    One process serves the whole session (starting one per test costs a
    second each); before every test its tables and request log are emptied
    and its faults cleared. Do not stop it; use `devhub_factory` for a devhub
    of your own (another config, discard mode, a size limit, or to measure
    its process).
    """
    if _standard_devhub.proc.poll() is not None:
        pytest.fail(f"the shared devhub died; see {_standard_devhub.log_path}")
    _standard_devhub.reset()
    return _standard_devhub
