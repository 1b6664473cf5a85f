"""sd_notify against real AF_UNIX datagram sockets, the way systemd listens."""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from hubwatchd import systemd


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(systemd, "_warned", False)


def _listen(address: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    # A datagram to a local socket is queued before sendto() returns, so a
    # non-blocking read tells at once whether anything was sent.
    sock.setblocking(False)
    return sock


@pytest.fixture
def listener(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[socket.socket]:
    path = tmp_path / "n.sock"
    with _listen(str(path)) as sock:
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        yield sock


def _received(sock: socket.socket) -> list[bytes]:
    datagrams = []
    while True:
        try:
            datagrams.append(sock.recv(65536))
        except BlockingIOError:
            return datagrams


@pytest.mark.parametrize(
    ("send", "expected"),
    [
        (systemd.ready, b"READY=1"),
        (systemd.stopping, b"STOPPING=1"),
        (systemd.watchdog_ping, b"WATCHDOG=1"),
        (
            lambda: systemd.status("3 waiting, 1 uploading"),
            b"STATUS=3 waiting, 1 uploading",
        ),
        (lambda: systemd.extend_timeout(2.5), b"EXTEND_TIMEOUT_USEC=2500000"),
        (lambda: systemd.notify("READY=1", "STATUS=up"), b"READY=1\nSTATUS=up"),
    ],
    ids=["ready", "stopping", "watchdog", "status", "extend_timeout", "two_fields"],
)
def test_each_message_is_one_exact_datagram(listener, send, expected) -> None:
    assert send() is True
    assert _received(listener) == [expected]


def test_status_keeps_to_one_line(listener) -> None:
    systemd.status("watch acme blocked:\n  401 from the hub\t")

    assert _received(listener) == [b"STATUS=watch acme blocked: 401 from the hub"]


def test_reloading_carries_the_monotonic_clock_in_microseconds(listener) -> None:
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    systemd.reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000

    [datagram] = _received(listener)
    first, second = datagram.decode().split("\n")
    assert first == "RELOADING=1"
    key, _, value = second.partition("=")
    assert key == "MONOTONIC_USEC"
    assert before <= int(value) <= after


def test_abstract_namespace_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"hubwatchd-test-{uuid.uuid4().hex}"
    with _listen("\0" + name) as sock:
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)

        assert systemd.ready() is True
        assert _received(sock) == [b"READY=1"]


def test_without_notify_socket_nothing_is_sent(tmp_path: Path) -> None:
    with _listen(str(tmp_path / "n.sock")) as sock:
        assert systemd.ready() is False
        assert systemd.status("idle") is False
        assert systemd.watchdog_ping() is False
        assert _received(sock) == []


def test_an_empty_notify_socket_counts_as_unset(
    listener, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", "")

    assert systemd.ready() is False
    assert _received(listener) == []


def test_a_failed_send_warns_once_and_never_raises(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone.sock"))

    with capture_logs() as events:
        assert systemd.ready() is False
        assert systemd.watchdog_ping() is False

    assert [e["event"] for e in events] == ["systemd.notify_failed"]
    assert events[0]["log_level"] == "warning"
    assert events[0]["socket"] == str(tmp_path / "gone.sock")


def test_a_relative_socket_path_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", "run/notify")

    with capture_logs() as events:
        assert systemd.ready() is False

    assert [e["event"] for e in events] == ["systemd.notify_failed"]


@pytest.mark.parametrize(
    ("usec", "pid", "expected"),
    [
        ("60000000", None, 30.0),
        ("60000000", "self", 30.0),
        ("1000000", "self", 0.5),
        ("60000000", "other", None),
        ("60000000", "not-a-pid", None),
        (None, None, None),
        ("", None, None),
        ("0", None, None),
        ("-5", None, None),
        ("sixty", None, None),
    ],
)
def test_watchdog_interval(
    monkeypatch: pytest.MonkeyPatch, usec, pid, expected
) -> None:
    if usec is not None:
        monkeypatch.setenv("WATCHDOG_USEC", usec)
    if pid is not None:
        pids = {"self": str(os.getpid()), "other": str(os.getpid() + 1)}
        monkeypatch.setenv("WATCHDOG_PID", pids.get(pid, pid))

    assert systemd.watchdog_interval() == expected
