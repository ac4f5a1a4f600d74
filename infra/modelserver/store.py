"""The model server's job table on disk, so a restart resumes its queue the way a hosted
provider's does: one SQLite file, ``<data>/jobs.sqlite3``.

A job's row is written when it is accepted (before its request id is returned), when it
finishes or is cancelled, and when its result is first fetched; each write is one
autocommitted statement. In WAL mode a committed transaction is in the WAL file before
``execute`` returns, so a process killed at any point (SIGKILL included) loses no
committed row; with ``synchronous=NORMAL`` only a power loss can drop the last commits,
which is fine for a local stand-in whose callers resubmit lost jobs anyway.

The connection is shared by the server's threads (HTTP handlers, job threads), so the
caller serialises every call (``JobManager`` holds its lock around each one).
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    request_id   TEXT PRIMARY KEY,
    app          TEXT NOT NULL,
    epoch        INTEGER NOT NULL,
    state        TEXT NOT NULL,
    submitted_at REAL NOT NULL,
    finished_at  REAL,
    body         TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_finished_idx ON jobs (finished_at);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


@dataclass(frozen=True)
class StoredJob:
    request_id: str
    app: str
    epoch: int
    state: str
    submitted_at: float
    finished_at: float | None
    body: dict[str, Any]  # everything else about the job (see JobManager._save)


class JobStore:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.executescript(_SCHEMA)

    def save(self, job: StoredJob) -> None:
        self._conn.execute(
            "INSERT OR REPLACE INTO jobs"
            " (request_id, app, epoch, state, submitted_at, finished_at, body)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                job.request_id,
                job.app,
                job.epoch,
                job.state,
                job.submitted_at,
                job.finished_at,
                json.dumps(job.body, default=str),
            ),
        )

    def load(self, finished_after: float) -> list[StoredJob]:
        """Every unfinished job and every job finished after ``finished_after``, oldest
        submission first; rows finished earlier are deleted."""
        self._conn.execute("DELETE FROM jobs WHERE finished_at < ?", (finished_after,))
        rows = self._conn.execute(
            "SELECT request_id, app, epoch, state, submitted_at, finished_at, body"
            " FROM jobs ORDER BY submitted_at, rowid"
        ).fetchall()
        return [
            StoredJob(r[0], r[1], int(r[2]), r[3], float(r[4]), r[5], json.loads(r[6]))
            for r in rows
        ]

    def forget(self, request_ids: list[str]) -> None:
        self._conn.executemany("DELETE FROM jobs WHERE request_id = ?", [(r,) for r in request_ids])

    def epoch(self) -> int:
        """The records epoch, bumped by ``/_local/reset`` (0 for a new store)."""
        row = self._conn.execute("SELECT value FROM meta WHERE key = 'epoch'").fetchone()
        return int(row[0]) if row else 0

    def set_epoch(self, epoch: int) -> None:
        self._conn.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES ('epoch', ?)", (str(epoch),)
        )
