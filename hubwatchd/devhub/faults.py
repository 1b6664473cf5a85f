"""Faults devhub injects into upload requests, set per task or globally.

A fault spec is a dict (JSON from POST /_devhub/faults, or a [[fault]] table
in the devhub config):

    kind      status | delay | cut | hang | chaos
    task      a task id; leave out for every task
    count     how many requests it applies to (default 1; 0: all, until cleared)

    status:   status (int), retry_after (seconds, or a string sent verbatim),
              retry_after_format ("seconds" or "http-date": now + retry_after),
              detail (text for the problem body)
    delay:    seconds: the request is handled normally, rows are written, then
              the answer waits (a client timeout here cannot tell success)
    cut:      after_bytes: read that many body bytes, then drop the connection
    hang:     read the whole body, then never answer (until devhub stops)
    chaos:    probability (0..1), seed (int), faults (a list of the specs above
              without task and count): each request draws one at that rate

Queued faults (status, delay, cut, hang) go first, the task's before the
global ones, oldest first; chaos faults are drawn only when none is queued.
"""

from __future__ import annotations

import email.utils
import random
import time
from dataclasses import dataclass, field
from typing import Any

from hubwatchd.config import GUID_RE

KINDS = ("status", "delay", "cut", "hang", "chaos")
_FIELDS = {
    "status": {"status", "retry_after", "retry_after_format", "detail"},
    "delay": {"seconds"},
    "cut": {"after_bytes"},
    "hang": set(),
    "chaos": {"probability", "seed", "faults"},
}


class FaultError(ValueError):
    """A fault spec is wrong; the message says which field."""


@dataclass
class Fault:
    kind: str
    task: str | None = None
    count: int = 1  # 0: unlimited
    status: int = 503
    retry_after: float | str | None = None
    retry_after_format: str = "seconds"
    detail: str | None = None
    seconds: float = 0.0
    after_bytes: int = 0
    probability: float = 0.0
    seed: int | None = None
    choices: list[Fault] = field(default_factory=list)
    used: int = 0
    _rng: random.Random | None = None

    def retry_after_header(self) -> str | None:
        """The Retry-After value to send now, or None for none."""
        if self.retry_after is None:
            return None
        if isinstance(self.retry_after, str):
            return self.retry_after
        if self.retry_after_format == "http-date":
            return email.utils.formatdate(time.time() + self.retry_after, usegmt=True)
        value = self.retry_after
        return str(int(value)) if float(value).is_integer() else str(value)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "task": self.task}
        if self.kind != "chaos" or self.count:
            out["count"] = self.count
        out["used"] = self.used
        for name in sorted(_FIELDS[self.kind] - {"faults"}):
            out[name] = getattr(self, name)
        if self.kind == "chaos":
            out["faults"] = [c.as_dict() for c in self.choices]
        return out


def parse_fault(spec: dict[str, Any], *, nested: bool = False) -> Fault:
    """A Fault from its spec; raises FaultError naming the bad field."""
    if not isinstance(spec, dict):
        raise FaultError("a fault must be an object")
    kind = spec.get("kind")
    if kind not in KINDS or (nested and kind == "chaos"):
        allowed = ", ".join(k for k in KINDS if not (nested and k == "chaos"))
        raise FaultError(f"kind must be one of {allowed}; got {kind!r}")
    allowed_fields = _FIELDS[kind] | {"kind"} | (set() if nested else {"task", "count"})
    unknown = set(spec) - allowed_fields
    if unknown:
        raise FaultError(f"{kind} fault: unknown fields {', '.join(sorted(unknown))}")

    fault = Fault(kind=kind, count=0 if kind == "chaos" else 1)
    task = spec.get("task")
    if task is not None:
        if not isinstance(task, str) or not GUID_RE.match(task):
            raise FaultError(f"task must be a task id (GUID), got {task!r}")
        fault.task = task.lower()
    fault.count = _number(spec, "count", int, fault.count, minimum=0)
    if kind == "status":
        fault.status = _number(spec, "status", int, None, minimum=100, maximum=599)
        retry_after = spec.get("retry_after")
        if retry_after is not None and not isinstance(retry_after, str):
            retry_after = _number(spec, "retry_after", float, None, minimum=0)
        fault.retry_after = retry_after
        fault.retry_after_format = spec.get("retry_after_format", "seconds")
        if fault.retry_after_format not in ("seconds", "http-date"):
            raise FaultError('retry_after_format must be "seconds" or "http-date"')
        if spec.get("detail") is not None:
            fault.detail = str(spec["detail"])
    elif kind == "delay":
        fault.seconds = _number(spec, "seconds", float, None, minimum=0)
    elif kind == "cut":
        fault.after_bytes = _number(spec, "after_bytes", int, None, minimum=0)
    elif kind == "chaos":
        fault.probability = _number(
            spec, "probability", float, None, minimum=0, maximum=1
        )
        fault.seed = _number(spec, "seed", int, 0)
        choices = spec.get("faults")
        if not isinstance(choices, list) or not choices:
            raise FaultError("chaos fault: faults must be a non-empty list of faults")
        fault.choices = [parse_fault(c, nested=True) for c in choices]
        fault._rng = random.Random(fault.seed)
    return fault


def _number(
    spec: dict[str, Any],
    name: str,
    kind: type,
    default: Any,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
) -> Any:
    value = spec.get(name, default)
    if value is None:
        raise FaultError(f"{spec.get('kind')} fault: {name} is required")
    ok_type = (
        isinstance(value, int | float) if kind is float else isinstance(value, int)
    )
    if isinstance(value, bool) or not ok_type:
        raise FaultError(f"{name} must be a {kind.__name__}, got {value!r}")
    if (minimum is not None and value < minimum) or (
        maximum is not None and value > maximum
    ):
        raise FaultError(f"{name} must be within [{minimum}, {maximum}], got {value}")
    return kind(value)


class Faults:
    """The faults in force. Used from the event loop only, so unlocked."""

    def __init__(self) -> None:
        self._faults: list[Fault] = []

    def add(self, fault: Fault) -> None:
        self._faults.append(fault)

    def clear(self, task: str | None = None) -> int:
        """Drop every fault, or only those set for `task`; how many went."""
        before = len(self._faults)
        if task is None:
            self._faults.clear()
        else:
            self._faults = [f for f in self._faults if f.task != task.lower()]
        return before - len(self._faults)

    def listing(self) -> list[dict[str, Any]]:
        return [fault.as_dict() for fault in self._faults]

    def take(self, task_id: str) -> Fault | None:
        """The fault for this request to `task_id`, using it up, or None."""
        task_id = task_id.lower()
        queued = [f for f in self._faults if f.kind != "chaos"]
        chaos = [f for f in self._faults if f.kind == "chaos"]
        for scope in (task_id, None):
            for fault in queued:
                if fault.task == scope:
                    self._use(fault)
                    return fault
        for scope in (task_id, None):
            for fault in chaos:
                if fault.task != scope or fault._rng is None:
                    continue
                if fault._rng.random() < fault.probability:
                    self._use(fault)
                    choice = fault._rng.choice(fault.choices)
                    choice.used += 1
                    return choice
        return None

    def _use(self, fault: Fault) -> None:
        fault.used += 1
        if fault.count and fault.used >= fault.count:
            self._faults.remove(fault)
