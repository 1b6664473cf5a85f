"""The exceptions hubwatchd raises, in one tree.

    HubwatchdError
    ├── ConfigError            the config file is wrong; carries every problem found
    ├── LedgerError            the SQLite ledger cannot be used
    │   ├── LedgerLocked       another daemon holds the state directory
    │   └── IllegalTransition  a state change the file-state machine forbids
    ├── FileRefused            refused before any request (symlink, empty, ...)
    └── UploadError            an upload did not succeed
        ├── RetryableUpload    try again later: 5xx, 408, 429, network, timeouts
        ├── RejectedUpload     the file is at fault: 400, 413, 415; never retried
        └── BlockedUpload      the watch is at fault: 401, 403, 404

Library code raises these; only the command line turns them into exit codes
and printed messages.
"""

from __future__ import annotations

from dataclasses import dataclass


class HubwatchdError(Exception):
    """Base of every error hubwatchd raises on purpose."""


@dataclass(frozen=True)
class Problem:
    """One mistake in a config file: where it is and what would be right."""

    file: str
    place: str
    key: str
    message: str

    def __str__(self) -> str:
        where = f"{self.place}: " if self.place else ""
        key = f"{self.key}: " if self.key else ""
        return f"{self.file}: {where}{key}{self.message}"


class ConfigError(HubwatchdError):
    """The configuration is invalid; `problems` lists every mistake found."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = list(problems)
        count = len(self.problems)
        head = "1 problem" if count == 1 else f"{count} problems"
        lines = [f"invalid configuration ({head}):"]
        lines += [f"  - {problem}" for problem in self.problems]
        super().__init__("\n".join(lines))


class LedgerError(HubwatchdError):
    """The ledger cannot be opened, migrated or written."""


class LedgerLocked(LedgerError):
    """Another process holds the state directory's lock."""


class IllegalTransition(LedgerError):
    """A file version was asked to move to a state its current one forbids."""


class FileRefused(HubwatchdError):
    """A file is refused locally, before any request; `reason` says why."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class UploadError(HubwatchdError):
    """An upload did not succeed. `status` is the HTTP status, if one came."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        self.status = status
        super().__init__(message)


class RetryableUpload(UploadError):
    """The hub or the network failed; the same upload may succeed later."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        self.retry_after = retry_after
        super().__init__(message, status=status)


class RejectedUpload(UploadError):
    """The hub refused the file itself; sending it again cannot help."""


class BlockedUpload(UploadError):
    """The watch's key or task id is wrong; no file is at fault."""
