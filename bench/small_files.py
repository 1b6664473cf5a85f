"""Many small files: a running daemon against `xargs -P8 curl -F`, in one run.

    python bench/small_files.py                  # 2,000 x 8 KiB, 3 rounds
    python bench/small_files.py --files 200 --rounds 1 --settle 100ms,3s

The daemon watches one append-mode folder (after_success = "keep", the
default workers = 4) and is READY before the files arrive. The files are
written beforehand in a staging folder on the same disk and renamed into the
watch one after another; the clock runs from the first rename until the
ledger holds every one as `done`. curl gets the same files, eight at a time,
one process per file, to the same devhub task. Rounds alternate daemon and
curl. Each file is exactly 8 KiB with its own rows, so none is a duplicate
(but every one after the first has the size of an earlier one, so the daemon
hashes each before its upload, as it would in production).

The settle time is a latency floor, not a throughput cost, and a file
renamed into place waits only the settler's short rename grace (inotify
tells the rename), so the default 3 s and "100ms" give the same figures here.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import kit

TABLE = "Small"
TASK = kit.task_id(1)
SIZE = 8192


def make_files(folder: Path, count: int, tag: str) -> list[Path]:
    """`count` CSV files of exactly SIZE bytes, each with rows of its own."""
    folder.mkdir(parents=True)
    paths = []
    for number in range(count):
        name = f"{tag}-{number:05d}"
        head = b"file,line,value\n"
        row = f"{name},{{:04d}},{'v' * 40}\n"
        body = bytearray(head)
        line = 0
        while len(body) + len(row.format(line)) <= SIZE:
            body += row.format(line).encode()
            line += 1
        body[-1:] = b"x" * (SIZE - len(body)) + b"\n"
        path = folder / f"{name}.csv"
        path.write_bytes(bytes(body))
        paths.append(path)
    return paths


def run_daemon(
    hub: kit.Devhub, workdir: Path, count: int, settle: str, workers: int
) -> float:
    """Seconds from the first rename until the ledger has all `count` done."""
    drop = workdir / "drop"
    drop.mkdir(parents=True)
    watch = {
        "name": "small",
        "path": str(drop),
        "task_id": TASK,
        "mode": "append",
        "settle": settle,
        "after_success": "keep",
    }
    config = kit.write_config(workdir, hub.url, [watch], daemon={"workers": workers})
    files = make_files(workdir / "stage", count, workdir.name)
    with kit.daemon(config, workdir / "daemon.log") as daemon:
        daemon.wait_ready()
        cpu_start = daemon.cpu_seconds()
        started = time.perf_counter()
        for path in files:
            os.rename(path, drop / path.name)
        state = workdir / "state"

        def all_done() -> bool:
            if daemon.proc.poll() is not None:
                raise RuntimeError(f"the daemon exited; see {daemon.log_path}")
            return kit.ledger_counts(state).get("done", 0) >= count

        kit.wait_for(all_done, 60 + count, "every file done")
        elapsed = time.perf_counter() - started
        cpu = daemon.cpu_seconds() - cpu_start
        print(f"    daemon CPU {cpu:.2f} s: {1000 * cpu / count:.2f} ms per file")
        return elapsed


def run_curl(hub: kit.Devhub, workdir: Path, count: int) -> float:
    """Seconds for `xargs -P8 curl -F` over `count` files."""
    files = make_files(workdir / "stage", count, workdir.name)
    listing = "".join(f"{path}\n" for path in files)
    command = [
        "xargs", "-P8", "-I{}", "curl", "-sS", "--fail", "-o", "/dev/null",
        "-H", f"X-Api-Key: {kit.KEY}", "-H", "Expect:",
        "-F", "file=@{};type=text/csv", hub.endpoint(TASK, "append"),
    ]  # fmt: skip
    started = time.perf_counter()
    subprocess.run(command, input=listing, text=True, check=True, timeout=600)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--settle", default="100ms,3s", help="settle times to run [100ms,3s]"
    )
    parser.add_argument("--workers", type=int, default=4, help="daemon workers [4]")
    parser.add_argument(
        "--store",
        action="store_true",
        help="devhub parses and stores rows (default: --discard, fairer to both)",
    )
    parser.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args()
    if not shutil.which("curl"):
        sys.exit("curl is needed")
    settles = args.settle.split(",")

    root = Path(tempfile.mkdtemp(prefix="hubwatchd-bench-small-", dir=args.dir))
    try:
        with kit.devhub(root / "hub", {TASK: TABLE}, discard=not args.store) as hub:
            print(f"server: {hub.describe()}")
            print(f"machine: {kit.machine()}")
            print(
                f"{args.files} files x {SIZE // 1024} KiB, {args.rounds} rounds, "
                f"alternating; daemon workers={args.workers}, one append task"
            )
            times: dict[str, list[float]] = {"curl -P8": []}
            times.update({f"daemon settle={s}": [] for s in settles})
            for round_ in range(args.rounds):
                for settle in settles:
                    seconds = run_daemon(
                        hub,
                        root / f"d{round_}-{settle}",
                        args.files,
                        settle,
                        args.workers,
                    )
                    times[f"daemon settle={settle}"].append(seconds)
                    label = f"round {round_ + 1} daemon settle={settle}"
                    print(f"  {label}: {seconds:.2f} s")
                seconds = run_curl(hub, root / f"c{round_}", args.files)
                times["curl -P8"].append(seconds)
                print(f"  round {round_ + 1} curl -P8: {seconds:.2f} s")
        report(times, args.files)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def report(times: dict[str, list[float]], count: int) -> None:
    curl_rate = count / kit.median(times["curl -P8"])
    print(f"\nmedians ({count} files):")
    print(f"  {'':22} {'s':>8} {'files/s':>9} {'vs curl':>8}")
    for name, values in times.items():
        seconds = kit.median(values)
        rate = count / seconds
        print(f"  {name:22} {seconds:8.2f} {rate:9.0f} {rate / curl_rate:7.2f}x")


if __name__ == "__main__":
    main()
