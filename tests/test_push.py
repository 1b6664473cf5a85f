"""`hubwatchd push` as an operator runs it: a real process against devhub."""

from __future__ import annotations

import hashlib
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

from hubwatchd import report
from hubwatchd.config import load_config
from hubwatchd.dispatch import Dispatcher
from hubwatchd.ledger import Ledger, StateLock
from hubwatchd.push import PUSH_WATCH, PushTarget, open_file, push_recorded

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
    result = push(config, sales_csv, "--watch", "orders")
    assert result.returncode == 0, result.stderr
    assert len(devhub.rows(ORDERS_TABLE)) == 2
    assert [r["mode"] for r in devhub.requests()] == ["append"]


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
    again = tmp_path / "again.csv"  # a new version: the first one is done
    again.write_bytes(CSV)
    by_env = push(
        config,
        again,
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


# --- the ledger ---------------------------------------------------------------


def open_ledger(tmp_path: Path) -> Ledger:
    return Ledger.open(tmp_path / "state", create=False)


@pytest.fixture
def dropped(tmp_path: Path) -> Path:
    """A CSV inside the "orders" watch's folder (created by write_config)."""
    path = tmp_path / "drop" / "orders.csv"
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(CSV)
    return path


def test_a_pushed_file_is_recorded_done_and_not_pushed_again(devhub, tmp_path, dropped):
    config = write_config(tmp_path, devhub.url)
    first = push(config, dropped, "--watch", "orders")
    assert first.returncode == 0, first.stderr
    with open_ledger(tmp_path) as ledger:
        [version] = ledger.history()
        [attempt] = ledger.attempts(version.id)
    st = dropped.stat()
    assert (version.watch, version.path, version.task_id, version.mode) == (
        "orders",
        str(dropped),
        ORDERS_TASK,
        "append",
    )
    assert (version.size, version.mtime_ns, version.inode) == (
        st.st_size,
        st.st_mtime_ns,
        st.st_ino,
    )
    assert (version.state, version.rows, version.attempts) == ("done", 2, 1)
    assert version.sha256 == hashlib.sha256(CSV).hexdigest()
    assert version.disposition == "pending"  # the daemon archives it
    assert (attempt.outcome, attempt.status, attempt.body_complete) == (
        "success",
        200,
        True,
    )
    assert f"recorded done (#{version.id}, watch orders)" in first.stdout
    assert dropped.exists()  # push never moves a file

    again = push(config, dropped, "--watch", "orders")
    assert again.returncode == 0, again.stderr
    assert f"already uploaded on {report.when(version.done_at)} (#{version.id})" in (
        again.stdout
    )
    assert len(devhub.requests()) == 1
    assert len(devhub.rows(ORDERS_TABLE)) == 2


def test_the_daemon_never_claims_a_pushed_version_and_archives_it(
    devhub, tmp_path, dropped
):
    config_file = write_config(tmp_path, devhub.url)
    # --task to the watch's own task, mode and key finds the watch by its folder.
    result = push(
        config_file, dropped, "--task", ORDERS_TASK, "--mode", "append",
        "--api-key-file", tmp_path / "keys" / "orders.key",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    config = load_config(config_file)
    with open_ledger(tmp_path) as ledger:
        [version] = ledger.history()
        assert version.watch == "orders"
        # What the daemon's start-up scan and claims see: known, nothing due.
        known = ledger.known_identities("orders")
        st = dropped.stat()
        assert (str(dropped), st.st_size, st.st_mtime_ns, st.st_ino) in known
        assert ledger.claim_next(watches=["orders"]) is None
        dispatcher = Dispatcher(config, ledger, client=None)
        try:
            dispatcher.finish_dispositions()
        finally:
            dispatcher.stop(0)
        archived = ledger.get(version.id)
    assert archived.disposition == "archived"
    assert not dropped.exists() and Path(archived.disposed_to).read_bytes() == CSV


def test_a_file_outside_every_watch_is_recorded_as_push_and_kept(
    devhub, tmp_path, sales_csv
):
    config = write_config(tmp_path, devhub.url)
    result = push(config, sales_csv, "--task", SALES_TASK)
    assert result.returncode == 0, result.stderr
    with open_ledger(tmp_path) as ledger:
        [version] = ledger.history()
        assert (version.watch, version.path, version.state) == (
            PUSH_WATCH,
            str(sales_csv),
            "done",
        )
        assert version.disposition == "kept"  # no daemon moves it
        assert ledger.pending_dispositions() == []
    again = push(config, sales_csv, "--task", SALES_TASK)
    assert "already uploaded" in again.stdout
    assert len(devhub.requests()) == 1


def test_a_watched_file_pushed_with_another_key_never_blocks_its_watch(
    devhub, tmp_path, dropped
):
    config = write_config(tmp_path, devhub.url)
    # The [hub] key may not write Orders: 403. The watch's own key is fine.
    result = push(config, dropped, "--task", ORDERS_TASK, "--mode", "append")
    assert result.returncode == 77
    assert "is input for watch orders, but was pushed with another" in result.stderr
    with open_ledger(tmp_path) as ledger:
        [version] = ledger.history()
        assert (version.watch, version.state) == (PUSH_WATCH, "failed")
        assert ledger.blocked_watches() == {}


def test_each_retry_is_an_attempt_in_the_ledger(devhub, tmp_path, dropped):
    devhub.set_fault("status", status=503, count=2)
    config = write_config(tmp_path, devhub.url)
    result = push(config, dropped, "--watch", "orders")
    assert result.returncode == 0, result.stderr
    with open_ledger(tmp_path) as ledger:
        [version] = ledger.history()
        attempts = ledger.attempts(version.id)
    assert (version.state, version.attempts) == ("done", 3)
    assert [(a.outcome, a.status) for a in attempts] == [
        ("retry", 503),
        ("retry", 503),
        ("success", 200),
    ]


def test_a_rejected_push_is_failed_with_its_reason(devhub, tmp_path, sales_csv):
    config = write_config(tmp_path, devhub.url)
    result = push(
        config, sales_csv, "--task", REPORT_TASK, "--api-key-env", "K",
        env={"K": ALL_TABLES_KEY},
    )  # fmt: skip
    assert result.returncode == 65
    with open_ledger(tmp_path) as ledger:
        [version] = ledger.history()
    assert (version.state, version.last_status) == ("failed", 400)
    assert version.last_error.startswith("HTTP 400")
    assert version.disposition == "kept"


def test_a_rejected_push_of_a_watched_file_goes_to_the_failed_folder_later(
    devhub, tmp_path
):
    config = write_config(tmp_path, devhub.url)
    bad = tmp_path / "drop" / "bad.csv"
    bad.write_bytes(b"")  # devhub: a CSV needs a header row
    result = push(config, bad, "--watch", "orders", "--allow-empty")
    assert result.returncode == 65
    assert "the daemon moves the file to the failed folder" in result.stderr
    with open_ledger(tmp_path) as ledger:
        [version] = ledger.history()
    assert (version.watch, version.state, version.disposition) == (
        "orders",
        "failed",
        "pending",
    )
    assert bad.exists()


def test_an_in_doubt_append_exits_75_and_is_held(devhub, tmp_path, dropped):
    devhub.set_fault("hang")
    config = write_config(tmp_path, devhub.url, answer_timeout="500ms")
    result = push(config, dropped, "--watch", "orders")
    assert result.returncode == 75
    assert "may have appended" in result.stderr
    with open_ledger(tmp_path) as ledger:
        [version] = ledger.history()
        assert version.state == "in_doubt"
        assert ledger.claim_next() is None
    assert f"hubwatchd retry {version.id}" in result.stderr

    devhub.clear_faults()
    again = push(config, dropped, "--watch", "orders")
    assert again.returncode == 75
    assert f"held in doubt (#{version.id})" in again.stderr
    assert len(devhub.requests()) == 1


def test_an_outage_past_max_wait_leaves_a_watched_file_to_the_daemon(
    devhub, tmp_path, dropped
):
    devhub.set_fault("status", status=503, count=0)
    config = write_config(tmp_path, devhub.url)
    result = push(config, dropped, "--watch", "orders", "--max-wait", "200ms")
    assert result.returncode == 75
    assert "the daemon tries again at" in result.stderr
    with open_ledger(tmp_path) as ledger:
        [version] = ledger.history()
    assert version.state == "retry_wait" and version.last_status == 503


def test_an_outage_past_max_wait_closes_a_push_version_failed(
    devhub, tmp_path, sales_csv
):
    devhub.set_fault("status", status=503, count=0)
    config = write_config(tmp_path, devhub.url)
    result = push(config, sales_csv, "--task", SALES_TASK, "--max-wait", "200ms")
    assert result.returncode == 75
    with open_ledger(tmp_path) as ledger:
        [version] = ledger.history()
        # Nothing of the "(push)" watch may wait in a task's queue: no daemon
        # serves it, and the daemon holds a task whose head it cannot take.
        assert ledger.next_due_at() is None
    assert (version.state, version.disposition) == ("failed", "kept")
    assert version.last_error.startswith("push gave up: HTTP 503")

    devhub.clear_faults()
    again = push(config, sales_csv, "--task", SALES_TASK)  # tried again
    assert again.returncode == 0, again.stderr
    with open_ledger(tmp_path) as ledger:
        assert ledger.get(version.id).state == "done"


def test_a_wrong_key_leaves_no_push_watch_blocked(devhub, tmp_path, sales_csv):
    config = write_config(tmp_path, devhub.url)
    result = push(
        config, sales_csv, "--task", SALES_TASK, "--api-key-env", "K",
        env={"K": WRONG_KEY},
    )  # fmt: skip
    assert result.returncode == 77
    with open_ledger(tmp_path) as ledger:
        [version] = ledger.history()
        assert version.state == "failed"
        assert ledger.blocked_watches() == {}


def test_push_works_beside_a_daemon_holding_the_state_lock(devhub, tmp_path, dropped):
    config = write_config(tmp_path, devhub.url)
    with StateLock(tmp_path / "state"):
        result = push(config, dropped, "--watch", "orders")
    assert result.returncode == 0, result.stderr
    with open_ledger(tmp_path) as ledger:
        assert [v.state for v in ledger.history()] == ["done"]


def test_push_without_a_usable_state_dir_still_uploads_and_warns(devhub, tmp_path):
    config = write_config(tmp_path, devhub.url)
    (tmp_path / "state").write_text("a file, not a folder")
    path = tmp_path / "drop" / "orders.csv"
    path.write_bytes(CSV)
    result = push(config, path, "--watch", "orders")
    assert result.returncode == 0, result.stderr
    assert "warning: not recorded in the ledger" in result.stderr
    assert len(devhub.rows(ORDERS_TABLE)) == 2


def test_a_path_through_a_linked_folder_is_recorded_as_the_daemon_sees_it(
    devhub, tmp_path, dropped
):
    config = write_config(tmp_path, devhub.url)
    link = tmp_path / "shortcut"
    link.symlink_to(tmp_path / "drop")
    result = push(config, link / "orders.csv", "--watch", "orders")
    assert result.returncode == 0, result.stderr
    with open_ledger(tmp_path) as ledger:
        [version] = ledger.history()
    assert (version.watch, version.path) == ("orders", str(dropped))


def test_a_symlinked_file_is_refused(devhub, tmp_path, sales_csv):
    config = write_config(tmp_path, devhub.url)
    link = tmp_path / "drop" / "link.csv"
    link.symlink_to(sales_csv)
    result = push(config, link, "--watch", "orders")
    assert result.returncode == 65
    assert "it is a symbolic link" in result.stderr
    assert str(sales_csv) in result.stderr
    assert devhub.requests() == []


class InterruptedClient:
    """Ctrl-C during the upload, after (or before) the body-sent hook ran."""

    def __init__(self, *, after_mark: bool) -> None:
        self.after_mark = after_mark

    def upload(self, _path, **kwargs):
        if self.after_mark:
            kwargs["on_body_sent"]()
        raise KeyboardInterrupt


@pytest.mark.parametrize(
    ("watched", "after_mark", "state"),
    [
        (True, True, "in_doubt"),  # the final piece may have gone
        (True, False, "retry_wait"),  # the hub cannot have the whole body
        (False, False, "failed"),  # no daemon goes on with a (push) version
    ],
)
def test_ctrl_c_during_a_push_is_recorded_on_the_safe_side(
    tmp_path, dropped, sales_csv, watched, after_mark, state
):
    config = load_config(write_config(tmp_path, "http://127.0.0.1:9"))
    watch = config.watch("orders")
    target = PushTarget(watch.task_id, watch.mode, watch.api_key, watch="orders")
    path = dropped if watched else sales_csv
    client = InterruptedClient(after_mark=after_mark)
    with Ledger.open(tmp_path / "state") as ledger, open_file(path, target) as file:
        with pytest.raises(KeyboardInterrupt):
            push_recorded(client, ledger, config, target, file, max_wait=1.0)
        [version] = ledger.history()
        [attempt] = ledger.attempts(version.id)
    assert version.state == state
    assert attempt.outcome == "retry" and attempt.error == "push stopped: interrupted"


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
