"""Watch: watchdog observers, the start-up scan and the periodic rescan.

One observer per watch: inotify where it sees every write, polling where it
cannot (network and FUSE filesystems, where inotify sees only this host's
writes) or where the config says so. Every event goes to the Settler's
`feed`; a scan of each folder at start, after any lost events, and every
`rescan_interval` catches whatever events missed.

watchdog's own traps, and what this module does about them:

- an exception in a handler ends the observer thread for good: the handler
  catches and logs everything, and a supervisor thread restarts any dead
  observer (or dead emitter, as when the watched folder vanished) and
  rescans its folder;
- a full inotify queue reaches no handler, only a WARNING on the
  `watchdog.observers.inotify_c` logger: a logging handler there turns it
  into a full rescan;
- a recursive watch with more folders than fs.inotify.max_user_watches
  starts silently half blind: the folders are counted and an ERROR names the
  sysctl to raise (the periodic rescan still finds files in unwatched ones);
- a folder moved into a recursive watch brings its files without an event
  for each: the new folder is scanned.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from watchdog.events import (
    DirCreatedEvent,
    DirMovedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers.api import BaseObserver
from watchdog.observers.inotify import InotifyObserver
from watchdog.observers.polling import PollingObserver

from hubwatchd import logs, mounts, settle
from hubwatchd.config import WatchConfig

log = logs.get_logger(__name__)

MOUNTINFO = mounts.MOUNTINFO
MAX_USER_WATCHES = "/proc/sys/fs/inotify/max_user_watches"
OVERFLOW_LOGGER = "watchdog.observers.inotify_c"

# Filesystems where inotify sees only writes made on this host.
REMOTE_FILESYSTEMS = frozenset(
    {
        "nfs",
        "nfs4",
        "cifs",
        "smb3",
        "smbfs",
        "ncpfs",
        "9p",
        "ceph",
        "glusterfs",
        "afs",
        "coda",
        "lustre",
        "gpfs",
        "ocfs2",
        "gfs2",
        "beegfs",
        "virtiofs",
        "vboxsf",
        "vmhgfs",
        "fuse",
        "fuseblk",
    }
)

# (path, size, mtime_ns, inode): a file version the ledger already knows.
KnownIdentity = tuple[str, int, int, int]
Known = Callable[[str], set[KnownIdentity]]

_KINDS = {
    "created": settle.CREATED,
    "modified": settle.MODIFIED,
    "attrib": settle.ATTRIB,
    "closed": settle.CLOSED_WRITE,
    "deleted": settle.DELETED,
}


class EventSink(Protocol):
    """What the Watcher feeds: a `settle.Settler` in the daemon."""

    def feed(
        self,
        watch: str,
        path: str,
        kind: str,
        *,
        closes: bool = True,
        stat_result: os.stat_result | None = None,
        src: str | None = None,
    ) -> None: ...

    def set_watches(self, watches: Iterable[WatchConfig]) -> None: ...


# --- filesystems -----------------------------------------------------------


def filesystem_type(path: str | Path, mountinfo: str = MOUNTINFO) -> str | None:
    """The type of the filesystem holding `path`; `mountinfo` is the table's
    file. None when it cannot be read."""
    text = mounts.read_mountinfo(mountinfo)
    found = mounts.mount_of(path, text) if text is not None else None
    return found.fstype if found is not None else None


def is_remote(fstype: str | None) -> bool:
    """Whether inotify on `fstype` misses writes made by other hosts."""
    if fstype is None:
        return False
    return fstype in REMOTE_FILESYSTEMS or fstype.startswith("fuse.")


def wants_polling(watch: WatchConfig, mountinfo: str = MOUNTINFO) -> tuple[bool, str]:
    """Whether to poll `watch`, and why (for the log)."""
    if watch.polling is not None:
        return watch.polling, "set in the config"
    fstype = filesystem_type(watch.path, mountinfo)
    if is_remote(fstype):
        return True, f"{fstype} filesystem: inotify would miss other hosts' writes"
    return False, f"{fstype or 'unknown'} filesystem"


def inotify_watch_limit(path: str = MAX_USER_WATCHES) -> int | None:
    """fs.inotify.max_user_watches, or None when it cannot be read."""
    try:
        with open(path, encoding="ascii") as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def count_directories(root: str | Path) -> int:
    """How many inotify watches a recursive watch on `root` needs."""
    count, stack = 0, [os.fspath(root)]
    while stack:
        folder = stack.pop()
        count += 1
        try:
            with os.scandir(folder) as entries:
                for entry in entries:
                    with contextlib.suppress(OSError):
                        if entry.is_dir(follow_symlinks=False):
                            stack.append(entry.path)
        except OSError:
            continue
    return count


# --- scanning --------------------------------------------------------------


@dataclass(frozen=True)
class ScanStats:
    """What one scan of one folder found."""

    watch: str
    files: int  # matching files seen
    known: int  # of those, already in the ledger with the same identity
    fed: int  # handed to the Settler


def scan(
    watch: WatchConfig,
    feed: Callable[..., None],
    *,
    known: set[KnownIdentity] | frozenset[KnownIdentity] = frozenset(),
    closes: bool = True,
    top: str | None = None,
) -> ScanStats:
    """Walk `watch`'s folder (or `top` below it) and feed every input file.

    Recursive when the watch is; never enters hidden folders or the archive
    and failed folders. A file whose (path, size, mtime_ns, inode) is in
    `known` is skipped: one set lookup, with the stat scandir already needs.
    Symlinks, FIFOs and the like that match the patterns are fed too, so
    that the Settler refuses them with a reason.
    """
    skip = {str(watch.archive_path), str(watch.failed_path)}
    stack = [top or str(watch.path)]
    files = skipped = fed = 0
    while stack:
        folder = stack.pop()
        try:
            entries = os.scandir(folder)
        except OSError as exc:
            log.warning(
                "watch.scan_unreadable", watch=watch.name, path=folder, error=str(exc)
            )
            continue
        with entries:
            for entry in entries:
                name = entry.name
                if name.startswith("."):
                    continue
                try:
                    if entry.is_dir(follow_symlinks=False):
                        if watch.recursive and entry.path not in skip:
                            stack.append(entry.path)
                        continue
                    if not settle.name_matches(watch, name):
                        continue
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue  # vanished while we looked
                files += 1
                if (entry.path, st.st_size, st.st_mtime_ns, st.st_ino) in known:
                    skipped += 1
                    continue
                feed(watch.name, entry.path, settle.SCAN, closes=closes, stat_result=st)
                fed += 1
    return ScanStats(watch=watch.name, files=files, known=skipped, fed=fed)


# --- watchdog glue ---------------------------------------------------------


class _Handler(FileSystemEventHandler):
    """Turns watchdog events into Settler events; never lets one escape."""

    def __init__(self, watcher: Watcher, watch: str, *, closes: bool) -> None:
        self.watcher = watcher
        self.watch = watch
        self.closes = closes

    def dispatch(self, event: FileSystemEvent) -> None:
        try:
            self.watcher._on_fs_event(self.watch, self.closes, event)
        except Exception:
            path = os.fsdecode(event.src_path)
            log.exception("watch.handler_failed", watch=self.watch, path=path)


class _OverflowTrigger(logging.Handler):
    """A WARNING from watchdog's inotify core means events were lost."""

    def __init__(self, watcher: Watcher) -> None:
        super().__init__(level=logging.WARNING)
        self.watcher = watcher

    def emit(self, record: logging.LogRecord) -> None:
        self.watcher.request_rescan(None, reason="inotify queue overflow")


@dataclass
class _Observed:
    watch: WatchConfig
    observer: BaseObserver | None
    polling: bool

    def alive(self) -> bool:
        observer = self.observer
        if observer is None or not observer.is_alive():
            return False
        return all(emitter.is_alive() for emitter in list(observer.emitters))


def _detection_key(watch: WatchConfig) -> tuple[object, ...]:
    # What an observer depends on; other settings apply without a restart.
    return (watch.path, watch.recursive, watch.polling)


class Watcher:
    """Observers for every watch, a supervisor, and the scans.

    Events go to `sink.feed` (a Settler). `known(watch_name)` returns the
    identities the ledger already holds, so scans skip them. Call `start`
    once and `stop` once; `update` applies a reloaded config.
    """

    def __init__(
        self,
        watches: Iterable[WatchConfig],
        sink: EventSink,
        *,
        known: Known | None = None,
        rescan_interval: float = 300.0,
        poll_interval: float = 1.0,
        supervise_interval: float = 5.0,
        mountinfo: str = MOUNTINFO,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._watches = {w.name: w for w in watches}
        self._sink = sink
        self._known = known
        self._rescan_interval = rescan_interval
        self._poll_interval = poll_interval
        self._supervise_interval = supervise_interval
        self._mountinfo = mountinfo
        self._clock = clock
        self._observed: dict[str, _Observed] = {}
        self._lock = threading.RLock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._requests: dict[str | None, str] = {}
        self._thread: threading.Thread | None = None
        self._overflow = _OverflowTrigger(self)
        self.scanned = threading.Event()  # set after the first full scan
        self.scans = 0  # completed scan passes (all due watches each)
        self._next_rescan = 0.0

    # --- lifecycle ---

    def start(self) -> None:
        """Start observers, then the supervisor, which scans every folder."""
        if self._thread is not None:
            raise RuntimeError("Watcher already started")
        self._sink.set_watches(self._watches.values())
        overflow_logger = logging.getLogger(OVERFLOW_LOGGER)
        if not overflow_logger.isEnabledFor(logging.WARNING):
            overflow_logger.setLevel(logging.WARNING)
        overflow_logger.addHandler(self._overflow)
        with self._lock:
            for watch in self._watches.values():
                self._observed[watch.name] = self._start_observer(watch)
            self._check_inotify_budget()
        self._next_rescan = self._clock() + self._rescan_interval
        self.request_rescan(None, reason="start-up")
        self._thread = threading.Thread(
            target=self._run, name="hubwatchd-watch", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the supervisor and every observer, and wait for their threads."""
        self._stopping.set()
        self._wake.set()
        logging.getLogger(OVERFLOW_LOGGER).removeHandler(self._overflow)
        if self._thread is not None:
            self._thread.join(timeout)
        with self._lock:
            for observed in self._observed.values():
                self._stop_observer(observed, timeout)
            self._observed.clear()

    def alive(self) -> bool:
        """True when the supervisor and every started observer run.

        For the systemd watchdog. A watch whose folder is unavailable has no
        observer and does not count (see `unavailable`): the supervisor keeps
        retrying it, and restarting the daemon would not bring it back.
        """
        if self._thread is None or not self._thread.is_alive():
            return False
        with self._lock:
            return all(
                o.alive() for o in self._observed.values() if o.observer is not None
            )

    def unavailable(self) -> list[str]:
        """Watches whose folder could not be watched (missing, unreadable)."""
        with self._lock:
            return [n for n, o in self._observed.items() if o.observer is None]

    def polling(self, watch: str) -> bool:
        """Whether `watch` is polled (False for inotify)."""
        with self._lock:
            return self._observed[watch].polling

    def update(self, watches: Iterable[WatchConfig]) -> None:
        """Apply a reloaded config: new watches start, removed ones stop, and
        a watch whose folder, recursion or polling changed gets a new
        observer. Paths settling in unchanged watches keep settling."""
        new = {w.name: w for w in watches}
        with self._lock:
            old = self._watches
            self._watches = new
            self._sink.set_watches(new.values())
            for name in [n for n in self._observed if n not in new]:
                self._stop_observer(self._observed.pop(name))
                log.info("watch.removed", watch=name)
            for name, watch in new.items():
                observed = self._observed.get(name)
                if observed is not None and _detection_key(old[name]) == _detection_key(
                    watch
                ):
                    observed.watch = watch
                    continue
                if observed is not None:
                    self._stop_observer(observed)
                self._observed[name] = self._start_observer(watch)
                self.request_rescan(name, reason="config reload")
            self._check_inotify_budget()

    # --- rescans ---

    def request_rescan(self, watch: str | None = None, *, reason: str) -> None:
        """Ask the supervisor to rescan one watch (or all, with None) soon.

        Safe from any thread, including a logging handler.
        """
        with self._lock:
            self._requests.setdefault(watch, reason)
        self._wake.set()

    def rescan_now(self, watch: str | None = None) -> list[ScanStats]:
        """Scan one watch's folder (or all) now, in this thread."""
        with self._lock:
            targets = [
                (
                    w,
                    self._observed[w.name].polling
                    if w.name in self._observed
                    else False,
                )
                for w in self._watches.values()
                if watch is None or w.name == watch
            ]
        results = []
        for config, polled in targets:
            known: set[KnownIdentity] = set()
            if self._known is not None:
                try:
                    known = self._known(config.name)
                except Exception:
                    log.exception("watch.known_failed", watch=config.name)
            results.append(
                scan(config, self._sink.feed, known=known, closes=not polled)
            )
        return results

    # --- the supervisor ---

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                self._tick()
            except Exception:
                log.exception("watch.supervisor_failed")
            timeout = min(
                self._supervise_interval, max(0.0, self._next_rescan - self._clock())
            )
            self._wake.wait(timeout)

    def _tick(self) -> None:
        self._wake.clear()
        if self._stopping.is_set():
            return
        self.supervise()
        if self._clock() >= self._next_rescan:
            self._next_rescan = self._clock() + self._rescan_interval
            self.request_rescan(None, reason="periodic")
        with self._lock:
            requests, self._requests = self._requests, {}
        if not requests:
            return
        targets = [None] if None in requests else list(requests)
        for target in targets:
            reason = requests[target]
            results = self.rescan_now(target)
            fed = sum(r.fed for r in results)
            known = sum(r.known for r in results)
            log.info(
                "watch.rescanned",
                watch=target or "*",
                reason=reason,
                fed=fed,
                known=known,
            )
        self.scans += 1
        if None in requests:
            self.scanned.set()

    def supervise(self) -> list[str]:
        """Restart every dead observer and ask for a rescan of its folder.

        Called by the supervisor thread every `supervise_interval`; returns
        the names of the watches restarted.
        """
        restarted = []
        with self._lock:
            for name, observed in list(self._observed.items()):
                if observed.alive() or self._stopping.is_set():
                    continue
                was_running = observed.observer is not None
                if was_running:
                    log.error("watch.observer_dead", watch=name, action="restarting")
                self._stop_observer(observed)
                fresh = self._start_observer(observed.watch, quiet=not was_running)
                self._observed[name] = fresh
                if fresh.observer is not None:
                    restarted.append(name)
                    self.request_rescan(name, reason="observer restarted")
        return restarted

    # --- observers ---

    def _start_observer(self, watch: WatchConfig, *, quiet: bool = False) -> _Observed:
        polling, why = wants_polling(watch, self._mountinfo)
        if not polling:
            try:
                observer = self._launch(watch, polling=False)
            except OSError as exc:
                log.error(
                    "watch.inotify_failed",
                    watch=watch.name,
                    path=str(watch.path),
                    error=str(exc),
                    action="polling instead",
                    fix="raise fs.inotify.max_user_instances or max_user_watches",
                )
                polling, why = True, "inotify could not start"
            else:
                log.info(
                    "watch.started",
                    watch=watch.name,
                    path=str(watch.path),
                    mode="inotify",
                    why=why,
                )
                return _Observed(watch, observer, polling=False)
        try:
            observer = self._launch(watch, polling=True)
        except OSError as exc:
            # Once per outage: the supervisor retries every few seconds.
            report = log.debug if quiet else log.error
            report(
                "watch.folder_unavailable",
                watch=watch.name,
                path=str(watch.path),
                error=str(exc),
                action=f"retrying every {self._supervise_interval:g}s",
            )
            return _Observed(watch, None, polling=True)
        log.info(
            "watch.started",
            watch=watch.name,
            path=str(watch.path),
            mode="polling",
            why=why,
        )
        return _Observed(watch, observer, polling=True)

    def _launch(self, watch: WatchConfig, *, polling: bool) -> BaseObserver:
        if not os.path.isdir(watch.path):
            raise FileNotFoundError(f"{watch.path} is not a folder")
        handler = _Handler(self, watch.name, closes=not polling)
        observer: BaseObserver
        if polling:
            observer = PollingObserver(timeout=self._poll_interval)
        else:
            observer = InotifyObserver(generate_full_events=True)
        try:
            observer.schedule(handler, str(watch.path), recursive=watch.recursive)
            observer.start()
        except BaseException:
            with contextlib.suppress(Exception):
                observer.stop()
            raise
        return observer

    def _stop_observer(self, observed: _Observed, timeout: float = 5.0) -> None:
        observer, observed.observer = observed.observer, None
        if observer is None:
            return
        with contextlib.suppress(Exception):
            observer.stop()
        with contextlib.suppress(RuntimeError):
            observer.join(timeout)

    def _check_inotify_budget(self) -> None:
        recursive = [
            o.watch
            for o in self._observed.values()
            if not o.polling and o.watch.recursive and o.observer is not None
        ]
        if not recursive:
            return
        limit = inotify_watch_limit()
        if limit is None:
            return
        needed = len(self._observed) + sum(
            count_directories(w.path) - 1 for w in recursive
        )
        if needed > limit:
            log.error(
                "watch.inotify_limit",
                watches=",".join(w.name for w in recursive),
                needed=needed,
                limit=limit,
                effect="files in unwatched subfolders are found by the rescan only",
                fix=f"sysctl fs.inotify.max_user_watches={max(2 * needed, 65536)}",
            )

    # --- events ---

    def _on_fs_event(self, watch: str, closes: bool, event: FileSystemEvent) -> None:
        src = os.fsdecode(event.src_path)
        dest = os.fsdecode(event.dest_path)
        feed = self._sink.feed
        if event.is_directory:
            self._on_folder_event(watch, event, dest or src)
            return
        if isinstance(event, FileMovedEvent):
            if dest:
                feed(watch, dest, settle.MOVED_IN, closes=closes, src=src or None)
            if src:
                feed(watch, src, settle.DELETED, closes=closes)
            return
        kind = _KINDS.get(event.event_type)
        if kind is not None:
            feed(watch, src, kind, closes=closes)

    def _on_folder_event(self, watch: str, event: FileSystemEvent, path: str) -> None:
        # A folder created or moved in: its files may have no events of
        # their own (those moved in with it never do), so scan it.
        if not isinstance(event, DirCreatedEvent | DirMovedEvent) or not path:
            return
        with self._lock:
            config = self._watches.get(watch)
            observed = self._observed.get(watch)
        if config is None or not config.recursive or observed is None:
            return
        if _inside(config, path):
            # No known-set here: fetching it per new folder costs more than
            # the Settler's own check that a version was reported already.
            closes = not observed.polling
            scan(config, self._sink.feed, closes=closes, top=path)


def _inside(watch: WatchConfig, folder: str) -> bool:
    root = str(watch.path)
    if not folder.startswith(root + os.sep):
        return False
    for skip in (watch.archive_path, watch.failed_path):
        if folder == str(skip) or folder.startswith(str(skip) + os.sep):
            return False
    rel = folder[len(root) + 1 :].split(os.sep)
    return not any(part.startswith(".") for part in rel)
