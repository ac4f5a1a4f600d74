"""A workflow run's history as a timeline an operator reads (``bitbuddies inspect``): one
row per activity execution, timer, signal, cancellation request and failed workflow
task, in the order the workflow asked for them, and how the run ended.

Pure: ``timeline`` takes the history's events (``handle.fetch_history()``) and, for a
run still going, the pending activities of its description, and does no I/O. Activity
inputs are decoded with the default data converter into plain JSON values: a model
step's input (``ModelStepInput``, ``ModelJob``, ``ReleaseInput``, ``SettleInput``,
``AlertInput``) names its ``step``, and a model step's submission its resubmission
number (``attempt``), so a history recorded by any version of the workflow reads.

Temporal records one start per activity execution, the last attempt's: an activity
retried by its retry policy is one row whose ``attempt`` is the last attempt's number
and whose ``last_failure`` is the failure of the attempt before it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp
from temporalio.api.common.v1 import Payloads
from temporalio.api.enums.v1 import (
    PendingActivityState,
    RetryState,
    TimeoutType,
    WorkflowTaskFailedCause,
)
from temporalio.api.failure.v1 import Failure
from temporalio.api.history.v1 import HistoryEvent
from temporalio.api.workflow.v1 import PendingActivityInfo
from temporalio.converter import DataConverter

WorkflowStatus = Literal[
    "running", "completed", "failed", "cancelled", "terminated", "timed out", "continued as new"
]
ActivityOutcome = Literal["completed", "failed", "timed out", "cancelled", "running", "scheduled"]
TimerOutcome = Literal["fired", "cancelled", "pending"]


@dataclass(frozen=True)
class ErrorInfo:
    """A failure as the operator reads it (``error_info``): its type and its messages."""

    type: str
    message: str


@dataclass
class ActivityRow:
    activity_type: str
    activity_id: str
    step: str | None  # from the input; None for activities that name none (transcode)
    resubmission: int  # a model step's n-th resubmission after a transient failure
    at: timedelta  # scheduled, after the workflow started
    attempt: int = 0  # the last attempt's number (1: the first); 0 when never started
    duration: timedelta | None = None  # scheduled to closed; None while open
    outcome: ActivityOutcome = "scheduled"
    error: ErrorInfo | None = None  # what closed it, when it failed or timed out
    timeout: str | None = None  # which timeout, when it timed out: "start-to-close", ...
    retry_state: str | None = None  # why a failure was not retried: "non-retryable failure"
    last_failure: ErrorInfo | None = None  # the attempt before the last one's failure


@dataclass
class TimerRow:
    timer_id: str
    at: timedelta
    fire_after: timedelta  # what the workflow asked for (a backoff sleep)
    outcome: TimerOutcome = "pending"
    duration: timedelta | None = None  # started to fired or cancelled


@dataclass(frozen=True)
class SignalRow:
    name: str
    at: timedelta
    identity: str


@dataclass(frozen=True)
class CancelRequestRow:
    at: timedelta
    identity: str
    cause: str


@dataclass(frozen=True)
class WorkflowTaskFailureRow:
    """The workflow code itself failed (a nondeterminism error after a deploy, a bug): the
    run stays open and Temporal retries the task until the code is fixed."""

    at: timedelta
    cause: str  # "non deterministic error", "workflow worker unhandled failure", ...
    message: str


Row = ActivityRow | TimerRow | SignalRow | CancelRequestRow | WorkflowTaskFailureRow


@dataclass
class Timeline:
    workflow_id: str
    run_id: str
    workflow_type: str
    started_at: datetime
    status: WorkflowStatus = "running"
    closed_at: datetime | None = None
    ending: ErrorInfo | None = None  # a failed run's failure, a termination's reason, ...
    rows: list[Row] = field(default_factory=list)

    @property
    def duration(self) -> timedelta | None:
        return None if self.closed_at is None else self.closed_at - self.started_at

    def activities(self) -> list[ActivityRow]:
        return [row for row in self.rows if isinstance(row, ActivityRow)]


def timeline(
    events: Sequence[HistoryEvent],
    *,
    workflow_id: str = "",
    run_id: str | None = None,
    pending: Iterable[PendingActivityInfo] = (),
    converter: DataConverter | None = None,
) -> Timeline:
    """The run's timeline from its history (which starts with the run's start). ``run_id``
    defaults to the one the start event records; ``pending``, a running workflow's
    pending activities (its description's), adds their attempts and last failures."""
    if not events or events[0].WhichOneof("attributes") != (
        "workflow_execution_started_event_attributes"
    ):
        raise ValueError("a history starts with the workflow's start")
    converter = converter or DataConverter.default
    first = events[0]
    started = first.workflow_execution_started_event_attributes
    start = _time(first.event_time)
    result = Timeline(
        workflow_id=workflow_id or started.workflow_id,
        run_id=run_id or started.original_execution_run_id,
        workflow_type=started.workflow_type.name,
        started_at=start,
    )
    activities: dict[int, ActivityRow] = {}  # by scheduled event id
    scheduled_at: dict[int, datetime] = {}
    timers: dict[str, TimerRow] = {}
    timer_started: dict[str, datetime] = {}

    for event in events[1:]:
        kind = event.WhichOneof("attributes")
        when = _time(event.event_time)
        at = when - start
        if kind == "activity_task_scheduled_event_attributes":
            attrs = event.activity_task_scheduled_event_attributes
            step, resubmission = _step_of(attrs.input, converter)
            row = ActivityRow(
                activity_type=attrs.activity_type.name,
                activity_id=attrs.activity_id,
                step=step,
                resubmission=resubmission,
                at=at,
            )
            activities[event.event_id] = row
            scheduled_at[event.event_id] = when
            result.rows.append(row)
        elif kind == "activity_task_started_event_attributes":
            started_attrs = event.activity_task_started_event_attributes
            row = activities[started_attrs.scheduled_event_id]
            row.attempt = started_attrs.attempt
            row.outcome = "running"
            if started_attrs.HasField("last_failure"):
                row.last_failure = error_info(started_attrs.last_failure)
        elif kind == "activity_task_completed_event_attributes":
            done = event.activity_task_completed_event_attributes
            _close(activities, scheduled_at, done.scheduled_event_id, when, "completed")
        elif kind == "activity_task_failed_event_attributes":
            failed = event.activity_task_failed_event_attributes
            row = _close(activities, scheduled_at, failed.scheduled_event_id, when, "failed")
            row.error = error_info(failed.failure)
            row.retry_state = _retry_state(failed.retry_state)
        elif kind == "activity_task_timed_out_event_attributes":
            timed_out = event.activity_task_timed_out_event_attributes
            row = _close(activities, scheduled_at, timed_out.scheduled_event_id, when, "timed out")
            row.error = error_info(timed_out.failure)
            row.timeout = _timeout_of(timed_out.failure)
            row.retry_state = _retry_state(timed_out.retry_state)
        elif kind == "activity_task_canceled_event_attributes":
            cancelled = event.activity_task_canceled_event_attributes
            _close(activities, scheduled_at, cancelled.scheduled_event_id, when, "cancelled")
        elif kind == "timer_started_event_attributes":
            timer = event.timer_started_event_attributes
            timers[timer.timer_id] = TimerRow(
                timer_id=timer.timer_id, at=at, fire_after=_duration(timer.start_to_fire_timeout)
            )
            timer_started[timer.timer_id] = when
            result.rows.append(timers[timer.timer_id])
        elif kind == "timer_fired_event_attributes":
            timer_id = event.timer_fired_event_attributes.timer_id
            timers[timer_id].outcome = "fired"
            timers[timer_id].duration = when - timer_started[timer_id]
        elif kind == "timer_canceled_event_attributes":
            timer_id = event.timer_canceled_event_attributes.timer_id
            timers[timer_id].outcome = "cancelled"
            timers[timer_id].duration = when - timer_started[timer_id]
        elif kind == "workflow_execution_signaled_event_attributes":
            signal = event.workflow_execution_signaled_event_attributes
            result.rows.append(SignalRow(signal.signal_name, at, signal.identity))
        elif kind == "workflow_execution_cancel_requested_event_attributes":
            request = event.workflow_execution_cancel_requested_event_attributes
            result.rows.append(CancelRequestRow(at, request.identity, request.cause))
        elif kind == "workflow_task_failed_event_attributes":
            task = event.workflow_task_failed_event_attributes
            if task.cause != WorkflowTaskFailedCause.WORKFLOW_TASK_FAILED_CAUSE_UNHANDLED_COMMAND:
                # (an unhandled command is routine: an event arrived as the task completed)
                cause = WorkflowTaskFailedCause.Name(task.cause)
                result.rows.append(
                    WorkflowTaskFailureRow(
                        at,
                        _enum_words(cause, "WORKFLOW_TASK_FAILED_CAUSE_"),
                        _messages(task.failure),
                    )
                )
        else:
            _ending(result, event, when)

    by_activity_id = {row.activity_id: row for row in activities.values()}
    for info in pending:
        row_or_none = by_activity_id.get(info.activity_id)
        if row_or_none is None or row_or_none.duration is not None:
            continue  # not in this history, or closed since the description was read
        row_or_none.attempt = info.attempt
        row_or_none.outcome = (
            "scheduled"
            if info.state == PendingActivityState.PENDING_ACTIVITY_STATE_SCHEDULED
            else "running"
        )
        if info.HasField("last_failure"):
            row_or_none.last_failure = error_info(info.last_failure)
    return result


def error_info(failure: Failure) -> ErrorInfo:
    """A failure as we raised it: the type of its outermost ApplicationError (ours, e.g.
    ``ModelJobFailed``), or the kind of timeout, and its message, then each cause's type
    and message (``<- FalClientHTTPError: ...``). The wrappers Temporal adds around an
    activity's or child's failure ("Activity task failed") are left out."""
    kind: str | None = None
    parts: list[str] = []
    seen: Failure | None = failure
    while seen is not None:
        info = seen.WhichOneof("failure_info")
        if info not in ("activity_failure_info", "child_workflow_execution_failure_info"):
            name = _failure_type(seen)
            if kind is None:
                kind, part = name, seen.message
            else:
                part = f"{name}: {seen.message}" if seen.message else name
            if part and part not in parts:
                parts.append(part)
        seen = seen.cause if seen.HasField("cause") else None
    return ErrorInfo(type=kind or "failure", message=" <- ".join(parts))


def _failure_type(failure: Failure) -> str:
    info = failure.WhichOneof("failure_info")
    if info == "application_failure_info" and failure.application_failure_info.type:
        return failure.application_failure_info.type
    if info == "timeout_failure_info":
        return f"{_timeout_of(failure)} timeout"
    return {
        "canceled_failure_info": "cancelled",
        "terminated_failure_info": "terminated",
        "server_failure_info": "Temporal server",
    }.get(info or "", "failure")


def _messages(failure: Failure) -> str:
    messages: list[str] = []
    seen: Failure | None = failure
    while seen is not None:
        if seen.message and seen.message not in messages:
            messages.append(seen.message)
        seen = seen.cause if seen.HasField("cause") else None
    return " <- ".join(messages)


def _close(
    activities: dict[int, ActivityRow],
    scheduled_at: dict[int, datetime],
    scheduled_event_id: int,
    when: datetime,
    outcome: ActivityOutcome,
) -> ActivityRow:
    row = activities[scheduled_event_id]
    row.outcome = outcome
    row.duration = when - scheduled_at[scheduled_event_id]
    return row


def _ending(result: Timeline, event: HistoryEvent, when: datetime) -> None:
    """Record how the run ended, if ``event`` ended it."""
    kind = event.WhichOneof("attributes")
    if kind == "workflow_execution_completed_event_attributes":
        result.status = "completed"
    elif kind == "workflow_execution_failed_event_attributes":
        result.status = "failed"
        result.ending = error_info(event.workflow_execution_failed_event_attributes.failure)
    elif kind == "workflow_execution_canceled_event_attributes":
        result.status = "cancelled"
    elif kind == "workflow_execution_terminated_event_attributes":
        terminated = event.workflow_execution_terminated_event_attributes
        result.status = "terminated"
        result.ending = ErrorInfo(
            type="terminated",
            message=f"{terminated.reason or 'no reason given'} (by {terminated.identity or '?'})",
        )
    elif kind == "workflow_execution_timed_out_event_attributes":
        result.status = "timed out"
        result.ending = ErrorInfo(type="timed out", message="the workflow's own timeout passed")
    elif kind == "workflow_execution_continued_as_new_event_attributes":
        continued = event.workflow_execution_continued_as_new_event_attributes
        result.status = "continued as new"
        result.ending = ErrorInfo(
            type="continued as new", message=f"new run {continued.new_execution_run_id}"
        )
    else:
        return
    result.closed_at = when


def _step_of(payloads: Payloads, converter: DataConverter) -> tuple[str | None, int]:
    """The ``step`` an activity's input names, and a submission's resubmission number."""
    try:
        values: list[Any] = converter.payload_converter.from_payloads(list(payloads.payloads))
    except Exception:  # an input this converter cannot read: show the activity anyway
        return None, 0
    first = values[0] if values else None
    if not isinstance(first, dict):
        return None, 0
    step = first.get("step")
    attempt = first.get("attempt")
    return (
        str(step) if step else None,
        attempt if isinstance(attempt, int) and not isinstance(attempt, bool) else 0,
    )


def _timeout_of(failure: Failure) -> str | None:
    seen: Failure | None = failure
    while seen is not None:
        if seen.HasField("timeout_failure_info"):
            name = TimeoutType.Name(seen.timeout_failure_info.timeout_type)
            return _enum_words(name, "TIMEOUT_TYPE_").replace(" ", "-")
        seen = seen.cause if seen.HasField("cause") else None
    return None


def _retry_state(state: RetryState.ValueType) -> str | None:
    """Why Temporal stopped retrying, in words; None when it says nothing."""
    if state in (RetryState.RETRY_STATE_UNSPECIFIED, RetryState.RETRY_STATE_IN_PROGRESS):
        return None
    return _enum_words(RetryState.Name(state), "RETRY_STATE_")


def _enum_words(name: str, prefix: str) -> str:
    return name.removeprefix(prefix).lower().replace("_", " ")


def _time(stamp: Timestamp) -> datetime:
    return stamp.ToDatetime(tzinfo=UTC)


def _duration(duration: Duration) -> timedelta:
    return duration.ToTimedelta()
