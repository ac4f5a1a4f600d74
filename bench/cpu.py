"""CPU time used by each part of the local stack, read from ``/proc`` (Linux only).

Services are told apart by their command lines, as ``infra/supervisor.py`` starts them
(the first marker found wins).
The worker's reaped children (ffmpeg) are counted apart from the worker itself.
"""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path

PARTS = {
    "start-dev": "Temporal server",
    "postgres": "PostgreSQL",
    "redis-server": "Redis",
    "infra.modelserver": "model server",
    "infra.worker": "worker",
    "uvicorn": "API",
    "bench.bare": "bare worker",
}
FFMPEG = "ffmpeg (worker's children)"


def available() -> bool:
    return Path("/proc/self/stat").exists()


Snapshot = dict[tuple[int, str], float]  # (pid, part) -> seconds of CPU so far


def snapshot() -> Snapshot:
    """Seconds of CPU (user + system) each process of the stack has used so far."""
    used: Snapshot = {}
    if not available():
        return used
    tick = os.sysconf("SC_CLK_TCK")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # the process ended meanwhile
            continue
        # Fields after the parenthesised name: utime, stime, cutime, cstime are 11-14.
        fields = stat.rsplit(")", 1)[1].split()
        pid = int(entry.name)
        for marker, part in PARTS.items():
            if marker in command:
                used[pid, part] = (int(fields[11]) + int(fields[12])) / tick
                if part == "worker":
                    used[pid, FFMPEG] = (int(fields[13]) + int(fields[14])) / tick
                break
    return used


def used_since(before: Snapshot) -> dict[str, float]:
    """Seconds of CPU per part since ``before``. A process that ended in between (a
    short-lived PostgreSQL backend) is not counted: its figures are gone with it."""
    used: defaultdict[str, float] = defaultdict(float)
    for (pid, part), seconds in snapshot().items():
        used[part] += seconds - before.get((pid, part), 0.0)
    return dict(used)
