"""Start-up: time to READY with 100,000 files already in the ledger.

    python bench/startup.py [--files 100000] [--rounds 3]

One watch folder holds --files small files, and the ledger holds each as a
`done` version kept in place (rows written straight into a ledger the
Ledger API created, the way bench/ledger.py does; uploading them would take
hours). Each round starts, alternately, a daemon on that folder and one on
an empty folder, and measures from the process start to its daemon.ready
log line (so Python's own start-up, about 0.3 s, is in both). The start-up
scan must find every file known and upload none.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import kit

from hubwatchd.ledger import Ledger

TASK = kit.task_id(1)


def fill(folder: Path, state: Path, count: int) -> None:
    """`count` files in `folder`, each recorded done (kept) in the ledger."""
    folder.mkdir(parents=True)
    for number in range(count):
        with open(folder / f"export-{number:06d}.csv", "wb") as out:
            out.write(b"id,name\n1,alpha\n")
    rows = []
    for entry in os.scandir(folder):
        st = entry.stat(follow_symlinks=False)
        rows.append((TASK, entry.path, st.st_size, st.st_mtime_ns, st.st_ctime_ns,
                     st.st_ino))  # fmt: skip
    now = time.time()
    with Ledger.open(state) as ledger:
        ledger.db.conn.executemany(
            "INSERT INTO versions (watch, task_id, mode, path, size, mtime_ns,"
            " ctime_ns, inode, state, detected_at, ready_at, done_at, disposition)"
            " VALUES ('scan', ?, 'append', ?, ?, ?, ?, ?, 'done', ?, ?, ?, 'kept')",
            ((*row, now, now, now) for row in rows),
        )
        ledger.db.conn.commit()


def time_to_ready(url: str, workdir: Path, folder: Path) -> float:
    watch = {
        "name": "scan",
        "path": str(folder),
        "task_id": TASK,
        "mode": "append",
        "after_success": "keep",
    }
    config = kit.write_config(workdir, url, [watch])
    log = workdir / f"daemon-{time.monotonic_ns()}.log"
    with kit.daemon(config, log) as daemon:
        ready = daemon.wait_ready(300)
        seconds = kit.log_time(ready) - daemon.started
        if daemon.events("file.ready"):
            raise RuntimeError(f"known files were queued again; see {log}")
        return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="hubwatchd-bench-startup-", dir=args.dir))
    try:
        with kit.devhub(root / "hub", {TASK: "Scan"}, discard=True) as hub:
            print(f"server: {hub.describe()} (not called)")
            print(f"machine: {kit.machine()}")
            full, empty = root / "full", root / "empty"
            started = time.perf_counter()
            fill(full / "drop", full / "state", args.files)
            print(f"{args.files} files made and recorded in "
                  f"{time.perf_counter() - started:.0f} s")  # fmt: skip
            (empty / "drop").mkdir(parents=True)
            times: dict[str, list[float]] = {"empty folder": [], "known files": []}
            for round_ in range(args.rounds):
                for name, workdir in (("empty folder", empty), ("known files", full)):
                    seconds = time_to_ready(hub.url, workdir, workdir / "drop")
                    times[name].append(seconds)
                    print(f"  round {round_ + 1}, {name}: {seconds:.2f} s")
        print(f"\nstart to daemon.ready, median of {args.rounds}:")
        for name, values in times.items():
            print(f"  {name:14} {kit.median(values):6.2f} s")
        extra = kit.median(times["known files"]) - kit.median(times["empty folder"])
        print(f"  {args.files} known files add {extra:.2f} s")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
