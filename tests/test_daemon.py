"""The daemon end to end: `hubwatchd run` as a subprocess, devhub as another,
real drop folders. What the operator sees is what is checked: devhub's tables
and request log, the ledger, the folders, the JSON log."""

from __future__ import annotations

import hashlib
import json
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemonkit import (
    DaemonKit,
    csv_rows,
    daemon_config,
    drop,
    files_under,
    watch_entry,
    write_key,
)
from hubdata import (
    CATALOG_KEY,
    CATALOG_TABLE,
    CATALOG_TASK,
    INVENTORY_KEY,
    INVENTORY_TABLE,
    INVENTORY_TASK,
    ORDERS_KEY,
    ORDERS_TABLE,
    ORDERS_TASK,
    SALES_KEY,
    SALES_TABLE,
    SALES_TASK,
    WRONG_KEY,
)

# Closed states: nothing more will happen to these versions on their own.
SETTLED = {"done", "skipped", "superseded", "failed", "in_doubt", "forgotten"}


@pytest.fixture
def kit(tmp_path: Path) -> Iterator[DaemonKit]:
    with DaemonKit(tmp_path / "run") as kit:
        yield kit


def archived_names(folder: Path) -> list[str]:
    return sorted(p.name for p in files_under(folder / ".hubwatchd-archive"))


def drop_names(folder: Path) -> list[str]:
    """What is left in a drop folder itself (not archive or failed folders)."""
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))


def test_a_dropped_file_is_uploaded_once_and_archived(devhub, kit, tmp_path):
    orders = watch_entry(tmp_path, "orders", ORDERS_TASK, ORDERS_KEY, "append")
    daemon = kit.start(daemon_config(devhub.url, tmp_path, [orders]))
    folder = Path(orders["path"])

    drop(folder, "o1.csv", csv_rows("o1", 3))
    daemon.wait_for(lambda: daemon.states() == {"o1.csv": "done"}, what="o1 done")
    daemon.wait_for(lambda: archived_names(folder) == ["o1.csv"], what="archived")

    assert drop_names(folder) == []
    assert len(devhub.rows(ORDERS_TABLE)) == 3
    assert [r["status"] for r in devhub.requests()] == [200]
    # The canonical line names the watch too, though the client logs it.
    assert daemon.event("upload.succeeded", path=str(folder / "o1.csv"), watch="orders")

    daemon.signal(signal.SIGTERM)
    assert daemon.wait_exit() == 0
    assert daemon.event("daemon.stopped")


# --- 1,000 files over four tasks ---------------------------------------------

FILES_PER_WATCH = 250
# Append files whose content repeats an earlier file's: skipped, not sent.
DUPLICATES = {100: 10, 200: 20}  # index -> the index whose content it repeats


def ok_requests(devhub, task_id: str) -> list[dict]:
    """devhub's successful requests for `task_id`, in arrival order."""
    return [r for r in devhub.requests() if r["task"] == task_id and r["status"] == 200]


def test_a_thousand_files_over_four_tasks_land_once_in_order(devhub, kit, tmp_path):
    append = {
        "orders": (ORDERS_TASK, ORDERS_KEY, ORDERS_TABLE),
        "inventory": (INVENTORY_TASK, INVENTORY_KEY, INVENTORY_TABLE),
    }
    replace = {
        "sales": (SALES_TASK, SALES_KEY, SALES_TABLE),
        "catalog": (CATALOG_TASK, CATALOG_KEY, CATALOG_TABLE),
    }
    watches = [
        watch_entry(tmp_path, name, task, key, mode)
        for mode, group in (("append", append), ("replace", replace))
        for name, (task, key, _table) in group.items()
    ]
    folders = {w["name"]: Path(w["path"]) for w in watches}
    # The hub refuses the replace tasks until the whole backlog is queued.
    for task, _key, _table in replace.values():
        devhub.set_fault("status", task=task, status=503, count=0)
    daemon = kit.start(daemon_config(devhub.url, tmp_path, watches))

    contents: dict[str, dict[str, str]] = {name: {} for name in folders}
    for index in range(FILES_PER_WATCH):
        for name, folder in folders.items():
            source = DUPLICATES.get(index, index) if name in append else index
            text = csv_rows(f"{name}-{source}", rows=1 + source % 3)
            contents[name][f"{name}-{index:04d}.csv"] = text
            drop(folder, f"{name}-{index:04d}.csv", text)

    def replace_backlog_queued() -> bool:
        return all(len(daemon.versions(name)) == FILES_PER_WATCH for name in replace)

    daemon.wait_for(replace_backlog_queued, 60, "the replace backlog", 0.2)
    devhub.clear_faults()

    def all_archived() -> bool:
        versions = daemon.versions()
        return (
            len(versions) == len(folders) * FILES_PER_WATCH
            and all(v.state in SETTLED for v in versions)
            and all(v.disposition == "archived" for v in versions)
        )

    daemon.wait_for(all_archived, 90, "every file done and archived", 0.2)

    for name, (task, _key, table) in append.items():
        versions = daemon.versions(name)
        done = [Path(v.path).name for v in versions if v.state == "done"]
        skipped = {Path(v.path).name for v in versions if v.state == "skipped"}
        assert skipped == {f"{name}-{i:04d}.csv" for i in DUPLICATES}
        assert len(done) == FILES_PER_WATCH - len(DUPLICATES)
        sent = ok_requests(devhub, task)
        # Once each, in the order the ledger made them ready.
        assert [r["filename"] for r in sent] == done
        assert len({r["sha256"] for r in sent}) == len(sent)
        expected = sum(contents[name][f].count("\n") - 1 for f in done)
        assert len(devhub.rows(table)) == expected

    for name, (task, _key, table) in replace.items():
        versions = daemon.versions(name)
        newest = Path(versions[-1].path).name
        assert [Path(v.path).name for v in versions if v.state == "done"] == [newest]
        assert {v.state for v in versions[:-1]} == {"superseded"}
        assert [r["filename"] for r in ok_requests(devhub, task)] == [newest]
        assert len(devhub.rows(table)) == contents[name][newest].count("\n") - 1

    for name, folder in folders.items():
        assert drop_names(folder) == []
        assert archived_names(folder) == sorted(contents[name])


# --- stopping -----------------------------------------------------------------


def in_flight(daemon, name: str):
    """The named file's version, once devhub holds its whole body (its
    request is logged with a byte count) and the ledger has it uploading."""
    versions = [v for v in daemon.versions() if Path(v.path).name == name]
    return versions and versions[-1].state == "uploading"


def test_sigterm_lets_uploads_in_flight_finish(devhub, kit, tmp_path):
    orders = watch_entry(tmp_path, "orders", ORDERS_TASK, ORDERS_KEY, "append")
    daemon = kit.start(daemon_config(devhub.url, tmp_path, [orders]))
    devhub.set_fault("delay", seconds=2)

    drop(Path(orders["path"]), "slow.csv", csv_rows("slow"))
    daemon.wait_for(lambda: in_flight(daemon, "slow.csv"), what="upload in flight")
    daemon.wait_for(lambda: devhub.requests(), what="the request at the hub")
    daemon.signal(signal.SIGTERM)

    assert daemon.wait_exit() == 0
    assert daemon.event("daemon.stopped")
    assert not daemon.event("dispatch.cancelling")
    assert daemon.states() == {"slow.csv": "done"}
    assert len(devhub.rows(ORDERS_TABLE)) == 2


def test_sigterm_does_not_wait_for_a_hub_that_never_answers(devhub, kit, tmp_path):
    # The answer timeout is 30 minutes; the grace is one second. The upload
    # is abandoned, and the next start holds it in doubt (its body was sent).
    orders = watch_entry(tmp_path, "orders", ORDERS_TASK, ORDERS_KEY, "append")
    sales = watch_entry(tmp_path, "sales", SALES_TASK, SALES_KEY, "replace")
    config = daemon_config(devhub.url, tmp_path, [orders, sales], shutdown_grace="1s")
    config["hub"]["answer_timeout"] = "30m"
    daemon = kit.start(config)
    devhub.set_fault("hang", count=0)

    drop(Path(orders["path"]), "o.csv", csv_rows("o"))
    drop(Path(sales["path"]), "s.csv", csv_rows("s"))
    daemon.wait_for(
        lambda: in_flight(daemon, "o.csv") and in_flight(daemon, "s.csv"),
        what="both uploads in flight",
    )
    daemon.wait_for(lambda: len(devhub.requests()) == 2, what="both at the hub")
    daemon.signal(signal.SIGTERM)

    assert daemon.wait_exit(20) == 0
    assert daemon.event("daemon.stopped")
    assert daemon.event("dispatch.cancelling")

    devhub.clear_faults()
    again = kit.start(daemon.config)
    again.wait_for(
        lambda: again.states() == {"o.csv": "in_doubt", "s.csv": "done"},
        what="the append in doubt, the replace sent again",
    )
    assert len(devhub.rows(SALES_TABLE)) == 2


# --- hub faults ---------------------------------------------------------------


def big_csv(tag: str, rows: int) -> str:
    """About `rows` KiB of CSV: long enough that a cut lands mid-body."""
    filler = "x" * 1000
    return "tag,n,value\n" + "".join(f"{tag},{n},{filler}\n" for n in range(rows))


def test_hub_faults_delay_but_never_lose_or_repeat_an_upload(devhub, kit, tmp_path):
    orders = watch_entry(tmp_path, "orders", ORDERS_TASK, ORDERS_KEY, "append")
    sales = watch_entry(tmp_path, "sales", SALES_TASK, SALES_KEY, "replace")
    # Each task's head of line meets every fault in turn; the append task's
    # first file is 8 MiB so that the cut lands mid-body (a cut after the
    # whole body was sent would rightly leave it in doubt).
    devhub.set_fault("cut", task=ORDERS_TASK, after_bytes=1000)
    devhub.set_fault("status", task=ORDERS_TASK, status=500)
    devhub.set_fault("status", task=ORDERS_TASK, status=429, retry_after=1)
    devhub.set_fault("status", task=ORDERS_TASK, status=503, count=2)
    devhub.set_fault("cut", task=SALES_TASK, after_bytes=10)
    devhub.set_fault("status", task=SALES_TASK, status=502)
    devhub.set_fault(
        "status", task=SALES_TASK, status=429, retry_after=1,
        retry_after_format="http-date",
    )  # fmt: skip
    daemon = kit.start(daemon_config(devhub.url, tmp_path, [orders, sales]))

    texts = {"o-00.csv": big_csv("o-00", 8192)}
    texts |= {f"o-{i:02d}.csv": csv_rows(f"o-{i}", 1 + i % 4) for i in range(1, 12)}
    for name, text in texts.items():
        drop(Path(orders["path"]), name, text)
    for i in range(3):
        drop(Path(sales["path"]), f"s-{i}.csv", csv_rows(f"s-{i}", 2 + i))

    def all_done() -> bool:
        states = daemon.states()
        return len(states) == 15 and set(states.values()) <= {"done", "superseded"}

    daemon.wait_for(all_done, 60, "every file delivered", 0.1)

    requests = devhub.requests()
    assert {r["fault"] for r in requests} >= {"cut", "status"}
    assert {r["status"] for r in requests} >= {None, 429, 500, 502, 503, 200}
    appended = [
        r["sha256"] for r in requests if r["task"] == ORDERS_TASK and r["status"] == 200
    ]
    assert len(appended) == len(set(appended)) == len(texts)
    expected = sum(text.count("\n") - 1 for text in texts.values())
    assert len(devhub.rows(ORDERS_TABLE)) == expected
    assert daemon.states("orders") == dict.fromkeys(texts, "done")
    assert daemon.states("sales")["s-2.csv"] == "done"
    assert len(devhub.rows(SALES_TABLE)) == 4
    assert daemon.events("upload.retrying")


def hubwatchd_status(daemon) -> dict[str, dict]:
    """`hubwatchd status --json`, by watch, as an operator would run it."""
    command = [sys.executable, "-m", "hubwatchd", "status", "--json"]
    result = subprocess.run(
        [*command, "-c", str(daemon.config_path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return {row["watch"]: row for row in json.loads(result.stdout)}


def test_a_refused_key_blocks_the_watch_until_a_reload_fixes_it(devhub, kit, tmp_path):
    # orders: a key devhub does not know (401), fixed in the key file.
    # inventory: a real key for another table (403), fixed by its path.
    orders = watch_entry(tmp_path, "orders", ORDERS_TASK, WRONG_KEY, "append")
    inventory = watch_entry(tmp_path, "inventory", INVENTORY_TASK, ORDERS_KEY, "append")
    config = daemon_config(devhub.url, tmp_path, [orders, inventory])
    daemon = kit.start(config)
    for i in range(3):
        drop(Path(orders["path"]), f"o-{i}.csv", csv_rows(f"o-{i}"))
        drop(Path(inventory["path"]), f"i-{i}.csv", csv_rows(f"i-{i}"))

    daemon.wait_for(
        lambda: (
            daemon.event("watch.blocked", watch="orders")
            and daemon.event("watch.blocked", watch="inventory")
        ),
        what="both watches blocked",
    )
    daemon.wait_for(
        lambda: len(daemon.states()) == 6, what="every file queued behind the block"
    )
    status = hubwatchd_status(daemon)
    assert status["orders"]["blocked_reason"].startswith("HTTP 401")
    assert status["inventory"]["blocked_reason"].startswith("HTTP 403")
    assert set(daemon.states().values()) <= {"blocked", "ready"}
    assert devhub.rows(ORDERS_TABLE) == devhub.rows(INVENTORY_TABLE) == []
    assert len(list(Path(orders["path"]).glob("*.csv"))) == 3

    write_key(tmp_path, "orders", ORDERS_KEY)
    fixed = dict(config)
    fixed["watch"] = [
        orders,
        inventory | {"api_key_file": str(write_key(tmp_path, "inv", INVENTORY_KEY))},
    ]
    daemon.reload(fixed)

    daemon.wait_for(
        lambda: set(daemon.states().values()) == {"done"}, what="all delivered"
    )
    assert daemon.event("config.reloaded")
    assert len(daemon.events("watch.unblocked")) == 2
    assert len(devhub.rows(ORDERS_TABLE)) == len(devhub.rows(INVENTORY_TABLE)) == 6
    status = hubwatchd_status(daemon)
    assert not status["orders"]["blocked_reason"]
    assert not status["inventory"]["blocked_reason"]


# --- crashes ------------------------------------------------------------------


def sent_in_full(daemon, watch: str):
    """A version of `watch` uploading whose whole body the ledger says was
    sent (so a crash now must leave it in doubt), or None."""
    with daemon.ledger() as ledger:
        for version in ledger._versions("watch = ? AND state = 'uploading'", [watch]):
            if any(a.body_complete for a in ledger.attempts(version.id)):
                return version
    return None


def test_sigkill_mid_backlog_loses_nothing_and_repeats_nothing_silently(
    devhub, kit, tmp_path
):
    orders = watch_entry(tmp_path, "orders", ORDERS_TASK, ORDERS_KEY, "append")
    sales = watch_entry(tmp_path, "sales", SALES_TASK, SALES_KEY, "replace")
    config = daemon_config(devhub.url, tmp_path, [orders, sales])
    daemon = kit.start(config)
    # Each answer comes a second after devhub has stored the rows.
    devhub.set_fault("delay", seconds=1, count=0)
    texts = {f"o-{i}.csv": csv_rows(f"o-{i}", 1 + i) for i in range(6)}
    for name, text in texts.items():
        drop(Path(orders["path"]), name, text)
    for i in range(3):
        drop(Path(sales["path"]), f"s-{i}.csv", csv_rows(f"s-{i}", 2 + i))

    def mid_backlog():
        states = daemon.states("orders")
        return (
            "done" in states.values()
            and "ready" in states.values()
            and sent_in_full(daemon, "orders")
        )

    daemon.wait_for(mid_backlog, what="an append sent in full, waiting its answer")
    daemon.kill()
    devhub.clear_faults()

    again = kit.start(config)
    assert again.event("ledger.recovered")

    def settled():
        states = again.states()
        return len(states) == 9 and set(states.values()) <= SETTLED

    again.wait_for(settled, what="every version settled after the restart")

    orders_states = again.states("orders")
    assert set(orders_states.values()) <= {"done", "in_doubt"}
    in_doubt = {name for name, state in orders_states.items() if state == "in_doubt"}
    assert in_doubt, "the append killed after its body was sent is held in doubt"
    # Nothing lost: every append file's content reached the table at least
    # once; anything appended twice is one the ledger holds in doubt.
    name_of = {hashlib.sha256(t.encode()).hexdigest(): n for n, t in texts.items()}
    appended = [
        name_of[r["sha256"]]
        for r in devhub.requests()
        if r["task"] == ORDERS_TASK and r["status"] == 200
    ]
    assert set(appended) == set(texts)
    assert {name for name in appended if appended.count(name) > 1} <= in_doubt
    expected = sum(appended.count(n) * (t.count("\n") - 1) for n, t in texts.items())
    assert len(devhub.rows(ORDERS_TABLE)) == expected
    # The replace task ends with the newest file, whatever was cut short.
    assert again.states("sales")["s-2.csv"] == "done"
    assert len(devhub.rows(SALES_TABLE)) == 4


# --- reload -------------------------------------------------------------------


def test_sighup_adds_and_removes_watches_and_survives_a_bad_config(
    devhub, kit, tmp_path
):
    orders = watch_entry(tmp_path, "orders", ORDERS_TASK, ORDERS_KEY, "append")
    sales = watch_entry(tmp_path, "sales", SALES_TASK, SALES_KEY, "replace")
    inventory = watch_entry(
        tmp_path, "inventory", INVENTORY_TASK, INVENTORY_KEY, "append"
    )
    config = daemon_config(devhub.url, tmp_path, [orders, sales])
    daemon = kit.start(config)

    daemon.reload(config | {"watch": [orders, inventory]})
    daemon.wait_for(lambda: daemon.event("config.reloaded"), what="the reload")
    reloaded = daemon.event("config.reloaded")
    assert (reloaded["added"], reloaded["removed"]) == (["inventory"], ["sales"])

    drop(Path(sales["path"]), "s-late.csv", csv_rows("s-late"))
    drop(Path(inventory["path"]), "i.csv", csv_rows("i"))
    drop(Path(orders["path"]), "o.csv", csv_rows("o"))
    daemon.wait_for(
        lambda: daemon.states() == {"i.csv": "done", "o.csv": "done"},
        what="the added watch and the kept one delivered",
    )
    assert "s-late.csv" not in {r["filename"] for r in devhub.requests()}
    assert (Path(sales["path"]) / "s-late.csv").exists()

    # A broken config is refused whole; the running one stays in force.
    broken = config | {"watch": [orders | {"task_id": "not-a-guid"}, inventory]}
    daemon.reload(broken)
    daemon.wait_for(
        lambda: daemon.event("config.reload_failed"), what="the refused reload"
    )
    drop(Path(orders["path"]), "o2.csv", csv_rows("o2"))
    drop(Path(inventory["path"]), "i2.csv", csv_rows("i2"))
    daemon.wait_for(
        lambda: {"o2.csv": "done", "i2.csv": "done"}.items() <= daemon.states().items(),
        what="the old watches still delivering",
    )
    assert len(daemon.events("config.reloaded")) == 1
    assert daemon.proc.poll() is None


# --- systemd ------------------------------------------------------------------


class NotifySocket:
    """An AF_UNIX datagram socket standing in for systemd's NOTIFY_SOCKET."""

    def __init__(self) -> None:
        # sun_path holds 108 bytes: a short folder, not tmp_path.
        self.folder = Path(tempfile.mkdtemp(prefix="hw-", dir="/tmp"))
        self.path = self.folder / "notify"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.path))
        self.sock.setblocking(False)
        self.messages: list[str] = []

    def received(self) -> list[str]:
        """Every field received so far ("READY=1", "STATUS=..."), in order."""
        while True:
            try:
                data = self.sock.recv(4096)
            except BlockingIOError:
                return list(self.messages)
            self.messages += data.decode().split("\n")

    def close(self) -> None:
        self.sock.close()
        shutil.rmtree(self.folder, ignore_errors=True)


@pytest.fixture
def notify_socket() -> Iterator[NotifySocket]:
    sock = NotifySocket()
    yield sock
    sock.close()


def test_systemd_hears_ready_status_watchdog_reloading_and_stopping(
    devhub, kit, tmp_path, notify_socket
):
    orders = watch_entry(tmp_path, "orders", ORDERS_TASK, ORDERS_KEY, "append")
    drop(Path(orders["path"]), "early.csv", csv_rows("early"))
    config = daemon_config(devhub.url, tmp_path, [orders])
    env = {
        "NOTIFY_SOCKET": str(notify_socket.path),
        "WATCHDOG_USEC": "1000000",  # a ping every half second
        "WATCHDOG_PID": None,  # the child's pid is not known before it starts
    }
    daemon = kit.start(config, env=env)

    # READY=1 only once the start-up scan has run.
    events = [line["event"] for line in daemon.logs()]
    assert events.index("watch.rescanned") < events.index("daemon.ready")
    assert "READY=1" in notify_socket.received()
    daemon.wait_for(
        lambda: notify_socket.received().count("WATCHDOG=1") >= 2,
        what="watchdog pings",
    )
    status = [m for m in notify_socket.received() if m.startswith("STATUS=")]
    assert status and status[0].startswith("STATUS=queued ")

    daemon.signal(signal.SIGHUP)
    daemon.wait_for(lambda: daemon.event("config.reloaded"), what="the reload")

    def reloading_then_ready() -> bool:
        fields = notify_socket.received()
        if "RELOADING=1" not in fields:
            return False
        return "READY=1" in fields[fields.index("RELOADING=1") :]

    daemon.wait_for(reloading_then_ready, what="RELOADING=1, then READY=1")

    daemon.signal(signal.SIGTERM)
    assert daemon.wait_exit() == 0
    assert "STOPPING=1" in notify_socket.received()
    assert daemon.states() == {"early.csv": "done"}


# --- dry run ------------------------------------------------------------------


def snapshot(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in files_under(folder)
    }


def test_a_dry_run_logs_what_it_would_upload_and_touches_nothing(devhub, kit, tmp_path):
    orders = watch_entry(tmp_path, "orders", ORDERS_TASK, ORDERS_KEY, "append")
    folder = Path(orders["path"])
    config = daemon_config(devhub.url, tmp_path, [orders])
    real = kit.start(config)
    drop(folder, "a.csv", csv_rows("a"))
    real.wait_for(lambda: archived_names(folder) == ["a.csv"], what="a archived")
    real.signal(signal.SIGTERM)
    assert real.wait_exit() == 0
    state_before = snapshot(real.state_dir)
    devhub.clear_requests()

    for name in ("b.csv", "c.csv"):
        drop(folder, name, csv_rows(name))
    dry = kit.start(config, args=("--dry-run",))
    dry.wait_for(
        lambda: (
            {e["path"] for e in dry.events("dryrun.would_upload")}
            == {str(folder / "b.csv"), str(folder / "c.csv")}
        ),
        what="both files reported",
    )
    dry.signal(signal.SIGTERM)
    assert dry.wait_exit() == 0

    assert devhub.requests() == []
    assert drop_names(folder) == ["b.csv", "c.csv"]
    assert archived_names(folder) == ["a.csv"]
    assert snapshot(real.state_dir) == state_before


def test_status_says_whether_the_daemon_runs(devhub, kit, tmp_path):
    orders = watch_entry(tmp_path, "orders", ORDERS_TASK, ORDERS_KEY, "append")
    daemon = kit.start(daemon_config(devhub.url, tmp_path, [orders]))

    def status() -> str:
        command = [sys.executable, "-m", "hubwatchd", "status", "-c"]
        result = subprocess.run(
            [*command, str(daemon.config_path)], capture_output=True, text=True
        )
        assert result.returncode == 0, result.stderr
        return result.stdout

    assert f"daemon: running, pid {daemon.pid}" in status()
    daemon.signal(signal.SIGTERM)
    assert daemon.wait_exit() == 0
    assert "daemon: not running" in status()
