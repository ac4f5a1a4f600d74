"""``bitbuddies inspect GENERATION_ID``: from a user's complaint to the failing step.

Without the stack: the timeline (infra/inspect.py) of recorded histories and of made-up
ones (timeouts, retries, a termination, a run still going). With the stack: real
generations, one that completes after its provider refused a submission once and one
that fails at cartoonify after a transient failure and a resubmission, inspected by the
installed command as a subprocess; one still running; a generation whose workflow never
started; Temporal out of reach; an unknown id and a malformed one."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from psycopg_pool import AsyncConnectionPool
from temporalio.api.common.v1 import ActivityType, Payloads, WorkflowType
from temporalio.api.enums.v1 import PendingActivityState, RetryState, TimeoutType
from temporalio.api.failure.v1 import ApplicationFailureInfo, Failure, TimeoutFailureInfo
from temporalio.api.history.v1 import (
    ActivityTaskCompletedEventAttributes,
    ActivityTaskScheduledEventAttributes,
    ActivityTaskStartedEventAttributes,
    ActivityTaskTimedOutEventAttributes,
    HistoryEvent,
    WorkflowExecutionCancelRequestedEventAttributes,
    WorkflowExecutionSignaledEventAttributes,
    WorkflowExecutionStartedEventAttributes,
    WorkflowExecutionTerminatedEventAttributes,
)
from temporalio.api.workflow.v1 import PendingActivityInfo
from temporalio.client import Client, WorkflowFailureError, WorkflowHistory
from temporalio.converter import DataConverter

from activities.providers.local import APPS
from infra import inspect
from infra.settings import Settings
from tests.conftest import Stack, insert_generation
from tests.support.cli import bitbuddies
from tests.support.client import signup
from tests.support.faults import provider_requests, wait_until
from tests.support.photos import photo

Pool = AsyncConnectionPool  # type: ignore[type-arg]
HISTORIES = Path(__file__).parents[1] / "workflows" / "histories"
MODEL_STEPS = ["nsfw_filter", "analyze", "cartoonify"]  # then expand, when the photo needs it
LATER_STEPS = ["segment_image", "animate", "segment_video"]
NOT_ACTIVITIES = ("timer", "signal", "cancel", "workflow")
SECTIONS = ["generation", "workflow", "timeline", "ledger", "provider jobs", "costs", "alerts"]


# --- the timeline, without the stack ----------------------------------------------------


def _recorded(name: str) -> WorkflowHistory:
    return WorkflowHistory.from_json("recorded", (HISTORIES / f"{name}.json").read_text())


def test_a_recorded_resubmission_reads_step_by_step() -> None:
    # Recorded by the code that polled each job.
    history = _recorded("transient_resubmit-polling")
    line = inspect.timeline(history.events)
    assert line.status == "completed" and line.workflow_type == "BitBuddy"
    assert line.run_id == history.run_id and line.ending is None
    activities = line.activities()
    steps = [a.step for a in activities if a.activity_type == "submit_model_job"]
    assert steps == [
        "nsfw_filter",
        "analyze",
        "analyze",
        "cartoonify",
        "expand",
        "segment_image",
        "animate",
        "segment_video",
    ]
    [failed] = [a for a in activities if a.outcome == "failed"]
    assert (failed.activity_type, failed.step, failed.resubmission) == (
        "poll_model_job",
        "analyze",
        0,
    )
    assert failed.error is not None and failed.error.type == "ModelInputUnavailable"
    assert "could not download the inputs" in failed.error.message
    assert failed.retry_state == "non retryable failure" and failed.attempt == 1
    [timer] = [r for r in line.rows if isinstance(r, inspect.TimerRow)]
    assert timer.fire_after == timedelta(seconds=2) and timer.outcome == "fired"
    assert line.rows.index(failed) < line.rows.index(timer)
    resubmitted = [a for a in activities if a.resubmission == 1]
    assert [a.activity_type for a in resubmitted] == [
        "submit_model_job",
        "poll_model_job",
        "fetch_model_result",
    ]
    assert all(line.rows.index(timer) < line.rows.index(a) for a in resubmitted)
    assert [a.activity_type for a in activities[-2:]] == ["transcode", "complete_generation"]
    assert all(a.at >= timedelta(0) and a.duration is not None for a in activities)


def test_a_recorded_resubmission_with_webhooks_shows_the_signals_and_the_check() -> None:
    line = inspect.timeline(_recorded("transient_resubmit").events)
    assert line.status == "completed"
    activities = line.activities()
    assert "poll_model_job" not in {a.activity_type for a in activities}
    # the ERROR webhook made the workflow check the job, which read its error
    [failed] = [a for a in activities if a.outcome == "failed"]
    assert (failed.activity_type, failed.step, failed.resubmission) == (
        "check_model_job",
        "analyze",
        0,
    )
    assert failed.error is not None and failed.error.type == "ModelInputUnavailable"
    timers = [r for r in line.rows if isinstance(r, inspect.TimerRow)]
    [backoff] = [t for t in timers if t.outcome == "fired"]
    assert backoff.fire_after == timedelta(seconds=2)
    # every job's webhook ended a wait: the periods are cancelled, one signal each
    waits = [t for t in timers if t.fire_after in (timedelta(seconds=20), timedelta(minutes=1))]
    assert waits and all(t.outcome == "cancelled" for t in waits)
    signals = [r for r in line.rows if isinstance(r, inspect.SignalRow)]
    assert len(signals) == len(waits)
    resubmitted = [a for a in activities if a.resubmission == 1]
    assert [a.activity_type for a in resubmitted] == ["submit_model_job", "fetch_model_result"]


def test_recorded_refusals_and_cancellations_end_as_they_did() -> None:
    refused = inspect.timeline(_recorded("nsfw_refused").events)
    assert refused.status == "failed" and refused.ending is not None
    assert refused.ending.type == "PhotoRejected"
    cancelled = inspect.timeline(_recorded("cancelled").events)
    assert cancelled.status == "cancelled"
    assert [type(r) for r in cancelled.rows].count(inspect.CancelRequestRow) == 1


T0 = datetime(2030, 1, 1, 12, 0, 0)


def _event(event_id: int, seconds: float, **attributes: Any) -> HistoryEvent:
    event = HistoryEvent(event_id=event_id)
    event.event_time.FromDatetime(T0 + timedelta(seconds=seconds))
    for name, value in attributes.items():
        getattr(event, name).CopyFrom(value)
    return event


def _input(**fields: Any) -> Payloads:
    return Payloads(payloads=DataConverter.default.payload_converter.to_payloads([fields]))


def _app_failure(kind: str, message: str) -> Failure:
    return Failure(message=message, application_failure_info=ApplicationFailureInfo(type=kind))


def _scheduled(event_id: int, seconds: float, activity_id: str, name: str, **fields: Any) -> Any:
    return _event(
        event_id,
        seconds,
        activity_task_scheduled_event_attributes=ActivityTaskScheduledEventAttributes(
            activity_id=activity_id, activity_type=ActivityType(name=name), input=_input(**fields)
        ),
    )


def _started_workflow() -> HistoryEvent:
    return _event(
        1,
        0,
        workflow_execution_started_event_attributes=WorkflowExecutionStartedEventAttributes(
            workflow_type=WorkflowType(name="BitBuddy"),
            workflow_id="wf",
            original_execution_run_id="run-1",
        ),
    )


def test_retries_timeouts_signals_and_a_termination() -> None:
    events = [
        _started_workflow(),
        _scheduled(2, 1, "1", "submit_model_job", step="animate", attempt=2),
        _event(
            3,
            4,
            activity_task_started_event_attributes=ActivityTaskStartedEventAttributes(
                scheduled_event_id=2,
                attempt=3,
                last_failure=_app_failure("ModelProviderUnavailable", "submit answered 503"),
            ),
        ),
        _event(
            4,
            5,
            activity_task_completed_event_attributes=ActivityTaskCompletedEventAttributes(
                scheduled_event_id=2
            ),
        ),
        _scheduled(5, 5, "2", "poll_model_job", step="animate", attempt=2),
        _event(
            6,
            5,
            activity_task_started_event_attributes=ActivityTaskStartedEventAttributes(
                scheduled_event_id=5, attempt=1
            ),
        ),
        _event(
            7,
            15,
            activity_task_timed_out_event_attributes=ActivityTaskTimedOutEventAttributes(
                scheduled_event_id=5,
                failure=Failure(
                    message="activity Heartbeat timeout",
                    timeout_failure_info=TimeoutFailureInfo(
                        timeout_type=TimeoutType.TIMEOUT_TYPE_HEARTBEAT
                    ),
                ),
                retry_state=RetryState.RETRY_STATE_TIMEOUT,
            ),
        ),
        _event(
            8,
            16,
            workflow_execution_signaled_event_attributes=WorkflowExecutionSignaledEventAttributes(
                signal_name="job_done", identity="api"
            ),
        ),
        _event(
            9,
            17,
            workflow_execution_cancel_requested_event_attributes=(
                WorkflowExecutionCancelRequestedEventAttributes(identity="operator")
            ),
        ),
        _event(
            10,
            20,
            workflow_execution_terminated_event_attributes=(
                WorkflowExecutionTerminatedEventAttributes(reason="stuck", identity="operator")
            ),
        ),
    ]
    line = inspect.timeline(events)
    assert (line.workflow_id, line.run_id, line.status) == ("wf", "run-1", "terminated")
    assert line.duration == timedelta(seconds=20)
    assert line.ending == inspect.ErrorInfo("terminated", "stuck (by operator)")
    submit, poll, signal, cancel = line.rows
    assert isinstance(submit, inspect.ActivityRow) and isinstance(poll, inspect.ActivityRow)
    assert (submit.step, submit.resubmission, submit.attempt, submit.outcome) == (
        "animate",
        2,
        3,
        "completed",
    )
    assert submit.at == timedelta(seconds=1) and submit.duration == timedelta(seconds=4)
    assert submit.last_failure == inspect.ErrorInfo(
        "ModelProviderUnavailable", "submit answered 503"
    )
    assert (poll.outcome, poll.timeout, poll.retry_state) == ("timed out", "heartbeat", "timeout")
    assert poll.error == inspect.ErrorInfo("heartbeat timeout", "activity Heartbeat timeout")
    assert signal == inspect.SignalRow("job_done", timedelta(seconds=16), "api")
    assert isinstance(cancel, inspect.CancelRequestRow) and cancel.identity == "operator"


def test_a_running_workflow_shows_its_pending_activity_attempts() -> None:
    events = [
        _started_workflow(),
        _scheduled(2, 1, "7", "transcode", generation_id="g", fps=12),
    ]
    pending = PendingActivityInfo(
        activity_id="7",
        activity_type=ActivityType(name="transcode"),
        state=PendingActivityState.PENDING_ACTIVITY_STATE_STARTED,
        attempt=4,
        last_failure=_app_failure("TranscodeError", "ffmpeg died"),
    )
    line = inspect.timeline(events, run_id="run-2", pending=[pending])
    assert line.status == "running" and line.closed_at is None and line.run_id == "run-2"
    [row] = line.activities()
    assert (row.step, row.outcome, row.attempt, row.duration) == (None, "running", 4, None)
    assert row.last_failure == inspect.ErrorInfo("TranscodeError", "ffmpeg died")


def test_a_history_must_start_with_the_workflow() -> None:
    with pytest.raises(ValueError, match="starts with"):
        inspect.timeline([_scheduled(2, 1, "1", "transcode")])


# --- the command, against the stack --------------------------------------------------------


async def _inspect(
    stack: Stack,
    generation_id: str,
    expected: list[str] = SECTIONS,
    *,
    status: int = 0,
    **env: str,
) -> dict[str, list[str]]:
    """Run ``bitbuddies inspect``; its output by section (a line at the left margin starts
    one), in the order printed."""
    done = await asyncio.to_thread(bitbuddies, stack, "inspect", generation_id, **env)
    print(done.stdout)  # shown when a test fails
    assert done.returncode == status, done.stderr
    sections: dict[str, list[str]] = {}
    current: list[str] = []
    for line in done.stdout.splitlines():
        if line and not line[0].isspace() and not line.startswith("!"):
            name = next((s for s in SECTIONS if line.startswith(s)), line)
            assert name not in sections, f"{name} printed twice"
            current = sections[name] = [line]
        elif line:
            current.append(line)
    assert list(sections) == expected, list(sections)
    return sections


def _entry(section: list[str], kind: str) -> list[str]:
    """A ledger line's words from its kind on: kind, delta, ..."""
    [cells] = [line.split() for line in section[1:] if f" {kind} " in line]
    return cells[cells.index(kind) :]


def _field(section: list[str], name: str) -> str:
    [value] = [line.split(None, 1)[1] for line in section if line.split()[:1] == [name]]
    return value


def _activity_rows(timeline: list[str]) -> list[list[str]]:
    """Each activity row's words: at, took, activity, step (then "(resubmission n)"), attempt,
    outcome; error lines are skipped."""
    rows = []
    for line in timeline[2:]:
        cells = line.lstrip("! ").split()
        if cells and cells[0].startswith("+") and not set(cells[1:3]) & set(NOT_ACTIVITIES):
            rows.append(cells)
    return rows


def _steps_in_order(rows: list[list[str]]) -> list[str]:
    seen: list[str] = []
    for cells in rows:
        step = cells[3] if cells[3] != "-" else cells[2]
        if step not in seen:
            seen.append(step)
    return seen


async def _ended(stack: Stack, generation_id: str) -> str:
    """Wait for the workflow to end (its alert, sent after the settle, included); its run id."""
    client = await Client.connect(stack.cfg.temporal_address)
    handle = client.get_workflow_handle(generation_id)
    with contextlib.suppress(WorkflowFailureError):  # the failed one's
        await asyncio.wait_for(handle.result(), 600)
    return (await handle.describe()).run_id


def _link(generation_id: str, run_id: str) -> str:
    settings = Settings()  # the stack's, from the environment the session set
    return (
        f"{settings.temporal_ui_url}/namespaces/{settings.temporal_namespace}"
        f"/workflows/{generation_id}/{run_id}/history"
    )


async def _request_ids(
    models: httpx.AsyncClient, generation_id: str, *, rejected: bool = False
) -> dict[str, list[str]]:
    """The model server's request ids for a generation's jobs (or, ``rejected``, for the
    submissions it refused), by app."""
    found: dict[str, list[str]] = {}
    for record in await provider_requests(models):
        if generation_id in str(record["arguments"]) and rejected == (
            record["status"] == "REJECTED"
        ):
            found.setdefault(record["app"], []).append(record["request_id"])
    return found


async def _fault(models: httpx.AsyncClient, step: str, kind: str, seconds: float = 0) -> None:
    body = {"app": APPS[step], "kind": kind, "times": 1, "seconds": seconds}
    (await models.post("/_local/faults", json=body)).raise_for_status()


async def test_a_completed_generation_shows_every_step_its_charge_and_its_jobs(
    stack: Stack, http: httpx.AsyncClient, models: httpx.AsyncClient
) -> None:
    # The provider refuses one submission (500): Temporal retries the submit activity.
    await _fault(models, "segment_image", "submit_500")
    user = await signup(http)
    response = await user.generate(photo("astronaut.png"))
    assert response.status_code == 202, response.text
    generation_id = response.json()["id"]
    run_id = await _ended(stack, generation_id)

    out = await _inspect(stack, generation_id)
    generation = out["generation"]
    assert generation[0] == f"generation {generation_id}"
    assert _field(generation, "user") == user.id
    assert _field(generation, "status").split()[0] == "completed"

    workflow = out["workflow"]
    assert _field(workflow, "run") == run_id
    assert _field(workflow, "status").startswith("completed after ")
    assert _field(workflow, "link") == _link(generation_id, run_id)

    rows = _activity_rows(out["timeline"])
    steps = _steps_in_order(rows)
    expected = MODEL_STEPS + (["expand"] if "expand" in steps else []) + LATER_STEPS
    assert steps == [*expected, "transcode", "complete_generation"]
    assert all(cells[-1] == "completed" for cells in rows), rows
    retried = [c for c in rows if c[2] == "submit_model_job" and c[3] == "segment_image"]
    assert [c[-2] for c in retried] == ["2"], rows  # the second attempt went through
    timeline = "\n".join(out["timeline"])
    assert "attempt 1 failed: ModelProviderUnavailable:" in timeline

    assert len(out["ledger"]) == 2 and _entry(out["ledger"], "charge")[:2] == ["charge", "-1"]

    jobs = "\n".join(out["provider jobs"])
    by_app = await _request_ids(models, generation_id)
    assert set(by_app) >= {APPS[s] for s in MODEL_STEPS + LATER_STEPS}
    for app, request_ids in by_app.items():
        for request_id in request_ids:
            assert f"{app}" in jobs and f"request {request_id}" in jobs
    assert len(out["provider jobs"]) - 1 == sum(len(ids) for ids in by_app.values())
    # the refused submission made no job
    [[refused]] = (await _request_ids(models, generation_id, rejected=True)).values()
    assert refused not in jobs
    # every job returned its result: one cost each, at its step's price, and the total
    *job_costs, total = out["costs"][1:]
    assert len(job_costs) == len(out["provider jobs"]) - 1
    for app, request_ids in by_app.items():
        for request_id in request_ids:
            assert any(app in line and f"request {request_id}" in line for line in job_costs)
    assert total.split()[0] == "total" and total.endswith(f"({len(job_costs)} jobs)")
    assert out["alerts"][1:] == ["  none"]


async def test_a_failed_generation_shows_the_failing_step_the_refund_and_the_alert(
    stack: Stack, http: httpx.AsyncClient, models: httpx.AsyncClient
) -> None:
    # cartoonify's job cannot download its input (transient: resubmitted after a
    # backoff), then the resubmitted job fails in the model (permanent: the end).
    await _fault(models, "cartoonify", "download_error")
    await _fault(models, "cartoonify", "error")
    user = await signup(http)
    response = await user.generate(photo("astronaut.png"))
    assert response.status_code == 202, response.text
    generation_id = response.json()["id"]
    run_id = await _ended(stack, generation_id)

    out = await _inspect(stack, generation_id)
    generation = out["generation"]
    assert _field(generation, "user") == user.id
    assert _field(generation, "status").split() == ["failed", "step", "cartoonify"]
    assert _field(generation, "error").startswith("internal: ")

    workflow = out["workflow"]
    assert _field(workflow, "run") == run_id
    assert _field(workflow, "status").startswith("failed after ")
    assert _field(workflow, "ending").startswith("ModelJobFailed: ")
    assert _field(workflow, "link") == _link(generation_id, run_id)

    timeline = out["timeline"]
    rows = _activity_rows(timeline)
    assert _steps_in_order(rows) == MODEL_STEPS  # settling and alerting name the step too
    assert [c[2] for c in rows[-2:]] == ["settle_generation", "send_alert"]
    assert all(c[-2] == "1" for c in rows), rows  # no activity needed a second attempt
    failures = [i for i, line in enumerate(timeline) if line.startswith("!")]
    assert len(failures) == 2, timeline
    first, last = (timeline[i].lstrip("! ").split() for i in failures)
    assert first[3:5] == ["cartoonify", "1"] and first[-1] == "failed"
    assert first[3:] != last[3:] and last[3:7] == ["cartoonify", "(resubmission", "1)", "1"]
    assert last[-1] == "failed"
    assert "error: ModelInputUnavailable: " in timeline[failures[0] + 1]
    assert "error: ModelJobFailed: " in timeline[failures[1] + 1]
    assert "(not retried: non retryable failure)" in timeline[failures[1] + 1]
    # the backoff before the resubmission (Settings.model_resubmit_backoff_seconds)
    [timer] = [line for line in timeline if " timer " in line and " sleep 2.00s " in line]
    assert timer.endswith("fired")
    assert failures[0] < timeline.index(timer) < failures[1]

    ledger_lines = out["ledger"]
    assert _entry(ledger_lines, "charge")[:2] == ["charge", "-1"]
    [charge_id] = [line.split()[0] for line in ledger_lines if " charge " in line]
    assert _entry(ledger_lines, "refund")[:5] == ["refund", "+1", "refund", "of", charge_id]
    assert "reason: internal at cartoonify" in "\n".join(ledger_lines)

    jobs = out["provider jobs"][1:]
    by_app = await _request_ids(models, generation_id)
    assert {app: len(ids) for app, ids in by_app.items()} == {
        APPS["nsfw_filter"]: 1,
        APPS["analyze"]: 1,
        APPS["cartoonify"]: 2,
    }
    assert [line.split()[-4:] for line in jobs] == [
        [step, APPS[step], "request", request_id]
        for step in MODEL_STEPS
        for request_id in by_app[APPS[step]]
    ]

    alerts = out["alerts"]
    kind, _, priority, delivery = alerts[1].split()[-4:]
    # suppressed when the whole suite raised one like it within the dedupe window
    assert (kind, priority) == ("generation_failed", "0") and delivery in ("sent", "suppressed")
    assert alerts[2].strip() == "BitBuddy failed at cartoonify"
    assert alerts[3].split() == ["step", "cartoonify", "error", "ModelJobFailed", "refunded", "yes"]
    assert alerts[4].strip() == _link(generation_id, run_id)


async def test_a_generation_whose_workflow_never_started_still_shows_its_row_and_charge(
    stack: Stack, http: httpx.AsyncClient, db: Pool
) -> None:
    user = await signup(http)
    generation_id = str(await insert_generation(db, uuid.UUID(user.id), charged=True))
    out = await _inspect(stack, generation_id, [s for s in SECTIONS if s != "timeline"])
    assert _field(out["generation"], "status").split() == ["queued", "step", "-"]
    assert out["workflow"][1:] == [
        "  no workflow with this id in Temporal: it never started (or its history is past"
        " the namespace's retention)"
    ]
    assert len(out["ledger"]) == 2 and _entry(out["ledger"], "charge")[:2] == ["charge", "-1"]
    assert out["provider jobs"][1:] == ["  none recorded"]
    assert out["costs"][1:] == ["  none recorded"]


async def test_without_temporal_the_database_still_answers_and_the_exit_is_1(
    stack: Stack, http: httpx.AsyncClient, db: Pool
) -> None:
    user = await signup(http)
    generation_id = str(await insert_generation(db, uuid.UUID(user.id), charged=True))
    out = await _inspect(
        stack,
        generation_id,
        [s for s in SECTIONS if s != "timeline"],
        status=1,
        TEMPORAL_ADDRESS="127.0.0.1:1",  # nothing listens there
    )
    assert out["workflow"][1].startswith("  could not reach Temporal at 127.0.0.1:1: ")
    assert _entry(out["ledger"], "charge")[:2] == ["charge", "-1"]


async def test_a_running_generation_shows_where_it_is(
    stack: Stack, http: httpx.AsyncClient, models: httpx.AsyncClient, db: Pool
) -> None:
    await _fault(models, "animate", "delay", seconds=8)
    user = await signup(http)
    response = await user.generate(photo("astronaut.png"))
    assert response.status_code == 202, response.text
    generation_id = response.json()["id"]

    async def animating() -> bool:
        jobs = await _request_ids(models, generation_id)
        return APPS["animate"] in jobs

    await wait_until(animating, timeout=120)
    out = await _inspect(stack, generation_id)
    assert _field(out["generation"], "status").split() == ["running", "step", "animate"]
    assert _field(out["workflow"], "status").startswith("running  (started ")
    assert not [line for line in out["workflow"] if line.startswith("  ending")]
    rows = _activity_rows(out["timeline"])
    assert _steps_in_order(rows)[-1] == "animate"
    assert "complete_generation" not in "\n".join(out["timeline"])
    await _ended(stack, generation_id)  # nothing left running after the test


def test_an_unknown_id_exits_1_and_a_malformed_one_2(stack: Stack) -> None:
    unknown = str(uuid.uuid4())
    missing = bitbuddies(stack, "inspect", unknown)
    assert missing.returncode == 1
    assert missing.stderr.strip() == f"no generation {unknown}" and missing.stdout == ""
    malformed = bitbuddies(stack, "inspect", "not-a-generation")
    assert malformed.returncode == 2
    assert malformed.stderr.startswith("usage: bitbuddies inspect")
    assert "'not-a-generation' is not a generation id (a UUID)" in malformed.stderr
