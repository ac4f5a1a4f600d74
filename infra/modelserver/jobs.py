"""Jobs: queueing, running in a bounded thread pool, bookkeeping, faults, webhooks.

One ``JobManager`` per server. All shared state sits behind one lock, held only for
bookkeeping (never while a model runs). Jobs run on a ``ThreadPoolExecutor``: OpenCV,
onnxruntime and ffmpeg (a subprocess) release the GIL, so ``workers`` jobs really do run
in parallel. The pool's FIFO is mirrored in ``_queue`` so every waiting job can report
its real queue position (0 = next to start).

Jobs are also kept on disk (``store.JobStore``, ``<data>/jobs.sqlite3``), as a hosted
provider keeps its queue: after a restart (even a SIGKILL) every job that was queued or
running runs again from the start under the same request id, in submission order, and
finished jobs still answer status and result. Finished jobs are forgotten after
``JOB_RETENTION_SECONDS``. ``/_local`` records (the submissions since the last
``/_local/reset``) and stats survive a restart too, except injected ``submit_*`` rejections
(memory only) and ``max_in_flight``, which restarts from the jobs in flight at load.
Finished jobs are also written to ``<data>/jobs/<id>.json`` for inspection, and
output files stay on disk under ``<data>/files``.

A job submitted with ``?fal_webhook=URL`` has its outcome POSTed there when it ends,
signed and retried as fal does (``webhooks``); every try is kept for ``/_local/webhooks``
(memory only, cleared by ``/_local/reset``), and a ``drop_webhook`` fault makes the
server never deliver a job's webhook, as if every try was lost.

A cancelled job never starts if it was queued; if it was running, its thread is
abandoned (the next ``log`` call inside the app raises ``JobCancelled``) and whatever
it produces is discarded.

With ``replay`` on (benchmarks only), the first successful result of each app is kept and
every later job of that app answers with it at once, without running the model: the
protocol, queue and files stay real while the models cost nothing.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import shutil
import threading
import time
import uuid
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

import httpx
from pydantic import BaseModel, Field

from infra.modelserver.apps.base import (
    AppSpec,
    InputDownloadError,
    JobCancelled,
    JobError,
    OutputFile,
)
from infra.modelserver.files import FileStore
from infra.modelserver.store import JobStore, StoredJob
from infra.modelserver.webhooks import TIMEOUT as WEBHOOK_TIMEOUT
from infra.modelserver.webhooks import WebhookSigner, deliver, encode_body

logger = logging.getLogger("infra.modelserver")

# Webhook tries kept for /_local/webhooks (the oldest are dropped past this).
WEBHOOK_LOG_SIZE = 10_000
CANCELLED_ERROR_TYPE = "request_cancelled"
JOB_RETENTION_SECONDS = 6 * 3600  # finished jobs are forgotten (404) after this


class State(StrEnum):
    IN_QUEUE = "IN_QUEUE"
    IN_PROGRESS = "IN_PROGRESS"
    COMPLETED = "COMPLETED"


# error: the job fails as a model error; download_error: as an input download failure;
# submit_500 / submit_422: the submission itself is refused (server error / validation);
# submit_403: refused as fal refuses an account it will not serve (ACCOUNT_LOCKED_DETAIL);
# corrupt: output files are noise; delay: the job runs ``seconds`` longer;
# drop_webhook: the job runs as usual but its webhook is never delivered (a lost
# webhook: only polling learns the outcome). Each applies to the next ``times``
# submissions to the app, with a webhook or not.
FaultKind = Literal[
    "error",
    "download_error",
    "submit_500",
    "submit_422",
    "submit_403",
    "corrupt",
    "delay",
    "drop_webhook",
]
SUBMIT_FAULTS: frozenset[FaultKind] = frozenset({"submit_500", "submit_422", "submit_403"})
# fal's answer (HTTP 403) to any request of an account it will not serve; the pipeline
# recognises it (activities/models.py: provider_account_problem).
ACCOUNT_LOCKED_DETAIL = (
    "User is locked. Reason: Exhausted balance. Top up your balance at fal.ai/dashboard/billing."
)


class FaultSpec(BaseModel):
    """Body of ``POST /_local/faults``."""

    app: str
    kind: FaultKind
    times: int = Field(1, ge=1)
    seconds: float = Field(5.0, ge=0, le=600)


@dataclass
class Fault:
    kind: FaultKind
    remaining: int
    seconds: float


@dataclass
class Job:
    request_id: str
    app: str
    arguments: dict[str, Any]
    inputs: BaseModel
    webhook_url: str | None
    fault: Fault | None
    submitted_at: float = field(default_factory=time.time)
    state: State = State.IN_QUEUE
    logs: list[dict[str, Any]] = field(default_factory=list)
    started_at: float | None = None
    finished_at: float | None = None
    result: dict[str, Any] | None = None
    error: str | None = None
    error_type: str | None = None
    http_status: int = 200
    cancelled: bool = False
    generation: int = 0  # stats epoch (bumped by /_local/reset) the job belongs to
    fetched: bool = False  # its result was fetched successfully at least once
    resumed: int = 0  # times a server restart found it unfinished and ran it again
    # fal's object lifecycle preference sent with it ({"expiration_duration_seconds": N}):
    # its output files expire N seconds after they are made. None: they never do.
    lifecycle: dict[str, Any] | None = None

    @property
    def files_expire_after(self) -> float | None:
        if self.lifecycle is None:
            return None
        return float(self.lifecycle["expiration_duration_seconds"])

    @property
    def record_status(self) -> str:
        if self.cancelled:
            return "CANCELLED"
        if self.state == State.COMPLETED and self.error is not None:
            return "FAILED"
        return self.state.value


@dataclass
class AppStats:
    submitted: int = 0
    completed: int = 0
    failed: int = 0
    cancelled: int = 0
    in_flight: set[str] = field(default_factory=set)
    max_in_flight: int = 0

    def as_dict(self) -> dict[str, int]:
        return {
            "submitted": self.submitted,
            "completed": self.completed,
            "failed": self.failed,
            "cancelled": self.cancelled,
            "in_flight": len(self.in_flight),
            "max_in_flight": self.max_in_flight,
        }


@dataclass(frozen=True)
class Rejected:
    """A submission refused by an injected ``submit_*`` fault."""

    request_id: str
    app: str
    arguments: dict[str, Any]
    submitted_at: float = field(default_factory=time.time)
    record_status: str = "REJECTED"


@dataclass(frozen=True)
class WebhookAttempt:
    """One try at delivering a job's webhook (``/_local/webhooks``). ``attempt`` is 0 for
    a delivery an injected ``drop_webhook`` fault dropped (never sent)."""

    request_id: str
    app: str
    url: str
    attempt: int
    status_code: int | None  # the receiver's answer, None when there was none
    error: str | None  # why there was no answer (or why it was never sent)
    at: float = field(default_factory=time.time)

    def as_dict(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "app": self.app,
            "url": self.url,
            "attempt": self.attempt,
            "status_code": self.status_code,
            "error": self.error,
            "at": _iso(self.at),
        }


class _NoInputs(BaseModel):
    """Stands in for the validated inputs of a job restored finished (never run)."""


_NO_INPUTS = _NoInputs()


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()


class JobManager:
    def __init__(
        self,
        registry: dict[str, AppSpec[Any]],
        data_dir: Path,
        files: FileStore,
        workers: int,
        signer: WebhookSigner,
        *,
        replay: bool = False,
    ) -> None:
        self.registry = registry
        self.signer = signer
        self.replay = replay
        self._replayed: dict[str, dict[str, Any]] = {}
        self.files = files
        self.work_root = data_dir / "work"
        self.records_dir = data_dir / "jobs"
        # A job's work dir exists only while it runs: what is there now was left by jobs
        # a killed server was running, and they start again from nothing.
        shutil.rmtree(self.work_root, ignore_errors=True)
        self.work_root.mkdir(parents=True, exist_ok=True)
        self.records_dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._jobs: dict[str, Job] = {}
        self._queue: list[str] = []
        self._records: list[Job | Rejected] = []
        self._stats: dict[str, AppStats] = {app: AppStats() for app in registry}
        self._faults: dict[str, deque[Fault]] = {app: deque() for app in registry}
        self._webhook_log: deque[WebhookAttempt] = deque(maxlen=WEBHOOK_LOG_SIZE)
        self._running = 0  # job threads at work (a cancelled job's until it notices)
        self._store = JobStore(data_dir / "jobs.sqlite3")
        self._generation = self._store.epoch()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="model-job")
        self._webhooks = ThreadPoolExecutor(max_workers=2, thread_name_prefix="webhook")
        # One connection pool for every delivery (httpx.Client is safe across threads).
        self._webhook_client = httpx.Client(timeout=WEBHOOK_TIMEOUT)
        self._resume()

    # --- persistence --------------------------------------------------------------

    def _save(self, job: Job) -> None:
        """Write the job's row; the caller holds the lock (it serialises the store)."""
        fault = job.fault
        self._store.save(
            StoredJob(
                request_id=job.request_id,
                app=job.app,
                epoch=job.generation,
                state=job.state.value,
                submitted_at=job.submitted_at,
                finished_at=job.finished_at,
                body={
                    "arguments": job.arguments,
                    "webhook_url": job.webhook_url,
                    "fault": None if fault is None else [fault.kind, fault.seconds],
                    "started_at": job.started_at,
                    "result": job.result,
                    "error": job.error,
                    "error_type": job.error_type,
                    "http_status": job.http_status,
                    "cancelled": job.cancelled,
                    "fetched": job.fetched,
                    "resumed": job.resumed,
                    "lifecycle": job.lifecycle,
                    "logs": job.logs if job.state == State.COMPLETED else [],
                },
            )
        )

    def _resume(self) -> None:
        """Load the stored jobs: finished ones answer again, unfinished ones run again."""
        stored = self._store.load(finished_after=time.time() - JOB_RETENTION_SECONDS)
        rerun: list[Job] = []
        with self._lock:
            for row in stored:
                job = self._restore(row)
                self._jobs[job.request_id] = job
                if job.generation == self._generation and job.app in self._stats:
                    self._records.append(job)
                    self._count_restored(job)
                if job.state != State.COMPLETED:
                    job.resumed += 1
                    self._queue.append(job.request_id)
                    rerun.append(job)
                    self._save(job)
        for job in rerun:
            logger.info(
                "resumed app=%s request_id=%s (unfinished at restart)", job.app, job.request_id
            )
            self._pool.submit(self._run, job)

    def _restore(self, row: StoredJob) -> Job:
        body = row.body
        fault = body.get("fault")
        job = Job(
            request_id=row.request_id,
            app=row.app,
            arguments=body["arguments"],
            inputs=_NO_INPUTS,  # a finished job never runs; an unfinished one gets its own
            webhook_url=body.get("webhook_url"),
            fault=None if fault is None else Fault(fault[0], 1, float(fault[1])),
            submitted_at=row.submitted_at,
            state=State(row.state),
            logs=list(body.get("logs") or []),
            started_at=body.get("started_at"),
            finished_at=row.finished_at,
            result=body.get("result"),
            error=body.get("error"),
            error_type=body.get("error_type"),
            http_status=int(body.get("http_status", 200)),
            cancelled=bool(body.get("cancelled")),
            generation=row.epoch,
            fetched=bool(body.get("fetched")),
            resumed=int(body.get("resumed", 0)),
            lifecycle=body.get("lifecycle"),
        )
        if job.state == State.COMPLETED:
            return job
        # Unfinished: it starts again from the queue, with fresh logs.
        job.state, job.started_at, job.logs = State.IN_QUEUE, None, []
        spec = self.registry.get(job.app)
        try:
            if spec is None:
                raise ValueError(f"app {job.app!r} is not served any more")
            job.inputs = spec.input_model.model_validate(job.arguments)
        except ValueError as exc:  # pydantic's ValidationError is a ValueError
            job.state, job.finished_at = State.COMPLETED, time.time()
            job.error, job.error_type, job.http_status = str(exc), "internal_error", 500
        return job

    def _count_restored(self, job: Job) -> None:
        stats = self._stats[job.app]
        stats.submitted += 1
        if job.cancelled:
            stats.cancelled += 1
        elif job.state == State.COMPLETED and job.error is not None:
            stats.failed += 1
        elif job.state == State.COMPLETED:
            stats.completed += 1
        if not job.cancelled and not job.fetched and job.error is None:
            stats.in_flight.add(job.request_id)
        stats.max_in_flight = max(stats.max_in_flight, len(stats.in_flight))

    # --- submission ---------------------------------------------------------------

    def take_fault(self, app: str) -> Fault | None:
        """The fault (if any) that applies to the next submission to ``app``."""
        with self._lock:
            queue = self._faults[app]
            if not queue:
                return None
            head = queue[0]
            head.remaining -= 1
            if head.remaining <= 0:
                queue.popleft()
            return Fault(head.kind, 1, head.seconds)

    def reject(self, app: str, arguments: dict[str, Any]) -> None:
        with self._lock:
            self._records.append(Rejected(uuid.uuid4().hex, app, arguments))

    def submit(
        self,
        app: str,
        arguments: dict[str, Any],
        inputs: BaseModel,
        webhook_url: str | None,
        fault: Fault | None,
        lifecycle: dict[str, Any] | None = None,
    ) -> Job:
        job = Job(
            str(uuid.uuid4()), app, arguments, inputs, webhook_url, fault, lifecycle=lifecycle
        )
        with self._lock:
            job.generation = self._generation
            self._forget_old_jobs()
            self._jobs[job.request_id] = job
            self._queue.append(job.request_id)
            self._records.append(job)
            # On disk before its request id is returned: a restart from here on resumes it.
            self._save(job)
            stats = self._stats[app]
            stats.submitted += 1
            stats.in_flight.add(job.request_id)
            stats.max_in_flight = max(stats.max_in_flight, len(stats.in_flight))
        self._pool.submit(self._run, job)
        logger.info("submitted app=%s request_id=%s", app, job.request_id)
        return job

    def _forget_old_jobs(self) -> None:
        """Drop long-finished jobs so a long-lived dev server does not grow forever."""
        horizon = time.time() - JOB_RETENTION_SECONDS
        old = [
            rid
            for rid, job in self._jobs.items()
            if job.finished_at is not None and job.finished_at < horizon
        ]
        for rid in old:
            del self._jobs[rid]
        if old:
            self._store.forget(old)

    # --- queries ------------------------------------------------------------------

    def get(self, app: str, request_id: str) -> Job | None:
        """The job ``request_id`` of ``app``: an endpoint id, or the owner/alias fal's
        queue files its requests under (fal-ai/flux-pro for fal-ai/flux-pro/kontext)."""
        job = self._jobs.get(request_id)
        if job is None or app not in (job.app, "/".join(job.app.split("/")[:2])):
            return None
        return job

    def status(self, job: Job, *, with_logs: bool) -> dict[str, Any]:
        with self._lock:
            body: dict[str, Any] = {"status": job.state.value, "request_id": job.request_id}
            if job.state == State.IN_QUEUE:
                body["queue_position"] = self._queue.index(job.request_id)
            body["logs"] = [dict(line) for line in job.logs] if with_logs else None
            if job.state == State.COMPLETED:
                started = job.started_at or job.finished_at or job.submitted_at
                body["metrics"] = {"inference_time": (job.finished_at or started) - started}
                body["error"] = job.error
                body["error_type"] = job.error_type
            return body

    def _stats_for(self, job: Job) -> AppStats:
        """The job's app stats, or a throwaway if they were reset since it was submitted."""
        return self._stats[job.app] if job.generation == self._generation else AppStats()

    def mark_fetched(self, job: Job) -> None:
        """A successful result fetch ends the job's time "in flight"."""
        with self._lock:
            self._stats_for(job).in_flight.discard(job.request_id)
            if not job.fetched:
                job.fetched = True
                self._save(job)

    def cancel(self, job: Job) -> bool:
        """Cancel unless already finished; returns whether it was cancelled."""
        with self._lock:
            if job.state == State.COMPLETED:
                return False
            if job.state == State.IN_QUEUE:
                self._queue.remove(job.request_id)
            job.cancelled = True
            job.state = State.COMPLETED
            job.finished_at = time.time()
            job.error = "Request was cancelled"
            job.error_type = CANCELLED_ERROR_TYPE
            job.http_status = 400
            stats = self._stats_for(job)
            stats.cancelled += 1
            stats.in_flight.discard(job.request_id)
            self._save(job)
        logger.info("cancelled app=%s request_id=%s", job.app, job.request_id)
        self._save_record(job)
        return True

    # --- local test hooks ---------------------------------------------------------

    def records(self) -> list[dict[str, Any]]:
        with self._lock:
            return [
                {
                    "request_id": r.request_id,
                    "app": r.app,
                    "arguments": r.arguments,
                    "submitted_at": _iso(r.submitted_at),
                    "status": r.record_status,
                    "resumed": r.resumed if isinstance(r, Job) else 0,
                    "lifecycle": r.lifecycle if isinstance(r, Job) else None,
                }
                for r in self._records
            ]

    def stats(self) -> dict[str, dict[str, int]]:
        with self._lock:
            return {app: s.as_dict() for app, s in self._stats.items()}

    def load(self) -> dict[str, int]:
        """Jobs waiting for a worker and jobs a worker is running, whenever they were
        submitted (records and stats forget jobs submitted before a reset)."""
        with self._lock:
            return {"queued": len(self._queue), "running": self._running}

    def webhook_attempts(self) -> list[dict[str, Any]]:
        """Every webhook try since the last reset, oldest first."""
        with self._lock:
            return [a.as_dict() for a in self._webhook_log]

    def add_fault(self, spec: FaultSpec) -> None:
        with self._lock:
            self._faults[spec.app].append(Fault(spec.kind, spec.times, spec.seconds))

    def reset(self) -> None:
        """Forget records, stats, webhook tries and pending faults (jobs themselves keep
        running; the webhooks of jobs submitted before are no longer logged)."""
        with self._lock:
            self._generation += 1
            self._store.set_epoch(self._generation)
            self._records.clear()
            self._webhook_log.clear()
            self._stats = {app: AppStats() for app in self.registry}
            self._faults = {app: deque() for app in self.registry}

    def shutdown(self) -> None:
        """Stop running jobs. They are marked cancelled in memory only (their rows stay
        unfinished, ``_finish`` discards what they produce), so the next start runs them
        again, as it does after a crash."""
        with self._lock:
            for job in self._jobs.values():
                if job.state != State.COMPLETED:
                    job.cancelled = True
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._webhooks.shutdown(wait=False, cancel_futures=True)
        self._webhook_client.close()

    # --- running ------------------------------------------------------------------

    def _log(self, job: Job, message: str, level: str = "INFO") -> None:
        with self._lock:
            if job.cancelled:
                raise JobCancelled(job.request_id)
            job.logs.append(
                {
                    "message": message,
                    "level": level,
                    "source": "USER",
                    "timestamp": _iso(time.time()),
                }
            )

    def _run(self, job: Job) -> None:
        with self._lock:
            if job.cancelled:
                return
            job.state = State.IN_PROGRESS
            job.started_at = time.time()
            self._queue.remove(job.request_id)
            self._running += 1
        try:
            self._run_started(job)
        finally:
            with self._lock:
                self._running -= 1

    def _run_started(self, job: Job) -> None:
        work_dir = self.work_root / job.request_id
        published: list[Path] = []
        try:
            result = self._execute(job, work_dir, published)
            if not self._finish(job, result=result):
                for path in published:
                    path.unlink(missing_ok=True)
            elif self.replay and job.fault is None:
                with self._lock:
                    self._replayed.setdefault(job.app, copy.deepcopy(result))
        except JobCancelled:
            logger.info("abandoned app=%s request_id=%s", job.app, job.request_id)
        except JobError as exc:
            self._finish(job, error=exc)
        except Exception as exc:
            logger.exception("crashed app=%s request_id=%s", job.app, job.request_id)
            self._finish(
                job, error=JobError(f"{type(exc).__name__}: {exc}", error_type="internal_error")
            )
        finally:
            shutil.rmtree(work_dir, ignore_errors=True)

    def _execute(self, job: Job, work_dir: Path, published: list[Path]) -> dict[str, Any]:
        def log(message: str) -> None:
            self._log(job, message)

        fault = job.fault
        if fault is not None and fault.kind == "delay":
            steps = max(1, math.ceil(fault.seconds))
            for step in range(steps):
                log(f"injected delay {step + 1}/{steps} s")
                time.sleep(fault.seconds / steps)
        if fault is not None and fault.kind == "error":
            log("injected failure")
            raise JobError("injected failure", error_type="model_error")
        if fault is not None and fault.kind == "download_error":
            log("injected input download failure")
            raise InputDownloadError("injected: could not download the inputs")
        if self.replay and fault is None:
            with self._lock:
                replayed = copy.deepcopy(self._replayed.get(job.app))
            if replayed is not None:
                log("replaying this app's first result")
                return replayed
        work_dir.mkdir(parents=True, exist_ok=True)
        result = self.registry[job.app].run(job.inputs, work_dir, log)
        log("publishing outputs")
        corrupt = fault is not None and fault.kind == "corrupt"
        expires = job.files_expire_after
        expires_at = None if expires is None else time.time() + expires
        published_result: dict[str, Any] = self._publish(result, corrupt, published, expires_at)
        return published_result

    def _publish(
        self, value: Any, corrupt: bool, published: list[Path], expires_at: float | None = None
    ) -> Any:
        """Replace every ``OutputFile`` in a result with a served fal file object (served
        until ``expires_at``, if given)."""
        if isinstance(value, OutputFile):
            path, described = self.files.add(value, expires_at=expires_at)
            published.append(path)
            if corrupt:
                self.files.corrupt(path)
            return described
        if isinstance(value, dict):
            return {k: self._publish(v, corrupt, published, expires_at) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self._publish(v, corrupt, published, expires_at) for v in value]
        return value

    def _finish(
        self, job: Job, *, result: dict[str, Any] | None = None, error: JobError | None = None
    ) -> bool:
        """Record the outcome; False if the job was cancelled meanwhile (discarded)."""
        with self._lock:
            if job.cancelled:
                return False
            job.state = State.COMPLETED
            job.finished_at = time.time()
            stats = self._stats_for(job)
            if error is None:
                job.result = result
                stats.completed += 1
            else:
                job.error, job.error_type, job.http_status = (
                    error.message,
                    error.error_type,
                    error.http_status,
                )
                stats.failed += 1
                stats.in_flight.discard(job.request_id)
            self._save(job)
        elapsed = (job.finished_at or 0) - (job.started_at or 0)
        if error is None:
            logger.info("completed app=%s request_id=%s in %.2fs", job.app, job.request_id, elapsed)
        else:
            logger.info(
                "failed app=%s request_id=%s in %.2fs: %s (%s)",
                job.app,
                job.request_id,
                elapsed,
                error.message,
                error.error_type,
            )
        self._save_record(job)
        if job.webhook_url and job.fault is not None and job.fault.kind == "drop_webhook":
            logger.info("webhook for request_id=%s dropped (injected)", job.request_id)
            self._log_webhook(job, 0, None, "dropped: injected drop_webhook fault")
        elif job.webhook_url:
            try:
                self._webhooks.submit(self._deliver_webhook, job)
            except RuntimeError:  # shutting down
                logger.warning("webhook for request_id=%s dropped at shutdown", job.request_id)
        return True

    def _save_record(self, job: Job) -> None:
        record = {
            "request_id": job.request_id,
            "app": job.app,
            "arguments": job.arguments,
            "submitted_at": _iso(job.submitted_at),
            "status": job.record_status,
            "result": job.result,
            "error": job.error,
            "error_type": job.error_type,
            "logs": job.logs,
        }
        try:
            path = self.records_dir / f"{job.request_id}.json"
            path.write_text(json.dumps(record, default=str, indent=1))
        except OSError:
            logger.warning("could not write job record %s", job.request_id, exc_info=True)

    def _log_webhook(
        self, job: Job, attempt: int, status_code: int | None, error: str | None
    ) -> None:
        """Keep one webhook try for ``/_local/webhooks``, unless a reset came since the
        job was submitted (as its records and stats)."""
        assert job.webhook_url is not None
        with self._lock:
            if job.generation == self._generation:
                self._webhook_log.append(
                    WebhookAttempt(
                        job.request_id, job.app, job.webhook_url, attempt, status_code, error
                    )
                )

    def _deliver_webhook(self, job: Job) -> None:
        """POST the outcome to the caller's webhook in fal's shape, signed; a few tries."""
        url = job.webhook_url
        assert url is not None
        ok = job.error is None
        body = {
            "request_id": job.request_id,
            "gateway_request_id": job.request_id,
            "status": "OK" if ok else "ERROR",
            "payload": job.result if ok else {"detail": job.error, "error_type": job.error_type},
            "error": None if ok else job.error,
        }

        def observe(attempt: int, status_code: int | None, error: str | None) -> None:
            self._log_webhook(job, attempt, status_code, error)

        deliver(
            url,
            job.request_id,
            encode_body(body),
            self.signer,
            observe,
            client=self._webhook_client,
        )
