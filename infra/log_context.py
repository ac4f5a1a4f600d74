"""Whose work a worker is doing, on every log line: a Temporal worker interceptor.

While a workflow runs (its run, and each signal, query or update handler) it binds
(infra.logging.log_context) ``workflow_id``, ``run_id``, ``workflow_type``,
``task_queue``, ``generation_id`` and ``user_id``; while an activity runs, the same
(``run_id`` is the workflow's) plus ``activity_type`` and ``attempt``. Any record
emitted meanwhile, by any logger, carries them.

``generation_id`` and ``user_id`` are found generically: attributes of the same names on
the first argument when it is a dataclass (``BitBuddyInput``, ``ModelStepInput``, ...).
The BitBuddy workflow's id is its generation's id, so that is the fallback. A workflow
also hands the two fields to each activity it schedules in a header, so an activity
whose input lacks them (``SettleInput``, ``TranscodeInput``, ``ReleaseInput``) still
says whose work it is. A header is not part of a workflow's commands: adding it changes
nothing on replay (tests/infra/test_log_context.py replays the recorded histories with
it).

In the workflow sandbox: the interceptor's classes come from outside it (the worker
hands them in), and only set a contextvar, read ``workflow.info()`` and add a header,
none of which is a command or reads the clock. ``sandboxed_runner()`` passes this module
and infra.logging through, so workflow code that imports them shares the same contextvar
rather than a re-imported copy.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import temporalio.activity
import temporalio.api.common.v1
import temporalio.converter
import temporalio.workflow
from temporalio.worker import (
    ActivityInboundInterceptor,
    ExecuteActivityInput,
    ExecuteWorkflowInput,
    HandleQueryInput,
    HandleSignalInput,
    HandleUpdateInput,
    Interceptor,
    StartActivityInput,
    StartChildWorkflowInput,
    StartLocalActivityInput,
    WorkflowInboundInterceptor,
    WorkflowInterceptorClassInput,
    WorkflowOutboundInterceptor,
)
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from infra.logging import bind_log_context, log_context, unbind_log_context
from workflows.contract import WORKFLOW_NAME

# The fields a workflow hands to its activities and child workflows.
OWNER_FIELDS = ("generation_id", "user_id")
HEADER = "_bitbuddies-log-context"
_converter = temporalio.converter.PayloadConverter.default


def owner_of(args: Sequence[Any]) -> dict[str, str]:
    """``generation_id`` and ``user_id`` of a call's first argument, when it is a
    dataclass that has them."""
    if not args:
        return {}
    first = args[0]
    if not dataclasses.is_dataclass(first) or isinstance(first, type):
        return {}
    found = {name: getattr(first, name, None) for name in OWNER_FIELDS}
    return {name: str(value) for name, value in found.items() if value not in (None, "")}


def _from_header(headers: Mapping[str, temporalio.api.common.v1.Payload]) -> dict[str, str]:
    payload = headers.get(HEADER)
    if payload is None:
        return {}
    try:
        value = _converter.from_payloads([payload])[0]
    except Exception:  # a header we cannot read says nothing; never fail the task for it
        return {}
    if not isinstance(value, dict):
        return {}
    return {k: str(value[k]) for k in OWNER_FIELDS if value.get(k)}


def _with_owner(
    headers: Mapping[str, temporalio.api.common.v1.Payload], owner: Mapping[str, str]
) -> Mapping[str, temporalio.api.common.v1.Payload]:
    if not owner:
        return headers
    return {**headers, HEADER: _converter.to_payloads([dict(owner)])[0]}


class LogContextInterceptor(Interceptor):
    """Register on every worker (infra/worker.py ``_worker``)."""

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _ActivityInbound(next)

    def workflow_interceptor_class(
        self, input: WorkflowInterceptorClassInput
    ) -> type[WorkflowInboundInterceptor]:
        return _WorkflowInbound


class _ActivityInbound(ActivityInboundInterceptor):
    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        info = temporalio.activity.info()
        fields: dict[str, Any] = {
            "workflow_id": info.workflow_id,
            "run_id": info.workflow_run_id,
            "workflow_type": info.workflow_type,
            "activity_type": info.activity_type,
            "attempt": info.attempt,
            "task_queue": info.task_queue,
        }
        fields.update(_from_header(input.headers))  # from the workflow
        fields.update(owner_of(input.args))  # the input's own, when it has them
        if "generation_id" not in fields and info.workflow_type == WORKFLOW_NAME:
            fields["generation_id"] = info.workflow_id
        _, token = bind_log_context(**fields)
        # Left bound when the activity fails: Temporal logs the failure ("Completing
        # activity as failed", its traceback) after this returns, in this activity's own
        # task, which ends then.
        result = await self.next.execute_activity(input)
        unbind_log_context(token)
        return result


class _WorkflowInbound(WorkflowInboundInterceptor):
    """One per workflow run."""

    def __init__(self, next: WorkflowInboundInterceptor) -> None:
        super().__init__(next)
        self.owner: dict[str, str] = {}

    def init(self, outbound: WorkflowOutboundInterceptor) -> None:
        super().init(_WorkflowOutbound(outbound, self))

    def _fields(self) -> dict[str, Any]:
        info = temporalio.workflow.info()
        owner = dict(self.owner)
        if "generation_id" not in owner and info.workflow_type == WORKFLOW_NAME:
            owner["generation_id"] = info.workflow_id
        return {
            "workflow_id": info.workflow_id,
            "run_id": info.run_id,
            "workflow_type": info.workflow_type,
            "task_queue": info.task_queue,
            **owner,
        }

    async def execute_workflow(self, input: ExecuteWorkflowInput) -> Any:
        self.owner = {**_from_header(input.headers), **owner_of(input.args)}
        with log_context(**self._fields()):
            return await self.next.execute_workflow(input)

    async def handle_signal(self, input: HandleSignalInput) -> None:
        with log_context(**self._fields()):
            await self.next.handle_signal(input)

    async def handle_query(self, input: HandleQueryInput) -> Any:
        with log_context(**self._fields()):
            return await self.next.handle_query(input)

    def handle_update_validator(self, input: HandleUpdateInput) -> None:
        with log_context(**self._fields()):
            self.next.handle_update_validator(input)

    async def handle_update_handler(self, input: HandleUpdateInput) -> Any:
        with log_context(**self._fields()):
            return await self.next.handle_update_handler(input)


class _WorkflowOutbound(WorkflowOutboundInterceptor):
    def __init__(self, next: WorkflowOutboundInterceptor, inbound: _WorkflowInbound) -> None:
        super().__init__(next)
        self.inbound = inbound

    def _owner(self) -> dict[str, str]:
        fields = self.inbound._fields()
        return {k: str(fields[k]) for k in OWNER_FIELDS if fields.get(k)}

    def start_activity(self, input: StartActivityInput) -> temporalio.workflow.ActivityHandle[Any]:
        input.headers = _with_owner(input.headers, self._owner())
        return self.next.start_activity(input)

    def start_local_activity(
        self, input: StartLocalActivityInput
    ) -> temporalio.workflow.ActivityHandle[Any]:
        input.headers = _with_owner(input.headers, self._owner())
        return self.next.start_local_activity(input)

    async def start_child_workflow(
        self, input: StartChildWorkflowInput
    ) -> temporalio.workflow.ChildWorkflowHandle[Any, Any]:
        input.headers = _with_owner(input.headers, self._owner())
        return await self.next.start_child_workflow(input)


def sandboxed_runner() -> SandboxedWorkflowRunner:
    """The default sandbox, with the log context's modules passed through."""
    return SandboxedWorkflowRunner(
        restrictions=SandboxRestrictions.default.with_passthrough_modules(
            "infra.logging", "infra.log_context"
        )
    )
