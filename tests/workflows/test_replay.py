"""The replay guard: histories of real runs (recorded on the real local stack by
tests/workflows/record_histories.py) replay on the current workflow code without a
nondeterminism error. A change that alters the commands a recorded run issued, or their
order, fails here, before it can break the runs in flight at a deploy; such a change
needs ``workflow.patched`` (as TRANSIENT_RESUBMIT_PATCH does) or a new workflow name.

Each file is one history as ``WorkflowHistory.to_json()`` writes it; the file's stem
names the scenario, then, for a history recorded by code since changed behind a patch,
what changed (``cancelled-two_activity_settle``: before SETTLE_PATCH). A history recorded
by older code stays while runs it stands for may be in flight: add new files beside it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowHistory
from temporalio.worker import Replayer

from workflows import contract
from workflows.bitbuddy import (
    DEADLINE_PATCH,
    SETTLE_PATCH,
    TRANSIENT_RESUBMIT_PATCH,
    WEBHOOK_PATCH,
    BitBuddyWorkflow,
)

HISTORIES = Path(__file__).parent / "histories"
FILES = sorted(HISTORIES.glob("*.json"))
# What each recorded scenario must show, so a re-recording cannot quietly lose one.
ENDINGS = {
    "completed": EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED,
    "nsfw_refused": EventType.EVENT_TYPE_WORKFLOW_EXECUTION_FAILED,
    "cancelled": EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CANCELED,
    "transient_resubmit": EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED,
    "webhook_lost": EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED,
}


def load(path: Path) -> WorkflowHistory:
    text = path.read_text()
    workflow_id = _workflow_id(text) or path.stem
    return WorkflowHistory.from_json(workflow_id, text)


def _workflow_id(text: str) -> str | None:
    first = json.loads(text)["events"][0]
    started = first.get("workflowExecutionStartedEventAttributes", {})
    workflow_id = started.get("workflowId")
    return str(workflow_id) if workflow_id else None


def _scenario(path: Path) -> str:
    return path.stem.split("-")[0]


def _markers(history: WorkflowHistory) -> list[str]:
    return [
        str(e.marker_recorded_event_attributes)
        for e in history.events
        if e.HasField("marker_recorded_event_attributes")
    ]


def test_every_scenario_has_a_recorded_history_of_the_current_code() -> None:
    assert {p.stem for p in FILES} >= set(ENDINGS), sorted(p.name for p in FILES)
    # The ones that end badly were recorded by code that settles in one activity.
    for stem in ("nsfw_refused", "cancelled"):
        markers = _markers(load(HISTORIES / f"{stem}.json"))
        assert any(SETTLE_PATCH in m for m in markers), stem
    # Every current one by code with the generation's deadline and webhooks.
    for stem in ENDINGS:
        markers = _markers(load(HISTORIES / f"{stem}.json"))
        assert any(DEADLINE_PATCH in m for m in markers), stem
        assert any(WEBHOOK_PATCH in m for m in markers), stem
    lost = load(HISTORIES / "webhook_lost.json")
    assert contract.CHECK_MODEL_JOB in str(lost.events), "no check of a job recorded"


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
async def test_a_recorded_history_replays_on_the_current_workflow(path: Path) -> None:
    history = load(path)
    types = [e.event_type for e in history.events]
    started = history.events[0].workflow_execution_started_event_attributes
    assert started.workflow_type.name == contract.WORKFLOW_NAME
    if _scenario(path) in ENDINGS:
        assert types[-1] == ENDINGS[_scenario(path)], path.name
    if path.stem == "transient_resubmit":
        markers = _markers(history)
        assert any(TRANSIENT_RESUBMIT_PATCH in m for m in markers), "no resubmission recorded"

    # raise_on_replay_failure (the default): any nondeterminism raises here.
    replayed = await Replayer(workflows=[BitBuddyWorkflow]).replay_workflow(history)
    assert replayed.replay_failure is None
