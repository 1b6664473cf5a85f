"""Helpers for the detection tests: watches, a collector, a fake clock."""

from __future__ import annotations

import queue
import threading
import time
from pathlib import Path
from typing import Any

from hubwatchd.config import Secret, WatchConfig
from hubwatchd.settle import Candidate

TASK_ID = "0f8e3a52-6c1d-4a8e-9a53-2c1b7d1e9f40"
WAIT = 30.0  # the longest any test waits for what must happen, on a busy machine too


def make_watch(path: Path, name: str = "w", **options: Any) -> WatchConfig:
    options.setdefault("settle", 0.3)
    return WatchConfig(
        name=name,
        path=Path(path),
        task_id=TASK_ID,
        api_key=Secret(value="test-key-0001", source="test"),
        **options,
    )


class Collector:
    """Receives the Settler's callbacks into queues a test can wait on."""

    def __init__(self) -> None:
        self.ready: queue.Queue[Candidate] = queue.Queue()
        self.refused: queue.Queue[tuple[str, str]] = queue.Queue()
        self.notes: list[tuple[str, str]] = []

    def on_ready(self, watch: WatchConfig, candidate: Candidate) -> None:
        self.ready.put(candidate)

    def on_refused(self, watch: WatchConfig, path: str, reason: str) -> None:
        self.refused.put((path, reason))

    def on_note(self, watch: WatchConfig, path: str, note: str) -> None:
        self.notes.append((path, note))

    def take(self, count: int = 1, timeout: float = WAIT) -> list[Candidate]:
        return _take(self.ready, count, timeout)

    def take_refused(self, count: int = 1, timeout: float = WAIT) -> list[Any]:
        return _take(self.refused, count, timeout)

    def nothing_within(self, seconds: float) -> bool:
        """True when nothing became ready for `seconds` (an absence check)."""
        try:
            item = self.ready.get(timeout=seconds)
        except queue.Empty:
            return True
        self.ready.put(item)
        return False


def _take(q: queue.Queue[Any], count: int, timeout: float) -> list[Any]:
    deadline = time.monotonic() + timeout
    items = []
    while len(items) < count:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"got {len(items)} of {count} within {timeout}s")
        try:
            items.append(q.get(timeout=left))
        except queue.Empty:
            continue
    return items


def wait_for(predicate: Any, timeout: float = WAIT, interval: float = 0.01) -> None:
    """Poll `predicate` until true or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def threads_now() -> set[threading.Thread]:
    return set(threading.enumerate())
