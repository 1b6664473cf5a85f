"""OpenSSH's sshd on 127.0.0.1, and an `sftp -b` client, for SFTP drop tests.

sshd runs as the user running the tests and accepts only that user, with a
key made for the test: no system account is created or touched. As root
that needs `PermitRootLogin prohibit-password` (key only), and sshd insists
on its privilege-separation folder /run/sshd, which the openssh-server
package normally creates at boot; the fixture creates it when missing.

The server forces `internal-sftp -u 0007`, as the README's drop-zone setup
does, so uploads land group-usable. There is no ChrootDirectory: sshd
demands root-owned, non-writable path components up to the chroot, and a
pytest tmp_path lives under world-writable /tmp. Remote paths are therefore
absolute paths on this host.

The fixture is named `sshd`. Use it with `from sshd_fixture import
sshd_server` in a test module (importing registers it), or for every test
with `pytest_plugins = ["sshd_fixture"]` in the top-level conftest.py.
Tests that use it should be marked `@pytest.mark.sshd`; where sshd cannot
start, the fixture skips with the reason.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import psutil
import pytest

SSHD = "/usr/sbin/sshd"  # sshd re-executes itself and needs an absolute path
START_TIMEOUT = 10.0


@dataclass(frozen=True)
class SftpServer:
    host: str
    port: int
    user: str
    client_key: Path
    known_hosts: Path
    log: Path

    def sftp_args(self, *, limit_kbit: int | None = None) -> list[str]:
        """The `sftp -b -` command line for this server (commands on stdin).

        `limit_kbit` is sftp's `-l`: a bandwidth cap in Kbit/s, for uploads
        slow enough that a watcher sees the file while it grows.
        """
        args = [
            "sftp",
            "-q",
            "-b",
            "-",
            "-P",
            str(self.port),
            "-i",
            str(self.client_key),
            "-F",
            "/dev/null",  # no ~/.ssh/config from whoever runs the tests
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            f"UserKnownHostsFile={self.known_hosts}",
            "-o",
            "GlobalKnownHostsFile=/dev/null",
        ]
        if limit_kbit is not None:
            args += ["-l", str(limit_kbit)]
        args.append(f"{self.user}@{self.host}")
        return args

    def sftp(
        self, commands: list[str], *, limit_kbit: int | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run `commands` as one `sftp -b` batch; any failing command fails it."""
        return subprocess.run(
            self.sftp_args(limit_kbit=limit_kbit),
            input=batch(commands),
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )

    @contextlib.contextmanager
    def sftp_running(
        self, commands: list[str], *, limit_kbit: int | None = None
    ) -> Iterator[RunningSftp]:
        """An `sftp -b` batch running in the background, for a test to watch
        or cut off; killed on leaving the block if it still runs."""
        with (
            tempfile.TemporaryFile("w+") as script,
            tempfile.TemporaryFile("w+") as output,
        ):
            script.write(batch(commands))
            script.seek(0)
            process = subprocess.Popen(
                self.sftp_args(limit_kbit=limit_kbit),
                stdin=script,
                stdout=output,
                stderr=subprocess.STDOUT,
                text=True,
            )
            try:
                yield RunningSftp(process, output, self)
            finally:
                if process.poll() is None:
                    process.kill()
                process.wait(timeout=30)

    def upload(
        self,
        local: Path,
        remote: Path,
        *,
        limit_kbit: int | None = None,
        temp_name: str | None = None,
    ) -> None:
        """Upload `local` to `remote`, optionally as `temp_name`, then renamed.

        Raises AssertionError with sftp's output when the batch fails.
        """
        if temp_name is None:
            commands = [f"put {quote(local)} {quote(remote)}"]
        else:
            temp = remote.with_name(temp_name)
            commands = [
                f"put {quote(local)} {quote(temp)}",
                f"rename {quote(temp)} {quote(remote)}",
            ]
        result = self.sftp(commands, limit_kbit=limit_kbit)
        if result.returncode != 0:
            raise AssertionError(
                f"sftp upload of {local} failed ({result.returncode}):\n"
                f"{result.stdout}{result.stderr}\nsshd log:\n{self.log_tail()}"
            )

    def log_tail(self, lines: int = 20) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


@dataclass
class RunningSftp:
    """An sftp client started by `SftpServer.sftp_running`."""

    process: subprocess.Popen[str]
    _output: IO[str]
    _server: SftpServer

    def wait(self, timeout: float = 300) -> int:
        return self.process.wait(timeout)

    def kill(self) -> None:
        """Cut the transfer off as a broken connection would: SIGKILL, reaped."""
        self.process.kill()
        self.process.wait(timeout=30)

    def output(self) -> str:
        """What sftp printed so far, and the tail of sshd's log."""
        self._output.seek(0)
        return f"{self._output.read()}\nsshd log:\n{self._server.log_tail()}"


def batch(commands: list[str]) -> str:
    """`commands` as the text of an sftp batch file."""
    return "".join(command + "\n" for command in commands)


def quote(path: Path) -> str:
    text = str(path)
    if '"' in text or "\n" in text:
        raise ValueError(f"sftp batch paths cannot hold quotes or newlines: {text!r}")
    return f'"{text}"'


def _keygen(path: Path) -> None:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "", "-f", str(path)],
        check=True,
        capture_output=True,
        timeout=30,
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _write_config(folder: Path, port: int, user: str) -> Path:
    config = folder / "sshd_config"
    lines = [
        f"ListenAddress 127.0.0.1:{port}",
        f"HostKey {folder / 'host_key'}",
        f"PidFile {folder / 'sshd.pid'}",
        f"AuthorizedKeysFile {folder / 'authorized_keys'}",
        # tmp_path sits under world-writable /tmp, which StrictModes refuses.
        "StrictModes no",
        "PubkeyAuthentication yes",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "UsePAM no",
        f"AllowUsers {user}",
        "PermitRootLogin prohibit-password" if user == "root" else "PermitRootLogin no",
        "AllowTcpForwarding no",
        "X11Forwarding no",
        "LogLevel VERBOSE",
        "Subsystem sftp internal-sftp",
        "ForceCommand internal-sftp -u 0007",
    ]
    config.write_text("\n".join(lines) + "\n")
    return config


def _wait_listening(process: subprocess.Popen[bytes], port: int) -> bool:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        with (
            contextlib.suppress(OSError),
            socket.create_connection(("127.0.0.1", port), timeout=1) as conn,
        ):
            conn.settimeout(2)
            # sshd greets first; anything else on the port is not our sshd.
            return conn.recv(4).startswith(b"SSH-")
        time.sleep(0.05)  # poll interval while sshd binds, not a stand-in for sync
    return False


def _stop(process: subprocess.Popen[bytes]) -> None:
    # Sessions first, while the listener is alive to reap them; a session
    # orphaned by the listener stays a zombie until init gets round to it.
    children: list[psutil.Process] = []
    with contextlib.suppress(psutil.NoSuchProcess):
        children = psutil.Process(process.pid).children(recursive=True)
    for child in children:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.terminate()
    _gone, alive = psutil.wait_procs(children, timeout=10)
    for child in alive:
        child.kill()
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


@contextlib.contextmanager
def start_sshd(folder: Path) -> Iterator[SftpServer]:
    """sshd on a free 127.0.0.1 port, keys and config in `folder`; skips if it
    cannot run here."""
    for tool in ("sftp", "ssh-keygen"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed (apt-get install openssh-client)")
    if not os.access(SSHD, os.X_OK):
        pytest.skip(f"{SSHD} not installed (apt-get install openssh-server)")
    user = getpass.getuser()
    if os.geteuid() == 0:
        try:
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        except OSError as exc:
            pytest.skip(f"sshd needs /run/sshd as root and it cannot be made: {exc}")

    folder.mkdir(parents=True, exist_ok=True)
    _keygen(folder / "host_key")
    _keygen(folder / "client_key")
    shutil.copy(folder / "client_key.pub", folder / "authorized_keys")
    host_key = (folder / "host_key.pub").read_text().split()
    log = folder / "sshd.log"

    # A free port can be taken between the probe and sshd's bind: try again.
    for _attempt in range(3):
        port = _free_port()
        known_hosts = folder / "known_hosts"
        known_hosts.write_text(f"[127.0.0.1]:{port} {host_key[0]} {host_key[1]}\n")
        config = _write_config(folder, port, user)
        with log.open("ab") as log_file:
            process = subprocess.Popen(
                [SSHD, "-D", "-e", "-f", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=log_file,
            )
        try:
            if _wait_listening(process, port):
                yield SftpServer(
                    "127.0.0.1", port, user, folder / "client_key", known_hosts, log
                )
                return
        finally:
            _stop(process)
    tail = "\n".join(log.read_text(errors="replace").splitlines()[-5:])
    pytest.skip(f"sshd did not start on 127.0.0.1: {tail}")


@pytest.fixture(name="sshd")
def sshd_server(tmp_path: Path) -> Iterator[SftpServer]:
    """A running sshd for this test; stopped, with its sessions, afterwards."""
    with start_sshd(tmp_path / "sshd") as server:
        yield server
