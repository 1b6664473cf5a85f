"""The daemon: start, serve, stop — in that order, readable at a glance.

Start: take the state dir's lock, open the ledger and recover what a crash
left, start the settler and the observers, wait for the first scan, start
the dispatcher, tell systemd READY. Serve: the main thread waits for signals
and does the periodic chores (status line, watchdog pings, pruning). Stop:
tell systemd STOPPING, stop the observers, give uploads in flight
`shutdown_grace` to finish, cancel the rest by the ledger's rules, close.
An upload still waiting for the hub's answer is abandoned, not waited for:
the ledger then stays open until the process exits, and the next start's
recovery decides that upload's fate.

Signal handlers only record the signal; the main loop acts on it. A second
SIGTERM or SIGINT exits at once: the ledger's recovery handles the rest.
"""

from __future__ import annotations

import os
import queue
import shutil
import signal
import sqlite3
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path
from types import FrameType
from typing import Any

from hubwatchd import logs, systemd
from hubwatchd.config import Config, check_filesystem, load_config
from hubwatchd.dispatch import Dispatcher
from hubwatchd.errors import ConfigError, HubwatchdError
from hubwatchd.hub import HubClient, Outcome
from hubwatchd.ledger import DB_NAME, Ledger, StateLock
from hubwatchd.retry import RetryPolicy
from hubwatchd.settle import Candidate, Settler
from hubwatchd.watch import Watcher

log = logs.get_logger(__name__)

STATUS_EVERY = 10.0
PRUNE_EVERY = 6 * 3600.0
# While the first scan runs, ask systemd for this much more start-up time.
SCAN_EXTENSION = 30.0


class DryRunClient:
    """Stands in for the hub in `run --dry-run`: logs, sends nothing."""

    def upload(self, source: Any, **kwargs: Any) -> Outcome:
        log.info(
            "dryrun.would_upload",
            path=str(getattr(source, "name", source)),
            task_id=kwargs["task_id"],
            mode=kwargs["mode"],
            bytes=kwargs["size"],
        )
        return Outcome("success", status=None, body_complete=True)

    def close(self) -> None:
        pass


class Daemon:
    """One running hubwatchd: owns the lock, the ledger, observers and workers."""

    def __init__(self, config: Config, *, dry_run: bool = False) -> None:
        self.config = config
        self.dry_run = dry_run
        self._signals: queue.SimpleQueue[int] = queue.SimpleQueue()
        self._stop_requests = 0
        self._scratch: Path | None = None
        self._lock: StateLock | None = None
        self._ledger: Ledger | None = None
        self._client: HubClient | DryRunClient | None = None
        self._retired: list[HubClient | DryRunClient | None] = []
        self._dispatcher: Dispatcher | None = None
        self._settler: Settler | None = None
        self._watcher: Watcher | None = None

    def run(self) -> int:
        """Run until SIGTERM or SIGINT; returns the process exit code."""
        self._install_signal_handlers()
        try:
            self._start()
            self._serve()
        finally:
            self._stop()
        return 0

    # --- start ----------------------------------------------------------

    def _start(self) -> None:
        config = self.config
        state_dir = self._state_dir()
        lock = StateLock(state_dir)
        lock.acquire()
        self._lock = lock
        self._ledger = Ledger.open(
            state_dir,
            policy=RetryPolicy.from_config(config.retry),
            blocked_probe_interval=config.daemon.blocked_probe_interval,
        )
        recovered = self._ledger.recover()
        log.info(
            "daemon.starting",
            config=str(config.source),
            watches=len(config.watches),
            workers=config.daemon.workers,
            recovered=recovered,
            dry_run=self.dry_run,
        )
        if self.dry_run:
            self._client = DryRunClient()
        else:
            self._client = HubClient(config.hub, workers=config.daemon.workers)
        self._dispatcher = Dispatcher(
            config, self._ledger, self._client, touch_files=not self.dry_run
        )
        self._settler = Settler(
            self._on_ready,
            on_refused=self._on_refused,
            on_note=self._on_note,
            watches=config.watches,
        )
        self._watcher = Watcher(
            config.watches,
            self._settler,
            known=self._ledger.known_identities,
            rescan_interval=config.daemon.rescan_interval,
        )
        self._settler.start()
        self._watcher.start()
        while not self._watcher.scanned.wait(SCAN_EXTENSION / 3):
            if not self._watcher.alive():
                raise HubwatchdError("the watcher stopped during the first scan")
            systemd.extend_timeout(SCAN_EXTENSION)
        self._dispatcher.start()
        systemd.ready()
        log.info("daemon.ready", watches=[w.name for w in config.watches])

    def _state_dir(self) -> Path:
        """The real state dir, or for a dry run a scratch copy of its ledger,
        so that nothing the operator has is written."""
        real = self.config.daemon.state_dir
        if not self.dry_run:
            return real
        self._scratch = Path(tempfile.mkdtemp(prefix="hubwatchd-dry-run-"))
        ledger = real / DB_NAME
        if not ledger.exists():
            return self._scratch
        if not Path(f"{ledger}-wal").exists():
            # Nobody has it open. Opened by SQLite, even read-only, it would
            # leave -wal and -shm files beside it, owned by whoever runs the
            # dry run (root, often): the service could then not open its own
            # ledger. A byte copy creates nothing there.
            shutil.copyfile(ledger, self._scratch / DB_NAME)
            return self._scratch
        # A daemon has it open (or crashed): its -wal and -shm are there
        # already, and SQLite's backup reads a consistent snapshot.
        source = sqlite3.connect(f"file:{ledger}?mode=ro", uri=True)
        target = sqlite3.connect(self._scratch / DB_NAME)
        with source, target:
            source.backup(target)
        source.close()
        target.close()
        return self._scratch

    # --- serve ----------------------------------------------------------

    def _serve(self) -> None:
        ping_every = systemd.watchdog_interval()
        tick = min(STATUS_EVERY, ping_every or STATUS_EVERY)
        next_status = next_prune = 0.0
        while True:
            try:
                signum = self._signals.get(timeout=tick)
            except queue.Empty:
                signum = None
            if signum in (signal.SIGTERM, signal.SIGINT):
                log.info("daemon.stopping", signal=signal.Signals(signum).name)
                return
            if signum == signal.SIGHUP:
                self._reload()

            if self._healthy():
                systemd.watchdog_ping()
            now = time.monotonic()
            if now >= next_status:
                systemd.status(self.status_line())
                next_status = now + STATUS_EVERY
            if now >= next_prune and not self.dry_run:
                self._ledger.prune(self.config.daemon.ledger_retention)
                next_prune = now + PRUNE_EVERY

    def _healthy(self) -> bool:
        """Every thread that does the work is alive: else no watchdog ping,
        and systemd restarts the service."""
        return (
            self._watcher.alive() and self._settler.alive() and self._dispatcher.alive()
        )

    def status_line(self) -> str:
        """The one line `systemctl status` shows."""
        counts = self._ledger.counts()
        blocked = sorted(self._ledger.blocked_watches())
        line = (
            f"queued {counts.get('ready', 0)}, "
            f"uploading {counts.get('uploading', 0)}, "
            f"retrying {counts.get('retry_wait', 0)}, "
            f"failed {counts.get('failed', 0)}, "
            f"in doubt {counts.get('in_doubt', 0)}"
        )
        if blocked:
            line += f"; BLOCKED: {', '.join(blocked)}"
        return line

    def _reload(self) -> None:
        systemd.reloading()
        try:
            config = load_config(self.config.source)
            problems = check_filesystem(config)
            if problems:
                raise ConfigError(problems)
        except ConfigError as exc:
            log.error(
                "config.reload_failed",
                problems=[str(p) for p in exc.problems],
                action="the previous configuration stays in force",
            )
            systemd.ready()
            return
        before = self.config
        old = {w.name for w in before.watches}
        new = {w.name for w in config.watches}
        # What a reload cannot change in a running process stays as it was.
        fixed = {"state_dir": before.daemon.state_dir}
        fixed["rescan_interval"] = before.daemon.rescan_interval
        ignored = [k for k, v in fixed.items() if getattr(config.daemon, k) != v]
        if ignored:
            log.warning(
                "config.restart_needed",
                settings=ignored,
                action="these take effect at the next restart",
            )
            config = replace(config, daemon=replace(config.daemon, **fixed))
        client = None
        if not self.dry_run and (
            config.hub != before.hub or config.daemon.workers != before.daemon.workers
        ):
            # Uploads in flight finish on the old client, closed at stop.
            self._retired.append(self._client)
            client = self._client = HubClient(config.hub, workers=config.daemon.workers)
        if config.daemon.log_format != before.daemon.log_format or (
            config.daemon.log_level != before.daemon.log_level
        ):
            logs.configure(config.daemon.log_format, config.daemon.log_level)
        self.config = config
        self._ledger.policy = RetryPolicy.from_config(config.retry)
        self._ledger.blocked_probe_interval = config.daemon.blocked_probe_interval
        self._settler.set_watches(config.watches)
        self._watcher.update(config.watches)
        self._dispatcher.update(config, client)
        log.info(
            "config.reloaded",
            added=sorted(new - old),
            removed=sorted(old - new),
            watches=len(new),
        )
        systemd.ready()

    # --- what the settler reports ---------------------------------------

    def _on_ready(self, watch: Any, candidate: Candidate) -> None:
        _, created = self._ledger.record_ready(
            watch,
            candidate.path,
            candidate.size,
            candidate.mtime_ns,
            candidate.ctime_ns,
            candidate.inode,
        )
        if created:
            log.info(
                "file.ready",
                watch=watch.name,
                task_id=watch.task_id,
                path=candidate.path,
                bytes=candidate.size,
            )
        # A known version may still owe its archive or delete (a crash came
        # between `done` and the move): the dispatcher finishes it.
        self._dispatcher.wake()

    def _on_refused(self, watch: Any, path: str, reason: str) -> None:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        _, created = self._ledger.record_refused(
            watch, path, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, reason
        )
        if created:
            log.warning("file.refused", watch=watch.name, path=path, reason=reason)
            self._dispatcher.wake()

    def _on_note(self, watch: Any, path: str, note: str) -> None:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        self._ledger.note_detected(
            watch, path, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, note
        )

    # --- stop -----------------------------------------------------------

    def _stop(self) -> None:
        if self._lock is None:
            return  # nothing was started: the state dir was not ours
        systemd.stopping()
        if self._watcher is not None:
            self._watcher.stop()
        if self._settler is not None:
            self._settler.stop()
        abandoned: list[str] = []
        if self._dispatcher is not None:
            abandoned = self._dispatcher.stop(self.config.daemon.shutdown_grace)
        if abandoned:
            # Their threads still hold the client and may yet write to the
            # ledger: both stay open, and the state lock held, until the
            # process ends. Their rows stay `uploading`; the next start's
            # recovery queues a replace again and holds an append whose body
            # was sent as in doubt.
            log.warning(
                "daemon.abandoned_uploads",
                paths=abandoned,
                action="the next start recovers them from the ledger",
            )
        else:
            self._close()
        log.info("daemon.stopped", abandoned=len(abandoned))

    def _close(self) -> None:
        """Release what start() took, in reverse order."""
        for client in (*self._retired, self._client):
            if client is not None:
                client.close()
        if self._ledger is not None:
            self._ledger.close()
        if self._lock is not None:
            self._lock.release()
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)

    # --- signals --------------------------------------------------------

    def _install_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, self._record_signal)

    def _record_signal(self, signum: int, _frame: FrameType | None) -> None:
        if signum in (signal.SIGTERM, signal.SIGINT):
            self._stop_requests += 1
            if self._stop_requests > 1:
                os._exit(130)
        self._signals.put(signum)

    def request_stop(self) -> None:
        """Stop as SIGTERM would (for callers that run the daemon in-process)."""
        self._signals.put(signal.SIGTERM)
