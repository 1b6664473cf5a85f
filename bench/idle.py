"""Idle cost: CPU seconds a READY daemon uses while nothing arrives.

    python bench/idle.py [--watches 50] [--seconds 60] [--rounds 2]

Each round runs, alternately, a daemon with one watch and one with
--watches watches (empty folders, inotify), waits for READY, then reads
utime + stime from /proc/PID/stat at the start and the end of --seconds.
No hub request is made; devhub is there only because the config needs a URL.
The window includes the daemon's 10 s status ticks but not its 5-minute
rescan (a rescan of empty folders costs little; bench/scan.py times a full
one).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import kit

TASK = kit.task_id(1)


def idle_cpu(url: str, workdir: Path, watches: int, seconds: float) -> float:
    workdir.mkdir(parents=True)
    specs = []
    for number in range(watches):
        folder = workdir / "drop" / f"w{number:03d}"
        folder.mkdir(parents=True)
        specs.append({"name": f"w{number:03d}", "path": str(folder), "task_id": TASK})
    config = kit.write_config(workdir, url, specs)
    with kit.daemon(config, workdir / "daemon.log") as daemon:
        daemon.wait_ready()
        time.sleep(0.5)  # let start-up work finish before the window
        before = daemon.cpu_seconds()
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            time.sleep(min(left, 1.0))
            if daemon.proc.poll() is not None:
                raise RuntimeError(f"the daemon exited; see {daemon.log_path}")
        return daemon.cpu_seconds() - before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--watches", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="hubwatchd-bench-idle-", dir=args.dir))
    try:
        with kit.devhub(root / "hub", {TASK: "Idle"}, discard=True) as hub:
            print(f"server: {hub.describe()} (not called)")
            print(f"machine: {kit.machine()}")
            used: dict[int, list[float]] = {1: [], args.watches: []}
            for round_ in range(args.rounds):
                for count in used:
                    workdir = root / f"r{round_}-{count}"
                    cpu = idle_cpu(hub.url, workdir, count, args.seconds)
                    used[count].append(cpu)
                    print(f"  round {round_ + 1}, {count} watches: {cpu:.2f} CPU s")
        print(f"\nCPU seconds in {args.seconds:.0f} s idle, median of {args.rounds}:")
        for count, values in used.items():
            print(f"  {count:3d} watches: {kit.median(values):.2f} s")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
