"""Ledger throughput: record_ready + claim_next + finish per second with the
guarding commits at synchronous=FULL (as shipped) and at NORMAL, and the time
of known_identities over 100,000 rows.

    python bench/ledger.py [--dir DIR] [--count N]

DIR defaults to a temporary folder under the current directory, so the
figures are for the disk you run it on (/tmp may be a RAM disk).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from hubwatchd.config import Secret, WatchConfig
from hubwatchd.ledger import Ledger

TASK = "0f8e3a52-6c1d-4a8e-9a53-2c1b7d1e9f40"


class NormalLedger(Ledger):
    """Every commit at synchronous=NORMAL, for comparison only."""

    def _set_sync(self, level: str) -> None:
        super()._set_sync("NORMAL")


def watch(mode: str = "append") -> WatchConfig:
    return WatchConfig(
        name="bench",
        path=Path("/bench"),
        task_id=TASK,
        api_key=Secret("k", "api_key"),
        mode=mode,
    )


def transitions(kind: type[Ledger], folder: Path, count: int) -> float:
    """Versions per second through ready -> uploading -> done."""
    w = watch()
    with kind.open(folder) as ledger:
        start = time.perf_counter()
        for n in range(count):
            version, _ = ledger.record_ready(w, f"/bench/{n}.csv", n, n, n, n)
            claimed = ledger.claim_next()
            assert claimed is not None and claimed.id == version.id
            ledger.finish(claimed.id, kind="success", rows=1, sha256="x")
        return count / (time.perf_counter() - start)


def known_identities(folder: Path, rows: int) -> float:
    """Seconds for known_identities over `rows` versions of one watch."""
    with Ledger.open(folder) as ledger:
        ledger.db.conn.executemany(
            "INSERT INTO versions (watch, task_id, mode, path, size, mtime_ns,"
            " ctime_ns, inode, state, detected_at, ready_at, done_at)"
            " VALUES ('bench', ?, 'append', ?, ?, ?, ?, ?, 'done', 0, 0, 0)",
            ((TASK, f"/bench/{n:06d}.csv", n, n, n, n) for n in range(rows)),
        )
        ledger.db.conn.commit()
        start = time.perf_counter()
        found = ledger.known_identities("bench")
        seconds = time.perf_counter() - start
        assert len(found) == rows
        return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=Path.cwd())
    parser.add_argument("--count", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="ledger-bench-") as tmp:
        root = Path(tmp)
        full = transitions(Ledger, root / "full", args.count)
        normal = transitions(NormalLedger, root / "normal", args.count)
        seconds = known_identities(root / "ids", 100_000)
    print(f"folder: {args.dir}")
    print(f"ready+claim+finish, guarding commits FULL:   {full:8.0f} versions/s")
    print(f"ready+claim+finish, every commit NORMAL:     {normal:8.0f} versions/s")
    print(f"known_identities, 100,000 rows:              {seconds * 1000:8.1f} ms")


if __name__ == "__main__":
    main()
