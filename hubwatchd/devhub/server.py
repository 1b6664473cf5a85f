"""Running devhub: bind, announce the URL, serve until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import tempfile
from collections.abc import Callable
from pathlib import Path

from aiohttp import web

from hubwatchd.devhub.app import Devhub, make_app
from hubwatchd.devhub.settings import Settings


class CannotListen(Exception):
    """The address is taken or not ours to bind."""


# How long stopping waits for requests still being handled.
SHUTDOWN_SECONDS = 3.0


def run(
    settings: Settings,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    data_dir: Path | None = None,
    discard: bool = False,
    ready_file: Path | None = None,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Serve until SIGTERM or SIGINT. Port 0 picks a free port.

    Once listening, writes {"url", "pid"} to `ready_file` (atomically) and
    calls `on_ready(url)`. Without `data_dir`, tables live in a temporary
    directory removed on exit.
    """
    own_dir = data_dir is None
    directory = Path(tempfile.mkdtemp(prefix="devhub-")) if own_dir else data_dir
    try:
        asyncio.run(
            _serve(settings, host, port, directory, discard, ready_file, on_ready)
        )
    finally:
        if own_dir:
            shutil.rmtree(directory, ignore_errors=True)


async def _serve(
    settings: Settings,
    host: str,
    port: int,
    data_dir: Path,
    discard: bool,
    ready_file: Path | None,
    on_ready: Callable[[str], None] | None,
) -> None:
    data_dir.mkdir(parents=True, exist_ok=True)
    hub = Devhub(settings, data_dir, discard=discard)
    runner = web.AppRunner(
        make_app(hub), access_log=None, shutdown_timeout=SHUTDOWN_SECONDS
    )
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        site = web.TCPSite(runner, host, port, shutdown_timeout=SHUTDOWN_SECONDS)
        try:
            await site.start()
        except OSError as exc:
            message = f"cannot listen on {host}:{port}: {exc.strerror}"
            raise CannotListen(message) from exc
        url = _base_url(runner.addresses[0])
        if ready_file is not None:
            _write_ready_file(ready_file, url)
        if on_ready is not None:
            on_ready(url)
        await stop.wait()
    finally:
        # Hanging and delayed requests end first, so the shutdown is quick.
        hub.stopping.set()
        await runner.cleanup()


def _base_url(address: tuple[str, int] | tuple[str, int, int, int]) -> str:
    host, port = address[0], address[1]
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


def _write_ready_file(path: Path, url: str) -> None:
    temp = path.with_name(path.name + ".tmp")
    temp.write_text(json.dumps({"url": url, "pid": os.getpid()}), encoding="utf-8")
    temp.replace(path)
