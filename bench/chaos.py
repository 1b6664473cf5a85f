"""Chaos: faults at the hub and SIGKILLs of the daemon; nothing lost, nothing twice.

    python bench/chaos.py                        # 1,000 files, 5 kills
    python bench/chaos.py --files 200 --kills 3 --seed 7

Four watches feed devhub (which parses and stores rows): two append tasks,
one of them written in place and one renamed into place, and two replace
tasks. Files arrive over --spread seconds, each with rows of its own (its
name in the `file` column), plus a few empty files the daemon must refuse.
devhub answers about --fault-rate of all upload requests with 500, 503, 429
(with Retry-After), a connection cut mid-body, or a connection cut after the
whole body (the case that makes an append `in_doubt`). The daemon is killed
with SIGKILL --kills times at random moments and restarted at once.

Once the ledger has nothing left to do, the run checks devhub's tables
against what was dropped:

- append: each file's rows appear exactly once; none (lost) or twice
  (duplicated) is a failure unless the ledger holds that file `in_doubt`,
  which the run reports and leaves for an operator, as the daemon does;
- replace: each table holds exactly the rows of its task's newest file;
- the drop folders hold nothing but in-doubt files; refused files are in the
  failed folder with a reason file beside them.

It prints the counts (lost, duplicated, in doubt, retried) and exits 1 when
a file was lost, duplicated outside in-doubt, or a replace table is wrong.
"""

from __future__ import annotations

import argparse
import collections
import os
import random
import shutil
import sqlite3
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import kit

from hubwatchd.ledger import DB_NAME

# watch name -> (mode, how files arrive, share of the files)
WATCHES = {
    "append-renamed": ("append", "rename", 0.35),
    "append-in-place": ("append", "in-place", 0.35),
    "replace-one": ("replace", "rename", 0.15),
    "replace-two": ("replace", "in-place", 0.15),
}
EMPTY_FILES = 5  # refused (empty), so they must land in the failed folder
FAULTS = [
    {"kind": "status", "status": 500},
    {"kind": "status", "status": 503, "retry_after": 0.5},
    {"kind": "status", "status": 429, "retry_after": 0.3},
    {"kind": "cut", "after_bytes": 64},
    {"kind": "cut", "after_bytes": 1 << 30},  # after the whole body
]
UNSETTLED = ("detected", "ready", "uploading", "retry_wait", "blocked")


@dataclass
class Dropped:
    watch: str
    name: str
    rows: int
    seq: int


@dataclass
class Verdict:
    delivered: int = 0
    lost: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)
    in_doubt: list[str] = field(default_factory=list)
    in_doubt_delivered: int = 0
    in_doubt_duplicated: int = 0
    replace_wrong: list[str] = field(default_factory=list)
    leftovers: list[str] = field(default_factory=list)
    failed_ok: int = 0
    failed_missing: list[str] = field(default_factory=list)
    requests: int = 0
    faults: int = 0
    retried: int = 0
    superseded: int = 0

    def ok(self) -> bool:
        return not (
            self.lost
            or self.duplicated
            or self.replace_wrong
            or self.leftovers
            or self.failed_missing
        )


def write_file(folder: Path, stage: Path, item: Dropped, how: str) -> None:
    text = "file,line,value\n" + "".join(
        f"{item.name},{line},{item.seq * 1000 + line}\n" for line in range(item.rows)
    )
    if item.rows == 0:
        text = ""  # an empty file: refused by default
    if how == "in-place":
        (folder / item.name).write_text(text)
    else:
        temp = stage / item.name
        temp.write_text(text)
        os.rename(temp, folder / item.name)


def plan(count: int, rng: random.Random) -> list[Dropped]:
    """The files to drop, in drop order, spread over the watches."""
    names = list(WATCHES)
    shares = [WATCHES[w][2] for w in names]
    items = []
    for seq in range(count):
        watch = rng.choices(names, shares)[0]
        items.append(Dropped(watch, f"{watch}-{seq:05d}.csv", rng.randint(1, 40), seq))
    for seq in range(EMPTY_FILES):
        at = rng.randrange(len(items))
        items.insert(at, Dropped("append-renamed", f"empty-{seq}.csv", 0, -1))
    return items


def run(args: argparse.Namespace, root: Path) -> Verdict:
    rng = random.Random(args.seed)
    tasks = {kit.task_id(n + 1): name for n, name in enumerate(WATCHES)}
    task_of = {name: task for task, name in tasks.items()}
    drops = {name: root / "drop" / name for name in WATCHES}
    stage = root / "stage"
    stage.mkdir(parents=True)
    for folder in drops.values():
        folder.mkdir(parents=True)

    with kit.devhub(root / "hub", tasks, discard=False) as hub:
        print(f"server: {hub.describe()}")
        watches = [
            {
                "name": name,
                "path": str(drops[name]),
                "task_id": task_of[name],
                "mode": mode,
                "settle": "100ms",
            }
            for name, (mode, _how, _share) in WATCHES.items()
        ]
        config = kit.write_config(
            root,
            hub.url,
            watches,
            daemon={"workers": 4, "rescan_interval": "5s"},
            retry={"initial_delay": "100ms", "max_delay": "1s", "give_up_after": "1h"},
        )
        hub.set_fault(
            "chaos", probability=args.fault_rate, seed=args.seed, faults=FAULTS
        )
        items = plan(args.files, rng)
        kills = sorted(rng.uniform(0.5, args.spread + 3) for _ in range(args.kills))
        daemons = Restarter(config, root / "daemon.log")
        try:
            drop_and_kill(daemons, items, kills, drops, stage, args.spread)
            names = {item.name for item in items}
            wait_settled(daemons.current, root / "state", names, args.deadline)
            requests = hub.requests()
            tables = {task: hub.rows(table) for task, table in tasks.items()}
        finally:
            daemons.current.stop()
        return check(items, root, drops, tasks, task_of, tables, requests)


class Restarter:
    """The daemon of the moment; `kill_and_restart` replaces it."""

    def __init__(self, config: Path, log: Path) -> None:
        self.config = config
        self.log = log
        self.current = kit.Daemon(config, log)

    def kill_and_restart(self) -> int:
        """SIGKILL the daemon, start another at once; the killed pid."""
        killed = self.current.pid
        self.current.kill()
        self.current = kit.Daemon(self.config, self.log)
        return killed


def drop_and_kill(
    daemons: Restarter,
    items: list[Dropped],
    kills: list[float],
    drops: dict[str, Path],
    stage: Path,
    spread: float,
) -> None:
    """Drop `items` evenly over `spread` seconds; SIGKILL and restart the
    daemon at each of `kills` (seconds from the start)."""
    started = time.monotonic()
    pending = list(kills)

    def kill_when_due() -> None:
        if pending and time.monotonic() - started >= pending[0]:
            pending.pop(0)
            killed = daemons.kill_and_restart()
            print(f"  {time.monotonic() - started:5.1f} s: SIGKILL pid {killed}")

    for index, item in enumerate(items):
        due = started + spread * index / len(items)
        while time.monotonic() < due:
            time.sleep(min(0.01, max(0.0, due - time.monotonic())))
        write_file(drops[item.watch], stage, item, WATCHES[item.watch][1])
        kill_when_due()
    while pending:
        time.sleep(0.01)
        kill_when_due()


def wait_settled(
    daemon: kit.Daemon, state: Path, names: set[str], seconds: float
) -> None:
    """Until the ledger knows every file in `names` and has nothing left to do
    (in-doubt versions stay as they are)."""
    daemon.wait_ready(seconds)
    db = state / DB_NAME

    def settled() -> bool:
        if daemon.proc.poll() is not None:
            raise RuntimeError(f"the daemon exited; see {daemon.log_path}")
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
        try:
            busy = conn.execute(
                "SELECT COUNT(*) FROM versions WHERE state IN"
                f" ({','.join('?' * len(UNSETTLED))}) OR disposition = 'pending'",
                UNSETTLED,
            ).fetchone()[0]
            paths = conn.execute("SELECT path FROM versions").fetchall()
        finally:
            conn.close()
        return busy == 0 and names <= {Path(p).name for (p,) in paths}

    kit.wait_for(settled, seconds, "the ledger settled")


def ledger_rows(state: Path) -> list[sqlite3.Row]:
    conn = sqlite3.connect(f"file:{state / DB_NAME}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    try:
        return conn.execute("SELECT * FROM versions ORDER BY id").fetchall()
    finally:
        conn.close()


def check(
    items: list[Dropped],
    root: Path,
    drops: dict[str, Path],
    tasks: dict[str, str],
    task_of: dict[str, str],
    tables: dict[str, list[dict[str, object]]],
    requests: list[dict[str, object]],
) -> Verdict:
    verdict = Verdict()
    states: dict[str, set[str]] = collections.defaultdict(set)
    for row in ledger_rows(root / "state"):
        states[Path(row["path"]).name].add(row["state"])
    copies = {
        task: collections.Counter(str(r["file"]) for r in rows)
        for task, rows in tables.items()
    }

    verdict.requests = len(requests)
    verdict.faults = sum(1 for r in requests if r.get("fault"))
    per_file = collections.Counter(str(r.get("filename")) for r in requests)
    verdict.retried = sum(n - 1 for n in per_file.values() if n > 1)

    newest: dict[str, Dropped] = {}
    for item in items:
        mode = WATCHES[item.watch][0]
        if item.rows == 0:
            failed = drops[item.watch] / ".hubwatchd-failed" / item.name
            reason = failed.with_name(item.name + ".reason.txt")
            if failed.exists() and reason.exists():
                verdict.failed_ok += 1
            else:
                verdict.failed_missing.append(item.name)
            continue
        if mode == "replace":
            newest[item.watch] = item
            if "superseded" in states[item.name]:
                verdict.superseded += 1
            continue
        found = copies[task_of[item.watch]][item.name]
        times, extra = divmod(found, item.rows)
        doubt = "in_doubt" in states[item.name]
        if doubt:
            verdict.in_doubt.append(item.name)
            verdict.in_doubt_delivered += times == 1
            verdict.in_doubt_duplicated += times > 1
        elif extra or times == 0:
            verdict.lost.append(item.name)
        elif times > 1:
            verdict.duplicated.append(item.name)
        else:
            verdict.delivered += 1

    for watch, item in newest.items():
        held = copies[task_of[watch]]
        if dict(held) != {item.name: item.rows}:
            verdict.replace_wrong.append(f"{watch}: want {item.name}, has {dict(held)}")
        else:
            verdict.delivered += 1

    doubtful = set(verdict.in_doubt)
    for folder in drops.values():
        for entry in os.scandir(folder):
            if entry.is_file() and entry.name not in doubtful:
                verdict.leftovers.append(entry.path)
    return verdict


def report(verdict: Verdict) -> None:
    print(
        f"\nrequests {verdict.requests}, faults injected {verdict.faults}, "
        f"retried {verdict.retried} (requests beyond one per file; a request cut"
        " in its first bytes names no file, so this is close, not exact)"
    )
    print(f"delivered exactly once   {verdict.delivered}")
    print(f"superseded (replace)     {verdict.superseded}")
    print(f"refused -> failed folder {verdict.failed_ok} of {EMPTY_FILES}")
    print(
        f"in doubt (operator)      {len(verdict.in_doubt)}: "
        f"{verdict.in_doubt_delivered} of them in the table once, "
        f"{verdict.in_doubt_duplicated} twice, the rest not at all"
    )
    print(f"lost                     {len(verdict.lost)} {verdict.lost[:10]}")
    duplicated = verdict.duplicated
    print(f"duplicated, not in doubt {len(duplicated)} {duplicated[:10]}")
    for problem in verdict.replace_wrong:
        print(f"replace table wrong: {problem}")
    for path in verdict.leftovers[:10]:
        print(f"left in a drop folder: {path}")
    for name in verdict.failed_missing:
        print(f"refused file not in the failed folder with a reason: {name}")
    print("PASS" if verdict.ok() else "FAIL")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--seed", type=int, default=20240611)
    parser.add_argument("--fault-rate", type=float, default=0.3)
    parser.add_argument("--spread", type=float, default=30.0, help="seconds [30]")
    parser.add_argument("--deadline", type=float, default=600.0, help="seconds [600]")
    parser.add_argument("--dir", type=Path, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    args = parser.parse_args(argv)

    root = Path(tempfile.mkdtemp(prefix="hubwatchd-chaos-", dir=args.dir))
    print(f"machine: {kit.machine()}")
    print(
        f"{args.files} files + {EMPTY_FILES} empty over {args.spread:.0f} s, "
        f"{args.kills} SIGKILLs, fault rate {args.fault_rate}, seed {args.seed}"
    )
    try:
        verdict = run(args, root)
        report(verdict)
    finally:
        if args.keep:
            print(f"work folder kept: {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    return 0 if verdict.ok() else 1


if __name__ == "__main__":
    sys.exit(main())
