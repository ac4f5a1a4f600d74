"""CPU time used by each part of the local stack, read from ``/proc`` (Linux only).

Services are told apart by their command lines, as ``infra/services.py`` starts them
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


def snapshot() -> dict[str, float]:
    """Seconds of CPU (user + system) used so far, per part of the stack."""
    used: defaultdict[str, float] = defaultdict(float)
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
        own = (int(fields[11]) + int(fields[12])) / tick
        children = (int(fields[13]) + int(fields[14])) / tick
        for marker, part in PARTS.items():
            if marker in command:
                used[part] += own
                if part == "worker":
                    used[FFMPEG] += children
                break
    return dict(used)


def used_since(before: dict[str, float]) -> dict[str, float]:
    """Seconds of CPU per part since ``before`` was taken."""
    now = snapshot()
    return {part: now[part] - before.get(part, 0.0) for part in now}
