"""The command line: parse, load config, call into the package, map errors.

This is the only module that prints for the user or chooses an exit code.
Exit codes follow sysexits.h so that systemd and scripts can tell a broken
config (78) from a refused file (65) or a hub that is down (75).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any, NoReturn

import click

from hubwatchd import __version__, report
from hubwatchd.config import (
    GUID_RE,
    Config,
    check_filesystem,
    default_config_path,
    load_config,
    redacted_dict,
    render_toml,
    starter_config,
)
from hubwatchd.errors import ConfigError, LedgerError
from hubwatchd.ledger import STATES, Ledger

EX_OK = 0
EX_USAGE = 64
EX_DATAERR = 65
EX_SOFTWARE = 70
EX_CANTCREAT = 73
EX_TEMPFAIL = 75
EX_NOPERM = 77
EX_CONFIG = 78

config_option = click.option(
    "-c",
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Config file [default: $HUBWATCHD_CONFIG, then /etc/hubwatchd/config.toml].",
)


def fail(message: str, code: int) -> NoReturn:
    click.echo(f"hubwatchd: {message}", err=True)
    sys.exit(code)


def load_or_exit(config_path: Path | None, *, filesystem: bool = True) -> Config:
    """The validated config, or exit 78 with every problem printed.

    With `filesystem=False` (the ledger's read-only commands) neither the
    folders nor the key sources are read: those commands must work outside
    the service, where its credentials are not available.
    """
    path = config_path or default_config_path()
    try:
        config = load_config(path, keys=filesystem)
    except ConfigError as exc:
        fail(str(exc), EX_CONFIG)
    problems = check_filesystem(config) if filesystem else []
    if problems:
        fail(str(ConfigError(problems)), EX_CONFIG)
    for warning in config.warnings:
        click.echo(f"hubwatchd: warning: {warning}", err=True)
    return config


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="hubwatchd")
def main() -> None:
    """Watch drop folders and upload each complete file to a Data Hub task, once."""


# --- configuration --------------------------------------------------------


@main.command()
@config_option
def check(config_path: Path | None) -> None:
    """Validate the config, folders and key sources; print the effective config.

    Exits 0 when everything is usable, 78 (EX_CONFIG) otherwise. Keys are
    shown only by where they come from.
    """
    config = load_or_exit(config_path)
    click.echo(f"# {config.source}: valid")
    click.echo(render_toml(redacted_dict(config)), nl=False)


def _parse_watch_flag(value: str) -> tuple[Path, str, str]:
    path_text, sep, rest = value.rpartition("=")
    if not sep or not path_text:
        raise click.BadParameter(f"expected PATH=TASK_ID[:mode], got {value!r}")
    task_id, _, mode = rest.partition(":")
    mode = mode or "replace"
    if not GUID_RE.match(task_id):
        raise click.BadParameter(f"task id must be a GUID, got {task_id!r}")
    if mode not in ("replace", "append"):
        raise click.BadParameter(f'mode must be "replace" or "append", got {mode!r}')
    path = Path(path_text)
    if not path.is_absolute():
        raise click.BadParameter(f"path must be absolute, got {path_text!r}")
    return path, task_id, mode


@main.command()
@click.option(
    "--url", required=True, help="The hub's base URL, like https://datahub.example.com."
)
@click.option(
    "--watch",
    "watch_flags",
    multiple=True,
    required=True,
    metavar="PATH=TASK_ID[:MODE]",
    help="A folder and the container task it feeds; repeat for more.",
)
@click.option(
    "--api-key-file",
    type=click.Path(path_type=Path),
    help="Where the key is read from.",
)
@click.option(
    "--api-key-env", help="Read the key from this environment variable instead."
)
@click.option(
    "--state-dir", type=click.Path(path_type=Path), help="Where the ledger lives."
)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="File to write [default: the config path].",
)
@click.option("--force", is_flag=True, help="Overwrite an existing file.")
def init(
    url: str,
    watch_flags: tuple[str, ...],
    api_key_file: Path | None,
    api_key_env: str | None,
    state_dir: Path | None,
    output: Path | None,
    force: bool,
) -> None:
    """Write a starter config (mode 0600) from flags."""
    if api_key_file and api_key_env:
        fail("give --api-key-file or --api-key-env, not both", EX_USAGE)
    try:
        watches = [_parse_watch_flag(flag) for flag in watch_flags]
    except click.BadParameter as exc:
        fail(f"--watch: {exc.message}", EX_USAGE)
    target = output or default_config_path()
    data = starter_config(
        url,
        watches,
        api_key_file=api_key_file,
        api_key_env=api_key_env,
        state_dir=state_dir,
    )
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if force else os.O_EXCL)
    try:
        fd = os.open(target, flags, 0o600)
    except FileExistsError:
        fail(f"{target} exists; pass --force to overwrite it", EX_CANTCREAT)
    except OSError as exc:
        fail(f"cannot write {target}: {exc.strerror}", EX_CANTCREAT)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        os.fchmod(out.fileno(), 0o600)
        out.write("# Written by hubwatchd init. Every key: see config.example.toml.\n")
        out.write(render_toml(data))
    click.echo(f"wrote {target}; check it with: hubwatchd check -c {target}")


# --- upload (hub client) --------------------------------------------------


# --- ledger: status, history, retry, forget, explain ----------------------

EX_NOINPUT = 66

json_option = click.option(
    "--json", "as_json", is_flag=True, help="Print JSON for scripts instead."
)


def _open_ledger(config: Config) -> Ledger:
    """The existing ledger of this config, read alongside a running daemon."""
    try:
        return Ledger.open(config.daemon.state_dir, create=False)
    except LedgerError as exc:
        fail(str(exc), EX_NOINPUT)


def _emit(data: object, as_json: bool, render: Callable[[Any], str]) -> None:
    if as_json:
        click.echo(json.dumps(data, indent=2))
    else:
        click.echo(render(data))


@main.command()
@config_option
@json_option
def status(config_path: Path | None, as_json: bool) -> None:
    """Per watch: waiting, uploading, retrying, failed, blocked, in doubt."""
    config = load_or_exit(config_path, filesystem=False)
    with _open_ledger(config) as ledger:
        _emit(report.status(ledger, config), as_json, report.render_status)


@main.command()
@config_option
@json_option
@click.option("--watch", help="Only this watch.")
@click.option(
    "--state",
    "states",
    multiple=True,
    type=click.Choice(STATES),
    help="Only versions in this state; repeat for more.",
)
@click.option("--since", help='Changed since a duration ago ("24h") or a date.')
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True)
def history(
    config_path: Path | None,
    as_json: bool,
    watch: str | None,
    states: tuple[str, ...],
    since: str | None,
    limit: int,
) -> None:
    """The ledger's file versions, newest first."""
    config = load_or_exit(config_path, filesystem=False)
    try:
        start = None if since is None else report.parse_since(since, time.time())
    except ValueError as exc:
        fail(f"--since: {exc}", EX_USAGE)
    with _open_ledger(config) as ledger:
        rows = report.history(
            ledger, watch=watch, states=list(states), since=start, limit=limit
        )
    _emit(rows, as_json, report.render_history)


@main.command()
@config_option
@json_option
@click.argument("ids", nargs=-1, type=int)
@click.option("--failed", is_flag=True, help="Every failed version.")
@click.option("--in-doubt", is_flag=True, help="Every in-doubt version.")
@click.option("--watch", help="With --failed/--in-doubt: only this watch.")
def retry(
    config_path: Path | None,
    as_json: bool,
    ids: tuple[int, ...],
    failed: bool,
    in_doubt: bool,
    watch: str | None,
) -> None:
    """Queue versions again: IDs, or --failed, or --in-doubt.

    An in-doubt append may then add its rows a second time: check the
    table first. All or nothing: one id that cannot be retried changes none.
    """
    if not (ids or failed or in_doubt):
        fail("give version IDs, --failed or --in-doubt", EX_USAGE)
    config = load_or_exit(config_path, filesystem=False)
    with _open_ledger(config) as ledger:
        try:
            queued = ledger.retry(ids, failed=failed, in_doubt=in_doubt, watch=watch)
        except LedgerError as exc:
            fail(str(exc), EX_DATAERR)
    _emit([asdict(v) for v in queued], as_json, report.render_requeued)


@main.command()
@config_option
@json_option
@click.argument("ids", nargs=-1, type=int, required=True)
def forget(config_path: Path | None, as_json: bool, ids: tuple[int, ...]) -> None:
    """Close in-doubt versions you checked by hand; never uploaded again."""
    config = load_or_exit(config_path, filesystem=False)
    with _open_ledger(config) as ledger:
        try:
            closed = ledger.forget(ids)
        except LedgerError as exc:
            fail(str(exc), EX_DATAERR)
    _emit([asdict(v) for v in closed], as_json, report.render_history)


@main.command()
@config_option
@json_option
@click.argument("path", type=click.Path(path_type=Path))
def explain(config_path: Path | None, as_json: bool, path: Path) -> None:
    """Why this file is where it is: settling, queued, retrying, done, refused."""
    config = load_or_exit(config_path, filesystem=False)
    with _open_ledger(config) as ledger:
        _emit(report.explain(ledger, config, path), as_json, report.render_explain)


# --- daemon: run, demo ----------------------------------------------------


# --- devhub ---------------------------------------------------------------

EX_UNAVAILABLE = 69  # sysexits.h: a needed part (here the devhub extra) is missing


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option(
    "--port",
    type=int,
    default=8080,
    show_default=True,
    help="Port; 0 picks a free one.",
)
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="A devhub config file (tasks, keys, faults) [default: the demo setup].",
)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Keep the tables here [default: a temporary directory removed on exit].",
)
@click.option(
    "--discard", is_flag=True, help="Read and count bodies, store nothing (benchmarks)."
)
@click.option(
    "--max-body-size", type=int, help="Bytes per request [default: 20 GB, or config]."
)
@click.option(
    "--ready-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help='Once listening, write {"url": ..., "pid": ...} here (for test harnesses).',
)
def devhub(
    host: str,
    port: int,
    config_path: Path | None,
    data_dir: Path | None,
    discard: bool,
    max_body_size: int | None,
    ready_file: Path | None,
) -> None:
    """A local Data Hub for tests, demos and dry runs (needs hubwatchd[devhub])."""
    import dataclasses

    try:
        import openpyxl  # noqa: F401  (imported here only to fail early)

        from hubwatchd.devhub import server, settings
    except ImportError as exc:
        message = (
            f"devhub needs its extra ({exc.name} is missing): "
            "pip install 'hubwatchd[devhub]'"
        )
        fail(message, EX_UNAVAILABLE)
    try:
        if config_path is None:
            setup = settings.settings_from_dict(settings.DEMO_CONFIG)
        else:
            setup = settings.load_settings(config_path)
    except settings.SettingsError as exc:
        fail(str(exc), EX_CONFIG)
    if max_body_size is not None:
        setup = dataclasses.replace(setup, max_body_size=max_body_size)

    def announce(url: str) -> None:
        click.echo(f"devhub listening on {url}")
        click.echo(f"upload:  POST {url}/v1/Tasks/{{taskId}}/data?mode=replace|append")
        click.echo(f"inspect: {url}/_devhub/tables, /_devhub/requests, /_devhub/faults")
        if discard:
            click.echo("discard mode: bodies are read and counted, nothing is stored")
        if config_path is None:
            click.echo("demo setup (no --config given):")
        click.echo(settings.describe(setup))
        if config_path is None:
            task = next(iter(setup.tasks))
            click.echo("try:")
            click.echo(
                "  curl -F file=@sales.csv -H 'X-Api-Key: demo-sales-key' "
                f"'{url}/v1/Tasks/{task}/data?mode=replace'"
            )
            click.echo(f"  curl {url}/_devhub/tables/Sales/rows")

    try:
        server.run(
            setup,
            host=host,
            port=port,
            data_dir=data_dir,
            discard=discard,
            ready_file=ready_file,
            on_ready=announce,
        )
    except server.CannotListen as exc:
        fail(f"devhub: {exc}", EX_UNAVAILABLE)


if __name__ == "__main__":
    main()
