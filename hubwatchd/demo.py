"""`hubwatchd demo`: devhub, two drop folders and the daemon, for a first look.

devhub runs as a child process on a free local port with its demo setup;
the daemon runs in this process with a config written into the demo folder:
one watch in replace mode (the Sales task) and one in append mode (the
Orders task). A sample CSV is dropped at once so that something happens.
Ctrl-C stops the daemon, then devhub, and removes a temporary folder.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import tomli_w

from hubwatchd import logs
from hubwatchd.config import load_config
from hubwatchd.daemon import Daemon
from hubwatchd.devhub.settings import DEMO_CONFIG

READY_DEADLINE = 30.0
SAMPLE = "region,product,units,revenue\nnorth,widget,12,340.50\nsouth,gadget,7,99.90\n"


def _demo_task(name: str) -> tuple[str, str, str]:
    """(task id, table, key) of the demo setup's task for `name`."""
    task = next(t for t in DEMO_CONFIG["task"] if t["name"].startswith(name))
    key = next(k for k in DEMO_CONFIG["key"] if k.get("tables") == [task["table"]])
    return task["id"], task["table"], key["value"]


def start_devhub(root: Path, port: int) -> tuple[subprocess.Popen[bytes], str]:
    """devhub as a child process; returns it and its base URL once it listens."""
    ready = root / "devhub.ready"
    ready.unlink(missing_ok=True)
    log_file = open(root / "devhub.log", "wb")  # noqa: SIM115 - the child keeps it
    command = [
        sys.executable,
        "-m",
        "hubwatchd",
        "devhub",
        "--port",
        str(port),
        "--data-dir",
        str(root / "hub"),
        "--ready-file",
        str(ready),
    ]
    child = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT)
    log_file.close()
    deadline = time.monotonic() + READY_DEADLINE
    while not ready.exists():
        if child.poll() is not None:
            text = (root / "devhub.log").read_text(errors="replace")
            raise RuntimeError(f"devhub exited with {child.returncode}:\n{text}")
        if time.monotonic() > deadline:
            child.kill()
            raise RuntimeError("devhub did not start within 30 s")
        time.sleep(0.05)
    return child, json.loads(ready.read_text())["url"]


def write_config(root: Path, url: str) -> tuple[Path, list[dict[str, Any]]]:
    """The daemon's config for the demo, with keys in files beside it."""
    keys = root / "keys"
    keys.mkdir(exist_ok=True)
    watches = []
    for label, mode in (("sales", "replace"), ("orders", "append")):
        task_id, table, key = _demo_task(label.capitalize())
        key_file = keys / f"{label}.key"
        key_file.write_text(key + "\n")
        key_file.chmod(0o600)
        folder = root / "drop" / label
        folder.mkdir(parents=True, exist_ok=True)
        watches.append(
            {
                "name": label,
                "path": str(folder),
                "task_id": task_id,
                "mode": mode,
                "settle": "1s",
                "api_key_file": str(key_file),
                "table": table,  # for the instructions only; removed below
            }
        )
    config = {
        "hub": {"url": url},
        "daemon": {"state_dir": str(root / "state"), "workers": 2},
        "retry": {"initial_delay": "1s", "max_delay": "10s"},
        "watch": [{k: v for k, v in w.items() if k != "table"} for w in watches],
    }
    path = root / "config.toml"
    path.write_text(tomli_w.dumps(config))
    path.chmod(0o600)
    return path, watches


def drop_sample(folder: Path) -> Path:
    """Write a small CSV the way a careful exporter does: temp name, rename."""
    final = folder / "sample.csv"
    temp = folder / "sample.csv.part"
    temp.write_text(SAMPLE)
    temp.rename(final)
    return final


def run_demo(directory: Path | None, port: int) -> int:
    """Run the demo until Ctrl-C; returns the exit code."""
    root = directory or Path(tempfile.mkdtemp(prefix="hubwatchd-demo-"))
    root.mkdir(parents=True, exist_ok=True)
    devhub = None
    try:
        devhub, url = start_devhub(root, port)
        config_path, watches = write_config(root, url)
        print(f"hubwatchd demo in {root}")
        print(f"  hub (devhub):  {url}   tables: {url}/_devhub/tables")
        print("  drop CSV, JSON or XLSX files into:")
        for w in watches:
            print(f"    {w['path']:<40} -> table {w['table']} ({w['mode']})")
        print(f"  look:  hubwatchd status -c {config_path}")
        print(f"         curl -s {url}/_devhub/tables/Sales/rows")
        sample = drop_sample(Path(watches[0]["path"]))
        print(f"  a sample was dropped: {sample}")
        print("  Ctrl-C stops everything.\n", flush=True)

        config = load_config(config_path)
        logs.configure(config.daemon.log_format, config.daemon.log_level)
        return Daemon(config).run()
    finally:
        if devhub is not None:
            devhub.terminate()
            try:
                devhub.wait(10)
            except subprocess.TimeoutExpired:
                devhub.kill()
                devhub.wait()
        if directory is None:
            shutil.rmtree(root, ignore_errors=True)
