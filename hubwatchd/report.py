"""What the operator's commands show: status, history and explain, as data
(for --json) and as readable tables. The command line only prints these."""

from __future__ import annotations

import datetime as dt
import os
import stat
from dataclasses import asdict
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

from hubwatchd import settle
from hubwatchd.config import Config, WatchConfig, parse_duration
from hubwatchd.ledger import Ledger, Version, WatchSummary


def when(timestamp: float | None) -> str:
    """A local time like 2026-12-03 02:05:11, or "-"."""
    if timestamp is None:
        return "-"
    return dt.datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M:%S")


def parse_since(text: str, now: float) -> float:
    """A start time from a duration back from now ("24h") or an ISO date."""
    try:
        return now - parse_duration(text)
    except ValueError:
        pass
    try:
        return dt.datetime.fromisoformat(text).timestamp()
    except ValueError:
        message = (
            f'expected a duration like "24h" or a date like 2026-12-01, got {text!r}'
        )
        raise ValueError(message) from None


def table(headers: list[str], rows: list[list[str]]) -> str:
    """Left-aligned columns two spaces apart, headers first."""
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]
    lines = [headers, *rows]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


# --- status -------------------------------------------------------------------


def status(ledger: Ledger, config: Config) -> list[dict[str, Any]]:
    """Per watch: what waits, runs, retries, failed, is blocked or in doubt."""
    return [_status_row(s) for s in ledger.summary(w.name for w in config.watches)]


def _status_row(summary: WatchSummary) -> dict[str, Any]:
    counts = summary.counts
    success, error, blocked = summary.last_success, summary.last_error, summary.blocked
    return {
        "watch": summary.watch,
        "settling": counts.get("detected", 0),
        "waiting": counts.get("ready", 0),
        "uploading": counts.get("uploading", 0),
        "retrying": counts.get("retry_wait", 0),
        "next_retry_at": summary.next_retry_at,
        "failed": counts.get("failed", 0),
        "blocked": counts.get("blocked", 0),
        "blocked_reason": blocked and f"HTTP {blocked.status}: {blocked.reason}",
        "in_doubt": counts.get("in_doubt", 0),
        "done": counts.get("done", 0),
        "last_success": success and _brief(success, success.done_at),
        "last_error": error and _brief(error, error.started_at or error.ready_at),
    }


def _brief(version: Version, at: float | None) -> dict[str, Any]:
    return {
        "id": version.id,
        "path": version.path,
        "at": at,
        "rows": version.rows,
        "error": version.last_error,
    }


def render_status(rows: list[dict[str, Any]]) -> str:
    """The status table, then one line per blocked watch and last error."""
    headers = ["WATCH", "WAITING", "UPLOADING", "RETRYING", "FAILED", "BLOCKED"]
    headers += ["IN DOUBT", "LAST SUCCESS"]
    cells = []
    notes = []
    for row in rows:
        retrying = str(row["retrying"])
        if row["next_retry_at"] is not None:
            retrying += f" (next {when(row['next_retry_at'])})"
        success = row["last_success"]
        last = "-"
        if success:
            last = f"{when(success['at'])} #{success['id']} {success['rows']} rows"
        counts = [row["waiting"], row["uploading"]]
        cells.append(
            [row["watch"], *map(str, counts), retrying]
            + [str(row[k]) for k in ("failed", "blocked", "in_doubt")]
            + [last]
        )
        if row["blocked_reason"]:
            notes.append(f"{row['watch']}: blocked: {row['blocked_reason']}")
        if row["last_error"]:
            error = row["last_error"]
            notes.append(
                f"{row['watch']}: last error {when(error['at'])} #{error['id']} "
                f"{Path(error['path']).name}: {error['error']}"
            )
    return "\n".join([table(headers, cells), *notes])


# --- history ------------------------------------------------------------------


def history(
    ledger: Ledger,
    *,
    watch: str | None,
    states: list[str],
    since: float | None,
    limit: int | None,
) -> list[dict[str, Any]]:
    """The ledger's versions, newest first, as plain dicts."""
    found = ledger.history(watch=watch, states=states, since=since, limit=limit)
    return [asdict(version) for version in found]


def render_history(rows: list[dict[str, Any]]) -> str:
    """One line per version: id, watch, state, file, size, rows, time, note."""
    headers = ["ID", "WATCH", "STATE", "FILE", "SIZE", "ROWS", "WHEN", "NOTE"]
    cells = [
        [
            str(row["id"]),
            row["watch"],
            row["state"],
            Path(row["path"]).name,
            str(row["size"]),
            "-" if row["rows"] is None else str(row["rows"]),
            when(row["done_at"] or row["started_at"] or row["ready_at"]),
            row["last_error"] or row["note"] or "",
        ]
        for row in rows
    ]
    return table(headers, cells)


# --- explain ------------------------------------------------------------------


def explain(ledger: Ledger, config: Config, path: Path) -> dict[str, Any]:
    """Why the file at `path` is where it is, as {path, watch, state,
    explanation, version}."""
    path = Path(os.path.abspath(path))
    watch = _watch_for(config, path)
    version, text = _explain(ledger, watch, path)
    return {
        "path": str(path),
        "watch": watch and watch.name,
        "state": version and version.state,
        "explanation": text,
        "version": version and asdict(version),
    }


def render_explain(result: dict[str, Any]) -> str:
    """Two or three lines: the path, its watch and version, the reason."""
    lines = [result["path"]]
    if result["watch"]:
        version = result["version"]
        which = f", version #{version['id']} ({version['state']})" if version else ""
        lines.append(f"  watch {result['watch']}{which}")
    lines.append(f"  {result['explanation']}")
    return "\n".join(lines)


def _watch_for(config: Config, path: Path) -> WatchConfig | None:
    for watch in config.watches:
        special = (watch.archive_path, watch.failed_path)
        if any(path.is_relative_to(folder) for folder in special):
            return watch
        if path.parent == watch.path or (
            watch.recursive and path.is_relative_to(watch.path)
        ):
            return watch
    return None


def _explain(
    ledger: Ledger, watch: WatchConfig | None, path: Path
) -> tuple[Version | None, str]:
    moved = ledger.find_disposed(path)
    if moved is not None:
        return moved, f"{_version_reason(ledger, moved)}; this is its moved copy"
    if watch is None:
        return None, "not inside any watched folder of this config"
    if path.is_relative_to(watch.failed_path):
        return None, "in the failed folder, which is never watched"
    if path.is_relative_to(watch.archive_path):
        return None, "in the archive folder, which is never watched"
    try:
        st = path.lstat()
    except FileNotFoundError:
        st = None
    versions = ledger.versions_at(watch.name, path)
    if st is not None:
        for version in versions:
            same = (version.size, version.mtime_ns, version.inode)
            if version.state != "detected" and same == (
                st.st_size,
                st.st_mtime_ns,
                st.st_ino,
            ):
                return version, _version_reason(ledger, version)
    settling = next((v for v in versions if v.state == "detected"), None)
    if settling is not None:
        return settling, _version_reason(ledger, settling)
    if st is None:
        if versions:
            latest = versions[0]
            return latest, f"{_version_reason(ledger, latest)}; the file is gone"
        return None, "no such file, and the ledger has never seen it"
    return (versions[0] if versions else None), _unseen_reason(watch, path, st)


def _unseen_reason(watch: WatchConfig, path: Path, st: os.stat_result) -> str:
    name = path.name
    if not stat.S_ISREG(st.st_mode):
        return "refused: not a regular file (a symlink, FIFO or device is never read)"
    # The same case-insensitive rules the settler applies; they only name
    # the pattern that decided.
    ignored = next(
        (p for p in watch.ignore if fnmatchcase(name.lower(), p.lower())), None
    )
    if ignored:
        return f"ignored: the name matches the ignore pattern {ignored!r}"
    if not settle.name_matches(watch, name):
        return f"not matching the watch's patterns ({', '.join(watch.patterns)})"
    if watch.ready_marker and not path.with_name(name + watch.ready_marker).exists():
        return f"waiting for its marker {name + watch.ready_marker}"
    return "never seen: the daemon has not noticed this version yet (next rescan)"


def _version_reason(ledger: Ledger, v: Version) -> str:
    state = v.state
    if state == "detected":
        return f"settling since {when(v.detected_at)}: {v.note or 'waiting to settle'}"
    if state == "ready":
        ahead = ledger.queue_ahead(v)
        if ahead == 0:
            return f"queued since {when(v.ready_at)}, next for its task"
        return f"queued since {when(v.ready_at)} behind {ahead} other(s) for its task"
    if state == "uploading":
        return f"uploading since {when(v.started_at)} (attempt {v.attempts + 1})"
    if state == "retry_wait":
        error = v.last_error or f"HTTP {v.last_status}"
        return f"retrying at {when(v.next_attempt_at)} after: {error}"
    if state == "blocked":
        return (
            f"blocked: the hub refused the watch's key or task id (HTTP "
            f"{v.last_status}: {v.last_error}); probing again at "
            f"{when(v.next_attempt_at)}; fix the config and reload"
        )
    if state == "done":
        return f"done at {when(v.done_at)} with {v.rows} rows{_disposed(v)}"
    if state == "failed":
        return f"failed: {v.last_error}{_disposed(v)}"
    if state == "in_doubt":
        return f"in doubt: {v.note}"
    if state == "forgotten":
        return "forgotten by the operator; it is never uploaded again"
    return f"{state}: {v.note}{_disposed(v)}"


def _disposed(v: Version) -> str:
    if v.disposition in ("archived", "pending") and v.disposed_to:
        return f"; moved to {v.disposed_to}"
    if v.disposition == "pending":
        return "; its archive, delete or move is still to do"
    if v.disposition:
        return f"; {v.disposition}"
    return ""


def render_requeued(rows: list[dict[str, Any]]) -> str:
    """The versions `retry` queued again, with a warning for moved files."""
    if not rows:
        return "nothing to retry"
    lines = [render_history(rows)]
    for row in rows:
        if row["disposed_to"]:
            lines.append(
                f"#{row['id']}: its file was moved to {row['disposed_to']}; move it "
                f"back to {row['path']} (unchanged) for the daemon to upload it"
            )
    return "\n".join(lines)
