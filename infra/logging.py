"""One log format for every process, and the context every line carries.

Every record says whose work it is. ``log_context(...)`` binds fields (a contextvar) for
the code it wraps; ``ContextFilter``, on the handler ``configure_logging`` installs, puts
them on every record emitted meanwhile, from any logger: ours (``bitbuddies.*``,
``activities.*``), Temporal's ``workflow.logger`` / ``activity.logger``, or a library's.
Who binds what:

- the workers (infra/log_context.py, a Temporal interceptor): ``workflow_id``,
  ``run_id``, ``workflow_type``, ``task_queue``, ``generation_id`` and ``user_id`` while a
  workflow or an activity runs, and ``activity_type`` and ``attempt`` in an activity;
- the API (api/middleware.py ``RequestContext``): ``request_id`` for each request, and
  ``user_id`` once the caller is known (api/deps.py).

A field a call passes itself (``extra={"generation_id": ...}``) wins over the bound one.
With tracing on (infra/telemetry.py), a record logged inside a span also carries
``trace_id`` and ``span_id``.

``BITBUDDIES_LOG_FORMAT``: ``json``, one object per line (production's default), or
``text``, ``key=value`` pairs after the message (local, tests). Nothing here logs request
headers; keep it so (Authorization, Cookie).
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, Literal, TextIO

import temporalio.activity
import temporalio.workflow
from opentelemetry import trace

LogFormat = Literal["text", "json"]

# Every context field, in the order a text line shows them.
CONTEXT_FIELDS = (
    "request_id",
    "generation_id",
    "user_id",
    "workflow_id",
    "run_id",
    "workflow_type",
    "activity_type",
    "attempt",
    "task_queue",
    "trace_id",
    "span_id",
)

# The fields bound for the code running now. A dict per binding: ``add_log_context``
# fills in the current one (the API learns the user after the request began).
_bound: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "bitbuddies_log_context", default=None
)

# What Temporal's own loggers put in ``extra`` (temporal_workflow / temporal_activity),
# in our names: context for a record of the SDK's logged outside our interceptor.
_TEMPORAL_NAMES = {
    "workflow_id": "workflow_id",
    "run_id": "run_id",
    "workflow_run_id": "run_id",
    "workflow_type": "workflow_type",
    "activity_type": "activity_type",
    "attempt": "attempt",  # an activity's (a workflow's attempt is not shown)
    "task_queue": "task_queue",
}


def current_log_context() -> dict[str, Any]:
    """A copy of the fields bound now."""
    return dict(_bound.get() or {})


def bind_log_context(
    *, inherit: bool = True, **fields: Any
) -> tuple[dict[str, Any], contextvars.Token[dict[str, Any] | None]]:
    """Bind ``fields`` (None values are left out), on top of those bound already unless
    ``inherit`` is false, until ``unbind_log_context(token)``. Returns the new binding,
    which ``add_log_context`` extends, and the token."""
    base = (_bound.get() or {}) if inherit else {}
    binding = {**base, **{k: v for k, v in fields.items() if v is not None}}
    return binding, _bound.set(binding)


def unbind_log_context(token: contextvars.Token[dict[str, Any] | None]) -> None:
    # Closed from another context (a coroutine torn down elsewhere): that context never
    # saw the binding, and this one ends with the coroutine.
    with contextlib.suppress(ValueError):
        _bound.reset(token)


@contextmanager
def log_context(**fields: Any) -> Iterator[dict[str, Any]]:
    """``fields`` bound, on top of those bound already, for the code inside."""
    binding, token = bind_log_context(**fields)
    try:
        yield binding
    finally:
        unbind_log_context(token)


def add_log_context(**fields: Any) -> None:
    """Add fields to the current binding (seen by everything sharing it, e.g. the rest of
    an HTTP request), or bind them for the rest of this task when there is none."""
    values = {k: v for k, v in fields.items() if v is not None}
    binding = _bound.get()
    if binding is None:
        _bound.set(values)
    else:
        binding.update(values)


class ContextFilter(logging.Filter):
    """Puts the bound context (and the current span's ids) on each record it sees. On a
    handler, so it sees every record that reaches the handler, whichever logger made it;
    it never drops one."""

    def filter(self, record: logging.LogRecord) -> bool:
        present = record.__dict__
        for name, value in (_bound.get() or {}).items():
            if name not in present:
                present[name] = value
        for key in ("temporal_activity", "temporal_workflow"):
            details = present.get(key)
            if isinstance(details, dict):
                for theirs, ours in _TEMPORAL_NAMES.items():
                    if key == "temporal_workflow" and theirs == "attempt":
                        continue
                    if theirs in details and ours not in present:
                        present[ours] = details[theirs]
        if "trace_id" not in present:
            span = trace.get_current_span().get_span_context()
            if span.is_valid:
                present["trace_id"] = format(span.trace_id, "032x")
                present["span_id"] = format(span.span_id, "016x")
        return True


def context_of(record: logging.LogRecord) -> list[tuple[str, Any]]:
    """The record's context fields that have a value, in CONTEXT_FIELDS order."""
    present = record.__dict__
    return [(name, present[name]) for name in CONTEXT_FIELDS if present.get(name) not in (None, "")]


def _plain(value: Any) -> str | int | float | bool:
    return value if isinstance(value, str | int | float | bool) else str(value)


def _text_value(value: Any) -> str:
    text = str(value)
    if not text or any(c.isspace() or c in '"=' for c in text):
        return json.dumps(text, ensure_ascii=False)
    return text


class TextFormatter(logging.Formatter):
    """``2026-05-01T12:00:00 INFO bitbuddies.models submitted ... generation_id=...``:
    the context on the message's line, before any traceback."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s", "%Y-%m-%dT%H:%M:%S")

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        pairs = " ".join(f"{name}={_text_value(value)}" for name, value in context_of(record))
        return f"{line} {pairs}" if pairs else line


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (UTC), level, logger, message, every context
    field, and the exception's traceback as text when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name, value in context_of(record):
            doc[name] = _plain(value)
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            doc["exception"] = record.exc_text
        if record.stack_info:
            doc["stack"] = self.formatStack(record.stack_info)
        return json.dumps(doc, ensure_ascii=False, default=str)


def formatter_for(fmt: LogFormat) -> logging.Formatter:
    return JsonFormatter() if fmt == "json" else TextFormatter()


def configure_logging(
    level: str = "INFO", fmt: LogFormat = "text", *, stream: TextIO | None = None
) -> None:
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(formatter_for(fmt))
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Request URLs can carry signed query strings; keep client libraries quiet.
    for noisy in ("httpx", "httpcore", "google", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # uvicorn installs handlers of its own before it loads the app: its lines (an
    # unhandled error's traceback) go through this handler too, in this format. Not its
    # access log: off (--no-access-log) it must stay off, as its lines hold whole URLs,
    # signed query strings included; uvicorn turns it on whenever it finds a handler.
    for name in ("uvicorn", "uvicorn.error"):
        server = logging.getLogger(name)
        server.handlers.clear()
        server.propagate = True
    # Temporal's loggers also append their details to each message; the context fields
    # already carry them.
    temporalio.workflow.logger.workflow_info_on_message = False
    temporalio.activity.logger.activity_info_on_message = False
