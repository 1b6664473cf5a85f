"""The command line: parse, load config, call into the package, map errors.

This is the only module that prints for the user or chooses an exit code.
Exit codes follow sysexits.h so that systemd and scripts can tell a broken
config (78) from a refused file (65) or a hub that is down (75).
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any, NoReturn

import click

from hubwatchd import __version__, logs, report
from hubwatchd.config import (
    GUID_EXAMPLE,
    GUID_RE,
    Config,
    Secret,
    WatchConfig,
    check_filesystem,
    default_config_path,
    load_config,
    parse_duration,
    redacted_dict,
    render_toml,
    starter_config,
)
from hubwatchd.errors import (
    ConfigError,
    FileRefused,
    HubwatchdError,
    LedgerError,
    LedgerLocked,
    Problem,
)
from hubwatchd.hub import HubClient, Outcome
from hubwatchd.ledger import (
    STATES,
    Ledger,
    StateLock,
    Version,
    check_local_filesystem,
)
from hubwatchd.push import (
    PushResult,
    PushTarget,
    open_file,
    open_ledger,
    push_file,
    push_recorded,
)
from hubwatchd.retry import RetryPolicy

EX_OK = 0
EX_USAGE = 64
EX_DATAERR = 65
EX_NOINPUT = 66
EX_UNAVAILABLE = 69  # a needed part is missing (the devhub extra)
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


def load_or_exit(
    config_path: Path | None, *, filesystem: bool = True, keys: bool | None = None
) -> Config:
    """The validated config, or exit 78 with every problem printed.

    With `filesystem=False` the folders are not checked, and (unless `keys`
    says otherwise) neither are the key sources read: the ledger's read-only
    commands must work outside the service, where its credentials are not
    available.
    """
    path = config_path or default_config_path()
    try:
        config = load_config(path, keys=filesystem if keys is None else keys)
    except ConfigError as exc:
        fail(str(exc), EX_CONFIG)
    problems = _filesystem_problems(config) if filesystem else []
    if problems:
        fail(str(ConfigError(problems)), EX_CONFIG)
    for warning in config.warnings:
        click.echo(f"hubwatchd: warning: {warning}", err=True)
    return config


def _filesystem_problems(config: Config) -> list[Problem]:
    """check_filesystem's findings, and a state dir where SQLite is unsafe:
    a config mistake (exit 78), not a crash to restart into."""
    problems = check_filesystem(config)
    try:
        check_local_filesystem(config.daemon.state_dir)
    except LedgerError as exc:
        problems.append(Problem(str(config.source), "[daemon]", "state_dir", str(exc)))
    return problems


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


def _read_key(api_key_file: Path | None, api_key_env: str | None) -> Secret | None:
    """A key from --api-key-file or --api-key-env; exits 78 when unusable."""
    if api_key_file is not None:
        try:
            value = api_key_file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            fail(f"--api-key-file {api_key_file}: cannot read it ({exc})", EX_CONFIG)
        source = f"file {api_key_file}"
    elif api_key_env is not None:
        value = os.environ.get(api_key_env, "").strip()
        source = f"environment variable {api_key_env}"
    else:
        return None
    if not value or any(ch.isspace() or ord(ch) < 32 for ch in value):
        fail(f"the key from {source} is empty or contains spaces", EX_CONFIG)
    logs.register_secret(value)
    return Secret(value=value, source=source)


def _push_target(
    config: Config,
    task_id: str | None,
    mode: str | None,
    watch_name: str | None,
    key: Secret | None,
    json_raw: bool | None,
    allow_empty: bool,
) -> PushTarget:
    if watch_name is not None:
        try:
            watch = config.watch(watch_name)
        except KeyError:
            known = ", ".join(w.name for w in config.watches)
            fail(
                f"no watch named {watch_name!r} in {config.source}; known: {known}", 64
            )
        return PushTarget(
            task_id=watch.task_id,
            mode=watch.mode,
            api_key=watch.api_key,
            json_raw=watch.json_upload == "raw" if json_raw is None else json_raw,
            allow_empty=allow_empty or watch.allow_empty,
            max_file_size=watch.max_file_size,
            watch=watch.name,
        )
    assert task_id is not None
    key = key or config.hub.api_key
    if key is None:
        message = (
            "no API key for --task: give --api-key-file or --api-key-env, "
            f"or set one in [hub] of {config.source}"
        )
        fail(message, EX_CONFIG)
    return PushTarget(
        task_id=task_id.lower(),
        mode=mode or "replace",
        api_key=key,
        json_raw=bool(json_raw),
        allow_empty=allow_empty,
    )


def _push_one(
    client: HubClient,
    ledger: Ledger | None,
    config: Config,
    target: PushTarget,
    path: Path,
    max_wait: float,
) -> int:
    """Push one file, tell the operator how it went, return its exit code."""
    try:
        file = open_file(path, target)
    except FileRefused as exc:
        click.echo(f"hubwatchd: refused: {exc.reason}", err=True)
        return EX_DATAERR

    def on_retry(outcome: Outcome, delay: float, attempt: int) -> None:
        message = (
            f"hubwatchd: {path}: {outcome.error}; attempt {attempt} in {delay:.0f}s"
        )
        click.echo(message, err=True)

    # A bar on a terminal; nothing at all on a pipe or in a log.
    on_terminal = sys.stderr.isatty()
    bar_context: Any = (
        click.progressbar(length=file.size, label=path.name, file=sys.stderr)
        if on_terminal
        else contextlib.nullcontext()
    )
    with file, bar_context as bar:
        shown = [0]

        def progress(sent: int) -> None:
            bar.update(sent - shown[0])
            shown[0] = sent

        common: dict[str, Any] = {
            "max_wait": max_wait,
            "progress": progress if on_terminal else None,
            "on_retry": on_retry,
        }
        try:
            if ledger is None:
                policy = RetryPolicy.from_config(config.retry)
                result = push_file(client, target, file, policy=policy, **common)
            else:
                result = push_recorded(client, ledger, config, target, file, **common)
        except (LedgerError, sqlite3.Error) as exc:
            message = (
                f"hubwatchd: {path}: the ledger failed: {exc}; if the upload had "
                "started, the daemon sorts it out at its next start"
            )
            click.echo(message, err=True)
            return EX_TEMPFAIL
    return _report(path, target, result)


def _report(path: Path, target: PushTarget, result: PushResult) -> int:
    version, outcome = result.version, result.outcome
    if result.busy is not None:
        message = f"hubwatchd: {path}: not sent now: {result.busy}"
        if outcome is not None:
            message += f" (after {outcome.error})"
        click.echo(message, err=True)
        return EX_TEMPFAIL
    if outcome is None:
        assert version is not None
        return _report_known(path, version)
    code = _report_outcome(path, target, result, outcome)
    if version is not None:
        _report_ledger(version, result.owner)
    if result.also_watched is not None:
        message = (
            f"hubwatchd: warning: {path} is input for watch {result.also_watched}, "
            "but was pushed with another task, mode or key, so its daemon will "
            f"upload it too; push it with --watch {result.also_watched} instead"
        )
        click.echo(message, err=True)
    return code


def _report_known(path: Path, version: Version) -> int:
    """Nothing was sent: the ledger already knows this version."""
    ref = f"#{version.id}"
    if version.state == "done":
        click.echo(
            f"{path}: already uploaded on {report.when(version.done_at)} ({ref})"
        )
        return EX_OK
    if version.state in ("skipped", "superseded"):
        click.echo(f"{path}: not sent: {version.note} ({ref}, {version.state})")
        return EX_OK
    if version.state == "forgotten":
        click.echo(f"{path}: not sent: closed by `hubwatchd forget` ({ref})")
        return EX_OK
    if version.state == "in_doubt":
        message = f"hubwatchd: {path}: not sent: held in doubt ({ref}): {version.note}"
    else:  # uploading
        message = (
            f"hubwatchd: {path}: not sent: it is being uploaded right now ({ref}, "
            "by the daemon or another push); see `hubwatchd history`"
        )
    click.echo(message, err=True)
    return EX_TEMPFAIL


def _report_outcome(
    path: Path, target: PushTarget, result: PushResult, outcome: Outcome
) -> int:
    if outcome.ok and not result.in_doubt:
        done = "replaced the rows of" if target.mode == "replace" else "appended to"
        rows = "rows: not stated" if outcome.rows is None else f"{outcome.rows} rows"
        rate = outcome.bytes_sent / 1048576 / max(outcome.seconds, 1e-9)
        message = (
            f"{path}: {done} task {target.task_id} ({rows}, {outcome.bytes_sent} "
            f"bytes, {outcome.seconds:.1f}s, {rate:.0f} MiB/s)"
        )
        click.echo(message)
        if outcome.rows is None and outcome.raw:
            click.echo(f"  the hub answered: {outcome.raw}")
        return EX_OK
    if outcome.kind == "rejected":
        click.echo(
            f"hubwatchd: {path}: the hub refused the file: {outcome.error}", err=True
        )
        return EX_DATAERR
    if outcome.kind == "blocked":
        message = (
            f"hubwatchd: {path}: {outcome.error}; check the key and the task id "
            f"({target.task_id})"
        )
        click.echo(message, err=True)
        return EX_NOPERM
    if outcome.ok:  # in doubt: the file changed while it was sent
        message = f"hubwatchd: {path}: appended, but the file changed while it was sent"
    elif result.in_doubt:
        message = (
            f"hubwatchd: {path}: {outcome.error}; the whole file had been sent, so "
            "the hub may have appended its rows: check the table before pushing "
            "it again"
        )
    else:
        tries = "1 attempt" if result.attempts == 1 else f"{result.attempts} attempts"
        message = f"hubwatchd: {path}: still failing after {tries}: {outcome.error}"
    click.echo(message, err=True)
    return EX_TEMPFAIL


def _report_ledger(version: Version, owner: WatchConfig | None) -> None:
    """One line on what the ledger holds now and what comes next."""
    ref = f"#{version.id}"
    watch = f"watch {owner.name}" if owner is not None else "no watch"
    if version.state == "done" and owner is not None:
        after = {"archive": "archives", "delete": "deletes"}.get(owner.after_success)
        then = f"; the daemon {after} the file" if after else ""
        click.echo(f"  recorded done ({ref}, {watch}){then}")
    elif version.state == "done":
        click.echo(f"  recorded done ({ref}, {watch})")
    elif version.state == "in_doubt":
        if owner is None:
            hint = (
                f"check the table, then `hubwatchd retry {version.id}` and push it "
                f"again, or `hubwatchd forget {version.id}`"
            )
        else:
            hint = version.note
        click.echo(f"  held in doubt ({ref}): {hint}", err=True)
    elif version.state == "retry_wait":
        at = report.when(version.next_attempt_at)
        click.echo(f"  the daemon tries again at {at} ({ref}, {watch})", err=True)
    elif version.state == "failed" and owner is not None:
        click.echo(
            f"  recorded failed ({ref}); the daemon moves the file to the failed "
            "folder",
            err=True,
        )
    else:
        click.echo(f"  recorded {version.state} ({ref}, {watch})", err=True)


# Worst first: a blocked target stops the run, the rest only set the code.
_SEVERITY = (EX_NOPERM, EX_TEMPFAIL, EX_DATAERR, EX_OK)


@main.command()
@click.argument(
    "files",
    nargs=-1,
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
)
@click.option("--task", "task_id", metavar="ID", help="The container task's GUID.")
@click.option(
    "--mode",
    type=click.Choice(["replace", "append"]),
    default=None,
    help="With --task: replace the table's rows or append [default: replace].",
)
@click.option(
    "--watch",
    "watch_name",
    metavar="NAME",
    help="Upload as this watch does: its task, mode and key.",
)
@click.option(
    "--api-key-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="With --task: read the key here instead of [hub].",
)
@click.option(
    "--api-key-env", metavar="VAR", help="With --task: read the key from $VAR."
)
@click.option(
    "--json-raw/--json-multipart",
    default=None,
    help="Send .json files as a raw JSON body or as a form upload "
    "[default: the watch's json_upload, else multipart].",
)
@click.option("--allow-empty", is_flag=True, help="Upload empty files too.")
@click.option(
    "--max-wait",
    default="5m",
    show_default=True,
    help="Stop retrying a failing upload after this long.",
)
@click.option(
    "-v", "--verbose", count=True, help="Log each upload (-v) or the wire (-vv)."
)
@config_option
def push(
    files: tuple[Path, ...],
    task_id: str | None,
    mode: str | None,
    watch_name: str | None,
    api_key_file: Path | None,
    api_key_env: str | None,
    json_raw: bool | None,
    allow_empty: bool,
    max_wait: str,
    verbose: int,
    config_path: Path | None,
) -> None:
    """Upload FILE... now, through the same client, retries and ledger as the daemon.

    Give --task ID (with --mode, key from [hub] or --api-key-*) or --watch
    NAME. Each file version is recorded in the ledger, so neither push nor
    the daemon sends it again. Exits 0 when every file succeeded (or was
    uploaded before), 65 when the hub refused a file (or it was refused
    locally), 75 when one still failed after its retries, is in doubt or
    is being uploaded, 77 when the key or task id is wrong, 78 for a bad
    config.
    """
    if (task_id is None) == (watch_name is None):
        fail("give --task ID or --watch NAME (one of them)", EX_USAGE)
    if watch_name is not None and (mode or api_key_file or api_key_env):
        fail("--mode and --api-key-* go with --task; a watch has its own", EX_USAGE)
    if api_key_file and api_key_env:
        fail("give --api-key-file or --api-key-env, not both", EX_USAGE)
    if task_id is not None and not GUID_RE.match(task_id):
        fail(f"--task must be a GUID like {GUID_EXAMPLE}, got {task_id!r}", EX_USAGE)
    try:
        wait = parse_duration(max_wait)
    except ValueError as exc:
        fail(f"--max-wait {exc}", EX_USAGE)

    config = load_or_exit(config_path, filesystem=False, keys=True)
    level = ("critical", "info", "debug")[min(verbose, 2)]
    logs.configure(config.daemon.log_format, level=level, stream=sys.stderr)
    key = _read_key(api_key_file, api_key_env)
    target = _push_target(config, task_id, mode, watch_name, key, json_raw, allow_empty)

    ledger, why = open_ledger(config)
    if ledger is None:
        click.echo(
            f"hubwatchd: warning: not recorded in the ledger ({why}); the daemon "
            "may upload these files again",
            err=True,
        )
    codes: list[int] = []
    with HubClient(config.hub, workers=1) as client, ledger or contextlib.nullcontext():
        for path in files:
            codes.append(_push_one(client, ledger, config, target, path, wait))
            if codes[-1] == EX_NOPERM:
                break
    sys.exit(min(codes, key=_SEVERITY.index))


# --- ledger: status, history, retry, forget, explain ----------------------


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
    if not as_json:
        pid = StateLock.holder(config.daemon.state_dir)
        click.echo(f"daemon: running, pid {pid}" if pid else "daemon: not running")


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


@main.command()
@config_option
@click.option(
    "--dry-run",
    is_flag=True,
    help="Detect, settle and log what would be uploaded; send and move nothing.",
)
def run(config_path: Path | None, dry_run: bool) -> None:
    """Run the daemon in the foreground (this is what systemd starts)."""
    from hubwatchd.daemon import Daemon

    config = load_or_exit(config_path)
    logs.configure(config.daemon.log_format, config.daemon.log_level)
    try:
        code = Daemon(config, dry_run=dry_run).run()
    except LedgerLocked as exc:
        fail(str(exc), EX_TEMPFAIL)  # another daemon may stop; try again later
    except HubwatchdError as exc:
        fail(str(exc), EX_SOFTWARE)
    sys.exit(code)


@main.command()
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where to make the demo's folders [default: a temporary one, removed after].",
)
@click.option(
    "--port", type=int, default=0, help="devhub's port [default: a free one]."
)
def demo(directory: Path | None, port: int) -> None:
    """A local devhub, two drop folders and the daemon, for a first look."""
    from hubwatchd.demo import run_demo

    sys.exit(run_demo(directory, port))


# --- devhub ---------------------------------------------------------------


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
