"""Latency: a file closed or renamed into place until its upload starts.

    python bench/latency.py [--files 30] [--settle 100ms]

One append watch on a READY daemon; devhub storing rows (only then does it
log file names; the files are tiny). The files arrive one at a time, --gap
apart, alternately renamed into place and written in place (open, write,
close). For each, the clock runs from just after the rename or
close to the time devhub logged the request (when its headers arrived).
What the settle time itself costs is taken off: "beyond settle" is the
latency less `settle` (a rename waits only the settler's short rename grace,
at most `settle`).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import kit

from hubwatchd.config import parse_duration

TASK = kit.task_id(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=30)
    parser.add_argument("--settle", default="100ms")
    parser.add_argument("--gap", type=float, default=0.5, help="seconds [0.5]")
    parser.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args()
    settle = parse_duration(args.settle)

    root = Path(tempfile.mkdtemp(prefix="hubwatchd-bench-latency-", dir=args.dir))
    try:
        with kit.devhub(root / "hub", {TASK: "Latency"}, discard=False) as hub:
            print(f"server: {hub.describe()}")
            print(f"machine: {kit.machine()}")
            drop, stage = root / "drop", root / "stage"
            drop.mkdir()
            stage.mkdir()
            watch = {
                "name": "latency",
                "path": str(drop),
                "task_id": TASK,
                "mode": "append",
                "settle": args.settle,
            }
            config = kit.write_config(root, hub.url, [watch])
            with kit.daemon(config, root / "daemon.log") as daemon:
                daemon.wait_ready()
                results = measure(hub, drop, stage, args.files, args.gap)
        report(results, settle, args)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def measure(
    hub: kit.Devhub, drop: Path, stage: Path, count: int, gap: float
) -> dict[str, list[float]]:
    """Seconds from close or rename to the request, per way of arrival."""
    closed_at: dict[str, tuple[str, float]] = {}
    for number in range(count):
        how = "renamed" if number % 2 == 0 else "written in place"
        name = f"f{number:04d}.csv"
        body = f"id,name\n{number},latency\n"
        if how == "renamed":
            (stage / name).write_text(body)
            os.rename(stage / name, drop / name)
        else:
            with (drop / name).open("w") as out:
                out.write(body)
        closed_at[name] = (how, time.time())
        time.sleep(gap)

    def all_seen() -> dict[str, float] | None:
        seen = {
            r["filename"]: kit.iso_time(r["time"])
            for r in hub.requests()
            if r["filename"] in closed_at
        }
        return seen if len(seen) == len(closed_at) else None

    seen = kit.wait_for(all_seen, 60, "every file's request")
    results: dict[str, list[float]] = {"renamed": [], "written in place": []}
    for name, (how, at) in closed_at.items():
        results[how].append(seen[name] - at)
    return results


def report(
    results: dict[str, list[float]], settle: float, args: argparse.Namespace
) -> None:
    print(f"\n{args.files} files, settle {args.settle}, {args.gap} s apart:")
    print(f"  {'':18} {'median':>8} {'p90':>8} {'max':>8} {'beyond settle':>14}")
    for how, values in results.items():
        values.sort()
        mid = kit.median(values)
        p90 = values[int(0.9 * (len(values) - 1))]
        print(
            f"  {how:18} {mid * 1000:6.0f}ms {p90 * 1000:6.0f}ms "
            f"{values[-1] * 1000:6.0f}ms {(mid - settle) * 1000:12.0f}ms"
        )
    print("  (devhub logs request times to the millisecond)")


if __name__ == "__main__":
    main()
