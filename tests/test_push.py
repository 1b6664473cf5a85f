"""`hubwatchd push` as an operator runs it: a real process against devhub."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hubdata import (
    ALL_TABLES_KEY,
    ORDERS_KEY,
    ORDERS_TABLE,
    ORDERS_TASK,
    REPORT_TASK,
    SALES_KEY,
    SALES_TABLE,
    SALES_TASK,
    WRONG_KEY,
)

CSV = b"region,amount\nnorth,10\nsouth,20\n"
MIB = 1024 * 1024


def write_config(tmp_path: Path, hub_url: str, **hub: str) -> Path:
    """A config with [hub] key SALES_KEY and a watch "orders" (append)."""
    keys = tmp_path / "keys"
    keys.mkdir(exist_ok=True)
    (keys / "hub.key").write_text(SALES_KEY + "\n")
    (keys / "orders.key").write_text(ORDERS_KEY + "\n")
    drop = tmp_path / "drop"
    drop.mkdir(exist_ok=True)
    extra = "".join(f'{name} = "{value}"\n' for name, value in hub.items())
    config = tmp_path / "config.toml"
    config.write_text(
        f"""
[hub]
url = "{hub_url}"
api_key_file = "{keys / "hub.key"}"
{extra}
[daemon]
state_dir = "{tmp_path / "state"}"

[retry]
initial_delay = "10ms"
max_delay = "50ms"

[[watch]]
name = "orders"
path = "{drop}"
task_id = "{ORDERS_TASK}"
mode = "append"
api_key_file = "{keys / "orders.key"}"
"""
    )
    config.chmod(0o600)
    return config


def push(config: Path, *args: str | Path, env: dict | None = None):
    command = [sys.executable, "-m", "hubwatchd", "push", "-c", str(config)]
    return subprocess.run(
        command + [str(a) for a in args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture
def sales_csv(tmp_path: Path) -> Path:
    path = tmp_path / "sales.csv"
    path.write_bytes(CSV)
    return path


def test_push_with_task_uses_the_hub_key_and_exits_0(devhub, tmp_path, sales_csv):
    config = write_config(tmp_path, devhub.url)
    result = push(config, sales_csv, "--task", SALES_TASK)
    assert result.returncode == 0, result.stderr
    assert "2 rows" in result.stdout
    assert result.stderr == ""  # a pipe gets no progress bar and no log lines
    assert len(devhub.rows(SALES_TABLE)) == 2
    assert devhub.requests()[0]["mode"] == "replace"


def test_push_with_watch_uses_its_task_key_and_mode(devhub, tmp_path, sales_csv):
    config = write_config(tmp_path, devhub.url)
    for _ in range(2):
        result = push(config, sales_csv, "--watch", "orders")
        assert result.returncode == 0, result.stderr
    assert len(devhub.rows(ORDERS_TABLE)) == 4
    assert [r["mode"] for r in devhub.requests()] == ["append", "append"]


def test_push_several_files_in_order(devhub, tmp_path, sales_csv):
    config = write_config(tmp_path, devhub.url)
    second = tmp_path / "more.csv"
    second.write_bytes(b"region,amount\neast,5\n")
    result = push(config, sales_csv, second, "--task", SALES_TASK, "--mode", "append")
    assert result.returncode == 0, result.stderr
    assert [r["filename"] for r in devhub.requests()] == ["sales.csv", "more.csv"]
    assert len(devhub.rows(SALES_TABLE)) == 3


def test_key_from_a_file_or_the_environment(devhub, tmp_path, sales_csv):
    config = write_config(tmp_path, devhub.url)
    key_file = tmp_path / "all.key"
    key_file.write_text(ALL_TABLES_KEY)
    by_file = push(config, sales_csv, "--task", ORDERS_TASK, "--api-key-file", key_file)
    by_env = push(
        config,
        sales_csv,
        "--task",
        ORDERS_TASK,
        "--api-key-env",
        "MY_KEY",
        env={"MY_KEY": ALL_TABLES_KEY},
    )
    assert (by_file.returncode, by_env.returncode) == (0, 0)
    assert [r["key"] for r in devhub.requests()] == ["all", "all"]


def test_rejected_file_exits_65(devhub, tmp_path, sales_csv):
    config = write_config(tmp_path, devhub.url)
    result = push(
        config,
        sales_csv,
        "--task",
        REPORT_TASK,
        "--api-key-env",
        "K",
        env={"K": ALL_TABLES_KEY},
    )
    assert result.returncode == 65
    assert "the hub refused the file: HTTP 400" in result.stderr
    assert len(devhub.requests()) == 1  # not retried


def test_wrong_key_exits_77_and_stops(devhub, tmp_path, sales_csv):
    config = write_config(tmp_path, devhub.url)
    result = push(
        config,
        sales_csv,
        sales_csv,
        "--task",
        SALES_TASK,
        "--api-key-env",
        "K",
        env={"K": WRONG_KEY},
    )
    assert result.returncode == 77
    assert "HTTP 401" in result.stderr
    assert WRONG_KEY not in result.stderr + result.stdout
    assert len(devhub.requests()) == 1  # the second file was not tried


def test_a_passing_outage_is_retried_to_success(devhub, tmp_path, sales_csv):
    devhub.set_fault("status", status=503, count=2)
    config = write_config(tmp_path, devhub.url)
    result = push(config, sales_csv, "--task", SALES_TASK)
    assert result.returncode == 0, result.stderr
    assert [r["status"] for r in devhub.requests()] == [503, 503, 200]
    assert result.stderr.count("HTTP 503") == 2


def test_an_outage_longer_than_max_wait_exits_75(devhub, tmp_path, sales_csv):
    devhub.set_fault("status", status=503, count=0)
    config = write_config(tmp_path, devhub.url)
    result = push(config, sales_csv, "--task", SALES_TASK, "--max-wait", "500ms")
    assert result.returncode == 75
    assert "still failing after" in result.stderr
    assert len(devhub.requests()) >= 2


def test_retry_after_beyond_max_wait_ends_the_wait_at_once(devhub, tmp_path, sales_csv):
    devhub.set_fault("status", status=429, retry_after=3600)
    config = write_config(tmp_path, devhub.url)
    result = push(config, sales_csv, "--task", SALES_TASK, "--max-wait", "5m")
    assert result.returncode == 75
    assert "still failing after 1 attempt" in result.stderr


def test_an_append_that_may_be_in_is_not_sent_twice(devhub, tmp_path, sales_csv):
    devhub.set_fault("hang")
    config = write_config(tmp_path, devhub.url, answer_timeout="500ms")
    result = push(config, sales_csv, "--watch", "orders")
    assert result.returncode == 75
    assert "may have appended" in result.stderr
    assert len(devhub.requests()) == 1


def test_hub_down_exits_75(tmp_path, sales_csv):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = write_config(tmp_path, f"http://127.0.0.1:{port}")
    result = push(config, sales_csv, "--task", SALES_TASK, "--max-wait", "200ms")
    assert result.returncode == 75
    assert "cannot connect" in result.stderr


@pytest.mark.parametrize(
    ("name", "data", "message"),
    [
        ("empty.csv", b"", "empty file refused"),
        ("notes.txt", b"hello", "takes .csv, .json, .xlsx files only"),
    ],
)
def test_files_refused_locally_exit_65(devhub, tmp_path, name, data, message):
    config = write_config(tmp_path, devhub.url)
    path = tmp_path / name
    path.write_bytes(data)
    result = push(config, path, "--task", SALES_TASK)
    assert result.returncode == 65
    assert message in result.stderr
    assert devhub.requests() == []


def test_empty_file_with_allow_empty_is_sent(devhub, tmp_path):
    config = write_config(tmp_path, devhub.url)
    path = tmp_path / "empty.csv"
    path.write_bytes(b"")
    result = push(config, path, "--task", SALES_TASK, "--allow-empty")
    assert result.returncode == 65  # devhub: a CSV needs a header row
    assert "HTTP 400" in result.stderr
    assert len(devhub.requests()) == 1


def test_missing_file_exits_65(devhub, tmp_path):
    config = write_config(tmp_path, devhub.url)
    result = push(config, tmp_path / "gone.csv", "--task", SALES_TASK)
    assert result.returncode == 65
    assert "no such file" in result.stderr


def test_bad_config_exits_78(tmp_path, sales_csv):
    result = push(tmp_path / "missing.toml", sales_csv, "--task", SALES_TASK)
    assert result.returncode == 78


def test_unreadable_key_file_exits_78(devhub, tmp_path, sales_csv):
    config = write_config(tmp_path, devhub.url)
    result = push(
        config, sales_csv, "--task", SALES_TASK, "--api-key-file", tmp_path / "nope"
    )
    assert result.returncode == 78


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["--task", SALES_TASK, "--watch", "orders"],
        ["--task", "not-a-guid"],
        ["--watch", "orders", "--mode", "append"],
        ["--watch", "nobody"],
        ["--task", SALES_TASK, "--max-wait", "soon"],
    ],
)
def test_usage_mistakes_exit_64(devhub, tmp_path, sales_csv, args):
    config = write_config(tmp_path, devhub.url)
    result = push(config, sales_csv, *args)
    assert result.returncode in (2, 64)  # 2: click's own usage errors
    assert devhub.requests() == []


def test_verbose_push_logs_the_canonical_line_without_the_key(
    devhub, tmp_path, sales_csv
):
    config = write_config(tmp_path, devhub.url)
    result = push(config, sales_csv, "--task", SALES_TASK, "-vv")
    assert result.returncode == 0
    assert "upload.succeeded" in result.stderr
    assert "send_request_body" in result.stderr  # httpcore's wire talk
    assert SALES_KEY not in result.stderr + result.stdout


def test_a_terminal_gets_a_progress_bar(devhub, tmp_path):
    path = tmp_path / "sales.csv"
    with path.open("wb") as out:
        out.write(b"region,amount\n")
        out.write(b"north,1234567890\n" * (4 * MIB // 17))
    config = write_config(tmp_path, devhub.url)
    primary, secondary = pty.openpty()
    command = [sys.executable, "-m", "hubwatchd", "push", "-c", str(config)]
    proc = subprocess.Popen(
        [*command, str(path), "--task", SALES_TASK],
        stdout=subprocess.DEVNULL,
        stderr=secondary,
    )
    os.close(secondary)
    output = b""
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([primary], [], [], 0.1)
            if ready:
                try:
                    chunk = os.read(primary, 4096)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not chunk:
                    break
                output += chunk
            elif proc.poll() is not None:
                break
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(primary)
    assert b"sales.csv" in output
    assert b"100%" in output


# --- memory -------------------------------------------------------------------

# Runs `hubwatchd push` and reports its own peak RSS (VmHWM) as it exits.
MEASURED_PUSH = """
import atexit, sys
def report():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                sys.stderr.write("PEAK " + line.split()[1] + "\\n")
atexit.register(report)
from hubwatchd.cli import main
sys.argv[0] = "hubwatchd"
main()
"""


@pytest.mark.parametrize("mode", ["multipart", "raw"])
def test_a_1_gib_push_stays_under_60_mb_of_memory(devhub_factory, tmp_path, mode):
    hub = devhub_factory(discard=True)
    config = write_config(tmp_path, hub.url)
    path = tmp_path / ("big.csv" if mode == "multipart" else "big.json")
    with path.open("wb") as out:
        out.truncate(1024 * MIB)  # sparse: no disk used, every byte still read
    flags = ["--json-raw"] if mode == "raw" else []
    command = [sys.executable, "-c", MEASURED_PUSH, "push", "-c", str(config)]
    result = subprocess.run(
        [*command, str(path), "--task", SALES_TASK, *flags],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    (request,) = hub.requests()
    assert request["bytes"] == 1024 * MIB or request["content_length"] > 1024 * MIB
    peak_kib = int(result.stderr.split("PEAK ")[1].split()[0])
    assert peak_kib * 1024 < 60_000_000, f"peak RSS {peak_kib} KiB"
