"""Upload speed and memory: `hubwatchd push` against curl, in one run.

    python bench/upload.py                       # 1 GiB and 4 GiB, 3 rounds
    python bench/upload.py --sizes 256M --rounds 5

The server is devhub in --discard mode (reads every byte, stores nothing), on
127.0.0.1, started here. Each round runs, alternating, for every size:

    push -F   hubwatchd push FILE.csv --task T          (multipart)
    curl -F   curl -F file=@FILE.csv;type=text/csv     (multipart)
    push -T   hubwatchd push FILE.json --task T --json-raw   (raw JSON body)
    curl -T   curl -T FILE.json -H Content-Type: application/json

curl gets `Expect:` (no 100-continue wait) so it runs at its best. Two times
are kept per run: the command's wall time (push pays Python's start-up, about
0.2 s) and the transfer time (push's own `seconds` from its upload.succeeded
log line, curl's %{time_total}). Peak RSS comes from /usr/bin/time -v when
present, else from psutil polling, else it is not shown. Medians are printed
with ratios as curl time / push time (above 1.0: push is faster).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TASK = "0f8e3a52-6c1d-4a8e-9a53-2c1b7d1e9f40"
KEY = "bench-key-0123456789"
MIB = 1024 * 1024
GNU_TIME = Path("/usr/bin/time")


def parse_size(text: str) -> int:
    match = re.fullmatch(r"(\d+)([KMG]?)", text.strip().upper())
    if not match:
        raise argparse.ArgumentTypeError(f"size like 256M or 1G, got {text!r}")
    scale = {"": 1, "K": 1024, "M": MIB, "G": 1024 * MIB}[match.group(2)]
    return int(match.group(1)) * scale


def human(size: int) -> str:
    for unit, scale in (("GiB", 1024 * MIB), ("MiB", MIB)):
        if size >= scale and size % scale == 0:
            return f"{size // scale} {unit}"
    return f"{size} B"


def make_file(path: Path, size: int) -> None:
    """`size` bytes of CSV-looking data, written for real (not sparse)."""
    line = b"north," + b"1234567" * 8 + b"\n"
    block = line * (MIB // len(line))
    block += b"x" * (MIB - len(block))
    with path.open("wb") as out:
        for _ in range(size // MIB):
            out.write(block)
        out.write(block[: size % MIB])


def start_devhub(workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    config = workdir / "devhub.toml"
    config.write_text(
        f'[[task]]\nid = "{TASK}"\nname = "Bench"\ntable = "Bench"\n\n'
        f'[[key]]\nvalue = "{KEY}"\n'
    )
    ready = workdir / "ready.json"
    command = [
        sys.executable, "-m", "hubwatchd", "devhub", "--port", "0", "--discard",
        "--config", str(config), "--ready-file", str(ready),
        "--data-dir", str(workdir / "devhub-data"),
    ]  # fmt: skip
    proc = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=(workdir / "devhub.log").open("wb")
    )
    deadline = time.monotonic() + 20
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            sys.exit(f"devhub did not start; see {workdir / 'devhub.log'}")
        time.sleep(0.05)
    return proc, json.loads(ready.read_text())["url"]


def write_config(workdir: Path, url: str) -> Path:
    key = workdir / "hub.key"
    key.write_text(KEY)
    drop = workdir / "drop"
    drop.mkdir(exist_ok=True)
    config = workdir / "config.toml"
    config.write_text(
        f'[hub]\nurl = "{url}"\napi_key_file = "{key}"\n\n'
        f'[daemon]\nstate_dir = "{workdir / "state"}"\n\n'
        f'[[watch]]\nname = "bench"\npath = "{drop}"\ntask_id = "{TASK}"\n'
    )
    config.chmod(0o600)
    return config


def timed(command: list[str]) -> tuple[float, int | None, str, str]:
    """Run `command`: (wall seconds, peak RSS KiB or None, stdout, stderr)."""
    if GNU_TIME.exists():
        command = [str(GNU_TIME), "-v", *command]
    started = time.monotonic()
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    peak = None
    if not GNU_TIME.exists():
        peak = _poll_rss(proc)
    out, err = proc.communicate()
    wall = time.monotonic() - started
    if proc.returncode != 0:
        sys.exit(f"failed ({proc.returncode}): {' '.join(command)}\n{err}")
    match = re.search(r"Maximum resident set size \(kbytes\): (\d+)", err)
    if match:
        peak = int(match.group(1))
    return wall, peak, out, err


def _poll_rss(proc: subprocess.Popen[str]) -> int | None:
    try:
        import psutil
    except ImportError:
        return None
    peak = 0
    handle = psutil.Process(proc.pid)
    while proc.poll() is None:
        try:
            peak = max(peak, handle.memory_info().rss // 1024)
        except psutil.Error:
            break
        time.sleep(0.01)
    return peak or None


def run_push(config: Path, path: Path, raw: bool) -> tuple[float, float, int | None]:
    command = [
        sys.executable, "-m", "hubwatchd", "push", "-v", "-c", str(config),
        str(path), "--task", TASK,
    ]  # fmt: skip
    if raw:
        command.append("--json-raw")
    # A fresh ledger each round: push records every upload, and would answer
    # "already uploaded" for the same file version the second time.
    shutil.rmtree(config.parent / "state", ignore_errors=True)
    wall, peak, _out, err = timed(command)
    for line in err.splitlines():
        if '"upload.succeeded"' in line:
            return wall, json.loads(line)["seconds"], peak
    sys.exit(f"push printed no upload.succeeded line:\n{err}")


def run_curl(url: str, path: Path, raw: bool) -> tuple[float, float, int | None]:
    endpoint = f"{url}/v1/Tasks/{TASK}/data?mode=replace"
    command = [
        "curl", "-sS", "--fail", "-o", "/dev/null", "-w", "%{time_total}",
        "-H", f"X-Api-Key: {KEY}", "-H", "Expect:",
    ]  # fmt: skip
    if raw:
        command += ["-T", str(path), "-X", "POST"]
        command += ["-H", "Content-Type: application/json"]
    else:
        command += ["-F", f"file=@{path};type=text/csv"]
    wall, peak, out, _err = timed([*command, endpoint])
    return wall, float(out.strip()), peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sizes",
        default="1G,4G",
        help="comma-separated file sizes like 256M,1G [default: 1G,4G]",
    )
    parser.add_argument("--rounds", type=int, default=3, help="repetitions [3]")
    parser.add_argument(
        "--dir", type=Path, default=None, help="where the test files go [a temp dir]"
    )
    args = parser.parse_args()
    sizes = [parse_size(s) for s in args.sizes.split(",")]
    if not shutil.which("curl"):
        sys.exit("curl is needed")

    workdir = Path(tempfile.mkdtemp(prefix="hubwatchd-bench-", dir=args.dir))
    proc, url = start_devhub(workdir)
    try:
        config = write_config(workdir, url)
        print(f"server: devhub --discard at {url} (reads every byte, stores none)")
        print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, ", end="")
        print(f"peak RSS by {'/usr/bin/time -v' if GNU_TIME.exists() else 'psutil'}")
        for size in sizes:
            bench_size(workdir, config, url, size, args.rounds)
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)


def bench_size(workdir: Path, config: Path, url: str, size: int, rounds: int) -> None:
    csv, raw = workdir / "data.csv", workdir / "data.json"
    make_file(csv, size)
    os.link(csv, raw)  # the same bytes; devhub --discard does not parse them
    runs: dict[str, list[tuple[float, float, int | None]]] = {
        "push -F": [],
        "curl -F": [],
        "push -T": [],
        "curl -T": [],
    }
    # One unmeasured pass warms the page cache for everyone alike.
    run_curl(url, csv, raw=False)
    for _ in range(rounds):
        runs["push -F"].append(run_push(config, csv, raw=False))
        runs["curl -F"].append(run_curl(url, csv, raw=False))
        runs["push -T"].append(run_push(config, raw, raw=True))
        runs["curl -T"].append(run_curl(url, raw, raw=True))
    csv.unlink()
    raw.unlink()

    print(f"\n{human(size)}, {rounds} rounds, medians:")
    print(f"  {'':8} {'wall s':>8} {'xfer s':>8} {'MiB/s':>8} {'peak RSS':>10}")
    medians = {}
    for name, results in runs.items():
        wall = statistics.median(r[0] for r in results)
        xfer = statistics.median(r[1] for r in results)
        peaks = [r[2] for r in results if r[2] is not None]
        peak = f"{max(peaks) / 1024:.1f} MiB" if peaks else "n/a"
        medians[name] = (wall, xfer)
        rate = size / MIB / xfer
        print(f"  {name:8} {wall:8.3f} {xfer:8.3f} {rate:8.0f} {peak:>10}")
    for kind in ("-F", "-T"):
        push_wall, push_xfer = medians[f"push {kind}"]
        curl_wall, curl_xfer = medians[f"curl {kind}"]
        print(
            f"  ratio {kind} (curl time / push time): "
            f"transfer {curl_xfer / push_xfer:.2f}x, wall {curl_wall / push_wall:.2f}x"
        )


if __name__ == "__main__":
    main()
