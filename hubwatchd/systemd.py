"""Talking to systemd: the sd_notify protocol, without libsystemd.

systemd passes `$NOTIFY_SOCKET`, an AF_UNIX datagram socket (a path, or an
abstract name written with a leading `@`); each datagram is newline-separated
`KEY=VALUE` fields. Outside systemd the variable is unset and every function
here does nothing and returns False, so callers never need to ask first.

A failed send is logged once as a warning and otherwise ignored: systemd being
unreachable must never stop an upload.
"""

from __future__ import annotations

import os
import socket
import threading
import time

from hubwatchd import logs

log = logs.get_logger(__name__)

_warned = False
_warned_lock = threading.Lock()


def notify(*fields: str) -> bool:
    """Send `fields` (like "READY=1") as one datagram; True if systemd got it."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address or not fields:
        return False

    if address.startswith("@"):
        address = "\0" + address[1:]
    elif not address.startswith("/"):
        _warn_once(address, "only absolute paths and @abstract names are supported")
        return False

    data = "\n".join(fields).encode("utf-8")
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(data, address)
    except OSError as exc:
        _warn_once(address, exc.strerror or str(exc))
        return False
    return True


def ready() -> bool:
    """Start-up (or a reload) is complete."""
    return notify("READY=1")


def status(text: str) -> bool:
    """The one-line status `systemctl status` shows."""
    return notify("STATUS=" + " ".join(text.split()))


def stopping() -> bool:
    """Shutdown has begun."""
    return notify("STOPPING=1")


def reloading() -> bool:
    """A reload has begun; send `ready()` when it is done.

    MONOTONIC_USEC lets systemd (>= 253, Type=notify-reload) tell this reload
    from an earlier one; older versions ignore the field.
    """
    now_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    return notify("RELOADING=1", f"MONOTONIC_USEC={now_usec}")


def watchdog_ping() -> bool:
    """Tell systemd's watchdog that the main loop is alive."""
    return notify("WATCHDOG=1")


def extend_timeout(seconds: float) -> bool:
    """Ask for `seconds` more before systemd gives up on a start or stop."""
    return notify(f"EXTEND_TIMEOUT_USEC={max(0, round(seconds * 1_000_000))}")


def watchdog_interval() -> float | None:
    """Seconds between watchdog pings (half of WatchdogSec=), or None.

    None when no watchdog is set, when `$WATCHDOG_USEC` is not a positive
    number, or when `$WATCHDOG_PID` names another process (a child that
    inherited the environment must not ping for its parent).
    """
    try:
        usec = int(os.environ.get("WATCHDOG_USEC", ""))
        pid = int(os.environ.get("WATCHDOG_PID", os.getpid()))
    except ValueError:
        return None
    if usec <= 0 or pid != os.getpid():
        return None
    return usec / 2 / 1_000_000


def _warn_once(address: str, error: str) -> None:
    global _warned
    with _warned_lock:
        if _warned:
            return
        _warned = True
    shown = "@" + address[1:] if address.startswith("\0") else address
    log.warning("systemd.notify_failed", socket=shown, error=error)
