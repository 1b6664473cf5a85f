"""Logging: structlog events, one renderer for ours and the standard library's.

`configure` is called once, from the command line's `main()`. Events are short
dotted names with key=value context (`upload.succeeded path=… bytes=…`). JSON
lines go to stdout when it is not a terminal or when systemd's journal reads
it; a terminal gets readable console lines. Every rendered line passes through
`redact`, so an API key registered with `register_secret` never reaches the
output, whatever logger or traceback carried it.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
from typing import Any, TextIO

import structlog
from structlog.tracebacks import ExceptionDictTransformer

REDACTED = "<redacted>"

_secrets: set[str] = set()
_secrets_lock = threading.Lock()
# The value after an X-Api-Key header name, however a library prints it:
# `X-Api-Key: k`, `'x-api-key': 'k'`, `(b'X-Api-Key', b'k')`.
_HEADER_RE = re.compile(r"""(?i)(x-api-key['"]?\s*[:=,]\s*b?['"]?)([^'"\s,)}\]]+)""")
_SENSITIVE_KEYS = frozenset({"api_key", "x-api-key", "x_api_key", "authorization"})


def register_secret(value: str) -> None:
    """Remember a key so that every later log line hides it."""
    if len(value) >= 4:
        with _secrets_lock:
            _secrets.add(value)


def redact(text: str) -> str:
    """`text` with every registered key and X-Api-Key header value replaced."""
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    return _HEADER_RE.sub(lambda m: m.group(1) + REDACTED, text)


def _redact_fields(_logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
    for key in event:
        if key.lower() in _SENSITIVE_KEYS:
            event[key] = REDACTED
    return event


def _redact_rendered(_logger: Any, _name: str, rendered: str) -> str:
    return redact(rendered)


# journald reads a leading "<N>" on a stdout line as the syslog priority, so
# `journalctl -p warning` works although every line is JSON.
_PRIORITIES = {"debug": 7, "info": 6, "warning": 4, "error": 3, "critical": 2}


class _JournalPriority:
    def __init__(self, renderer: Any) -> None:
        self.renderer = renderer

    def __call__(self, logger: Any, name: str, event: dict[str, Any]) -> str:
        priority = _PRIORITIES.get(str(event.get("level", "info")), 6)
        return f"<{priority}>" + self.renderer(logger, name, event)


def choose_format(log_format: str, stream: TextIO) -> str:
    """ "json" or "console" for a `log_format` of auto, json or console."""
    if log_format != "auto":
        return log_format
    if os.environ.get("JOURNAL_STREAM") or not stream.isatty():
        return "json"
    return "console"


def configure(
    log_format: str = "auto",
    level: str = "info",
    stream: TextIO | None = None,
) -> None:
    """Route structlog and the standard library's loggers to one renderer."""
    stream = stream or sys.stdout
    timestamper = structlog.processors.TimeStamper(fmt="iso", utc=True)
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        timestamper,
        _redact_fields,
    ]
    if choose_format(log_format, stream) == "json":
        exceptions = structlog.processors.ExceptionRenderer(
            ExceptionDictTransformer(show_locals=False, use_rich=False)
        )
        renderer: Any = structlog.processors.JSONRenderer()
        if os.environ.get("JOURNAL_STREAM"):
            renderer = _JournalPriority(renderer)
        tail: list[Any] = [exceptions, renderer]
    else:
        console = structlog.dev.ConsoleRenderer(
            colors=stream.isatty(),
            exception_formatter=structlog.dev.plain_traceback,
        )
        tail = [console]

    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,  # skip the work for unwanted levels
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, structlog.stdlib.ExtraAdder()],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            *tail,
            _redact_rendered,
        ],
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Libraries stay at INFO unless we debug: their DEBUG lines are raw wire talk.
    quiet = logging.DEBUG if level == "debug" else logging.WARNING
    for name in ("httpx", "httpcore", "watchdog", "aiohttp.access"):
        logging.getLogger(name).setLevel(quiet)


def get_logger(name: str | None = None) -> Any:
    """A structlog logger; cheap enough to call at module level."""
    return structlog.get_logger(name)
