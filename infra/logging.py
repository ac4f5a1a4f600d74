"""One log format for every process. Temporal's workflow and activity loggers already
append workflow_id, run_id and activity details; activities add ``user_id``. So a user's
complaint (their generation id == the workflow id) leads straight to the failing step."""

from __future__ import annotations

import logging

_CONTEXT_FIELDS = ("generation_id", "user_id")


class _ContextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = [
            f"{name}={getattr(record, name)}" for name in _CONTEXT_FIELDS if hasattr(record, name)
        ]
        return f"{line} {' '.join(extras)}" if extras else line


def configure_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(
        _ContextFormatter("%(asctime)s %(levelname)s %(name)s %(message)s", "%Y-%m-%dT%H:%M:%S")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Request URLs can carry signed query strings; keep client libraries quiet.
    for noisy in ("httpx", "httpcore", "google", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
