"""How long a rescan takes when every file is already in the ledger.

    python bench/scan.py [--files 100000] [--dir /path/on/the/disk/to/test]

Creates the files in a temporary folder, builds the known-set the way the
ledger's `known_identities` returns it, then times `hubwatchd.watch.scan`
over the folder (best of three, after one warm-up pass). Nothing should be
fed: each file costs one scandir entry, one stat and one set lookup.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from hubwatchd.config import Secret, WatchConfig
from hubwatchd.watch import scan


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="hubwatchd-bench-", dir=args.dir))
    try:
        started = time.perf_counter()
        for number in range(args.files):
            with open(root / f"export-{number:06}.csv", "wb") as out:
                out.write(b"id,name\n1,alpha\n")
        created = time.perf_counter() - started

        watch = WatchConfig(
            name="bench",
            path=root,
            task_id="0f8e3a52-6c1d-4a8e-9a53-2c1b7d1e9f40",
            api_key=Secret(value="bench-key", source="bench"),
        )
        known = set()
        for entry in os.scandir(root):
            st = entry.stat(follow_symlinks=False)
            known.add((entry.path, st.st_size, st.st_mtime_ns, st.st_ino))

        fed: list[str] = []

        def feed(watch_name: str, path: str, kind: str, **_: object) -> None:
            fed.append(path)

        scan(watch, feed, known=known)  # warm the dentry and inode caches
        timings = []
        for _ in range(3):
            started = time.perf_counter()
            stats = scan(watch, feed, known=known)
            timings.append(time.perf_counter() - started)
        best = min(timings)
        print(f"created {args.files} files in {created:.1f} s")
        print(
            f"scan of {stats.files} files, {stats.known} known, {stats.fed} fed: "
            f"best {best * 1000:.0f} ms of 3 ({best / stats.files * 1e6:.2f} µs/file)"
        )
        assert not fed, "known files must not be fed again"
    finally:
        shutil.rmtree(root)


if __name__ == "__main__":
    main()
