"""On the real stack: after a generation made through HTTP, the worker's log file says
whose work each of its lines was (infra/log_context.py in a real worker process, in the
format the stack's BITBUDDIES_LOG_FORMAT picks: text by default, as `make dev` has it)."""

from __future__ import annotations

import json
import re
from typing import Any

import httpx

from infra.logging import CONTEXT_FIELDS
from tests.conftest import Stack
from tests.support.client import signup
from tests.support.photos import photo


def _fields(line: str) -> dict[str, Any]:
    """A log line's message and context fields, whichever the format."""
    if line.startswith("{"):
        doc: dict[str, Any] = json.loads(line)
        return doc
    pairs = dict(token.split("=", 1) for token in line.split(" ") if "=" in token)
    return {k: v for k, v in pairs.items() if k in CONTEXT_FIELDS} | {"message": line}


async def test_the_worker_log_names_the_generation_and_the_user(
    stack: Stack, http: httpx.AsyncClient
) -> None:
    user = await signup(http)
    started = await user.generate(photo("astronaut.png"))
    assert started.status_code == 202, started.text
    assert re.fullmatch(r"[0-9a-f]{32}", started.headers["x-request-id"])
    generation_id = started.json()["id"]
    events = await user.events(generation_id)
    assert events[-1].event == "completed", events[-1]

    log = (stack.cfg.data_dir / "logs" / "worker-interactive.log").read_text(errors="replace")
    lines = [_fields(line) for line in log.splitlines() if line.startswith(("{", "20"))]
    mine = [line for line in lines if line.get("workflow_id") == generation_id]
    assert mine, "no line of the worker names the generation's workflow"
    for line in mine:
        assert line.get("generation_id") == generation_id, line
        assert line.get("user_id") == user.id, line
    # The activities' own lines (activities/models.py: "submitted <app> job <id>"), each
    # with its activity and attempt.
    submitted = [line for line in mine if "submitted " in line["message"]]
    assert submitted, mine
    assert all(s["activity_type"] == "submit_model_job" and s["attempt"] for s in submitted)
