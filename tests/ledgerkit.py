"""Helpers shared by the ledger's tests: a settable clock and test watches."""

from __future__ import annotations

import random
from pathlib import Path

from hubwatchd.config import Secret, WatchConfig
from hubwatchd.ledger import Ledger, Version
from hubwatchd.retry import RetryPolicy

TASK_A = "0f8e3a52-6c1d-4a8e-9a53-2c1b7d1e9f40"
TASK_B = "5b1d2c3e-4f50-4a61-8b72-9c8d7e6f5a41"
POLICY = RetryPolicy(initial_delay=5.0, max_delay=900.0, give_up_after=3600.0)


class Clock:
    """A clock the test moves by hand; starts at a fixed, plausible time."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


def make_watch(
    name: str = "acme",
    task_id: str = TASK_A,
    mode: str = "replace",
    path: Path = Path("/srv/drop"),
    **extra: object,
) -> WatchConfig:
    return WatchConfig(
        name=name,
        path=path,
        task_id=task_id,
        api_key=Secret("test-key-not-real", "api_key"),
        mode=mode,
        **extra,  # type: ignore[arg-type]
    )


def open_ledger(state_dir: Path, clock: Clock | None = None, seed: int = 1) -> Ledger:
    return Ledger.open(
        state_dir,
        policy=POLICY,
        blocked_probe_interval=300.0,
        rng=random.Random(seed),
        clock=clock or Clock(),
    )


_inodes = iter(range(1000, 10**9))


def ready(
    ledger: Ledger,
    watch: WatchConfig,
    name: str,
    size: int = 100,
    mtime_ns: int = 1,
) -> Version:
    """A new ready version of `name` in the watch's folder."""
    path = watch.path / name
    version, created = ledger.record_ready(
        watch, path, size, mtime_ns, mtime_ns, next(_inodes)
    )
    assert created
    return version
