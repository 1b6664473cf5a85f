"""Configuration: every mistake named by file, place and key; keys never shown."""

from __future__ import annotations

import copy
import io
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from hubwatchd import logs
from hubwatchd.config import (
    check_filesystem,
    format_duration,
    load_config,
    parse_duration,
    redacted_dict,
    render_toml,
)
from hubwatchd.errors import ConfigError

TASK = "0f8e3a52-6c1d-4a8e-9a53-2c1b7d1e9f40"
TASK2 = "7a1c2b3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"
EXAMPLE = Path(__file__).resolve().parent.parent / "config.example.toml"


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """Two drop folders, a state dir and a key file, as a config would name them."""
    for name in ("acme", "globex", "state"):
        (tmp_path / name).mkdir()
    key = tmp_path / "hub.key"
    key.write_text("hub-key-0123456789\n")
    key.chmod(0o600)
    return tmp_path


def base(site: Path) -> dict[str, Any]:
    return {
        "hub": {"url": "http://127.0.0.1:8080", "api_key_file": str(site / "hub.key")},
        "daemon": {"state_dir": str(site / "state")},
        "watch": [
            {"name": "acme", "path": str(site / "acme"), "task_id": TASK},
            {
                "name": "globex",
                "path": str(site / "globex"),
                "task_id": TASK2,
                "mode": "append",
            },
        ],
    }


def write(site: Path, data: dict[str, Any]) -> Path:
    path = site / "config.toml"
    path.write_text(tomli_w.dumps(data))
    path.chmod(0o600)
    return path


def problems_for(site: Path, change: Callable[[dict[str, Any]], None]) -> list[str]:
    data = copy.deepcopy(base(site))
    change(data)
    path = write(site, data)
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    return [str(p) for p in caught.value.problems]


def hub(**values: Any) -> Callable[[dict[str, Any]], None]:
    return lambda d: d["hub"].update(values)


def daemon(**values: Any) -> Callable[[dict[str, Any]], None]:
    return lambda d: d["daemon"].update(values)


def retry(**values: Any) -> Callable[[dict[str, Any]], None]:
    return lambda d: d.setdefault("retry", {}).update(values)


def watch(**values: Any) -> Callable[[dict[str, Any]], None]:
    return lambda d: d["watch"][0].update(values)


def drop(section: str, key: str) -> Callable[[dict[str, Any]], None]:
    def change(d: dict[str, Any]) -> None:
        target = d["watch"][0] if section == "watch" else d[section]
        del target[key]

    return change


def second_watch(**values: Any) -> Callable[[dict[str, Any]], None]:
    return lambda d: d["watch"][1].update(values)


W1 = '[[watch]] #1 "acme"'
W2 = '[[watch]] #2 "globex"'

# (change, place, key, words the message must contain)
BAD: list[tuple[str, Callable[[dict[str, Any]], None], str, str, str]] = [
    ("no url", drop("hub", "url"), "[hub]", "url", "is required"),
    ("ftp url", hub(url="ftp://hub.example.com"), "[hub]", "url", "http://"),
    ("url without host", hub(url="https://"), "[hub]", "url", "with a host"),
    ("url not a string", hub(url=8080), "[hub]", "url", "URL"),
    ("url with bad port", hub(url="http://h:99999"), "[hub]", "url", "URL"),
    ("unknown hub key", hub(urll="x"), "[hub]", "urll", 'did you mean "url"'),
    (
        "two key sources",
        hub(api_key_env="HUB_KEY"),
        "[hub]",
        "api_key_env",
        "one key source",
    ),
    (
        "missing key file",
        hub(api_key_file="/nonexistent/k"),
        "[hub]",
        "api_key_file",
        "does not exist",
    ),
    (
        "relative key file",
        hub(api_key_file="hub.key"),
        "[hub]",
        "api_key_file",
        "absolute",
    ),
    (
        "unset key env",
        lambda d: d["hub"].update(api_key_env="NOPE") or d["hub"].pop("api_key_file"),
        "[hub]",
        "api_key_env",
        "NOPE is not set",
    ),
    (
        "credential without dir",
        lambda d: (
            d["hub"].update(api_key_credential="hub") or d["hub"].pop("api_key_file")
        ),
        "[hub]",
        "api_key_credential",
        "CREDENTIALS_DIRECTORY",
    ),
    (
        "credential with slash",
        lambda d: (
            d["hub"].update(api_key_credential="a/b") or d["hub"].pop("api_key_file")
        ),
        "[hub]",
        "api_key_credential",
        "without '/'",
    ),
    (
        "empty inline key",
        lambda d: d["hub"].update(api_key="") or d["hub"].pop("api_key_file"),
        "[hub]",
        "api_key",
        "non-empty",
    ),
    (
        "bad connect timeout",
        hub(connect_timeout="ten seconds"),
        "[hub]",
        "connect_timeout",
        "duration",
    ),
    ("workers zero", daemon(workers=0), "[daemon]", "workers", "from 1 to 64"),
    ("workers text", daemon(workers="four"), "[daemon]", "workers", "whole number"),
    ("workers bool", daemon(workers=True), "[daemon]", "workers", "whole number"),
    (
        "relative state dir",
        daemon(state_dir="state"),
        "[daemon]",
        "state_dir",
        "absolute",
    ),
    ("bad log format", daemon(log_format="xml"), "[daemon]", "log_format", '"json"'),
    ("bad log level", daemon(log_level="loud"), "[daemon]", "log_level", '"debug"'),
    (
        "unknown daemon key",
        daemon(worker=2),
        "[daemon]",
        "worker",
        'did you mean "workers"',
    ),
    (
        "negative grace",
        daemon(shutdown_grace="-1s"),
        "[daemon]",
        "shutdown_grace",
        "negative",
    ),
    (
        "number duration",
        daemon(rescan_interval=300),
        "[daemon]",
        "rescan_interval",
        "duration",
    ),
    (
        "duration unit",
        retry(initial_delay="5 sec"),
        "[retry]",
        "initial_delay",
        "duration",
    ),
    (
        "max below initial",
        retry(initial_delay="1m", max_delay="10s"),
        "[retry]",
        "max_delay",
        "shorter than",
    ),
    (
        "unknown retry key",
        retry(give_up="1h"),
        "[retry]",
        "give_up",
        'did you mean "give_up_after"',
    ),
    ("no name", drop("watch", "name"), "[[watch]] #1", "name", "is required"),
    (
        "bad name",
        watch(name="acme corp"),
        '[[watch]] #1 "acme corp"',
        "name",
        "letters, digits",
    ),
    ("no path", drop("watch", "path"), W1, "path", "is required"),
    ("relative path", watch(path="drop/acme"), W1, "path", "absolute"),
    ("no task id", drop("watch", "task_id"), W1, "task_id", "is required"),
    ("task id not a guid", watch(task_id="acme-123"), W1, "task_id", "must be a GUID"),
    ("mode", watch(mode="apend"), W1, "mode", '"replace" or "append"'),
    ("mode case", watch(mode="Append"), W1, "mode", '"replace" or "append"'),
    (
        "patterns string",
        watch(patterns="*.csv"),
        W1,
        "patterns",
        "list of non-empty strings",
    ),
    (
        "patterns numbers",
        watch(patterns=[1, 2]),
        W1,
        "patterns",
        "list of non-empty strings",
    ),
    ("patterns empty", watch(patterns=[]), W1, "patterns", "at least one"),
    ("settle malformed", watch(settle="3 parsecs"), W1, "settle", "duration"),
    ("settle negative", watch(settle="-3s"), W1, "settle", "negative"),
    ("after_success", watch(after_success="move"), W1, "after_success", '"archive"'),
    ("polling", watch(polling="sometimes"), W1, "polling", '"auto", true or false'),
    ("recursive text", watch(recursive="yes"), W1, "recursive", "true or false"),
    (
        "ready marker with slash",
        watch(ready_marker="a/b"),
        W1,
        "ready_marker",
        "suffix",
    ),
    (
        "max file size too large",
        watch(max_file_size=10**12),
        W1,
        "max_file_size",
        "from 1 to",
    ),
    ("json upload", watch(json_upload="body"), W1, "json_upload", '"multipart"'),
    ("relative archive", watch(archive_dir="archive"), W1, "archive_dir", "absolute"),
    ("unknown watch key", watch(taskid=TASK), W1, "taskid", 'did you mean "task_id"'),
    (
        "duplicate name",
        second_watch(name="acme"),
        '[[watch]] #2 "acme"',
        "name",
        "unique",
    ),
    ("no watches", lambda d: d.pop("watch"), "[[watch]]", "", "at least one"),
    (
        "watch not a table array",
        lambda d: d.update(watch="acme"),
        "[[watch]]",
        "",
        "array of tables",
    ),
    ("hub not a table", lambda d: d.update(hub="x"), "[hub]", "", "must be a table"),
    (
        "unknown section",
        lambda d: d.update(hubs={}),
        "top level",
        "hubs",
        'did you mean "hub"',
    ),
]


@pytest.mark.parametrize(
    ("case", "change", "place", "key", "words"), BAD, ids=[c[0] for c in BAD]
)
def test_bad_config_names_place_and_key(site, case, change, place, key, words):
    problems = problems_for(site, change)
    wanted = f"{site / 'config.toml'}: {place}: {key + ': ' if key else ''}"
    matching = [p for p in problems if p.startswith(wanted) and words in p]
    assert matching, (
        f"{case}: no problem starts with {wanted!r} and says {words!r}: {problems}"
    )


def test_at_least_thirty_distinct_bad_configurations():
    assert len({case for case, *_ in BAD}) >= 30


def test_same_folder_twice(site):
    problems = problems_for(site, second_watch(path=str(site / "acme")))
    assert any(
        W2 in p and "path: " in p and "the same folder as" in p for p in problems
    )


def test_nested_folders(site):
    (site / "acme" / "inner").mkdir()
    problems = problems_for(site, second_watch(path=str(site / "acme" / "inner")))
    assert any(W2 in p and "nested with" in p for p in problems)


def test_every_problem_is_reported_at_once(site):
    def change(d):
        d["daemon"]["workers"] = 0
        d["watch"][0]["task_id"] = "x"
        d["watch"][1]["mode"] = "sideways"

    problems = problems_for(site, change)
    assert len(problems) == 3


def test_no_key_anywhere(site):
    def change(d):
        del d["hub"]["api_key_file"]

    problems = problems_for(site, change)
    assert any(W1 in p and "no API key" in p for p in problems)
    assert any(W2 in p and "no API key" in p for p in problems)


def test_not_toml(site):
    path = site / "config.toml"
    path.write_text("[hub\nurl = 1")
    with pytest.raises(ConfigError, match="is not valid TOML"):
        load_config(path)


def test_missing_file(site):
    with pytest.raises(ConfigError, match="no such file"):
        load_config(site / "absent.toml")


def test_valid_config_has_defaults(site):
    config = load_config(write(site, base(site)), environ={})
    acme, globex = config.watches
    assert acme.mode == "replace" and globex.mode == "append"
    assert acme.settle == 3.0 and acme.after_success == "archive"
    assert acme.archive_path == site / "acme" / ".hubwatchd-archive"
    assert config.daemon.workers == 4 and config.retry.give_up_after == 86400
    assert acme.api_key.value == "hub-key-0123456789"
    assert check_filesystem(config) == []


def test_example_config_loads(tmp_path):
    environ = {"CREDENTIALS_DIRECTORY": str(tmp_path)}
    text = EXAMPLE.read_text()
    for name in ("hub.key", "acme.key"):
        (tmp_path / name).write_text("example-key-0000\n")
        text = text.replace(f"/etc/hubwatchd/{name}", str(tmp_path / name))
    path = tmp_path / "example.toml"
    path.write_text(text)
    config = load_config(path, environ=environ)
    assert config.watches[0].name == "partner-acme"
    assert config.watches[0].mode == "append"
    assert config.hub.answer_timeout == 1800.0


def test_example_config_names_every_key():
    """Every field of every section appears in the example."""
    from dataclasses import fields

    from hubwatchd.config import DaemonConfig, HubConfig, RetryConfig, WatchConfig

    text = EXAMPLE.read_text()
    for cls in (HubConfig, DaemonConfig, RetryConfig, WatchConfig):
        for f in fields(cls):
            name = "api_key_file" if f.name == "api_key" else f.name
            assert f"{name} =" in text, f"{cls.__name__}.{f.name} missing"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("500ms", 0.5), ("1.5s", 1.5), ("15m", 900), ("24h", 86400), ("7d", 604800)],
)
def test_durations(text, seconds):
    assert parse_duration(text) == seconds
    assert parse_duration(format_duration(seconds)) == seconds


@pytest.mark.parametrize("text", ["", "5", "5 sec", "1h30m", "-5s", "s", None, 5])
def test_bad_durations(text):
    with pytest.raises(ValueError):
        parse_duration(text)


# --- keys -----------------------------------------------------------------

KEY = "sk-live-9f8e7d6c5b4a"


def key_config(site: Path, source: str) -> tuple[Path, dict[str, str]]:
    data = base(site)
    del data["hub"]["api_key_file"]
    environ: dict[str, str] = {}
    if source == "inline":
        data["hub"]["api_key"] = KEY
    elif source == "file":
        (site / "k").write_text(KEY + "\n")
        data["hub"]["api_key_file"] = str(site / "k")
    elif source == "env":
        environ["HUB_KEY"] = KEY
        data["hub"]["api_key_env"] = "HUB_KEY"
    elif source == "credential":
        creds = site / "creds"
        creds.mkdir()
        (creds / "hub").write_text(KEY)
        environ["CREDENTIALS_DIRECTORY"] = str(creds)
        data["hub"]["api_key_credential"] = "hub"
    return write(site, data), environ


@pytest.mark.parametrize("source", ["inline", "file", "env", "credential"])
def test_key_is_loaded_and_never_shown(site, source):
    path, environ = key_config(site, source)
    config = load_config(path, environ=environ)
    assert config.hub.api_key is not None
    assert config.hub.api_key.value == KEY
    assert all(w.api_key.value == KEY for w in config.watches)

    assert KEY not in repr(config)
    assert KEY not in str(config.hub.api_key)
    assert KEY not in render_toml(redacted_dict(config))

    stream = io.StringIO()
    logs.configure("json", "debug", stream=stream)
    log = logs.get_logger("test")
    log.info("config.loaded", hub=config.hub, api_key=KEY, note=f"key is {KEY}")
    import logging

    logging.getLogger("httpx").debug("headers: [(b'X-Api-Key', b'%s')]", KEY)
    try:
        raise RuntimeError(f"failed with {KEY}")
    except RuntimeError:
        log.exception("boom")
    output = stream.getvalue()
    assert "config.loaded" in output and "boom" in output
    assert KEY not in output


def test_inline_key_in_readable_file_warns(site):
    path, environ = key_config(site, "inline")
    path.chmod(0o644)
    config = load_config(path, environ=environ)
    assert any("readable by group or others" in w for w in config.warnings)
    path.chmod(0o600)
    assert load_config(path, environ=environ).warnings == ()


def test_key_with_spaces_is_refused_without_echo(site):
    (site / "k").write_text("two words here\n")
    data = base(site)
    data["hub"]["api_key_file"] = str(site / "k")
    path = write(site, data)
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    assert "spaces or control characters" in str(caught.value)
    assert "two words" not in str(caught.value)


def test_watch_key_overrides_hub_key(site):
    data = base(site)
    (site / "acme.key").write_text("acme-key-abcdef\n")
    data["watch"][0]["api_key_file"] = str(site / "acme.key")
    config = load_config(write(site, data), environ={})
    assert config.watch("acme").api_key.value == "acme-key-abcdef"
    assert config.watch("globex").api_key.value == "hub-key-0123456789"


# --- the filesystem -------------------------------------------------------


def fs_problems(site: Path, change: Callable[[dict[str, Any]], None]) -> list[str]:
    data = copy.deepcopy(base(site))
    change(data)
    config = load_config(write(site, data), environ={})
    return [str(p) for p in check_filesystem(config)]


def test_missing_folder(site):
    problems = fs_problems(site, watch(path=str(site / "absent")))
    assert any(
        W1.split(" #")[0] in p and "path: " in p and "does not exist" in p
        for p in problems
    )


def test_folder_is_a_file(site):
    (site / "afile").write_text("x")
    problems = fs_problems(site, watch(path=str(site / "afile")))
    assert any("is not a folder" in p for p in problems)


def test_state_dir_that_cannot_be_created(site):
    (site / "afile").write_text("x")
    problems = fs_problems(site, daemon(state_dir=str(site / "afile" / "state")))
    assert any(
        "[daemon]: state_dir: " in p and "cannot be created" in p for p in problems
    )


@pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="needs /dev/shm, a tmpfs")
def test_archive_on_another_filesystem(site):
    if os.stat("/dev/shm").st_dev == site.stat().st_dev:
        pytest.skip("tmp_path is on /dev/shm's filesystem")
    problems = fs_problems(site, watch(archive_dir="/dev/shm/hubwatchd-test-archive"))
    assert any("archive_dir: " in p and "another filesystem" in p for p in problems)


def test_keys_can_be_left_unread(site):
    """Read-only commands run outside the service, without its credentials."""
    data = base(site)
    del data["hub"]["api_key_file"]
    data["hub"]["api_key_credential"] = "key_hub"
    path = write(site, data)
    with pytest.raises(ConfigError, match="CREDENTIALS_DIRECTORY"):
        load_config(path, environ={})
    config = load_config(path, environ={}, keys=False)
    assert config.watch("acme").api_key.value == ""


def test_archive_on_another_mount_of_the_same_filesystem(site):
    """st_dev cannot see a bind mount; the mount table can. Two mounts of one
    ext4 device: the watch folder in one, the archive folder in the other."""
    (site / "elsewhere").mkdir()
    mountinfo = (
        "22 1 254:0 / / rw,relatime - ext4 /dev/vda rw\n"
        f"40 22 254:0 {site} {site} rw,relatime - ext4 /dev/vda rw\n"
        f"41 22 254:0 {site}/elsewhere {site}/elsewhere rw - ext4 /dev/vda rw\n"
    )
    data = base(site)
    data["watch"][0]["archive_dir"] = str(site / "elsewhere" / "archive")
    config = load_config(write(site, data), environ={})
    problems = [str(p) for p in check_filesystem(config, mountinfo)]
    assert any(
        "archive_dir: " in p and "another mount" in p and W1.split(" #")[0] in p
        for p in problems
    ), problems
    same_mount = (
        "22 1 254:0 / / rw,relatime - ext4 /dev/vda rw\n"
        f"40 22 254:0 {site} {site} rw,relatime - ext4 /dev/vda rw\n"
    )
    assert check_filesystem(config, same_mount) == []
