"""The operator's ledger commands: status, history, retry, forget, explain."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner
from ledgerkit import TASK_A, TASK_B

from hubwatchd.cli import main
from hubwatchd.config import load_config
from hubwatchd.ledger import Ledger

CONFIG = """\
[hub]
url = "http://127.0.0.1:9"
api_key_env = "HUBWATCHD_TEST_KEY"

[daemon]
state_dir = "{root}/state"

[[watch]]
name = "acme"
path = "{root}/acme"
task_id = "{task_a}"
mode = "append"
ready_marker = ".done"

[[watch]]
name = "nightly"
path = "{root}/nightly"
task_id = "{task_b}"
"""


def put(folder: Path, name: str, text: str = "id,name\n1,a\n") -> tuple:
    path = folder / name
    path.write_text(text)
    st = path.stat()
    return path, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino


@pytest.fixture
def setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A config with two watches and a ledger holding one of every fate."""
    monkeypatch.setenv("HUBWATCHD_TEST_KEY", "test-key-not-real")
    (tmp_path / "acme").mkdir()
    (tmp_path / "nightly").mkdir()
    config_file = tmp_path / "config.toml"
    config_file.write_text(CONFIG.format(root=tmp_path, task_a=TASK_A, task_b=TASK_B))
    config = load_config(config_file)
    acme, nightly = config.watches
    ids = {}
    with Ledger.open(config.daemon.state_dir) as ledger:
        done, _ = ledger.record_ready(acme, *put(acme.path, "jan.csv"))
        ledger.claim_next()
        ledger.finish(done.id, kind="success", status=200, rows=120, sha256="a")
        ledger.set_disposition(done.id, "kept")
        ids["done"] = done.id

        doubt, _ = ledger.record_ready(acme, *put(acme.path, "feb.csv", "x\n"))
        ledger.claim_next()
        ledger.mark_body_sent(doubt.id)
        ledger.finish(doubt.id, kind="retry", error="no answer after the body")
        ids["in_doubt"] = doubt.id

        bad, _ = ledger.record_ready(nightly, *put(nightly.path, "bad.csv", "y\n"))
        ledger.claim_next()
        ledger.finish(bad.id, kind="rejected", status=400, error="row 3: bad date")
        ids["failed"] = bad.id

        wait, _ = ledger.record_ready(nightly, *put(nightly.path, "sales.csv", "z\n"))
        ledger.claim_next()
        ledger.finish(wait.id, kind="retry", status=503, retry_after=600.0, error="503")
        ids["retry_wait"] = wait.id

        queued, _ = ledger.record_ready(acme, *put(acme.path, "mar.csv", "q\n"))
        ids["ready"] = queued.id
        ledger.note_detected(acme, *put(acme.path, "apr.csv", "g\n"), "growing")
    put(acme.path, "notes.txt")
    put(acme.path, "may.csv")
    return tmp_path, config_file, ids


def run(config_file: Path, *args: str, code: int = 0) -> str:
    result = CliRunner().invoke(main, [args[0], "-c", str(config_file), *args[1:]])
    assert result.exit_code == code, result.output
    return result.output


def test_status_table_and_json(setup):
    _, config_file, ids = setup
    text = run(config_file, "status")
    lines = text.splitlines()
    assert lines[0].split()[:3] == ["WATCH", "WAITING", "UPLOADING"]
    assert lines[1].startswith("acme ") and "120 rows" in lines[1]
    assert "nightly" in lines[2] and "(next " in lines[2]
    assert "nightly: last error" in text and "sales.csv: 503" in text

    [acme, nightly] = json.loads(run(config_file, "status", "--json"))
    assert (acme["waiting"], acme["in_doubt"], acme["settling"]) == (1, 1, 1)
    assert acme["last_success"]["id"] == ids["done"]
    assert (nightly["failed"], nightly["retrying"]) == (1, 1)
    assert nightly["next_retry_at"] is not None
    assert nightly["last_error"]["error"] in ("503", "row 3: bad date")


def test_status_shows_a_blocked_watch_with_its_reason(setup):
    _, config_file, ids = setup
    config = load_config(config_file)
    with Ledger.open(config.daemon.state_dir) as ledger:
        ledger.retry([ids["retry_wait"]])
        claimed = ledger.claim_next(skip_tasks={TASK_A})
        ledger.finish(claimed.id, kind="blocked", status=403, error="key not allowed")
    text = run(config_file, "status")
    assert "nightly: blocked: HTTP 403: key not allowed" in text
    [_, nightly] = json.loads(run(config_file, "status", "--json"))
    assert nightly["blocked"] == 1


def test_history_filters_and_json(setup):
    _, config_file, ids = setup
    text = run(config_file, "history")
    assert text.splitlines()[0].split() == [
        "ID",
        "WATCH",
        "STATE",
        "FILE",
        "SIZE",
        "ROWS",
        "WHEN",
        "NOTE",
    ]
    assert "jan.csv" in text and "row 3: bad date" in text

    rows = json.loads(run(config_file, "history", "--json", "--watch", "acme"))
    assert {r["watch"] for r in rows} == {"acme"}
    failed = json.loads(run(config_file, "history", "--json", "--state", "failed"))
    assert [r["id"] for r in failed] == [ids["failed"]]
    assert len(json.loads(run(config_file, "history", "--json", "--limit", "2"))) == 2
    assert json.loads(run(config_file, "history", "--json", "--since", "1h"))
    assert (
        json.loads(run(config_file, "history", "--json", "--since", "2999-01-01")) == []
    )
    assert "--since" in run(config_file, "history", "--since", "soon", code=64)


def test_retry_in_doubt_and_failed(setup):
    _, config_file, ids = setup
    rows = json.loads(run(config_file, "retry", "--json", "--in-doubt"))
    assert [(r["id"], r["state"]) for r in rows] == [(ids["in_doubt"], "ready")]
    text = run(config_file, "retry", str(ids["failed"]))
    assert "bad.csv" in text and "ready" in text
    assert run(config_file, "retry", "--failed") == "nothing to retry\n"


def test_retry_refuses_a_done_version_and_changes_nothing(setup):
    _, config_file, ids = setup
    out = run(config_file, "retry", str(ids["in_doubt"]), str(ids["done"]), code=65)
    assert f"version {ids['done']}" in out and "is done" in out
    [doubt] = json.loads(run(config_file, "history", "--json", "--state", "in_doubt"))
    assert doubt["id"] == ids["in_doubt"]
    assert "give version IDs" in run(config_file, "retry", code=64)


def test_forget_closes_in_doubt_only(setup):
    _, config_file, ids = setup
    rows = json.loads(run(config_file, "forget", "--json", str(ids["in_doubt"])))
    assert rows[0]["state"] == "forgotten"
    assert "is failed" in run(config_file, "forget", str(ids["failed"]), code=65)
    assert "no version 999" in run(config_file, "forget", "999", code=65)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("jan.csv", "done at "),
        ("feb.csv", "in doubt: "),
        ("mar.csv", "next for its task"),
        ("apr.csv", "settling since "),
        ("notes.txt", "not matching the watch's patterns"),
        ("may.csv", "waiting for its marker may.csv.done"),
        ("jun.csv", "no such file, and the ledger has never seen it"),
        (".hidden.csv", "ignored: the name matches the ignore pattern '.*'"),
    ],
)
def test_explain_acme(setup, name: str, expected: str):
    tmp_path, config_file, _ = setup
    if name == ".hidden.csv":
        put(tmp_path / "acme", name)
    text = run(config_file, "explain", str(tmp_path / "acme" / name))
    assert expected in text
    result = json.loads(
        run(config_file, "explain", "--json", str(tmp_path / "acme" / name))
    )
    assert expected in result["explanation"] and result["watch"] == "acme"


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("bad.csv", "failed: row 3: bad date"),
        ("sales.csv", "retrying at "),
    ],
)
def test_explain_nightly(setup, name: str, expected: str):
    tmp_path, config_file, _ = setup
    assert expected in run(config_file, "explain", str(tmp_path / "nightly" / name))


def test_explain_a_file_never_seen_and_outside_watches(setup):
    tmp_path, config_file, _ = setup
    put(tmp_path / "acme", "jun.csv")
    (tmp_path / "acme" / "jun.csv.done").touch()
    assert "never seen" in run(config_file, "explain", str(tmp_path / "acme/jun.csv"))
    assert "not inside any watched folder" in run(
        config_file, "explain", str(tmp_path / "elsewhere.csv")
    )
    os.symlink(tmp_path / "acme/jun.csv", tmp_path / "acme/link.csv")
    assert "refused: not a regular file" in run(
        config_file, "explain", str(tmp_path / "acme/link.csv")
    )


def test_explain_an_archived_copy(setup):
    _, config_file, ids = setup
    config = load_config(config_file)
    archived = config.watches[0].archive_path / "2026-12-03" / "jan.csv"
    with Ledger.open(config.daemon.state_dir) as ledger:
        ledger.set_disposition(ids["done"], "archived", archived)
    text = run(config_file, "explain", str(archived))
    assert "done at " in text and "moved copy" in text


def test_commands_work_while_a_watch_folder_is_missing(setup):
    tmp_path, config_file, _ = setup
    (tmp_path / "nightly").rename(tmp_path / "nightly-away")
    assert "nightly" in run(config_file, "status")


def test_commands_say_when_there_is_no_ledger_yet(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("HUBWATCHD_TEST_KEY", "test-key-not-real")
    config_file = tmp_path / "config.toml"
    config_file.write_text(CONFIG.format(root=tmp_path, task_a=TASK_A, task_b=TASK_B))
    assert "no ledger at" in run(config_file, "status", code=66)
    assert not (tmp_path / "state").exists()


def test_explain_matches_patterns_case_insensitively_like_the_settler(tmp_path):
    """SALES.CSV is input for "*.csv": explain must not call it unmatched."""
    from hubwatchd import report
    from hubwatchd.config import Secret, WatchConfig

    watch = WatchConfig(
        name="w", path=tmp_path, task_id="0" * 8, api_key=Secret("", "none")
    )
    upper = tmp_path / "SALES.CSV"
    upper.write_text("a\n1\n")
    reason = report._unseen_reason(watch, upper, upper.stat())
    assert "never seen" in reason
    other = tmp_path / "notes.TXT"
    other.write_text("x")
    assert "not matching" in report._unseen_reason(watch, other, other.stat())
