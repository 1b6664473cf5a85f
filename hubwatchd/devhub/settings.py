"""devhub's setup: tasks, keys, limits and faults, from a TOML file or the demo.

Stdlib only, so that tests can read a devhub setup without aiohttp. A devhub
config file looks like this (every section optional):

    [devhub]
    max_body_size = 20000000000   # bytes; the hub's documented 20 GB
    new_columns = "union"         # append with unknown columns: union or reject

    [[task]]
    id = "0f8e3a52-6c1d-4a8e-9a53-2c1b7d1e9f40"
    name = "Sales"
    type = "container"            # anything else is a non-container task
    table = "Sales"               # leave out for a container without a table

    [[key]]
    value = "sales-key"
    tables = ["Sales"]            # "Catalog_*" and "*" work; leave out: all tables

    [[fault]]                     # same fields as POST /_devhub/faults
    kind = "status"
    status = 503
    count = 2
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hubwatchd.config import GUID_RE, HUB_MAX_BYTES
from hubwatchd.devhub.faults import FaultError, parse_fault

NEW_COLUMN_POLICIES = ("union", "reject")


class SettingsError(ValueError):
    """The devhub config file is wrong; the message names the place."""


@dataclass(frozen=True)
class Task:
    id: str
    name: str
    type: str = "container"
    table: str | None = None

    @property
    def is_container(self) -> bool:
        return self.type == "container"

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "type": self.type,
            "table": self.table,
        }


@dataclass(frozen=True)
class Key:
    value: str
    name: str
    tables: tuple[str, ...] | None = None  # None: every table

    def may_write(self, table: str) -> bool:
        """Whether this key's table list covers `table` (exact, `Prefix_*`, `*`)."""
        if self.tables is None:
            return True
        for pattern in self.tables:
            if pattern.endswith("*"):
                if table.startswith(pattern[:-1]):
                    return True
            elif pattern == table:
                return True
        return False

    def as_dict(self) -> dict[str, Any]:
        tables = list(self.tables) if self.tables is not None else None
        return {"name": self.name, "value": self.value, "tables": tables}


@dataclass(frozen=True)
class Settings:
    tasks: dict[str, Task] = field(default_factory=dict)
    keys: dict[str, Key] = field(default_factory=dict)
    max_body_size: int = HUB_MAX_BYTES
    new_columns: str = "union"
    faults: tuple[dict[str, Any], ...] = ()

    def task(self, task_id: str) -> Task | None:
        return self.tasks.get(task_id.lower())


def load_settings(path: Path) -> Settings:
    """Read a devhub config file. Raises SettingsError naming the bad entry."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise SettingsError(f"{path}: cannot read: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"{path}: not valid TOML: {exc}") from exc
    try:
        return settings_from_dict(data)
    except SettingsError as exc:
        raise SettingsError(f"{path}: {exc}") from exc


def settings_from_dict(data: dict[str, Any]) -> Settings:
    """Settings from the parsed TOML shape described in the module docstring."""
    unknown = set(data) - {"devhub", "task", "key", "fault"}
    if unknown:
        raise SettingsError(f"unknown sections: {', '.join(sorted(unknown))}")
    top = data.get("devhub", {})
    _no_unknown(top, "[devhub]", {"max_body_size", "new_columns"})
    max_body_size = top.get("max_body_size", HUB_MAX_BYTES)
    if not isinstance(max_body_size, int) or max_body_size < 0:
        raise SettingsError("[devhub] max_body_size must be a whole number of bytes")
    new_columns = top.get("new_columns", "union")
    if new_columns not in NEW_COLUMN_POLICIES:
        message = (
            f'[devhub] new_columns must be "union" or "reject", got {new_columns!r}'
        )
        raise SettingsError(message)

    tasks: dict[str, Task] = {}
    for number, entry in enumerate(data.get("task", []), start=1):
        task = _task(entry, f"task #{number}")
        if task.id in tasks:
            raise SettingsError(f"task #{number}: id {task.id} is given twice")
        tasks[task.id] = task
    keys: dict[str, Key] = {}
    for number, entry in enumerate(data.get("key", []), start=1):
        key = _key(entry, f"key #{number}")
        keys[key.value] = key
    faults = tuple(dict(entry) for entry in data.get("fault", []))
    for number, entry in enumerate(faults, start=1):
        try:
            parse_fault(entry)
        except FaultError as exc:
            raise SettingsError(f"fault #{number}: {exc}") from exc
    return Settings(tasks, keys, max_body_size, new_columns, faults)


def _no_unknown(entry: Any, place: str, allowed: set[str]) -> None:
    if not isinstance(entry, dict):
        raise SettingsError(f"{place} must be a table")
    unknown = set(entry) - allowed
    if unknown:
        raise SettingsError(f"{place}: unknown keys: {', '.join(sorted(unknown))}")


def _task(entry: Any, place: str) -> Task:
    _no_unknown(entry, place, {"id", "name", "type", "table"})
    task_id = entry.get("id")
    if not isinstance(task_id, str) or not GUID_RE.match(task_id):
        raise SettingsError(f"{place}: id must be a GUID, got {task_id!r}")
    table = entry.get("table")
    if table is not None and (not isinstance(table, str) or not table):
        raise SettingsError(f"{place}: table must be a non-empty string")
    name = str(entry.get("name", table or task_id))
    return Task(task_id.lower(), name, str(entry.get("type", "container")), table)


def _key(entry: Any, place: str) -> Key:
    _no_unknown(entry, place, {"value", "name", "tables"})
    value = entry.get("value")
    if not isinstance(value, str) or not value:
        raise SettingsError(f"{place}: value must be a non-empty string")
    tables = entry.get("tables")
    if tables is not None:
        if not isinstance(tables, list) or not all(isinstance(t, str) for t in tables):
            raise SettingsError(f"{place}: tables must be a list of table names")
        tables = tuple(tables)
    return Key(value, str(entry.get("name", place)), tables)


# The setup a devhub started without --config serves, printed at start.
DEMO_CONFIG: dict[str, Any] = {
    "task": [
        {
            "id": "5a1e5000-0000-4000-8000-000000000001",
            "name": "Sales (replace)",
            "table": "Sales",
        },
        {
            "id": "5a1e5000-0000-4000-8000-000000000002",
            "name": "Orders (append)",
            "table": "Orders",
        },
        {
            "id": "5a1e5000-0000-4000-8000-000000000003",
            "name": "Catalog products",
            "table": "Catalog_Products",
        },
        {
            "id": "5a1e5000-0000-4000-8000-000000000004",
            "name": "Inventory EU",
            "table": "Inventory-EU",
        },
        {
            "id": "5a1e5000-0000-4000-8000-000000000005",
            "name": "Nightly report",
            "type": "report",
        },
        {
            "id": "5a1e5000-0000-4000-8000-000000000006",
            "name": "Container without a result table",
        },
    ],
    "key": [
        {"name": "sales", "value": "demo-sales-key", "tables": ["Sales"]},
        {"name": "orders", "value": "demo-orders-key", "tables": ["Orders"]},
        {
            "name": "inventory",
            "value": "demo-inventory-key",
            "tables": ["Inventory-EU"],
        },
        {
            "name": "catalog-wildcard",
            "value": "demo-catalog-key",
            "tables": ["Catalog_*"],
        },
        {"name": "all-tables", "value": "demo-admin-key"},
    ],
}


def describe(settings: Settings) -> str:
    """A few lines for a terminal: each task and each key with what it may write."""
    lines = ["tasks:"]
    for task in settings.tasks.values():
        if not task.is_container:
            what = f"{task.type} task (uploads answer 400)"
        elif task.table is None:
            what = "container, no result table (uploads answer 400)"
        else:
            what = f"container -> table {task.table}"
        lines.append(f"  {task.id}  {task.name}: {what}")
    lines.append("keys (X-Api-Key):")
    for key in settings.keys.values():
        scope = "all tables" if key.tables is None else ", ".join(key.tables)
        lines.append(f"  {key.value}  {key.name}: {scope}")
    return "\n".join(lines)
