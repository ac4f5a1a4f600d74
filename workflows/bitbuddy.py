"""The BitBuddy workflow: orchestration only. Every model call, file, database row and
message is an activity; this code decides order, reacts to outcomes, and makes sure a
charged token ends as a delivered character or exactly one refund.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from datetime import timedelta
from typing import Any, TypeVar

from temporalio import exceptions as temporal_errors
from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError, is_cancelled_exception

with workflow.unsafe.imports_passed_through():
    from activities.model_errors import MODEL_STEP_TIMED_OUT, is_transient
    from workflows import contract
    from workflows.contract import (
        ALERT_OPTIONS,
        ANALYZE,
        ANIMATE,
        CARTOONIFY,
        CHECK_OPTIONS,
        EXPAND,
        FETCH_OPTIONS,
        GENERATION_TIMED_OUT,
        GENERATION_TIMEOUT,
        IMAGE,
        MASK,
        MASK_VIDEO,
        NSFW_FILTER,
        PHOTO_REJECTED,
        RECORD_OPTIONS,
        REFUND_OPTIONS,
        RELEASE_OPTIONS,
        SEGMENT_IMAGE,
        SEGMENT_VIDEO,
        SETTLE_OPTIONS,
        SUBMIT_OPTIONS,
        TIMEOUTS,
        TRANSCODE_OPTIONS,
        TRANSCODE_PERCENT,
        VIDEO,
        BitBuddyInput,
        BitBuddyResult,
        CharacterAssets,
        CompleteInput,
        EndedBadly,
        FailInput,
        GenerationStatus,
        JobFinished,
        ModelJob,
        ModelOutput,
        ModelStepInput,
        RefundInput,
        RefundResult,
        ReleaseInput,
        SettleInput,
        SettleResult,
        Step,
        TranscodeInput,
        poll_options,
    )

# Marks histories recorded by code that resubmits a model step after a transient failure.
# It is consulted only once such a failure has happened, so the command sequence of every
# path without one is unchanged, and a history recorded before (no marker) replays the
# old way: the failure fails the generation.
TRANSIENT_RESUBMIT_PATCH = "transient-resubmit"
# Marks histories recorded by code that settles a generation that did not complete in one
# activity (refund, outcome and terminal event in one transaction). Consulted only on the
# way out of a failure; a history without it refunds and records in two activities.
SETTLE_PATCH = "settle-in-one-activity"
# Marks histories recorded by code that gives the whole generation GENERATION_TIMEOUT
# (a timer at the start): a history without it runs without one.
DEADLINE_PATCH = "generation-deadline"
# Marks histories recorded by code that, when the provider was asked for a webhook,
# waits for it (JOB_FINISHED_SIGNAL) and checks the job once per period instead of
# polling. Consulted only after a submit that asked for a webhook, which no older code did.
WEBHOOK_PATCH = "webhook-then-check"
# Marks histories recorded by code that stops at the next safe point when a cancellation
# was swallowed by an activity finishing at the same moment (a submit answers with the
# job instead of being cancelled). Consulted only once a cancellation was requested.
CANCEL_CHECK_PATCH = "stop-at-swallowed-cancel"


T = TypeVar("T")


async def _uncancelled(call: Awaitable[T]) -> tuple[T, bool]:
    """Await an activity that a cancellation of the workflow must not cut short, as it
    records an outcome (the character, a refund, a failure) or frees what a job held:
    cancelled (TRY_CANCEL), the workflow would go on as if it had not run while it may
    still commit. Returns its result and whether the workflow was cancelled meanwhile."""
    task = asyncio.ensure_future(call)
    cancelled = False
    while True:
        try:
            return await asyncio.shield(task), cancelled
        except asyncio.CancelledError:
            if task.done():
                raise
            cancelled = True


def _cancel_swallowed() -> bool:
    """Whether the workflow was asked to cancel and is still going: an activity that
    finished at the moment the cancellation came (a submit that waits for its cancel to
    complete and answered with its job instead) swallows it, and the workflow would carry
    on. Checked at the safe points between steps, which then cancel after all."""
    return workflow.cancellation_reason() is not None and workflow.patched(CANCEL_CHECK_PATCH)


def _rejected(code: str, message: str) -> ApplicationError:
    return ApplicationError(message, code, type=PHOTO_REJECTED, non_retryable=True)


@workflow.defn(name=contract.WORKFLOW_NAME)
class BitBuddyWorkflow:
    def __init__(self) -> None:
        self._step = "queued"
        self._percent = 0
        # Jobs whose webhook came and has not been acted on yet: request id -> OK.
        self._finished: dict[str, bool] = {}

    @workflow.query
    def status(self) -> GenerationStatus:
        return GenerationStatus(step=self._step, percent=self._percent)

    @workflow.signal(name=contract.JOB_FINISHED_SIGNAL)
    def job_finished(self, finished: JobFinished) -> None:
        """The provider's webhook says a job ended (the API verified its signature). A
        repeat, or one for a job no longer awaited, costs at most one status check."""
        self._finished[finished.request_id] = finished.ok

    @workflow.run
    async def run(self, job: BitBuddyInput) -> BitBuddyResult:
        # The API charged the token before starting us. From here on every way out
        # either delivers the character or refunds - including cancellation, which
        # reaches us as ActivityError(cause=CancelledError) or as CancelledError.
        try:
            if workflow.patched(DEADLINE_PATCH):
                return await self._within_deadline(job)
            return await self._generate(job)
        except (Exception, asyncio.CancelledError) as err:
            await self._settle(job, err)
            raise

    async def _within_deadline(self, job: BitBuddyInput) -> BitBuddyResult:
        """Generate, but give up after GENERATION_TIMEOUT: the step under way is cancelled
        (its cleanup stops the provider's job and frees its permit), then we settle.

        Not asyncio.wait_for: cancelled from outside (the workflow's cancellation), it
        raises CancelledError even when the generation swallowed the cancellation and
        returned, as it does once its character is being recorded, which would refund a
        delivered character. Here the generation's own answer stands.
        """
        generating = asyncio.ensure_future(self._generate(job))
        try:
            await workflow.wait_condition(generating.done, timeout=GENERATION_TIMEOUT)
        except asyncio.CancelledError:
            generating.cancel()  # the workflow's cancellation, passed on to the step
            return await generating
        except TimeoutError:
            generating.cancel()
            try:
                return await generating  # a character recorded meanwhile stands
            except asyncio.CancelledError as err:
                raise ApplicationError(
                    f"no character after {GENERATION_TIMEOUT}",
                    type=GENERATION_TIMED_OUT,
                    non_retryable=True,
                ) from err
        return generating.result()

    async def _generate(self, job: BitBuddyInput) -> BitBuddyResult:
        render = job.render
        photo = {IMAGE: job.photo_key}

        nsfw = await self._model(job, NSFW_FILTER, photo, {})
        if float(nsfw.data["nsfw_probability"]) >= render.nsfw_threshold:
            raise _rejected("nsfw", contract.NSFW_REFUSED)

        analysis = await self._model(job, ANALYZE, photo, {"size": render.size})
        if not analysis.data["usable"]:
            problems = " ".join(analysis.data.get("problems") or [])
            raise _rejected("unusable_photo", f"{contract.UNUSABLE_PHOTO} {problems}".rstrip())
        faces = analysis.data.get("faces") or []
        face: dict[str, Any] | None = faces[0] if faces else None

        drawing = {"prompt": job.prompt, "size": render.size}
        cartoon = await self._model(
            job, CARTOONIFY, {IMAGE: analysis.files[IMAGE]}, {**drawing, "face": face}
        )
        if not analysis.data.get("full_body", True):
            # A second pass draws the body the photo cut off.
            cartoon = await self._model(
                job, EXPAND, {IMAGE: cartoon.files[IMAGE]}, {**drawing, "face": face}
            )
            face = cartoon.data.get("face") or face

        mask = await self._model(
            job, SEGMENT_IMAGE, {IMAGE: cartoon.files[IMAGE]}, {"size": render.size, "face": face}
        )
        animation = await self._model(
            job,
            ANIMATE,
            {IMAGE: cartoon.files[IMAGE], MASK: mask.files[MASK]},
            {"prompt": job.prompt, "fps": render.fps, "seconds": render.seconds},
        )
        video_mask = await self._model(
            job, SEGMENT_VIDEO, {VIDEO: animation.files[VIDEO]}, {"fps": render.fps}
        )

        if _cancel_swallowed():
            raise asyncio.CancelledError()
        character_id = str(workflow.uuid4())
        self._step, self._percent = contract.TRANSCODE_STEP, TRANSCODE_PERCENT
        assets: CharacterAssets = await workflow.execute_activity(
            contract.TRANSCODE,
            TranscodeInput(
                generation_id=job.generation_id,
                character_id=character_id,
                video_key=animation.files[VIDEO],
                mask_key=video_mask.files[MASK_VIDEO],
                fps=render.fps,
                percent=TRANSCODE_PERCENT,
            ),
            task_queue=job.media_task_queue,
            result_type=CharacterAssets,
            **TRANSCODE_OPTIONS,
        )
        await _uncancelled(
            workflow.execute_activity(
                contract.COMPLETE_GENERATION,
                CompleteInput(
                    generation_id=job.generation_id,
                    user_id=job.user_id,
                    character_id=character_id,
                    prompt=job.prompt,
                    assets=assets,
                ),
                **RECORD_OPTIONS,
            )
        )
        self._step, self._percent = "completed", 100
        return BitBuddyResult(character_id=character_id)

    async def _model(
        self, job: BitBuddyInput, step: Step, files: dict[str, str], params: dict[str, Any]
    ) -> ModelOutput:
        """Run a model step; resubmit it (new key, after a backoff) when it failed for a
        transient reason, at most ``job.retry.resubmits`` times. A refusal, a model that
        failed on the input, or a cancellation ends the step at once."""
        if _cancel_swallowed():
            raise asyncio.CancelledError()
        self._step, self._percent = step.name, step.percent
        attempt = 0
        while True:
            try:
                return await self._model_attempt(job, step, files, params, attempt)
            except ActivityError as err:
                if (
                    attempt >= job.retry.resubmits
                    or not is_transient(err)
                    or not workflow.patched(TRANSIENT_RESUBMIT_PATCH)
                ):
                    raise
                attempt += 1
                # Temporal's workflow logger appends workflow_id and run_id itself.
                workflow.logger.warning(
                    "%s failed transiently, resubmitting (%d of %d): %s",
                    step.name,
                    attempt,
                    job.retry.resubmits,
                    _describe(err),
                    extra={"user_id": job.user_id},
                )
                backoff = job.retry.backoff_seconds * 2 ** (attempt - 1)
                await workflow.sleep(timedelta(seconds=backoff))

    async def _model_attempt(
        self,
        job: BitBuddyInput,
        step: Step,
        files: dict[str, str],
        params: dict[str, Any],
        attempt: int,
    ) -> ModelOutput:
        """Submit, poll, fetch. If anything goes wrong before the result is ours, stop the
        provider's job and give back the concurrency permit."""
        key = str(workflow.uuid4())  # a new one per attempt: each is a new submission
        submitted: ModelJob | None = None
        fetched = False
        try:
            job_handle: ModelJob = await workflow.execute_activity(
                contract.SUBMIT_MODEL_JOB,
                ModelStepInput(
                    generation_id=job.generation_id,
                    user_id=job.user_id,
                    step=step.name,
                    files=files,
                    params=params,
                    idempotency_key=key,
                    message=step.message,
                    percent=step.percent,
                    attempt=attempt,
                    retry_message=contract.resubmitting(attempt, job.retry.resubmits),
                ),
                result_type=ModelJob,
                **SUBMIT_OPTIONS,
            )
            submitted = job_handle
            if _cancel_swallowed():  # the job stops in the cleanup below
                raise asyncio.CancelledError()
            if job_handle.webhook and workflow.patched(WEBHOOK_PATCH):
                await self._await_job(job_handle, step)
            else:
                await workflow.execute_activity(
                    contract.POLL_MODEL_JOB, job_handle, **poll_options(step.kind)
                )
            output: ModelOutput = await workflow.execute_activity(
                contract.FETCH_MODEL_RESULT, job_handle, result_type=ModelOutput, **FETCH_OPTIONS
            )
            fetched = True
            return output
        finally:
            if not fetched:
                _, cancelled = await _uncancelled(
                    workflow.execute_activity(
                        contract.RELEASE_MODEL_JOB,
                        ReleaseInput(
                            idempotency_key=key,
                            request_id=submitted.request_id if submitted else None,
                            step=step.name,
                        ),
                        **RELEASE_OPTIONS,
                    )
                )
                if cancelled:  # while releasing: not to be lost before a resubmission
                    raise asyncio.CancelledError()

    async def _await_job(self, job: ModelJob, step: Step) -> None:
        """Wait for the job to end: its webhook, or else one status check per period.

        The provider calls our webhook when the job ends, and the API signals us; we then
        fetch at once, with no polling activity at all. Without a webhook within the
        period (lost, or the API was down) the job is checked once and we wait again, so
        a lost webhook costs a period of latency, never the generation. An ERROR webhook
        is checked too: the check reads the error and fails the step with its type.
        """
        timeouts = TIMEOUTS[step.kind]
        deadline = workflow.now() + timeouts.allowance
        while True:
            with contextlib.suppress(TimeoutError):  # no webhook in this period
                await workflow.wait_condition(
                    lambda: job.request_id in self._finished, timeout=timeouts.webhook_wait
                )
            if self._finished.pop(job.request_id, False):
                return
            ended: bool = await workflow.execute_activity(
                contract.CHECK_MODEL_JOB, job, result_type=bool, **CHECK_OPTIONS
            )
            if ended:
                return
            if workflow.now() >= deadline:
                raise ApplicationError(
                    f"{job.app} job {job.request_id}: no result within {timeouts.allowance}",
                    type=MODEL_STEP_TIMED_OUT,
                    non_retryable=True,
                )

    async def _settle(self, job: BitBuddyInput, err: BaseException) -> None:
        """Refund, record the ending and announce it (one activity, one transaction),
        then alert the owner when the failure was ours."""
        cancelled = isinstance(err, asyncio.CancelledError) or is_cancelled_exception(err)
        rejection = _rejection(err)
        if cancelled:
            code, message = "cancelled", contract.CANCELLED
        elif rejection is not None:
            code, message = rejection
        elif _timed_out(err):
            code, message = "timed_out", contract.TOOK_TOO_LONG
        else:
            code, message = "internal", contract.INTERNAL_FAILURE
        status: EndedBadly = "cancelled" if cancelled else "failed"
        reason = f"{code} at {self._step}: {_describe(err)}"
        if workflow.patched(SETTLE_PATCH):
            settled, _ = await _uncancelled(
                workflow.execute_activity(
                    contract.SETTLE_GENERATION,
                    SettleInput(
                        generation_id=job.generation_id,
                        status=status,
                        step=self._step,
                        error_code=code,
                        message=message,
                        percent=self._percent,
                        settle_id=str(workflow.uuid4()),
                        reason=reason,
                    ),
                    result_type=SettleResult,
                    **SETTLE_OPTIONS,
                )
            )
            refunded = settled.refunded
        else:
            refunded = await self._refund_then_record(job, status, code, message, reason)
        if code in ("internal", "timed_out"):
            info = workflow.info()
            await _uncancelled(
                workflow.execute_activity(
                    contract.SEND_ALERT,
                    contract.failure_alert(
                        what="stuck" if code == "timed_out" else "failed",
                        step=self._step,
                        detail=_describe(err),
                        refunded=refunded,
                        workflow_id=info.workflow_id,
                        run_id=info.run_id,
                        user_id=job.user_id,
                    ),
                    **ALERT_OPTIONS,
                )
            )

    async def _refund_then_record(
        self, job: BitBuddyInput, status: EndedBadly, code: str, message: str, reason: str
    ) -> bool:
        """The settle of histories recorded before SETTLE_PATCH: two activities (kept
        registered in activities/legacy.py). Remove with the patch."""
        refund: RefundResult
        refund, _ = await _uncancelled(
            workflow.execute_activity(
                contract.REFUND_TOKEN,
                RefundInput(
                    generation_id=job.generation_id,
                    idempotency_key=f"refund:{workflow.uuid4()}",
                    reason=reason,
                ),
                result_type=RefundResult,
                **REFUND_OPTIONS,
            )
        )
        await _uncancelled(
            workflow.execute_activity(
                contract.FAIL_GENERATION,
                FailInput(
                    generation_id=job.generation_id,
                    status=status,
                    step=self._step,
                    error_code=code,
                    message=contract.settled_message(message, refunded=refund.refunded),
                    refunded=refund.refunded,
                    percent=self._percent,
                ),
                **RECORD_OPTIONS,
            )
        )
        return refund.refunded


def _rejection(err: BaseException) -> tuple[str, str] | None:
    """(code, user-facing message) when the photo itself was refused."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, ApplicationError) and seen.type == PHOTO_REJECTED:
            code = str(seen.details[0]) if seen.details else "rejected"
            return code, seen.message
        seen = seen.__cause__
    return None


def _timed_out(err: BaseException) -> bool:
    """Whether the generation ended because something took too long: the whole
    generation's deadline, a step's allowance at the provider, or an activity's own
    timeout (a transcode that never finished)."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, temporal_errors.TimeoutError):  # an activity's own timeout
            return True
        if isinstance(seen, ApplicationError) and seen.type in (
            GENERATION_TIMED_OUT,
            MODEL_STEP_TIMED_OUT,
        ):
            return True
        seen = seen.__cause__
    return False


def _describe(err: BaseException) -> str:
    """The innermost cause, which names what actually broke."""
    parts = []
    seen: BaseException | None = err
    while seen is not None:
        parts.append(f"{type(seen).__name__}: {seen}")
        seen = seen.__cause__
    return " <- ".join(parts)[:1000]
