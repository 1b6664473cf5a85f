"""The configuration: one TOML file read once into frozen dataclasses.

`load_config` parses and validates everything it can without touching the
watched folders, resolves every key source, and raises one `ConfigError`
listing every problem found. `check_filesystem` adds what only the disk can
tell (folders exist, are writable, live on one filesystem with their archive).
Downstream code trusts what these return and validates nothing again.
"""

from __future__ import annotations

import difflib
import os
import re
import stat
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import tomli_w

from hubwatchd import logs, mounts
from hubwatchd.errors import ConfigError, Problem

DEFAULT_CONFIG_PATH = Path("/etc/hubwatchd/config.toml")
CONFIG_ENV = "HUBWATCHD_CONFIG"

DEFAULT_PATTERNS = ("*.csv", "*.json", "*.xlsx")
DEFAULT_IGNORE = (
    ".*",
    "*.tmp",
    "*.part",
    "*.partial",
    "*.filepart",
    "*.crdownload",
    "~$*",
    ".~lock.*#",
)
# The hub's documented per-request limit.
HUB_MAX_BYTES = 20 * 1000**3
ARCHIVE_DIRNAME = ".hubwatchd-archive"
FAILED_DIRNAME = ".hubwatchd-failed"

GUID_RE = re.compile(
    r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
)
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
KEY_SOURCES = ("api_key_file", "api_key_env", "api_key_credential", "api_key")
GUID_EXAMPLE = "0f8e3a52-6c1d-4a8e-9a53-2c1b7d1e9f40"


def parse_duration(text: str) -> float:
    """Seconds in a duration like "500ms", "1.5s", "15m", "24h" or "7d".

    Raises ValueError with a message fit for a config error.
    """
    match = DURATION_RE.match(text) if isinstance(text, str) else None
    if match is None:
        message = f'must be a duration like "500ms", "3s", "15m" or "24h", got {text!r}'
        raise ValueError(message)
    return float(match.group(1)) * DURATION_UNITS[match.group(2)]


def format_duration(seconds: float) -> str:
    """The shortest duration string that `parse_duration` reads back exactly."""
    for unit in ("d", "h", "m", "s"):
        size = DURATION_UNITS[unit]
        if seconds >= size and float(seconds / size).is_integer():
            return f"{int(seconds / size)}{unit}"
    if float(seconds * 1000).is_integer():
        return f"{int(seconds * 1000)}ms"
    return f"{seconds:g}s"


@dataclass(frozen=True)
class Secret:
    """An API key and where it came from. The value never shows in a repr."""

    value: str = field(repr=False)
    source: str

    def __repr__(self) -> str:
        return f"Secret(source={self.source!r}, value='<redacted>')"

    def __str__(self) -> str:
        return "<redacted>"


@dataclass(frozen=True)
class HubConfig:
    url: str
    api_key: Secret | None
    ca_bundle: Path | None = None
    connect_timeout: float = 10.0
    write_timeout: float = 60.0
    answer_timeout: float = 1800.0


@dataclass(frozen=True)
class DaemonConfig:
    state_dir: Path = Path("/var/lib/hubwatchd")
    workers: int = 4
    log_format: str = "auto"
    log_level: str = "info"
    shutdown_grace: float = 20.0
    rescan_interval: float = 300.0
    blocked_probe_interval: float = 300.0
    progress_interval: float = 30.0
    ledger_retention: float = 90 * 86400.0


@dataclass(frozen=True)
class RetryConfig:
    initial_delay: float = 5.0
    max_delay: float = 900.0
    give_up_after: float = 86400.0


@dataclass(frozen=True)
class WatchConfig:
    name: str
    path: Path
    task_id: str
    api_key: Secret
    mode: str = "replace"
    patterns: tuple[str, ...] = DEFAULT_PATTERNS
    ignore: tuple[str, ...] = DEFAULT_IGNORE
    recursive: bool = False
    polling: bool | None = None  # None: decide from the filesystem type
    settle: float = 3.0
    ready_marker: str | None = None
    after_success: str = "archive"
    archive_dir: Path | None = None
    failed_dir: Path | None = None
    allow_empty: bool = False
    max_file_size: int = HUB_MAX_BYTES
    json_upload: str = "multipart"
    dedupe: bool = True

    @property
    def archive_path(self) -> Path:
        return self.archive_dir or self.path / ARCHIVE_DIRNAME

    @property
    def failed_path(self) -> Path:
        return self.failed_dir or self.path / FAILED_DIRNAME


@dataclass(frozen=True)
class Config:
    source: Path
    hub: HubConfig
    daemon: DaemonConfig
    retry: RetryConfig
    watches: tuple[WatchConfig, ...]
    warnings: tuple[str, ...] = ()

    def watch(self, name: str) -> WatchConfig:
        """The watch called `name`; KeyError when there is none."""
        for watch in self.watches:
            if watch.name == name:
                return watch
        raise KeyError(name)


def default_config_path() -> Path:
    """`$HUBWATCHD_CONFIG`, else /etc/hubwatchd/config.toml."""
    return Path(os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG_PATH)


def load_config(
    path: Path | str,
    environ: Mapping[str, str] | None = None,
    *,
    keys: bool = True,
) -> Config:
    """Read, validate and resolve the config at `path`.

    Every key source is read here, so a returned Config is ready to use.
    With `keys=False` the key sources are checked for shape but not read
    (their Secret values are empty): for commands that only read the ledger
    and may run outside the service, where credentials are not available.
    Raises ConfigError naming every problem: the file, the place, the key,
    the bad value and what would be right.
    """
    path = Path(path)
    environ = os.environ if environ is None else environ
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError([Problem(str(path), "", "", "no such file")]) from None
    except PermissionError:
        message = "cannot be read (permission denied)"
        raise ConfigError([Problem(str(path), "", "", message)]) from None
    except UnicodeDecodeError as exc:
        message = f"is not UTF-8 text ({exc.reason} at byte {exc.start})"
        raise ConfigError([Problem(str(path), "", "", message)]) from None
    except tomllib.TOMLDecodeError as exc:
        message = f"is not valid TOML: {exc}"
        raise ConfigError([Problem(str(path), "", "", message)]) from None
    return _Reader(path, environ, keys).read(data)


class _Reader:
    """Walks the parsed TOML once, collecting problems instead of stopping."""

    def __init__(self, path: Path, environ: Mapping[str, str], keys: bool) -> None:
        self.path = path
        self.environ = environ
        self.resolve_keys = keys
        self.problems: list[Problem] = []
        self.warnings: list[str] = []
        self.hub_key: Secret | None = None

    def problem(self, place: str, key: str, message: str) -> None:
        self.problems.append(Problem(str(self.path), place, key, message))

    def read(self, data: dict[str, Any]) -> Config:
        self.unknown_keys("", data, ("hub", "daemon", "retry", "watch"))
        hub = self.read_hub(self.table(data, "hub", "[hub]"))
        daemon = self.read_daemon(self.table(data, "daemon", "[daemon]"))
        retry = self.read_retry(self.table(data, "retry", "[retry]"))
        watches = self.read_watches(data.get("watch"))
        if self.problems:
            raise ConfigError(self.problems)
        assert hub is not None
        return Config(
            source=self.path,
            hub=hub,
            daemon=daemon,
            retry=retry,
            watches=tuple(watches),
            warnings=tuple(self.warnings),
        )

    # --- sections -------------------------------------------------------

    def table(self, data: dict[str, Any], key: str, place: str) -> dict[str, Any]:
        value = data.get(key, {})
        if not isinstance(value, dict):
            self.problem(place, "", f"must be a table ({place}), got {_kind(value)}")
            return {}
        return value

    def read_hub(self, table: dict[str, Any]) -> HubConfig | None:
        place = "[hub]"
        known = (
            "url",
            "ca_bundle",
            "connect_timeout",
            "write_timeout",
            "answer_timeout",
        )
        self.unknown_keys(place, table, known + KEY_SOURCES)
        url = table.get("url")
        if url is None:
            self.problem(
                place, "url", 'is required, like "https://datahub.example.com"'
            )
        elif not isinstance(url, str) or not _is_http_url(url):
            message = f"must be an http:// or https:// URL with a host, got {url!r}"
            self.problem(place, "url", message)
            url = None
        key = self.read_key_source(place, table)
        self.hub_key = key
        ca_bundle = self.abs_path(place, table, "ca_bundle", None)
        defaults = HubConfig(url="", api_key=None)
        timeouts = {
            name: self.duration(
                place, table, name, getattr(defaults, name), minimum=0.001
            )
            for name in ("connect_timeout", "write_timeout", "answer_timeout")
        }
        if url is None:
            return None
        return HubConfig(
            url=url.rstrip("/"), api_key=key, ca_bundle=ca_bundle, **timeouts
        )

    def read_daemon(self, table: dict[str, Any]) -> DaemonConfig:
        place = "[daemon]"
        d = DaemonConfig()
        known = (
            "state_dir",
            "workers",
            "log_format",
            "log_level",
            "shutdown_grace",
            "rescan_interval",
            "blocked_probe_interval",
            "progress_interval",
            "ledger_retention",
        )
        self.unknown_keys(place, table, known)
        return DaemonConfig(
            state_dir=self.abs_path(place, table, "state_dir", d.state_dir)
            or d.state_dir,
            workers=self.integer(
                place, table, "workers", d.workers, minimum=1, maximum=64
            ),
            log_format=self.choice(
                place, table, "log_format", d.log_format, ("auto", "json", "console")
            ),
            log_level=self.choice(
                place,
                table,
                "log_level",
                d.log_level,
                ("debug", "info", "warning", "error"),
            ),
            shutdown_grace=self.duration(
                place, table, "shutdown_grace", d.shutdown_grace
            ),
            rescan_interval=self.duration(
                place, table, "rescan_interval", d.rescan_interval, minimum=1.0
            ),
            blocked_probe_interval=self.duration(
                place,
                table,
                "blocked_probe_interval",
                d.blocked_probe_interval,
                minimum=1.0,
            ),
            progress_interval=self.duration(
                place, table, "progress_interval", d.progress_interval, minimum=1.0
            ),
            ledger_retention=self.duration(
                place, table, "ledger_retention", d.ledger_retention, minimum=3600.0
            ),
        )

    def read_retry(self, table: dict[str, Any]) -> RetryConfig:
        place = "[retry]"
        d = RetryConfig()
        self.unknown_keys(place, table, ("initial_delay", "max_delay", "give_up_after"))
        initial = self.duration(
            place, table, "initial_delay", d.initial_delay, minimum=0.001
        )
        maximum = self.duration(place, table, "max_delay", d.max_delay, minimum=0.001)
        give_up = self.duration(
            place, table, "give_up_after", d.give_up_after, minimum=1.0
        )
        if maximum < initial:
            message = (
                f"({format_duration(maximum)}) must not be shorter than "
                f"initial_delay ({format_duration(initial)})"
            )
            self.problem(place, "max_delay", message)
        return RetryConfig(
            initial_delay=initial, max_delay=maximum, give_up_after=give_up
        )

    def read_watches(self, value: Any) -> list[WatchConfig]:
        if value is None:
            message = "at least one [[watch]] table is required (name, path, task_id)"
            self.problem("[[watch]]", "", message)
            return []
        if not isinstance(value, list) or not all(isinstance(w, dict) for w in value):
            self.problem("[[watch]]", "", "must be an array of tables: write [[watch]]")
            return []
        watches: list[WatchConfig] = []
        seen_names: dict[str, str] = {}
        folders: list[tuple[str, str, Path]] = []
        for index, table in enumerate(value, start=1):
            name = table.get("name")
            label = f' "{name}"' if isinstance(name, str) else ""
            place = f"[[watch]] #{index}{label}"
            watch = self.read_watch(place, table)
            if watch is not None:
                watches.append(watch)
            # Names and folders are compared even when the rest of a watch is
            # wrong, so that one run of `check` reports every clash.
            if isinstance(name, str) and name in seen_names:
                message = (
                    f'"{name}" is also the name of {seen_names[name]}; '
                    "names must be unique"
                )
                self.problem(place, "name", message)
            elif isinstance(name, str):
                seen_names[name] = place
            path = table.get("path")
            if isinstance(path, str) and Path(path).is_absolute():
                folders.append((place, str(name), Path(os.path.normpath(path))))
        self.check_overlaps(folders)
        return watches

    def read_watch(self, place: str, table: dict[str, Any]) -> WatchConfig | None:
        d = WatchConfig(name="", path=Path("/"), task_id="", api_key=Secret("", ""))
        known = (
            "name",
            "path",
            "task_id",
            "mode",
            "patterns",
            "ignore",
            "recursive",
            "polling",
            "settle",
            "ready_marker",
            "after_success",
            "archive_dir",
            "failed_dir",
            "allow_empty",
            "max_file_size",
            "json_upload",
            "dedupe",
        )
        self.unknown_keys(place, table, known + KEY_SOURCES)
        before = len(self.problems)

        name = table.get("name")
        if name is None:
            self.problem(
                place, "name", 'is required, a short label like "partner-acme"'
            )
        elif not isinstance(name, str) or not NAME_RE.match(name):
            message = (
                f"must be letters, digits, '.', '_' or '-' (at most 64), got {name!r}"
            )
            self.problem(place, "name", message)
        path = self.abs_path(place, table, "path", None)
        if "path" not in table:
            self.problem(
                place, "path", 'is required, an absolute folder like "/srv/drop/acme"'
            )
        task_id = table.get("task_id")
        if task_id is None:
            self.problem(
                place,
                "task_id",
                f"is required, the container task's GUID like {GUID_EXAMPLE}",
            )
        elif not isinstance(task_id, str) or not GUID_RE.match(task_id):
            self.problem(
                place, "task_id", f"must be a GUID like {GUID_EXAMPLE}, got {task_id!r}"
            )
        mode = self.choice(place, table, "mode", d.mode, ("replace", "append"))
        patterns = self.string_list(
            place, table, "patterns", d.patterns, allow_empty=False
        )
        ignore = self.string_list(place, table, "ignore", d.ignore, allow_empty=True)
        recursive = self.boolean(place, table, "recursive", d.recursive)
        polling = self.polling(place, table)
        settle = self.duration(place, table, "settle", d.settle)
        marker = table.get("ready_marker")
        if marker is not None and (
            not isinstance(marker, str)
            or not marker
            or "/" in marker
            or marker in (".", "..")
        ):
            message = (
                f'must be a file name suffix like ".done" or ".ok", got {marker!r}'
            )
            self.problem(place, "ready_marker", message)
            marker = None
        after = self.choice(
            place,
            table,
            "after_success",
            d.after_success,
            ("archive", "delete", "keep"),
        )
        archive_dir = self.abs_path(place, table, "archive_dir", None)
        failed_dir = self.abs_path(place, table, "failed_dir", None)
        allow_empty = self.boolean(place, table, "allow_empty", d.allow_empty)
        max_size = self.integer(
            place,
            table,
            "max_file_size",
            d.max_file_size,
            minimum=1,
            maximum=HUB_MAX_BYTES,
        )
        json_upload = self.choice(
            place, table, "json_upload", d.json_upload, ("multipart", "raw")
        )
        dedupe = self.boolean(place, table, "dedupe", d.dedupe)
        key = self.read_key_source(place, table)
        if key is None and not any(k in table for k in KEY_SOURCES):
            key = self.hub_key
            if key is None:
                message = (
                    "no API key: set one of api_key_file, api_key_env, "
                    "api_key_credential "
                    "or api_key here or in [hub]"
                )
                self.problem(place, "api_key_file", message)

        if len(self.problems) > before or key is None or path is None:
            return None
        for sub, sub_key in ((archive_dir, "archive_dir"), (failed_dir, "failed_dir")):
            if sub == path:
                self.problem(place, sub_key, "must not be the watched folder itself")
                return None
        return WatchConfig(
            name=name,
            path=path,
            task_id=task_id.lower(),
            api_key=key,
            mode=mode,
            patterns=patterns,
            ignore=ignore,
            recursive=recursive,
            polling=polling,
            settle=settle,
            ready_marker=marker,
            after_success=after,
            archive_dir=archive_dir,
            failed_dir=failed_dir,
            allow_empty=allow_empty,
            max_file_size=max_size,
            json_upload=json_upload,
            dedupe=dedupe,
        )

    def check_overlaps(self, folders: list[tuple[str, str, Path]]) -> None:
        for i, (_, first_name, first_path) in enumerate(folders):
            for place, _, path in folders[i + 1 :]:
                a, b = _real(first_path), _real(path)
                if a == b:
                    relation = "the same folder as"
                elif _same_or_inside(a, b) or _same_or_inside(b, a):
                    relation = "nested with"
                else:
                    continue
                message = (
                    f'{path} is {relation} watch "{first_name}" ({first_path}); '
                    "each folder may belong to one watch only"
                )
                self.problem(place, "path", message)

    # --- values ---------------------------------------------------------

    def unknown_keys(
        self, place: str, table: Mapping[str, Any], known: Iterable[str]
    ) -> None:
        known = tuple(known)
        for key in table:
            if key in known:
                continue
            close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
            hint = (
                f'; did you mean "{close[0]}"?'
                if close
                else f"; known keys: {', '.join(known)}"
            )
            self.problem(place or "top level", key, f"unknown key{hint}")

    def read_key_source(self, place: str, table: dict[str, Any]) -> Secret | None:
        given = [key for key in KEY_SOURCES if key in table]
        if len(given) > 1:
            self.problem(
                place, given[1], f"give one key source, not {' and '.join(given)}"
            )
            return None
        if not given:
            return None
        key = given[0]
        raw = table[key]
        if not isinstance(raw, str) or not raw:
            self.problem(place, key, f"must be a non-empty string, got {_kind(raw)}")
            return None
        if not self.resolve_keys:
            return Secret(value="", source=f"{key} (not read)")
        if key == "api_key":
            if _group_or_other_readable(self.path):
                self.warnings.append(
                    f"{self.path}: {place}: api_key is written inline and the file "
                    "is readable by group or others; use api_key_file or "
                    "api_key_credential, or chmod 600"
                )
            return self.secret(place, key, raw, "inline api_key")
        if key == "api_key_env":
            value = self.environ.get(raw)
            if not value:
                self.problem(
                    place, key, f"environment variable {raw} is not set or empty"
                )
                return None
            return self.secret(place, key, value, f"environment variable {raw}")
        if key == "api_key_credential":
            if "/" in raw or raw in (".", ".."):
                self.problem(
                    place, key, f"must be a credential name without '/', got {raw!r}"
                )
                return None
            directory = self.environ.get("CREDENTIALS_DIRECTORY")
            if not directory:
                message = (
                    f"credential {raw!r} needs $CREDENTIALS_DIRECTORY, which is "
                    "not set; "
                    "add LoadCredential= to the systemd unit or use api_key_file"
                )
                self.problem(place, key, message)
                return None
            return self.read_key_file(
                place, key, Path(directory) / raw, f"credential {raw}"
            )
        file = Path(raw)
        if not file.is_absolute():
            self.problem(place, key, f"must be an absolute path, got {raw!r}")
            return None
        return self.read_key_file(place, key, file, f"file {file}")

    def read_key_file(
        self, place: str, key: str, file: Path, source: str
    ) -> Secret | None:
        try:
            value = file.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            self.problem(place, key, f"{file} does not exist")
            return None
        except PermissionError:
            self.problem(place, key, f"{file} cannot be read (permission denied)")
            return None
        except (OSError, UnicodeDecodeError) as exc:
            self.problem(place, key, f"{file} cannot be read: {exc.__class__.__name__}")
            return None
        if not value:
            self.problem(place, key, f"{file} is empty")
            return None
        return self.secret(place, key, value, source)

    def secret(self, place: str, key: str, value: str, source: str) -> Secret | None:
        # Never echo the value: a message about a key must not contain it.
        if any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in value):
            self.problem(
                place,
                key,
                f"the key from {source} contains spaces or control characters",
            )
            return None
        logs.register_secret(value)
        return Secret(value=value, source=source)

    def abs_path(
        self, place: str, table: dict[str, Any], key: str, default: Path | None
    ) -> Path | None:
        value = table.get(key)
        if value is None:
            return default
        if not isinstance(value, str) or not value:
            self.problem(place, key, f"must be a path string, got {_kind(value)}")
            return default
        path = Path(value)
        if not path.is_absolute():
            self.problem(
                place, key, f"must be an absolute path (starting with /), got {value!r}"
            )
            return default
        return Path(os.path.normpath(path))

    def duration(
        self,
        place: str,
        table: dict[str, Any],
        key: str,
        default: float,
        minimum: float = 0.0,
    ) -> float:
        value = table.get(key)
        if value is None:
            return default
        if isinstance(value, str) and value.strip().startswith("-"):
            self.problem(place, key, f"must not be negative, got {value!r}")
            return default
        try:
            seconds = parse_duration(value)
        except ValueError as exc:
            self.problem(place, key, str(exc))
            return default
        if seconds < minimum:
            self.problem(
                place,
                key,
                f"must be at least {format_duration(minimum)}, got {value!r}",
            )
            return default
        return seconds

    def integer(
        self,
        place: str,
        table: dict[str, Any],
        key: str,
        default: int,
        minimum: int,
        maximum: int,
    ) -> int:
        value = table.get(key)
        if value is None:
            return default
        if not isinstance(value, int) or isinstance(value, bool):
            self.problem(place, key, f"must be a whole number, got {_kind(value)}")
            return default
        if not minimum <= value <= maximum:
            self.problem(
                place, key, f"must be from {minimum} to {maximum}, got {value}"
            )
            return default
        return value

    def boolean(
        self, place: str, table: dict[str, Any], key: str, default: bool
    ) -> bool:
        value = table.get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            self.problem(place, key, f"must be true or false, got {_kind(value)}")
            return default
        return value

    def choice(
        self,
        place: str,
        table: dict[str, Any],
        key: str,
        default: str,
        choices: tuple[str, ...],
    ) -> str:
        value = table.get(key)
        if value is None:
            return default
        if value not in choices:
            options = " or ".join(f'"{c}"' for c in choices)
            self.problem(place, key, f"must be {options}, got {value!r}")
            return default
        return value

    def polling(self, place: str, table: dict[str, Any]) -> bool | None:
        value = table.get("polling", "auto")
        if value == "auto":
            return None
        if isinstance(value, bool):
            return value
        self.problem(place, "polling", f'must be "auto", true or false, got {value!r}')
        return None

    def string_list(
        self,
        place: str,
        table: dict[str, Any],
        key: str,
        default: tuple[str, ...],
        allow_empty: bool,
    ) -> tuple[str, ...]:
        value = table.get(key)
        if value is None:
            return default
        if not isinstance(value, list) or not all(
            isinstance(v, str) and v for v in value
        ):
            self.problem(
                place,
                key,
                f'must be a list of non-empty strings like ["*.csv"], got {value!r}',
            )
            return default
        if not value and not allow_empty:
            self.problem(place, key, 'must name at least one pattern, like ["*.csv"]')
            return default
        return tuple(value)


def check_filesystem(config: Config, mountinfo: str | None = None) -> list[Problem]:
    """What only the disk can tell: folders, permissions, filesystems.

    `mountinfo` is the mount table's text (default: this process's). Returns
    the problems found (empty when all is well); never raises for a problem
    it can describe.
    """
    if mountinfo is None:
        mountinfo = mounts.read_mountinfo()
    problems: list[Problem] = []
    source = str(config.source)

    def add(place: str, key: str, message: str) -> None:
        problems.append(Problem(source, place, key, message))

    state = config.daemon.state_dir
    existing = _nearest_existing(state)
    if existing is None or not existing.is_dir():
        add(
            "[daemon]",
            "state_dir",
            f"{state} cannot be created: no existing parent folder",
        )
    elif state.exists() and not state.is_dir():
        add("[daemon]", "state_dir", f"{state} exists and is not a folder")
    elif not os.access(existing, os.W_OK | os.X_OK):
        add("[daemon]", "state_dir", f"{existing} is not writable by this user")
    if config.hub.ca_bundle is not None and not os.access(
        config.hub.ca_bundle, os.R_OK
    ):
        add(
            "[hub]",
            "ca_bundle",
            f"{config.hub.ca_bundle} does not exist or cannot be read",
        )

    for watch in config.watches:
        place = f'[[watch]] "{watch.name}"'
        if not watch.path.is_dir():
            reason = "does not exist" if not watch.path.exists() else "is not a folder"
            add(place, "path", f"{watch.path} {reason}")
            continue
        if not os.access(watch.path, os.R_OK | os.X_OK):
            add(place, "path", f"{watch.path} is not readable by this user")
        if watch.after_success != "keep" and not os.access(watch.path, os.W_OK):
            add(
                place,
                "path",
                f"{watch.path} is not writable by this user, so files cannot be "
                f'moved after upload (after_success = "{watch.after_success}")',
            )
        device = watch.path.stat().st_dev
        for key, folder in (
            ("archive_dir", watch.archive_path),
            ("failed_dir", watch.failed_path),
        ):
            parent = _nearest_existing(folder)
            if parent is None:
                add(
                    place, key, f"{folder} cannot be created: no existing parent folder"
                )
                continue
            if parent.stat().st_dev != device:
                add(
                    place,
                    key,
                    f"{folder} is on another filesystem than {watch.path}; "
                    "moving a file "
                    "there would become a copy. Put it on the same filesystem",
                )
            elif _other_mount(watch.path, parent, mountinfo):
                add(
                    place,
                    key,
                    f"{folder} is on another mount than {watch.path} (the same "
                    "filesystem mounted twice, as systemd's ReadWritePaths= "
                    "does): a rename between them fails. Keep it inside the "
                    "watch's mount",
                )
            elif not os.access(parent, os.W_OK | os.X_OK):
                add(place, key, f"{parent} is not writable by this user")
    return problems


def redacted_dict(config: Config) -> dict[str, Any]:
    """The effective configuration with defaults filled in and keys redacted."""
    hub = config.hub
    out: dict[str, Any] = {
        "hub": {
            "url": hub.url,
            "connect_timeout": format_duration(hub.connect_timeout),
            "write_timeout": format_duration(hub.write_timeout),
            "answer_timeout": format_duration(hub.answer_timeout),
        },
        "daemon": {
            "state_dir": str(config.daemon.state_dir),
            "workers": config.daemon.workers,
            "log_format": config.daemon.log_format,
            "log_level": config.daemon.log_level,
        },
        "retry": {},
        "watch": [],
    }
    if hub.api_key is not None:
        out["hub"]["api_key"] = f"<redacted; from {hub.api_key.source}>"
    if hub.ca_bundle is not None:
        out["hub"]["ca_bundle"] = str(hub.ca_bundle)
    for name in (
        "shutdown_grace",
        "rescan_interval",
        "blocked_probe_interval",
        "progress_interval",
        "ledger_retention",
    ):
        out["daemon"][name] = format_duration(getattr(config.daemon, name))
    for name in ("initial_delay", "max_delay", "give_up_after"):
        out["retry"][name] = format_duration(getattr(config.retry, name))
    for watch in config.watches:
        item: dict[str, Any] = {
            "name": watch.name,
            "path": str(watch.path),
            "task_id": watch.task_id,
            "mode": watch.mode,
            "api_key": f"<redacted; from {watch.api_key.source}>",
            "patterns": list(watch.patterns),
            "ignore": list(watch.ignore),
            "recursive": watch.recursive,
            "polling": "auto" if watch.polling is None else watch.polling,
            "settle": format_duration(watch.settle),
            "after_success": watch.after_success,
            "archive_dir": str(watch.archive_path),
            "failed_dir": str(watch.failed_path),
            "allow_empty": watch.allow_empty,
            "max_file_size": watch.max_file_size,
            "json_upload": watch.json_upload,
            "dedupe": watch.dedupe,
        }
        if watch.ready_marker is not None:
            item["ready_marker"] = watch.ready_marker
        out["watch"].append(item)
    return out


def render_toml(data: dict[str, Any]) -> str:
    """TOML text for a plain dict (as `redacted_dict` or `starter_config` give)."""
    return tomli_w.dumps(data)


def starter_config(
    url: str,
    watches: list[tuple[Path, str, str]],
    *,
    api_key_file: Path | None = None,
    api_key_env: str | None = None,
    state_dir: Path | None = None,
) -> dict[str, Any]:
    """A minimal config for `hubwatchd init`: a [[watch]] per (path, task_id, mode)."""
    hub: dict[str, Any] = {"url": url}
    if api_key_env is not None:
        hub["api_key_env"] = api_key_env
    else:
        hub["api_key_file"] = str(api_key_file or Path("/etc/hubwatchd/hub.key"))
    data: dict[str, Any] = {
        "hub": hub,
        "daemon": {
            "state_dir": str(state_dir or DaemonConfig().state_dir),
            "workers": 4,
        },
        "retry": {"initial_delay": "5s", "max_delay": "15m", "give_up_after": "24h"},
        "watch": [],
    }
    used: set[str] = set()
    for path, task_id, mode in watches:
        base = (
            re.sub(r"[^A-Za-z0-9._-]", "-", path.name or "root").strip("-.") or "watch"
        )
        name = base[:60]
        number = 2
        while name in used:
            name = f"{base[:57]}-{number}"
            number += 1
        used.add(name)
        data["watch"].append(
            {
                "name": name,
                "path": str(path),
                "task_id": task_id,
                "mode": mode,
                "patterns": list(DEFAULT_PATTERNS),
                "settle": "3s",
                "after_success": "archive",
            }
        )
    return data


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, str):
        return f"a string ({value!r})"
    if isinstance(value, int | float):
        return f"a number ({value})"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a table"
    return type(value).__name__


def _is_http_url(url: str) -> bool:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        return False
    return (
        parts.scheme in ("http", "https") and bool(parts.hostname) and not parts.query
    )


def _group_or_other_readable(path: Path) -> bool:
    try:
        return bool(path.stat().st_mode & (stat.S_IRGRP | stat.S_IROTH))
    except OSError:
        return False


def _other_mount(path: Path, other: Path, mountinfo: str | None) -> bool:
    if mountinfo is None:
        return False
    here, there = mounts.mount_of(path, mountinfo), mounts.mount_of(other, mountinfo)
    return here is not None and there is not None and here.mount_id != there.mount_id


def _real(path: Path) -> Path:
    return Path(os.path.realpath(path))


def _same_or_inside(parent: Path, child: Path) -> bool:
    return child == parent or parent in child.parents


def _nearest_existing(path: Path) -> Path | None:
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return None
