"""The command line: parse, load config, call into the package, map errors.

This is the only module that prints for the user or chooses an exit code.
Exit codes follow sysexits.h so that systemd and scripts can tell a broken
config (78) from a refused file (65) or a hub that is down (75).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import NoReturn

import click

from hubwatchd import __version__
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
from hubwatchd.errors import ConfigError

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


# --- daemon: run, demo ----------------------------------------------------


# --- devhub ---------------------------------------------------------------


if __name__ == "__main__":
    main()
