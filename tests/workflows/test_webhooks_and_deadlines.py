"""The workflow tier: provider webhooks with a once-per-period check as the fallback, each
step's allowance by kind of model, and the whole generation's deadline.

The real BitBuddy workflow on the time-skipping test server, with fake activities: a
fake submit that "asks for a webhook" signals the workflow as the API does when the
provider's signed webhook arrives (before submit has even answered, as for a fast job).
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio.exceptions import ActivityError, ApplicationError, CancelledError

from activities.model_errors import MODEL_STEP_TIMED_OUT
from tests.workflows.conftest import Workers
from tests.workflows.fakes import Fakes, job_failed, job_lost
from tests.workflows.test_bitbuddy_workflow import (
    ALERT,
    FETCH,
    POLL,
    RELEASE,
    SETTLE,
    STEPS,
    SUBMIT,
    assert_cancelled_at,
    assert_refunded_once,
    cancellation_handled,
    failure,
    new_fakes,
    patches,
    result,
    start,
    timers,
    wait_until,
)
from workflows import contract
from workflows.bitbuddy import DEADLINE_PATCH, WEBHOOK_PATCH
from workflows.contract import GENERATION_TIMED_OUT, GENERATION_TIMEOUT, TIMEOUTS, RetrySpec

CHECK = contract.CHECK_MODEL_JOB


def _waits(steps: list[str]) -> list[timedelta]:
    return [TIMEOUTS[STEPS[s].kind].webhook_wait for s in steps]


async def test_with_webhooks_no_step_polls_or_checks(workers: Workers) -> None:
    fakes = new_fakes()
    fakes.webhook = "ok"
    handle, fakes = await start(workers, fakes)
    await result(handle)

    steps = fakes.model_steps()
    assert [j.step for j in fakes.of(FETCH)] == steps
    assert not fakes.of(POLL) and not fakes.of(CHECK)
    assert await patches(handle) == [DEADLINE_PATCH, WEBHOOK_PATCH]
    # the webhook was in before the wait began: no step waited out a period
    assert await timers(handle) == [GENERATION_TIMEOUT]


async def test_a_lost_webhook_costs_one_period_and_a_check_never_the_generation(
    workers: Workers,
) -> None:
    fakes = new_fakes()
    fakes.webhook = "lost"
    handle, fakes = await start(workers, fakes)
    await result(handle)

    steps = fakes.model_steps()
    assert [j.step for j in fakes.of(CHECK)] == steps  # one check per step
    assert [j.step for j in fakes.of(FETCH)] == steps
    assert not fakes.of(POLL)
    # each step waited its kind's period for the webhook, then checked
    assert await timers(handle) == [GENERATION_TIMEOUT, *_waits(steps)]
    assert TIMEOUTS["video"].webhook_wait > TIMEOUTS["image"].webhook_wait


async def test_a_job_still_running_at_the_check_is_waited_for_again(workers: Workers) -> None:
    fakes = new_fakes()
    fakes.webhook = "lost"
    fakes.checks["animate"] = [False, False]
    handle, fakes = await start(workers, fakes)
    await result(handle)

    assert [j.step for j in fakes.of(CHECK)].count("animate") == 3
    assert [s.step for s in fakes.of(SUBMIT)].count("animate") == 1  # never resubmitted
    assert not fakes.of(SETTLE)


async def test_an_error_webhook_fails_the_step_with_the_error_the_check_reads(
    workers: Workers,
) -> None:
    fakes = new_fakes()
    fakes.webhook = "ok"
    fakes.webhook_errors.add("cartoonify")
    fakes.fail(CHECK, "cartoonify", lambda: job_failed("cartoonify"))
    handle, fakes = await start(workers, fakes)
    cause = await failure(handle)

    assert isinstance(cause, ActivityError) and isinstance(cause.cause, ApplicationError)
    assert cause.cause.type == "ModelJobFailed"
    # the OK webhooks before it needed no check; the ERROR one was checked at once
    assert [j.step for j in fakes.of(CHECK)] == ["cartoonify"]
    assert not fakes.of(POLL)
    assert_refunded_once(fakes, "internal at cartoonify: ")
    [alert] = fakes.of(ALERT)
    assert alert.kind == "generation_failed"


async def test_a_job_past_its_steps_allowance_is_stopped_refunded_and_alerted_as_stuck(
    workers: Workers,
) -> None:
    fakes = new_fakes()
    fakes.webhook = "lost"
    fakes.checks["animate"] = [False] * 1000  # the provider says "running" forever
    handle, fakes = await start(workers, fakes)
    cause = await failure(handle)

    assert isinstance(cause, ApplicationError) and cause.type == MODEL_STEP_TIMED_OUT
    video = TIMEOUTS["video"]
    checks = [j.step for j in fakes.of(CHECK)].count("animate")
    assert checks == video.allowance // video.webhook_wait  # one per period, then no more
    [release] = fakes.of(RELEASE)  # the job is stopped and its permit freed
    assert release.step == "animate"
    assert_stuck(fakes, "animate")


async def test_without_a_webhook_each_poll_runs_with_its_kinds_allowance(
    workers: Workers,
) -> None:
    # The test server cannot skip time while an activity runs, so the poll's own timeout
    # is read from the history: the server enforces what was scheduled.
    handle, fakes = await start(workers, new_fakes())
    await result(handle)

    history = await handle.fetch_history()
    polls = [
        e.activity_task_scheduled_event_attributes
        for e in history.events
        if e.HasField("activity_task_scheduled_event_attributes")
        and e.activity_task_scheduled_event_attributes.activity_type.name == POLL
    ]
    steps = fakes.model_steps()
    assert len(polls) == len(steps)
    for step, poll in zip(steps, polls, strict=True):
        kind = TIMEOUTS[STEPS[step].kind]
        assert poll.schedule_to_close_timeout.ToTimedelta() == kind.allowance, step
        assert poll.start_to_close_timeout.ToTimedelta() == kind.poll_attempt, step
        assert poll.heartbeat_timeout.ToTimedelta() == kind.heartbeat, step
    assert TIMEOUTS["video"].allowance > TIMEOUTS["image"].allowance


async def test_the_whole_generation_stops_at_its_deadline(workers: Workers) -> None:
    fakes = new_fakes()
    fakes.fail(POLL, "cartoonify", lambda: job_lost("cartoonify"))  # every time
    # Resubmissions an hour apart, then two: the deadline comes first.
    handle, fakes = await start(workers, fakes, retry=RetrySpec(resubmits=3, backoff_seconds=3600))
    cause = await failure(handle)

    assert isinstance(cause, ApplicationError) and cause.type == GENERATION_TIMED_OUT
    assert [s.step for s in fakes.of(SUBMIT)].count("cartoonify") == 2  # not a third
    assert await timers(handle) == [
        GENERATION_TIMEOUT,
        timedelta(hours=1),
        timedelta(hours=2),
    ]
    assert_stuck(fakes, "cartoonify")


def assert_stuck(fakes: Fakes, step: str) -> None:
    assert_refunded_once(fakes, f"timed_out at {step}: ")
    [settle] = fakes.of(SETTLE)
    assert (settle.error_code, settle.step, settle.status) == ("timed_out", step, "failed")
    assert settle.message == contract.TOOK_TOO_LONG
    [alert] = fakes.of(ALERT)
    assert alert.kind == "stuck_generation" and alert.step == step
    assert alert.title == f"BitBuddy stuck at {step}"
    assert alert.refunded is True


async def test_a_cancellation_while_a_webhook_is_awaited_stops_the_job_and_refunds(
    isolated_workers: Workers,
) -> None:
    fakes = new_fakes()
    fakes.webhook = "ok"
    fakes.webhook_lost.add("segment_video")
    # No time skipping: the workflow must still be waiting for the webhook when the
    # cancellation comes, with no activity running.
    with isolated_workers.env.auto_time_skipping_disabled():
        handle, fakes = await start(isolated_workers, fakes)
        await wait_until(lambda: f"{SUBMIT}:segment_video done" in fakes.log)
        await handle.cancel()
        cause = await failure(handle)

    assert isinstance(cause, CancelledError), cause
    assert not [j for j in fakes.of(CHECK) if j.step == "segment_video"]
    [release] = [r for r in fakes.of(RELEASE) if r.step == "segment_video"]
    assert release.request_id  # the job the workflow was waiting for
    assert_cancelled_at(fakes, "segment_video", STEPS["segment_video"].percent)


async def test_a_cancellation_swallowed_by_a_submit_that_finished_still_cancels(
    isolated_workers: Workers,
) -> None:
    fakes = new_fakes()
    fakes.webhook = "ok"
    # The submit is finishing (no heartbeat, so it cannot hear of the cancellation) when
    # the cancellation comes; it then answers with its job, as if never cancelled.
    reached, go = fakes.hold(SUBMIT, "animate")
    handle, fakes = await start(isolated_workers, fakes)
    await asyncio.wait_for(reached.wait(), 20)
    await cancellation_handled(handle)
    go.set()
    cause = await failure(handle)

    assert isinstance(cause, CancelledError), cause
    assert f"{SUBMIT}:animate done" in fakes.log  # it did answer with the job
    assert not [j for j in fakes.of(FETCH) if j.step == "animate"]
    [release] = [r for r in fakes.of(RELEASE) if r.step == "animate"]
    assert release.request_id  # the job it started is stopped
    assert "segment_video" not in fakes.model_steps()
    assert_cancelled_at(fakes, "animate", STEPS["animate"].percent)
