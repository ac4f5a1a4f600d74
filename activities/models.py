"""Model steps as three activities each - submit, poll, fetch - so a worker that dies
while a job runs never pays for it twice: the job id is in workflow history after
submit, and the poll simply resumes on another worker.

The workflow names the step and its inputs in our words; the provider's adapter
(activities/providers/) says which app runs it, with which arguments, and what its
result means. Every call goes through `fal-client`; in local mode it reaches our own
server that speaks fal's queue protocol (``infra/modelserver``). Fetch checks each
output before the workflow sees it (activities/outputs.py).
"""

from __future__ import annotations

import asyncio
import io
import mimetypes
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import UUID

import fal_client
import httpx
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities import outputs, pictures
from activities.model_errors import (
    MODEL_JOB_LOST,
    MODEL_PROVIDER_UNAVAILABLE,
    MODEL_REQUEST_REJECTED,
    MODEL_STEP_SETTLED,
    MODEL_STEP_TIMED_OUT,
    job_error_type,
)
from activities.permits import get_globally_cached_semaphore
from activities.providers import Adapter, adapter_for
from activities.runtime import Runtime
from infra import alerts, metrics, progress
from infra.database import costs, permits, records
from infra.falclient import cancel_job, is_refusal, read_result
from infra.storage import CHUNK_SIZE, keys
from workflows import contract
from workflows.contract import ModelJob, ModelOutput, ModelStepInput, ReleaseInput

# Short jobs are noticed quickly and long ones are not hammered: the wait between status
# checks starts small and grows to a cap (well inside the poll's heartbeat timeout).
POLL_FIRST_INTERVAL_SECONDS = 0.05
POLL_MAX_INTERVAL_SECONDS = 1.0
POLL_BACKOFF = 1.5
INPUT_URL_TTL = timedelta(hours=2)
# Well inside fetch's 30 s heartbeat timeout.
DOWNLOAD_HEARTBEAT_SECONDS = 5.0
# The daily spend alert names this many of the day's costliest steps and endpoints.
SPEND_ALERT_TOP = 3


class ModelActivities:
    def __init__(self, runtime: Runtime, adapter: Adapter | None = None) -> None:
        self.rt = runtime
        self.adapter = adapter or adapter_for(runtime.settings)

    def _semaphore(self, app: str) -> Any:
        return get_globally_cached_semaphore(
            name=app, max_concurrency=self.rt.settings.model_concurrency
        )

    def _submit_semaphore(self, app: str) -> Any:
        """The semaphore a submit acquires from. A generation started in bulk (on the
        batch pool's queue) shares the model's permits but takes one only while more
        than ``model_permits_kept_for_interactive`` are free, so interactive generations
        always find those. One table of leases, one count: only the cap a taker may
        fill differs (the acquire is check-and-insert under the limiter's lock)."""
        settings = self.rt.settings
        if activity.info().task_queue != settings.batch_task_queue:
            return self._semaphore(app)
        kept = settings.model_permits_kept_for_interactive
        return get_globally_cached_semaphore(
            name=app, max_concurrency=settings.model_concurrency - kept
        )

    @property
    def _ttl(self) -> timedelta:
        return timedelta(seconds=self.rt.settings.model_permit_ttl_seconds)

    async def _record_step(self, step: ModelStepInput) -> str | None:
        """Mark the generation as running this step; return the job already submitted
        under the step's key, if any. One round trip (pipeline mode)."""
        async with self.rt.db.connection() as conn, conn.pipeline():
            await records.set_generation_step(conn, UUID(step.generation_id), step.step)
            return await permits.job_request_id(conn, step.idempotency_key)

    @activity.defn(name=contract.SUBMIT_MODEL_JOB)
    async def submit_model_job(self, step: ModelStepInput) -> ModelJob:
        """Take a permit, then submit; a retry returns the job submitted before."""
        app = self.adapter.app(step.step)
        job = ModelJob(
            generation_id=step.generation_id,
            user_id=step.user_id,
            step=step.step,
            app=app,
            request_id="",
            idempotency_key=step.idempotency_key,
            message=step.message,
            percent=step.percent,
            attempt=step.attempt,
            inputs=dict(step.files),
            webhook=self._webhooks(step.step),
        )
        # Announce the step (or its resubmission) and look for a job this step already
        # submitted (a retry), at once: both are idempotent, and a retry announcing again
        # is deduplicated.
        resubmission = step.attempt > 0
        dedupe = f"{step.step}:retry:{step.attempt}" if resubmission else f"{step.step}:start"
        submitted, _ = await asyncio.gather(
            self._record_step(step),
            progress.publish(
                self.rt.db,
                self.rt.redis,
                step.generation_id,
                event="progress",
                dedupe=dedupe,
                step=step.step,
                message=step.retry_message if resubmission else step.message,
                percent=step.percent,
            ),
        )
        if submitted is not None:
            job.request_id = submitted
            return job

        semaphore = self._submit_semaphore(app)
        # Once the request below is sent the job may be in flight at the provider, even if
        # this worker dies at once, so the lease is marked first: a marked lease never
        # expires by time. One that expired before the mark is gone: wait for another.
        while True:
            await semaphore.acquire(
                self.rt.db,
                step.idempotency_key,
                self._ttl,
                while_waiting=lambda: activity.heartbeat("waiting for a model slot"),
            )
            if await semaphore.mark_submitted(self.rt.db, step.idempotency_key, step.generation_id):
                break
        urls = {
            role: self.rt.storage.signed_url(key, expires_in=INPUT_URL_TTL)
            for role, key in step.files.items()
        }
        params = dict(step.params)
        if self.adapter.needs_image_size(step.step):
            params["image_size"] = list(await self._picture_size(step.files[contract.IMAGE]))
        call = self.adapter.call(step.step, urls, params)
        try:
            # call.headers: the adapter's own (fal's: its outputs expire soon after).
            handle = await self.rt.fal.submit(
                call.app, call.arguments, webhook_url=self._webhook_url(step), headers=call.headers
            )
        except fal_client.client.FalClientHTTPError as err:
            if is_refusal(err):
                await semaphore.release(self.rt.db, step.idempotency_key)
                if problem := provider_account_problem(err):
                    await self._alert_provider_outage(step, app, problem, err)
                raise ApplicationError(
                    f"{app} rejected the request: {err}",
                    type=MODEL_REQUEST_REJECTED,
                    non_retryable=True,
                ) from err
            raise _unavailable(app, "submit", err) from err
        except httpx.TransportError as err:
            raise _unavailable(app, "submit", err) from err
        async with self.rt.db.connection() as conn:
            await permits.record_job(
                conn,
                step.idempotency_key,
                step.generation_id,
                step.step,
                app,
                handle.request_id,
            )
        activity.logger.info(
            "submitted %s job %s", app, handle.request_id, extra={"user_id": step.user_id}
        )
        job.request_id = handle.request_id
        return job

    def _webhooks(self, step: str) -> bool:
        """Whether the step's job reports its end by a webhook we can verify (the
        workflow then waits for it), or is polled."""
        return self.rt.settings.provider_webhooks and self.adapter.webhooks(step)

    def _webhook_url(self, step: ModelStepInput) -> str | None:
        """Where the provider reports the job's end (api/providers.py), when webhooks are
        on. It names the generation, so the API can signal its workflow at once, even
        before submit has recorded the job; the delivery's signature is what is trusted."""
        if not self._webhooks(step.step):
            return None
        base = self.rt.settings.public_url.rstrip("/")
        return f"{base}{contract.PROVIDER_WEBHOOK_PATH}?generation_id={step.generation_id}"

    async def _alert_provider_outage(
        self, step: ModelStepInput, app: str, problem: str, err: Exception
    ) -> None:
        """Tell the owner the provider refuses our account (deduplicated: one alert per
        outage, then a digest). Best effort: the generation's own failure alert follows,
        and an alert recorded but not delivered is delivered by the alert digest."""
        alert = alerts.generation_alert(
            self.rt.settings,
            "provider_outage",
            source_key=f"provider:{step.idempotency_key}",
            title=f"Model provider refuses our account: {problem}",
            user_id=step.user_id,
            generation_id=step.generation_id,
            step=step.step,
            error_class=problem,
            error=f"{app} submit answered 403: {err}",
            refunded=None,
        )
        try:
            await alerts.raise_alert(self.rt.db, self.rt.settings, alert)
        except Exception:
            activity.logger.warning("could not deliver the provider outage alert", exc_info=True)

    @activity.defn(name=contract.POLL_MODEL_JOB)
    async def poll_model_job(self, job: ModelJob) -> None:
        """Wait for the job, heartbeating each poll and keeping the permit's lease alive."""
        last_state = ""
        interval = POLL_FIRST_INTERVAL_SECONDS
        queue = metrics.QueueWatch(self.rt.db, job.step, job.idempotency_key, _first_attempt())
        deadline = await self._deadline(job)
        while (state := await self._look(job, last_state, deadline)) is not None:
            await queue.seen(queued=state.startswith("queued"))
            last_state = state
            if await _worker_shutdown_within(interval):
                # A poll holds nothing but its place: hand it back at once (Temporal
                # retries it on another worker, or this one restarted), rather than keep
                # a deploy waiting out the worker's graceful shutdown.
                raise ApplicationError(
                    f"{job.app} job {job.request_id}: handed back, this worker is stopping",
                    type=WORKER_SHUTDOWN,
                )
            interval = min(interval * POLL_BACKOFF, POLL_MAX_INTERVAL_SECONDS)
        await queue.seen(queued=False)

    @activity.defn(name=contract.CHECK_MODEL_JOB)
    async def check_model_job(self, job: ModelJob) -> bool:
        """One status check of a job whose webhook the workflow awaits: whether it ended
        well (a job that failed raises, as the poll does)."""
        return await self._look(job, "", await self._deadline(job)) is None

    async def _deadline(self, job: ModelJob) -> float | None:
        """When (``time.monotonic``) the job's allowance at the provider ends: the
        adapter's timeout for its step (the model map's ``timeout_seconds``) from its
        submission, as recorded. None: no allowance but the workflow's own."""
        timeout = self.adapter.timeout_seconds(job.step)
        if timeout is None:
            return None
        async with self.rt.db.connection() as conn:
            age = await permits.job_age_seconds(conn, job.idempotency_key)
        return time.monotonic() + timeout - (age or 0.0)

    async def _look(self, job: ModelJob, last_state: str, deadline: float | None) -> str | None:
        """Ask the provider about the job once. None when it completed; its state while
        it is queued or running (a new place in line is announced); raises when it failed
        or the provider could not say, or when the job ran past its ``deadline``."""
        try:
            status = await self.rt.fal.status(job.app, job.request_id)
        except fal_client.client.FalClientHTTPError as err:
            if err.status_code == 404:
                raise _lost(job, err) from err
            if is_refusal(err):
                raise
            raise _unavailable(job.app, "status", err) from err
        except httpx.TransportError as err:
            raise _unavailable(job.app, "status", err) from err
        if isinstance(status, fal_client.Completed):
            if status.error:
                # The same request id would answer the same error: never retried here,
                # whatever its type; the workflow decides on resubmitting.
                raise ApplicationError(
                    f"{job.app} job {job.request_id} failed: {status.error}",
                    status.error_type,
                    type=job_error_type(status.error_type),
                    non_retryable=True,
                )
            return None  # fetch releases the permit; no need to renew it now
        if deadline is not None and time.monotonic() >= deadline:
            # Not retried; the workflow's cleanup stops the job and gives the permit back.
            raise ApplicationError(
                f"{job.app} job {job.request_id}: no result within its"
                f" {self.adapter.timeout_seconds(job.step):g} s",
                type=MODEL_STEP_TIMED_OUT,
                non_retryable=True,
            )
        state, message = _describe(status, job)
        # Only a job still running is worth a heartbeat: completing reports liveness.
        activity.heartbeat(state)
        if not await self._semaphore(job.app).renew(self.rt.db, job.idempotency_key, self._ttl):
            await self._lease_lost(job)
        # Submit announced the step: what is news now is a place in line, and the start
        # after a wait.
        waiting = state.startswith("queued") or last_state.startswith("queued")
        if state != last_state and waiting:
            await progress.publish(
                self.rt.db,
                self.rt.redis,
                job.generation_id,
                event="progress",
                dedupe=f"{job.step}:{state}"
                if job.attempt == 0
                else f"{job.step}:retry:{job.attempt}:{state}",
                step=job.step,
                message=message,
                percent=job.percent,
            )
        return state

    async def _lease_lost(self, job: ModelJob) -> None:
        """The job's submitted lease is gone while the job was just seen queued or running.

        A submitted lease never expires, so someone released it: the workflow's cleanup
        (which cancels the job first, then releases), the sweeper settling an ended
        workflow (which closes the generation in the same transaction), or an operator.
        Carrying on without a lease would let another job take the permit while this one
        is in flight. So the job is looked at again: if it is over (cancelled by that
        cleanup, or done), the next status check ends the poll as usual. If it is still
        in flight, the lease is put back, because the permit table must count every job
        at the provider - even above the cap, which then makes new submits wait. That is
        refused once the generation is settled: a lease put back then would never be
        freed, and the workflow this poll works for has ended, so the poll stops.
        """
        status = await self.rt.fal.status(job.app, job.request_id)
        if isinstance(status, fal_client.Completed):
            return
        if not await self._semaphore(job.app).reclaim(
            self.rt.db, job.idempotency_key, job.generation_id, self._ttl
        ):
            raise ApplicationError(
                f"{job.app} job {job.request_id}: the generation was settled elsewhere",
                type=MODEL_STEP_SETTLED,
                non_retryable=True,
            )
        activity.logger.warning(
            "%s job %s was in flight without its permit; permit taken back",
            job.app,
            job.request_id,
            extra={"user_id": job.user_id},
        )

    @activity.defn(name=contract.FETCH_MODEL_RESULT)
    async def fetch_model_result(self, job: ModelJob) -> ModelOutput:
        """Record the job's cost, copy its files into our storage (streamed) and release
        the permit."""
        try:
            result = await read_result(self.rt.fal, job.app, job.request_id)
        except fal_client.client.FalClientHTTPError as err:
            if err.status_code == 404:
                raise _lost(job, err) from err
            if is_refusal(err):
                raise ApplicationError(
                    f"{job.app} job {job.request_id} has no result: {err}",
                    err.error_type,
                    type=job_error_type(err.error_type),
                    non_retryable=True,
                ) from err
            raise _unavailable(job.app, "result", err) from err
        except httpx.TransportError as err:
            raise _unavailable(job.app, "result", err) from err
        # The job is over at the provider, so its permit goes back while the files copy.
        release = asyncio.ensure_future(
            self._semaphore(job.app).release(self.rt.db, job.idempotency_key)
        )
        try:
            await self._record_cost(job)
            timing = await metrics.fetching(
                self.rt.db, job.step, job.idempotency_key, job.webhook, _first_attempt()
            )
            step = self.adapter.result(job.step, result)
            with tempfile.TemporaryDirectory(prefix="bitbuddies-fetch-") as scratch:
                output = ModelOutput(data=dict(step.data))
                for role, produced in step.files.items():
                    local = Path(scratch) / role
                    try:
                        await _download_to(self.rt.http, produced.url, local)
                    except httpx.HTTPError as err:
                        raise _unavailable(job.app, "output download", err) from err
                    try:
                        await outputs.check(role, local, image_size=await self._image_size(job))
                    except outputs.OutputInvalid as err:
                        raise outputs.invalid(job.step, err) from err
                    ext = mimetypes.guess_extension(produced.content_type) or ".bin"
                    key = keys.step_output(job.generation_id, job.step, role + ext)
                    await self.rt.storage.write_stream(
                        key, _read_file(local), content_type=produced.content_type
                    )
                    output.files[role] = key
                    if job.step == contract.ANALYZE.name and role == contract.IMAGE:
                        output.data = await outputs.judge_analysis(local, output.data)
                await self._show_picture(job, Path(scratch))
        finally:
            await release
        timing.fetched()
        return output

    async def _record_cost(self, job: ModelJob) -> None:
        """Record what the job cost (the adapter's price of a call), once per request id:
        the job ended with a result, so the provider bills it whatever our checks of its
        outputs say next. Then the daily spend alert, when the day passed it."""
        async with self.rt.db.connection() as conn:
            recorded = await costs.record(
                conn,
                request_id=job.request_id,
                idempotency_key=job.idempotency_key,
                generation_id=job.generation_id,
                step=job.step,
                app=job.app,
                cost_usd=self.adapter.cost(job.step),
            )
        if self.rt.settings.daily_spend_alert_usd is not None:
            await self._alert_daily_spend(recorded.day, self.rt.settings.daily_spend_alert_usd)

    async def _alert_daily_spend(self, day: date, threshold: float) -> None:
        """Alert the owner once per day (the alert's source key names the day) when the
        day's spend passed ``threshold``. Checked at every fetch rather than only at the
        fetch that crossed it: two fetches recording at once could each see the other's
        cost already counted. Best effort: a spend alert never fails the step, and one
        recorded but not delivered is delivered by the alert digest."""
        try:
            async with self.rt.db.connection() as conn:
                total = await costs.day_total(conn, day)
                if total <= Decimal(str(threshold)):
                    return
                steps = await costs.day_top(conn, day, "step", limit=SPEND_ALERT_TOP)
                apps = await costs.day_top(conn, day, "app", limit=SPEND_ALERT_TOP)
            alert = alerts.spend_alert(
                day,
                total,
                threshold,
                [(s.key, s.jobs, s.cost_usd) for s in steps],
                [(a.key, a.jobs, a.cost_usd) for a in apps],
            )
            await alerts.raise_alert(self.rt.db, self.rt.settings, alert)
        except Exception:
            activity.logger.warning("could not raise the daily spend alert", exc_info=True)

    async def _show_picture(self, job: ModelJob, scratch: Path) -> None:
        """Store the step's picture and announce it (contract.PICTURES). Best effort: a
        picture that could not be made is logged and skipped, never fails the step."""
        picture = contract.PICTURES.get(job.step)
        if picture is None:
            return
        try:
            if picture.mask:
                image = io.BytesIO(await self.rt.storage.read_bytes(job.inputs[contract.IMAGE]))
                png = await asyncio.to_thread(pictures.render, image, scratch / contract.MASK)
            else:
                png = await asyncio.to_thread(pictures.render, scratch / contract.IMAGE)
            await self.rt.storage.write_bytes(
                keys.picture(job.generation_id, picture.name), png, content_type="image/png"
            )
        except Exception:  # a picture is a courtesy: the step's output stands
            activity.logger.warning("no %s picture for %s", picture.name, job.step, exc_info=True)
            return
        await progress.publish(
            self.rt.db,
            self.rt.redis,
            job.generation_id,
            event="progress",
            dedupe=f"{job.step}:picture",
            step=job.step,
            message=picture.message,
            percent=job.percent,
            picture=picture.name,
        )

    async def _image_size(self, job: ModelJob) -> tuple[int, int] | None:
        """The size of the step's input image, which its mask must have."""
        key = job.inputs.get(contract.IMAGE)
        if key is None or job.step != contract.SEGMENT_IMAGE.name:
            return None
        return await self._picture_size(key)

    async def _picture_size(self, key: str) -> tuple[int, int]:
        """(width, height) of a stored picture."""
        data = await self.rt.storage.read_bytes(key)
        return await asyncio.to_thread(outputs.picture_size, io.BytesIO(data))

    @activity.defn(name=contract.RELEASE_MODEL_JOB)
    async def release_model_job(self, release: ReleaseInput) -> None:
        """Cleanup after a failed or cancelled step: stop the job if it may still run,
        then give the permit back. Safe to repeat.

        The workflow may not know the job's id (cancelled while submit was finishing), so
        the one submit recorded under the step's key is looked up.
        """
        app = release.app or self.adapter.app(release.step)
        request_id = release.request_id
        if not request_id:
            async with self.rt.db.connection() as conn:
                request_id = await permits.job_request_id(conn, release.idempotency_key)
        if request_id:
            await cancel_job(self.rt.fal, app, request_id)
        await self._semaphore(app).release(self.rt.db, release.idempotency_key)


# fal refuses every request of an account it will not serve with HTTP 403 and a detail
# naming why, e.g. "User is locked. Reason: Exhausted balance. Top up your balance at
# fal.ai/dashboard/billing.": the account is locked, or its balance ran out. Until the
# owner acts, every generation fails so: a provider outage, not the user's doing. The
# patterns, lower case, first match wins (a locked account that ran out says both).
ACCOUNT_PROBLEMS: tuple[tuple[str, str], ...] = (
    ("exhausted balance", "balance_exhausted"),
    ("insufficient balance", "balance_exhausted"),
    ("out of balance", "balance_exhausted"),
    ("user is locked", "account_locked"),
    ("account is locked", "account_locked"),
)


def provider_account_problem(err: fal_client.client.FalClientHTTPError) -> str | None:
    """``account_locked`` or ``balance_exhausted`` when the provider refused the request
    because of our account (403 and one of ACCOUNT_PROBLEMS in its detail), else None."""
    if err.status_code != 403:
        return None
    detail = str(err).lower()
    return next((problem for pattern, problem in ACCOUNT_PROBLEMS if pattern in detail), None)


def _first_attempt() -> bool:
    """Whether this is the activity's first attempt (metrics count a sighting once)."""
    return activity.info().attempt == 1


def _unavailable(app: str, call: str, err: Exception) -> ApplicationError:
    """The provider failed a call in a way a later try may get past (5xx, timeout,
    rate limit, no connection). Retryable: the activity's retry policy tries again, and
    the workflow resubmits the step once those retries run out."""
    return ApplicationError(
        f"{app} {call} failed: {type(err).__name__}: {err}", type=MODEL_PROVIDER_UNAVAILABLE
    )


def _lost(job: ModelJob, err: Exception) -> ApplicationError:
    """The provider does not know the job (404): asking again cannot bring it back."""
    return ApplicationError(
        f"{job.app} lost job {job.request_id}: {err}", type=MODEL_JOB_LOST, non_retryable=True
    )


def _describe(status: fal_client.Status, job: ModelJob) -> tuple[str, str]:
    """(state, message) of a job not yet completed: its place in line, or running."""
    if isinstance(status, fal_client.Queued):
        return (
            f"queued:{status.position}",
            f"{job.message} (waiting in line, #{status.position + 1})",
        )
    return "running", job.message


async def _download_to(http: httpx.AsyncClient, url: str, path: Path) -> None:
    """Stream ``url`` into ``path``: memory stays flat whatever the size."""
    beat = _throttled_heartbeat(DOWNLOAD_HEARTBEAT_SECONDS)
    with path.open("wb") as out:
        async with http.stream("GET", url) as response:
            response.raise_for_status()
            async for chunk in response.aiter_bytes(CHUNK_SIZE):
                beat()
                await asyncio.to_thread(out.write, chunk)


async def _read_file(path: Path) -> AsyncIterator[bytes]:
    with path.open("rb") as source:
        while chunk := await asyncio.to_thread(source.read, CHUNK_SIZE):
            yield chunk


def _throttled_heartbeat(seconds: float) -> Callable[[], None]:
    """A heartbeat for loops: sends one only when ``seconds`` have passed since the last
    (or since it was made), so a quick download costs no heartbeat round trip at all."""
    loop = asyncio.get_running_loop()
    last = loop.time()

    def beat() -> None:
        nonlocal last
        now = loop.time()
        if now - last >= seconds:
            activity.heartbeat()
            last = now

    return beat


WORKER_SHUTDOWN = "WorkerShutdown"  # a poll handed back by a stopping worker: retried


async def _worker_shutdown_within(seconds: float) -> bool:
    """Wait ``seconds``; True, at once, if the worker starts shutting down meanwhile."""
    try:
        await asyncio.wait_for(activity.wait_for_worker_shutdown(), seconds)
    except TimeoutError:
        return False
    return True
