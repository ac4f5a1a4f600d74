"""Fake activities for the workflow tier: registered under the contract's activity names,
taking and returning the contract's dataclasses, recording every call.

One set of workers serves every test of a module; each test makes its own ``Fakes``
and registers it under its workflow id (``activity.info().workflow_id`` picks the fake
to answer a call), so tests never see each other's calls.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from temporalio import activity
from temporalio.client import Client
from temporalio.exceptions import ApplicationError

from activities.model_errors import MODEL_JOB_FAILED, MODEL_JOB_LOST
from workflows import contract
from workflows.contract import (
    AlertInput,
    CharacterAssets,
    CompleteInput,
    JobFinished,
    ModelJob,
    ModelOutput,
    ModelStepInput,
    ReleaseInput,
    SettleInput,
    SettleResult,
    TranscodeInput,
)


def _key(generation_id: str, step: str, name: str) -> str:
    return f"generations/{generation_id}/{step}/{name}"


def default_outputs(generation_id: str) -> dict[str, ModelOutput]:
    """What each model step's fetch returns: a clean, usable, full-body photo."""
    g = generation_id
    return {
        "nsfw_filter": ModelOutput(data={"nsfw_probability": 0.02}),
        "analyze": ModelOutput(
            files={"image": _key(g, "analyze", "image.png")},
            data={
                "usable": True,
                "problems": [],
                "faces": [{"x": 10, "y": 20, "w": 30, "h": 40}],
                "full_body": True,
            },
        ),
        "cartoonify": ModelOutput(files={"image": _key(g, "cartoonify", "image.png")}),
        "expand": ModelOutput(
            files={"image": _key(g, "expand", "image.png")},
            data={"face": {"x": 1, "y": 2, "w": 3, "h": 4}},
        ),
        "segment_image": ModelOutput(files={"mask": _key(g, "segment_image", "mask.png")}),
        "animate": ModelOutput(files={"video": _key(g, "animate", "video.mp4")}),
        "segment_video": ModelOutput(
            files={"mask_video": _key(g, "segment_video", "mask_video.mp4")}
        ),
    }


def job_failed(step: str) -> ApplicationError:
    """The provider ran the job and the model failed on it: permanent."""
    return ApplicationError(f"{step}: model failed", "model_error", type=MODEL_JOB_FAILED)


def job_lost(step: str) -> ApplicationError:
    """The provider does not know the job (404): transient, resubmitted."""
    return ApplicationError(f"{step}: job lost", type=MODEL_JOB_LOST, non_retryable=True)


@dataclass
class Call:
    activity: str
    step: str  # the model step, "transcode", "completed", "refund", or ""
    arg: Any
    task_queue: str
    attempt: int  # Temporal's attempt number of this activity execution
    cancelled: bool = False


@dataclass
class _Fault:
    make: Callable[[], BaseException]
    times: int | None  # None: every call


@dataclass
class Fakes:
    generation_id: str
    outputs: dict[str, ModelOutput] = field(default_factory=dict)
    calls: list[Call] = field(default_factory=list)
    _faults: dict[tuple[str, str], _Fault] = field(default_factory=dict)
    _blocks: set[tuple[str, str]] = field(default_factory=set)
    _holds: dict[tuple[str, str], asyncio.Event] = field(default_factory=dict)
    reached: dict[tuple[str, str], asyncio.Event] = field(default_factory=dict)
    # "<activity>:<step>" when a call starts, "<activity>:<step> cancelled" when one ends
    # cancelled, "<activity>:<step> done" when one returns: in the order they happened
    log: list[str] = field(default_factory=list)
    _request_ids: itertools.count[int] = field(default_factory=itertools.count)
    # Whether submit asks the provider for a webhook, and what becomes of it: None (not
    # asked: the workflow polls), "ok" (the webhook signals the workflow while
    # submit is still answering, as a fast job's does; ERROR for ``webhook_errors``),
    # "lost" (never comes).
    webhook: str | None = None
    webhook_errors: set[str] = field(default_factory=set)  # steps whose webhook says ERROR
    webhook_lost: set[str] = field(default_factory=set)  # steps whose webhook never comes
    # What each check of a step answers in turn (True: the job ended well); True after.
    checks: dict[str, list[bool]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.outputs = {**default_outputs(self.generation_id), **self.outputs}

    # --- what a test sets up ---------------------------------------------------------

    def fail(
        self,
        activity_name: str,
        step: str,
        make: Callable[[], BaseException],
        times: int | None = None,
    ) -> None:
        """``activity_name`` raises ``make()`` for ``step`` (its first ``times`` calls)."""
        self._faults[(activity_name, step)] = _Fault(make, times)

    def block(self, activity_name: str, step: str) -> asyncio.Event:
        """``activity_name`` for ``step`` heartbeats until it is cancelled; the event is
        set once it runs."""
        self._blocks.add((activity_name, step))
        return self.reached.setdefault((activity_name, step), asyncio.Event())

    def hold(self, activity_name: str, step: str) -> tuple[asyncio.Event, asyncio.Event]:
        """``activity_name`` for ``step`` waits, without heartbeating (as a database
        transaction in flight does), until the second event is set; the first is set
        once it runs."""
        reached = self.reached.setdefault((activity_name, step), asyncio.Event())
        go = self._holds.setdefault((activity_name, step), asyncio.Event())
        return reached, go

    # --- what a test reads -----------------------------------------------------------

    def of(self, activity_name: str) -> list[Any]:
        return [c.arg for c in self.calls if c.activity == activity_name]

    def sequence(self) -> list[tuple[str, str]]:
        """(activity, step) of every call, in order (see Call.step)."""
        return [(c.activity, c.step) for c in self.calls]

    def model_steps(self) -> list[str]:
        """The steps submitted, in order (one entry per submission)."""
        return [s.step for s in self.of(contract.SUBMIT_MODEL_JOB)]

    # --- the activities' bodies ------------------------------------------------------

    async def run(self, name: str, arg: Any, step: str = "") -> None:
        """Record the call, then raise or block as the test set up."""
        info = activity.info()
        call = Call(name, step, arg, info.task_queue, info.attempt)
        self.calls.append(call)
        label = f"{name}:{step}" if step else name
        self.log.append(label)
        fault = self._faults.get((name, step))
        if fault is not None and (fault.times is None or fault.times > 0):
            if fault.times is not None:
                fault.times -= 1
            raise fault.make()
        if (name, step) in self._holds:
            self.reached[(name, step)].set()
            await self._holds[(name, step)].wait()
        if (name, step) in self._blocks:
            self.reached.setdefault((name, step), asyncio.Event()).set()
            try:
                while True:
                    activity.heartbeat()
                    await asyncio.sleep(0.05)
            except asyncio.CancelledError:
                call.cancelled = True
                self.log.append(f"{label} cancelled")
                raise
        self.log.append(f"{label} done")

    def new_request_id(self, step: str) -> str:
        return f"req-{step}-{next(self._request_ids)}"


class Registry:
    """The fake activities the workers run: each call goes to its workflow's ``Fakes``."""

    def __init__(self, client: Client) -> None:
        self.by_workflow: dict[str, Fakes] = {}
        self.client = client  # signals a workflow as the API does for a webhook

    def add(self, workflow_id: str, fakes: Fakes) -> Fakes:
        self.by_workflow[workflow_id] = fakes
        return fakes

    def _fakes(self) -> Fakes:
        return self.by_workflow[str(activity.info().workflow_id)]

    @activity.defn(name=contract.SUBMIT_MODEL_JOB)
    async def submit_model_job(self, step: ModelStepInput) -> ModelJob:
        fakes = self._fakes()
        await fakes.run(contract.SUBMIT_MODEL_JOB, step, step.step)
        request_id = fakes.new_request_id(step.step)
        if fakes.webhook == "ok" and step.step not in fakes.webhook_lost:
            await self.client.get_workflow_handle(step.generation_id).signal(
                contract.JOB_FINISHED_SIGNAL,
                JobFinished(request_id=request_id, ok=step.step not in fakes.webhook_errors),
            )
        return ModelJob(
            generation_id=step.generation_id,
            user_id=step.user_id,
            step=step.step,
            app=f"fake/{step.step}",
            request_id=request_id,
            idempotency_key=step.idempotency_key,
            message=step.message,
            percent=step.percent,
            attempt=step.attempt,
            webhook=fakes.webhook is not None,
        )

    @activity.defn(name=contract.POLL_MODEL_JOB)
    async def poll_model_job(self, job: ModelJob) -> None:
        await self._fakes().run(contract.POLL_MODEL_JOB, job, job.step)

    @activity.defn(name=contract.CHECK_MODEL_JOB)
    async def check_model_job(self, job: ModelJob) -> bool:
        fakes = self._fakes()
        await fakes.run(contract.CHECK_MODEL_JOB, job, job.step)
        answers = fakes.checks.get(job.step)
        return answers.pop(0) if answers else True

    @activity.defn(name=contract.FETCH_MODEL_RESULT)
    async def fetch_model_result(self, job: ModelJob) -> ModelOutput:
        fakes = self._fakes()
        await fakes.run(contract.FETCH_MODEL_RESULT, job, job.step)
        output = fakes.outputs[job.step]
        return replace(output, files=dict(output.files), data=dict(output.data))

    @activity.defn(name=contract.RELEASE_MODEL_JOB)
    async def release_model_job(self, release: ReleaseInput) -> None:
        await self._fakes().run(contract.RELEASE_MODEL_JOB, release)

    @activity.defn(name=contract.TRANSCODE)
    async def transcode(self, job: TranscodeInput) -> CharacterAssets:
        await self._fakes().run(contract.TRANSCODE, job, contract.TRANSCODE_STEP)
        base = f"characters/{job.character_id}/character"
        return CharacterAssets(
            webm_key=f"{base}.webm",
            webp_key=f"{base}.webp",
            png_key=f"{base}.png",
            width=256,
            height=256,
        )

    @activity.defn(name=contract.COMPLETE_GENERATION)
    async def complete_generation(self, done: CompleteInput) -> None:
        await self._fakes().run(contract.COMPLETE_GENERATION, done, "completed")

    @activity.defn(name=contract.SETTLE_GENERATION)
    async def settle_generation(self, ending: SettleInput) -> SettleResult:
        await self._fakes().run(contract.SETTLE_GENERATION, ending, "settle")
        return SettleResult(refunded=True)

    @activity.defn(name=contract.SEND_ALERT)
    async def send_alert(self, alert: AlertInput) -> None:
        await self._fakes().run(contract.SEND_ALERT, alert)

    def main_activities(self) -> list[Callable[..., Any]]:
        return [
            self.submit_model_job,
            self.poll_model_job,
            self.check_model_job,
            self.fetch_model_result,
            self.release_model_job,
            self.complete_generation,
            self.settle_generation,
            self.send_alert,
        ]

    def media_activities(self) -> list[Callable[..., Any]]:
        return [self.transcode]
