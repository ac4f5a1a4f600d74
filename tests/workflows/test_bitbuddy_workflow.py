"""The BitBuddy workflow's decisions, on Temporal's time-skipping test server: the real
workflow code and a real worker, fake activities (tests/workflows/fakes.py) that record
what the workflow asked for. Backoffs and retry intervals are skipped, so every test
takes a fraction of a second."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import timedelta
from typing import Any

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowExecutionStatus, WorkflowFailureError, WorkflowHandle
from temporalio.exceptions import ActivityError, ApplicationError, CancelledError

from activities.model_errors import (
    MODEL_INPUT_UNAVAILABLE,
    MODEL_PROVIDER_UNAVAILABLE,
    MODEL_REQUEST_REJECTED,
)
from tests.support.steps import step_names
from tests.workflows.conftest import Workers
from tests.workflows.fakes import Fakes, job_failed, job_lost
from workflows import contract
from workflows.bitbuddy import (
    DEADLINE_PATCH,
    SETTLE_PATCH,
    TRANSIENT_RESUBMIT_PATCH,
    WEBHOOK_PATCH,
    BitBuddyWorkflow,
)
from workflows.contract import (
    MODEL_STEPS,
    POLL_MODEL_JOB,
    SUBMIT_MODEL_JOB,
    BitBuddyInput,
    BitBuddyResult,
    RenderSpec,
    RetrySpec,
)

SUBMIT, POLL, FETCH = SUBMIT_MODEL_JOB, POLL_MODEL_JOB, contract.FETCH_MODEL_RESULT
RELEASE, TRANSCODE = contract.RELEASE_MODEL_JOB, contract.TRANSCODE
COMPLETE, SETTLE = contract.COMPLETE_GENERATION, contract.SETTLE_GENERATION
ALERT = contract.SEND_ALERT
STEPS = {s.name: s for s in MODEL_STEPS}
FULL_BODY = step_names(expand=False)
WITH_EXPAND = step_names(expand=True)
RENDER = RenderSpec(size=256, fps=12, seconds=2.0, nsfw_threshold=0.5)
PROMPT = "a knight in shining armour"
RESULT_TIMEOUT = 20  # seconds of wall time; each test takes far less


async def start(
    workers: Workers,
    fakes: Fakes | None = None,
    *,
    retry: RetrySpec | None = None,
    render: RenderSpec = RENDER,
) -> tuple[WorkflowHandle[Any, Any], Fakes]:
    generation_id = fakes.generation_id if fakes else str(uuid.uuid4())
    fakes = workers.registry.add(generation_id, fakes or Fakes(generation_id))
    job = BitBuddyInput(
        generation_id=generation_id,
        user_id=str(uuid.uuid4()),
        prompt=PROMPT,
        photo_key=f"generations/{generation_id}/input/photo.png",
        render=render,
        media_task_queue=workers.media_task_queue,
        retry=retry or RetrySpec(resubmits=3, backoff_seconds=2.0),
    )
    handle = await workers.env.client.start_workflow(
        BitBuddyWorkflow.run,
        job,
        id=generation_id,
        task_queue=workers.task_queue,
        execution_timeout=timedelta(days=2),
    )
    return handle, fakes


def new_fakes(**outputs: Any) -> Fakes:
    """Fakes whose model steps answer the defaults, but for ``outputs`` (step -> data
    merged into that step's default data)."""
    fakes = Fakes(str(uuid.uuid4()))
    for step, data in outputs.items():
        fakes.outputs[step].data.update(data)
    return fakes


async def result(handle: WorkflowHandle[Any, Any]) -> BitBuddyResult:
    out: BitBuddyResult = await asyncio.wait_for(handle.result(), RESULT_TIMEOUT)
    return out


async def failure(handle: WorkflowHandle[Any, Any]) -> BaseException:
    """The cause of the workflow's failure (or cancellation)."""
    with pytest.raises(WorkflowFailureError) as raised:
        await result(handle)
    cause = raised.value.cause
    assert cause is not None
    return cause


def model_calls(steps: list[str]) -> list[tuple[str, str]]:
    return [(activity, step) for step in steps for activity in (SUBMIT, POLL, FETCH)]


async def markers(handle: WorkflowHandle[Any, Any]) -> list[str]:
    history = await handle.fetch_history()
    return [
        str(e.marker_recorded_event_attributes)
        for e in history.events
        if e.HasField("marker_recorded_event_attributes")
    ]


async def patches(handle: WorkflowHandle[Any, Any]) -> list[str]:
    """The workflow's patches its history marks, in the order they were first consulted."""
    known = (DEADLINE_PATCH, TRANSIENT_RESUBMIT_PATCH, SETTLE_PATCH, WEBHOOK_PATCH)
    return [p for m in await markers(handle) for p in known if p in m]


async def timers(handle: WorkflowHandle[Any, Any]) -> list[timedelta]:
    history = await handle.fetch_history()
    return [
        e.timer_started_event_attributes.start_to_fire_timeout.ToTimedelta()
        for e in history.events
        if e.HasField("timer_started_event_attributes")
    ]


async def wait_until(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


def assert_refunded_once(fakes: Fakes, reason_prefix: str) -> None:
    """Settled once (the settle activity refunds, records and ends the log together),
    under a key of the workflow's own (a workflow.uuid4())."""
    [settle] = fakes.of(SETTLE)
    assert settle.generation_id == fakes.generation_id
    assert uuid.UUID(settle.settle_id).version == 4
    assert settle.reason.startswith(reason_prefix), settle.reason


def assert_released(fakes: Fakes, step: str, *, request_id: bool = True) -> None:
    """``step``'s one submission was released: the permit and the job given back."""
    [submitted] = [s for s in fakes.of(SUBMIT) if s.step == step]
    jobs = [j for j in fakes.of(POLL) if j.step == step]
    releases = [r for r in fakes.of(RELEASE) if r.idempotency_key == submitted.idempotency_key]
    assert len(releases) == 1, fakes.of(RELEASE)
    assert releases[0].step == step and not releases[0].app  # the adapter picks the app
    assert releases[0].request_id == (jobs[0].request_id if request_id else None)


# --- the happy path ----------------------------------------------------------------


async def test_a_generation_runs_every_step_in_order_and_completes(workers: Workers) -> None:
    handle, fakes = await start(workers)
    done = await result(handle)

    assert fakes.sequence() == [
        *model_calls(FULL_BODY),
        (TRANSCODE, "transcode"),
        (COMPLETE, "completed"),
    ]
    assert not fakes.of(SETTLE) and not fakes.of(ALERT)
    assert not fakes.of(RELEASE)  # fetch releases a finished job's permit itself
    g, out = fakes.generation_id, fakes.outputs
    submits = {s.step: s for s in fakes.of(SUBMIT)}
    photo = f"generations/{g}/input/photo.png"
    face = out["analyze"].data["faces"][0]
    cartoon, mask = out["cartoonify"].files["image"], out["segment_image"].files["mask"]
    # Each step's inputs, by role and in our words: no provider's app or argument names.
    assert {step: (s.files, s.params) for step, s in submits.items()} == {
        "nsfw_filter": ({"image": photo}, {}),
        "analyze": ({"image": photo}, {"size": 256}),
        "cartoonify": (
            {"image": out["analyze"].files["image"]},
            {"prompt": PROMPT, "size": 256, "face": face},
        ),
        "segment_image": ({"image": cartoon}, {"size": 256, "face": face}),
        "animate": (
            {"image": cartoon, "mask": mask},
            {"prompt": PROMPT, "fps": 12, "seconds": 2.0},
        ),
        "segment_video": ({"video": out["animate"].files["video"]}, {"fps": 12}),
    }
    for step, s in submits.items():
        assert (s.message, s.percent) == (STEPS[step].message, STEPS[step].percent)
        assert s.generation_id == g and s.attempt == 0
    assert len({s.idempotency_key for s in submits.values()}) == len(submits)
    # poll and fetch work on the job submit returned
    assert fakes.of(POLL) == fakes.of(FETCH)
    assert [j.idempotency_key for j in fakes.of(POLL)] == [
        s.idempotency_key for s in fakes.of(SUBMIT)
    ]

    [transcode_call] = [c for c in fakes.calls if c.activity == TRANSCODE]
    assert transcode_call.task_queue == workers.media_task_queue != contract.MEDIA_TASK_QUEUE
    transcode = transcode_call.arg
    assert transcode.video_key == out["animate"].files["video"]
    assert transcode.mask_key == out["segment_video"].files["mask_video"]
    assert (transcode.fps, transcode.percent) == (12, contract.TRANSCODE_PERCENT)
    [complete] = fakes.of(COMPLETE)
    assert complete.character_id == transcode.character_id == done.character_id
    assert (complete.generation_id, complete.prompt) == (g, PROMPT)
    assert complete.assets.webm_key == f"characters/{done.character_id}/character.webm"
    assert uuid.UUID(done.character_id)

    status = await handle.query(BitBuddyWorkflow.status)
    assert (status.step, status.percent) == ("completed", 100)
    # No transient failure, no webhook: only the deadline's patch is consulted (at the
    # start), so past it this history is what the code before those patches recorded.
    assert await patches(handle) == [DEADLINE_PATCH]
    assert len(await markers(handle)) == 1


async def test_a_photo_cut_off_at_the_waist_gets_a_second_pass_and_uses_its_image(
    workers: Workers,
) -> None:
    handle, fakes = await start(workers, new_fakes(analyze={"full_body": False}))
    await result(handle)

    assert fakes.sequence() == [
        *model_calls(WITH_EXPAND),
        (TRANSCODE, "transcode"),
        (COMPLETE, "completed"),
    ]
    out = fakes.outputs
    submits = {s.step: s for s in fakes.of(SUBMIT)}
    face = out["analyze"].data["faces"][0]
    expanded, new_face = out["expand"].files["image"], out["expand"].data["face"]
    assert submits["expand"].files == {"image": out["cartoonify"].files["image"]}
    assert submits["expand"].params == {"prompt": PROMPT, "size": 256, "face": face}
    # Everything after uses the expanded drawing and the face found on it.
    assert submits["segment_image"].files == {"image": expanded}
    assert submits["segment_image"].params["face"] == new_face
    assert submits["animate"].files["image"] == expanded


async def test_a_second_pass_that_finds_no_face_keeps_the_first_one(workers: Workers) -> None:
    fakes = new_fakes(analyze={"full_body": False})
    fakes.outputs["expand"].data.pop("face")
    handle, fakes = await start(workers, fakes)
    await result(handle)
    [segment] = [s for s in fakes.of(SUBMIT) if s.step == "segment_image"]
    assert segment.params["face"] == fakes.outputs["analyze"].data["faces"][0]


async def test_a_photo_with_no_face_is_drawn_without_one(workers: Workers) -> None:
    handle, fakes = await start(workers, new_fakes(analyze={"faces": []}))
    await result(handle)
    submits = {s.step: s for s in fakes.of(SUBMIT)}
    assert submits["cartoonify"].params["face"] is None
    assert submits["segment_image"].params["face"] is None


# --- refused photos ----------------------------------------------------------------


@pytest.mark.parametrize("probability", [0.97, 0.5], ids=["over", "at-threshold"])
async def test_an_nsfw_photo_is_refused_and_refunded_once_without_an_alert(
    workers: Workers, probability: float
) -> None:
    handle, fakes = await start(workers, new_fakes(nsfw_filter={"nsfw_probability": probability}))
    cause = await failure(handle)

    assert isinstance(cause, ApplicationError) and cause.type == contract.PHOTO_REJECTED
    assert cause.non_retryable and list(cause.details) == ["nsfw"]
    assert fakes.model_steps() == ["nsfw_filter"]
    assert fakes.sequence()[3:] == [(SETTLE, "settle")]
    assert_refunded_once(fakes, "nsfw at nsfw_filter: ")
    [fail] = fakes.of(SETTLE)
    assert fail.status == "failed" and fail.error_code == "nsfw"
    assert fail.message == contract.NSFW_REFUSED  # the settle adds "refunded" once it is
    assert (fail.step, fail.percent) == ("nsfw_filter", 0)
    assert not fakes.of(ALERT) and not fakes.of(RELEASE)


async def test_a_photo_just_under_the_nsfw_threshold_goes_through(workers: Workers) -> None:
    handle, fakes = await start(workers, new_fakes(nsfw_filter={"nsfw_probability": 0.49}))
    await result(handle)
    assert fakes.model_steps() == FULL_BODY and not fakes.of(SETTLE)


@pytest.mark.parametrize(
    ("problems", "message"),
    [
        (
            ["The photo is too dark.", "No face was found."],
            "This photo can't be used. The photo is too dark. No face was found.",
        ),
        ([], "This photo can't be used."),
        (None, "This photo can't be used."),
    ],
    ids=["problems", "none-listed", "null"],
)
async def test_an_unusable_photo_is_refused_with_its_problems(
    workers: Workers, problems: list[str] | None, message: str
) -> None:
    handle, fakes = await start(workers, new_fakes(analyze={"usable": False, "problems": problems}))
    cause = await failure(handle)

    assert isinstance(cause, ApplicationError) and cause.type == contract.PHOTO_REJECTED
    assert list(cause.details) == ["unusable_photo"]
    assert fakes.model_steps() == ["nsfw_filter", "analyze"]
    assert_refunded_once(fakes, "unusable_photo at analyze: ")
    [fail] = fakes.of(SETTLE)
    assert (fail.status, fail.error_code, fail.step, fail.percent) == (
        "failed",
        "unusable_photo",
        "analyze",
        STEPS["analyze"].percent,
    )
    assert fail.message == message
    assert not fakes.of(ALERT) and not fakes.of(RELEASE)


# --- a model step that fails for good ------------------------------------------------


@pytest.mark.parametrize("activity_name", [POLL, FETCH])
@pytest.mark.parametrize("step", [s.name for s in MODEL_STEPS])
async def test_a_model_step_that_fails_permanently_fails_refunds_once_and_alerts(
    workers: Workers, step: str, activity_name: str
) -> None:
    fakes = new_fakes(analyze={"full_body": step != "expand"})
    fakes.fail(activity_name, step, lambda: job_failed(step))
    handle, fakes = await start(workers, fakes)
    cause = await failure(handle)

    assert isinstance(cause, ActivityError)
    assert isinstance(cause.cause, ApplicationError) and cause.cause.type == "ModelJobFailed"
    order = WITH_EXPAND if step == "expand" else FULL_BODY
    steps = order[: order.index(step) + 1]
    assert fakes.model_steps() == steps  # submitted once: a permanent failure is final
    # one attempt of the activity (non-retryable), then cleanup, refund, record, alert
    assert [c.attempt for c in fakes.calls if c.activity == activity_name][-1] == 1
    tail = [RELEASE, SETTLE, ALERT]
    assert [a for a, _ in fakes.sequence()][-3:] == tail
    assert not fakes.of(TRANSCODE) and not fakes.of(COMPLETE)
    assert_released(fakes, step)
    assert_refunded_once(fakes, f"internal at {step}: ")
    [fail] = fakes.of(SETTLE)
    assert (fail.status, fail.error_code, fail.step, fail.percent) == (
        "failed",
        "internal",
        step,
        STEPS[step].percent,
    )
    assert fail.message == contract.INTERNAL_FAILURE
    [alert] = fakes.of(ALERT)
    assert alert.title == f"BitBuddy failed at {step}"
    assert f"{step}: model failed" in alert.message and alert.message.endswith("token refunded")
    assert (alert.workflow_id, alert.run_id) == (fakes.generation_id, handle.result_run_id)
    assert alert.user_id == fakes.of(SUBMIT)[0].user_id
    # No transient failure: that patch is never consulted; the settle's is.
    assert await patches(handle) == [DEADLINE_PATCH, SETTLE_PATCH]


async def test_a_request_the_provider_refuses_at_submit_is_released_by_its_key(
    workers: Workers,
) -> None:
    fakes = new_fakes()
    fakes.fail(
        SUBMIT,
        "cartoonify",
        lambda: ApplicationError("422", type=MODEL_REQUEST_REJECTED, non_retryable=True),
    )
    handle, fakes = await start(workers, fakes)
    await failure(handle)

    assert fakes.model_steps() == ["nsfw_filter", "analyze", "cartoonify"]
    # No job id came back: release looks the job up by the submission's key.
    [submit] = [s for s in fakes.of(SUBMIT) if s.step == "cartoonify"]
    [release] = fakes.of(RELEASE)
    assert (release.idempotency_key, release.request_id) == (submit.idempotency_key, None)
    assert [f.error_code for f in fakes.of(SETTLE)] == ["internal"] and len(fakes.of(ALERT)) == 1
    assert_refunded_once(fakes, "internal at cartoonify: ")


# --- transient failures: resubmitted ---------------------------------------------------


async def test_a_lost_job_is_resubmitted_under_a_new_key_and_the_generation_completes(
    workers: Workers,
) -> None:
    fakes = new_fakes()
    fakes.fail(POLL, "analyze", lambda: job_lost("analyze"), times=1)
    began = time.monotonic()
    handle, fakes = await start(workers, fakes, retry=RetrySpec(resubmits=3, backoff_seconds=600))
    await result(handle)

    assert time.monotonic() - began < 10  # the 10-minute backoff was skipped
    assert fakes.model_steps() == ["nsfw_filter", "analyze", *FULL_BODY[1:]]
    first, second = [s for s in fakes.of(SUBMIT) if s.step == "analyze"]
    assert first.idempotency_key != second.idempotency_key
    assert (first.attempt, second.attempt) == (0, 1)
    assert second.retry_message == contract.resubmitting(1, 3)
    assert second.files == first.files and second.params == first.params
    # The lost job was released (by its key and id) before the resubmission.
    [release] = fakes.of(RELEASE)
    assert release.idempotency_key == first.idempotency_key
    assert release.request_id == fakes.of(POLL)[1].request_id
    submits_of_analyze = [i for i, e in enumerate(fakes.log) if e == f"{SUBMIT}:analyze"]
    assert submits_of_analyze[0] < fakes.log.index(RELEASE) < submits_of_analyze[1]
    # ...and the resubmitted job's own poll and fetch use the new job.
    assert [j.idempotency_key for j in fakes.of(FETCH) if j.step == "analyze"] == [
        second.idempotency_key
    ]
    assert not fakes.of(SETTLE) and not fakes.of(ALERT)
    assert len(fakes.of(COMPLETE)) == 1
    assert await timers(handle) == [contract.GENERATION_TIMEOUT, timedelta(seconds=600)]
    assert await patches(handle) == [DEADLINE_PATCH, TRANSIENT_RESUBMIT_PATCH]


@pytest.mark.parametrize(
    ("activity_name", "error_type"),
    [(POLL, MODEL_INPUT_UNAVAILABLE), (FETCH, MODEL_INPUT_UNAVAILABLE), (FETCH, "ModelJobLost")],
)
async def test_every_transient_type_from_poll_or_fetch_is_resubmitted(
    workers: Workers, activity_name: str, error_type: str
) -> None:
    fakes = new_fakes()
    fakes.fail(
        activity_name,
        "animate",
        lambda: ApplicationError("transient", type=error_type, non_retryable=True),
        times=1,
    )
    handle, fakes = await start(workers, fakes)
    await result(handle)
    assert fakes.model_steps().count("animate") == 2
    assert [r.idempotency_key for r in fakes.of(RELEASE)] == [
        next(s for s in fakes.of(SUBMIT) if s.step == "animate").idempotency_key
    ]
    assert not fakes.of(SETTLE)


async def test_a_provider_outage_at_fetch_is_retried_by_the_activity_then_resubmitted(
    workers: Workers,
) -> None:
    # ModelProviderUnavailable is retryable: fetch's own policy (5 attempts) runs first;
    # only when those are spent does the workflow resubmit the step.
    fakes = new_fakes()
    fakes.fail(
        FETCH,
        "segment_video",
        lambda: ApplicationError("503", type=MODEL_PROVIDER_UNAVAILABLE),
        times=5,
    )
    handle, fakes = await start(workers, fakes)
    await result(handle)

    fetches = [c for c in fakes.calls if c.activity == FETCH and c.arg.step == "segment_video"]
    assert [c.attempt for c in fetches] == [1, 2, 3, 4, 5, 1]
    assert fakes.model_steps().count("segment_video") == 2
    assert len(fakes.of(RELEASE)) == 1 and not fakes.of(SETTLE)


async def test_a_step_that_keeps_failing_transiently_fails_after_the_last_resubmission(
    workers: Workers,
) -> None:
    fakes = new_fakes()
    fakes.fail(POLL, "cartoonify", lambda: job_lost("cartoonify"))  # every time
    handle, fakes = await start(workers, fakes, retry=RetrySpec(resubmits=2, backoff_seconds=5))
    cause = await failure(handle)

    assert isinstance(cause, ActivityError) and isinstance(cause.cause, ApplicationError)
    assert cause.cause.type == "ModelJobLost"
    assert fakes.model_steps() == ["nsfw_filter", "analyze", *["cartoonify"] * 3]
    submits = [s for s in fakes.of(SUBMIT) if s.step == "cartoonify"]
    assert [s.attempt for s in submits] == [0, 1, 2]
    assert [s.retry_message for s in submits[1:]] == [
        contract.resubmitting(1, 2),
        contract.resubmitting(2, 2),
    ]
    assert len({s.idempotency_key for s in submits}) == 3
    # each attempt's job released once, under its own key
    assert [r.idempotency_key for r in fakes.of(RELEASE)] == [s.idempotency_key for s in submits]
    # the backoff doubles: 5 s, then 10 s
    assert await timers(handle) == [
        contract.GENERATION_TIMEOUT,
        timedelta(seconds=5),
        timedelta(seconds=10),
    ]
    assert_refunded_once(fakes, "internal at cartoonify: ")
    [fail] = fakes.of(SETTLE)
    assert (fail.error_code, fail.step, fail.status) == ("internal", "cartoonify", "failed")
    assert len(fakes.of(ALERT)) == 1
    assert not fakes.of(TRANSCODE)


async def test_with_no_resubmits_allowed_a_transient_failure_fails_at_once(
    workers: Workers,
) -> None:
    fakes = new_fakes()
    fakes.fail(POLL, "analyze", lambda: job_lost("analyze"), times=1)
    handle, fakes = await start(workers, fakes, retry=RetrySpec(resubmits=0, backoff_seconds=1))
    await failure(handle)
    assert fakes.model_steps() == ["nsfw_filter", "analyze"]
    assert [f.error_code for f in fakes.of(SETTLE)] == ["internal"]
    assert await timers(handle) == [contract.GENERATION_TIMEOUT] and await patches(handle) == [
        DEADLINE_PATCH,
        SETTLE_PATCH,
    ]


# --- cancellation ----------------------------------------------------------------------


async def cancellation_handled(handle: WorkflowHandle[Any, Any]) -> None:
    """Cancel the workflow and wait until a workflow task has run since the request."""
    await handle.cancel()
    deadline = time.monotonic() + RESULT_TIMEOUT
    while True:
        types = [e.event_type for e in (await handle.fetch_history()).events]
        if EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CANCEL_REQUESTED in types:
            requested = types.index(EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CANCEL_REQUESTED)
            if EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED in types[requested:]:
                return
        assert time.monotonic() < deadline, "the cancellation was never handled"
        await asyncio.sleep(0.01)


async def outcome(handle: WorkflowHandle[Any, Any]) -> BitBuddyResult | BaseException:
    try:
        return await result(handle)
    except WorkflowFailureError as err:
        return err.cause or err


async def cancel_at(
    workers: Workers, fakes: Fakes, activity_name: str, step: str
) -> WorkflowHandle[Any, Any]:
    reached = fakes.block(activity_name, step)
    handle, _ = await start(workers, fakes)
    await asyncio.wait_for(reached.wait(), RESULT_TIMEOUT)
    await handle.cancel()
    cause = await failure(handle)
    assert isinstance(cause, CancelledError)
    description = await handle.describe()
    assert description.status == WorkflowExecutionStatus.CANCELED
    return handle


def assert_cancelled_at(fakes: Fakes, step: str, percent: int) -> None:
    assert_refunded_once(fakes, f"cancelled at {step}: ")
    [fail] = fakes.of(SETTLE)
    assert (fail.status, fail.error_code, fail.message) == (
        "cancelled",
        "cancelled",
        contract.CANCELLED,
    )
    assert (fail.step, fail.percent) == (step, percent)
    assert not fakes.of(ALERT)  # the user asked for it: nothing for the owner to look at
    assert not fakes.of(COMPLETE)


async def test_a_generation_cancelled_while_its_job_runs_stops_it_and_refunds(
    isolated_workers: Workers,
) -> None:
    fakes = new_fakes()
    reached = fakes.block(POLL, "animate")
    handle, fakes = await start(isolated_workers, fakes)
    await asyncio.wait_for(reached.wait(), RESULT_TIMEOUT)
    status = await handle.query(BitBuddyWorkflow.status)
    assert (status.step, status.percent) == ("animate", STEPS["animate"].percent)
    await handle.cancel()
    assert isinstance(await failure(handle), CancelledError)

    assert fakes.model_steps() == FULL_BODY[: FULL_BODY.index("animate") + 1]
    assert_released(fakes, "animate")
    assert [a for a, _ in fakes.sequence()][-2:] == [RELEASE, SETTLE]
    assert_cancelled_at(fakes, "animate", STEPS["animate"].percent)
    assert not fakes.of(TRANSCODE)
    # The poll itself learns of it at its next heartbeat (the workflow does not wait).
    await wait_until(lambda: f"{POLL}:animate cancelled" in fakes.log)


async def test_a_generation_cancelled_while_submitting_waits_for_submit_then_releases(
    isolated_workers: Workers,
) -> None:
    fakes = new_fakes()
    await cancel_at(isolated_workers, fakes, SUBMIT, "cartoonify")
    # WAIT_CANCELLATION_COMPLETED: submit has really stopped before cleanup looks for the
    # job it may have created - by its key, since no job id came back.
    assert fakes.log.index(f"{SUBMIT}:cartoonify cancelled") < fakes.log.index(RELEASE)
    assert_released(fakes, "cartoonify", request_id=False)
    assert_cancelled_at(fakes, "cartoonify", STEPS["cartoonify"].percent)
    assert not [j for j in fakes.of(POLL) if j.step == "cartoonify"]


async def test_a_generation_cancelled_during_a_resubmission_backoff_refunds(
    isolated_workers: Workers,
) -> None:
    fakes = new_fakes()
    fakes.fail(POLL, "analyze", lambda: job_lost("analyze"), times=1)
    handle, fakes = await start(
        isolated_workers, fakes, retry=RetrySpec(resubmits=3, backoff_seconds=3600)
    )
    # Without a result() waiting the test server does not skip time: the hour-long
    # backoff timer is still pending when the cancellation comes.
    await wait_until(lambda: RELEASE in fakes.log)
    deadline = time.monotonic() + 10
    while not await timers(handle):
        assert time.monotonic() < deadline, "no backoff timer"
        await asyncio.sleep(0.01)
    await handle.cancel()
    assert isinstance(await failure(handle), CancelledError)

    assert fakes.model_steps() == ["nsfw_filter", "analyze"]  # never resubmitted
    assert len(fakes.of(RELEASE)) == 1  # the lost job's cleanup, before the backoff
    assert_cancelled_at(fakes, "analyze", STEPS["analyze"].percent)


async def test_a_cancellation_during_the_release_before_a_resubmission_cancels(
    isolated_workers: Workers,
) -> None:
    fakes = new_fakes()
    fakes.fail(POLL, "analyze", lambda: job_lost("analyze"), times=1)
    reached, released = fakes.hold(RELEASE, "")
    handle, fakes = await start(isolated_workers, fakes)
    await asyncio.wait_for(reached.wait(), RESULT_TIMEOUT)
    await cancellation_handled(handle)
    released.set()
    cause = await outcome(handle)

    assert isinstance(cause, CancelledError), cause
    assert fakes.model_steps() == ["nsfw_filter", "analyze"]  # no resubmission after it
    assert_cancelled_at(fakes, "analyze", STEPS["analyze"].percent)
    await wait_until(lambda: f"{RELEASE} done" in fakes.log)


async def test_a_generation_cancelled_while_transcoding_refunds_without_a_release(
    isolated_workers: Workers,
) -> None:
    fakes = new_fakes()
    await cancel_at(isolated_workers, fakes, TRANSCODE, "transcode")
    assert fakes.model_steps() == FULL_BODY
    assert not fakes.of(RELEASE)  # every model step's result was fetched
    assert_cancelled_at(fakes, "transcode", contract.TRANSCODE_PERCENT)


async def test_a_cancellation_while_the_character_is_recorded_does_not_also_refund(
    isolated_workers: Workers,
) -> None:
    fakes = new_fakes()
    reached, commit = fakes.hold(COMPLETE, "completed")
    handle, fakes = await start(isolated_workers, fakes)
    await asyncio.wait_for(reached.wait(), RESULT_TIMEOUT)
    await cancellation_handled(handle)
    commit.set()  # the transaction commits: the character is the user's
    await outcome(handle)
    await wait_until(lambda: f"{COMPLETE}:completed done" in fakes.log)

    assert not fakes.of(SETTLE), "delivered and refunded, or recorded as cancelled"


async def test_a_cancellation_during_the_settle_still_records_the_refusal(
    isolated_workers: Workers,
) -> None:
    fakes = new_fakes(nsfw_filter={"nsfw_probability": 0.9})
    reached, refunded = fakes.hold(SETTLE, "settle")
    handle, fakes = await start(isolated_workers, fakes)
    await asyncio.wait_for(reached.wait(), RESULT_TIMEOUT)
    await cancellation_handled(handle)
    refunded.set()
    await outcome(handle)

    assert [f.error_code for f in fakes.of(SETTLE)] == ["nsfw"]
    assert await patches(handle) == [DEADLINE_PATCH, SETTLE_PATCH]


# --- a bug in the workflow's own code ------------------------------------------------


async def test_a_malformed_model_result_is_refunded_then_leaves_the_workflow_task_failing(
    isolated_workers: Workers,
) -> None:
    # analyze's data without "usable": a KeyError in workflow code. run() refunds, records
    # and alerts as for any failure, then re-raises; a KeyError is not a Temporal failure,
    # so it fails the workflow *task*: the workflow stays RUNNING, its task retried, until
    # someone fixes the code or terminates it.
    fakes = new_fakes()
    fakes.outputs["analyze"].data.pop("usable")
    handle, fakes = await start(isolated_workers, fakes)
    try:
        await wait_until(lambda: f"{ALERT} done" in fakes.log)
        deadline = time.monotonic() + RESULT_TIMEOUT
        while EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED not in [
            e.event_type for e in (await handle.fetch_history()).events
        ]:
            assert time.monotonic() < deadline, "the workflow task never failed"
            await asyncio.sleep(0.01)
        description = await handle.describe()
        assert description.status == WorkflowExecutionStatus.RUNNING
        assert_refunded_once(fakes, "internal at analyze: KeyError: 'usable'")
        assert [f.error_code for f in fakes.of(SETTLE)] == ["internal"]
        assert len(fakes.of(ALERT)) == 1
    finally:
        await handle.terminate()


# --- last: the shared test server still skips time -----------------------------------


async def test_time_still_skips_on_the_shared_test_server(workers: Workers) -> None:
    """Runs last in this file. A test above whose workflow closed with work in flight
    would have left the shared test server's time-skipping lock held (see
    ``isolated_workers``): this hour-long backoff would then take an hour."""
    fakes = new_fakes()
    fakes.fail(POLL, "analyze", lambda: job_lost("analyze"), times=1)
    handle, fakes = await start(workers, fakes, retry=RetrySpec(resubmits=1, backoff_seconds=3600))
    try:
        await asyncio.wait_for(handle.result(), 10)
    except TimeoutError:
        await handle.terminate()
        pytest.fail(
            "time no longer skips on the shared test server: a test on `workers` left work"
            " in flight when its workflow closed; give it `isolated_workers`"
        )
