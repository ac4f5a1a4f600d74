"""HTTP surface: fal's queue API for our apps, file downloads, and ``/_local`` hooks.

Only the parts of fal's queue protocol that ``fal_client`` uses are implemented, with
the same shapes and status codes, so the unmodified client (pointed here by
``infra.falclient.make_fal_client``) runs the same code path as in production. Every
URL we hand out is absolute, built from the public base URL, because fal_client uses
the returned ``status_url``/``response_url``/``cancel_url`` as given.

Any ``Authorization`` header is accepted and none is required.

With ``mimic="fal"`` (``--mimic fal``) the server also answers fal's own endpoint ids of
the default model map (``mimic.py``); like fal's queue, it files an endpoint's requests
under its owner and alias (``fal-ai/flux-pro/requests/<id>`` for
``fal-ai/flux-pro/kontext``). A submit's ``X-Fal-Object-Lifecycle-Preference`` header
(``{"expiration_duration_seconds": N}``) makes the job's output files answer 404 N
seconds after they are made; ``/_local/requests`` records it per request
(``lifecycle``, None without one).

Webhooks (``?fal_webhook=URL`` on submit) are signed as fal signs them
(``webhooks.py``), with the key whose public half ``GET /.well-known/jwks.json`` serves
in fal's JWKS shape (fal serves it at ``https://rest.alpha.fal.ai/.well-known/jwks.json``).
``GET /_local/load`` says how many jobs wait for a worker and how many run, whenever they
were submitted: ``{queued, running}`` (``/_local/requests`` and ``/_local/stats`` cover
only the jobs submitted since the last reset).

``GET /_local/webhooks`` lists every delivery try since the last reset: ``[{request_id,
app, url, attempt, status_code, error, at}]`` (``attempt`` 0: dropped by a
``drop_webhook`` fault, never sent).

``POST /_local/stall`` makes the queue protocol stall for a while, as a provider that
accepts connections but answers nothing: every submit, status, result and cancel request
is held until the stall ends (``{"seconds": 0}`` ends it now, so does ``/_local/reset``).
The ``/_local`` hooks and file downloads keep answering.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse
from pydantic import BaseModel, Field, ValidationError

from infra.modelserver import mimic as mimicry
from infra.modelserver.apps import REGISTRY
from infra.modelserver.apps.base import AppSpec
from infra.modelserver.files import FileStore
from infra.modelserver.jobs import (
    ACCOUNT_LOCKED_DETAIL,
    SUBMIT_FAULTS,
    FaultSpec,
    Job,
    JobManager,
    State,
)
from infra.modelserver.webhooks import KEY_FILE, WebhookSigner

logger = logging.getLogger("infra.modelserver")


class StallSpec(BaseModel):
    """Body of ``POST /_local/stall``."""

    seconds: float = Field(ge=0, le=600)


class Stall:
    """Holds queue-protocol requests until a deadline. One per server, event-loop only."""

    def __init__(self) -> None:
        self.until = 0.0  # time.monotonic() deadline
        self.waiting = 0  # requests being held right now
        self._moved = asyncio.Event()  # set (and replaced) whenever the deadline moves

    def start(self, seconds: float) -> None:
        self.until = time.monotonic() + seconds
        self._moved.set()
        self._moved = asyncio.Event()

    async def wait_out(self) -> None:
        if time.monotonic() >= self.until:
            return
        self.waiting += 1
        try:
            while (remaining := self.until - time.monotonic()) > 0:
                moved = self._moved
                # Woken early when the stall is ended (or extended), then look again.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(moved.wait(), remaining)
        finally:
            self.waiting -= 1

    def as_dict(self) -> dict[str, float | int]:
        return {"remaining": max(0.0, self.until - time.monotonic()), "waiting": self.waiting}


async def _stalled(request: Request) -> None:
    """A dependency of every queue-protocol route: wait while a stall is on."""
    stall: Stall = request.app.state.stall
    await stall.wait_out()


def _manager(request: Request) -> JobManager:
    manager: JobManager = request.app.state.manager
    return manager


def _files(request: Request) -> FileStore:
    files: FileStore = request.app.state.files
    return files


ManagerDep = Annotated[JobManager, Depends(_manager)]
FilesDep = Annotated[FileStore, Depends(_files)]
# Every queue-protocol route depends on this; the route's body (which reads the job)
# runs only once the stall is over.
STALLED = [Depends(_stalled)]


def _error(
    status: int, detail: Any, error_type: str | None = None, request_id: str | None = None
) -> JSONResponse:
    body: dict[str, Any] = {"detail": detail}
    headers: dict[str, str] = {}
    if error_type is not None:
        body["error_type"] = error_type
        headers["X-Fal-Error-Type"] = error_type
    if request_id is not None:
        headers["X-Fal-Request-Id"] = request_id
    return JSONResponse(body, status_code=status, headers=headers)


def _not_found(what: str) -> JSONResponse:
    return _error(404, f"{what} not found")


# fal's per-request object lifecycle: {"expiration_duration_seconds": N} makes the
# request's output files expire N seconds after they are made (404 afterwards).
LIFECYCLE_HEADER = "X-Fal-Object-Lifecycle-Preference"


def _lifecycle(raw: str | None) -> dict[str, Any] | JSONResponse | None:
    """The header's preference, None without one, or the 422 a malformed one gets."""
    if raw is None:
        return None
    try:
        value = json.loads(raw)
        seconds = value["expiration_duration_seconds"]
        if not isinstance(seconds, int) or isinstance(seconds, bool) or seconds < 1:
            raise ValueError(seconds)
    except (ValueError, KeyError, TypeError):
        return _error(
            422,
            [
                {
                    "type": "value_error",
                    "loc": ["header", LIFECYCLE_HEADER],
                    "msg": 'expected {"expiration_duration_seconds": a positive integer}',
                }
            ],
        )
    return {"expiration_duration_seconds": seconds}


def create_app(
    data_dir: Path,
    public_url: str,
    workers: int = 2,
    *,
    replay: bool = False,
    mimic: str | None = None,
) -> FastAPI:
    """The model server as an ASGI app (uvicorn runs it; tests may too). ``mimic``
    ("fal"): also serve the hosted endpoints of the default model map (mimic.py)."""
    public = public_url.rstrip("/")
    files = FileStore(data_dir / "files", public)
    signer = WebhookSigner.load_or_create(data_dir / KEY_FILE)
    mimicked = mimicry.registry(mimic)
    registry: dict[str, AppSpec[Any]] = {**REGISTRY, **mimicked}
    manager = JobManager(registry, data_dir, files, workers, signer, replay=replay)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        manager.shutdown()

    app = FastAPI(title="BitBuddies local model server", lifespan=lifespan)
    app.state.manager = manager
    app.state.files = files
    stall = Stall()
    app.state.stall = stall

    def urls(job: Job) -> dict[str, str]:
        base = f"{public}/{mimicry.queue_base(job.app)}/requests/{job.request_id}"
        return {
            "response_url": base,
            "status_url": f"{base}/status",
            "cancel_url": f"{base}/cancel",
        }

    @app.get("/healthz")
    async def healthz() -> dict[str, bool]:
        return {"ok": True}

    @app.get("/.well-known/jwks.json")
    async def jwks() -> dict[str, list[dict[str, str]]]:
        return signer.jwks()

    # --- local test hooks (registered before the catch-all app routes) -------------

    @app.get("/_local/requests")
    async def local_requests(manager: ManagerDep) -> list[dict[str, Any]]:
        return manager.records()

    @app.get("/_local/load")
    async def local_load(manager: ManagerDep) -> dict[str, int]:
        return manager.load()

    @app.get("/_local/webhooks")
    async def local_webhooks(manager: ManagerDep) -> list[dict[str, Any]]:
        return manager.webhook_attempts()

    @app.get("/_local/stats")
    async def local_stats(manager: ManagerDep) -> dict[str, dict[str, int]]:
        return manager.stats()

    @app.post("/_local/reset")
    async def local_reset(manager: ManagerDep) -> dict[str, bool]:
        manager.reset()
        stall.start(0)
        return {"ok": True}

    @app.post("/_local/stall")
    async def local_stall(spec: StallSpec) -> dict[str, float | int]:
        stall.start(spec.seconds)
        return stall.as_dict()

    @app.get("/_local/stall")
    async def local_stall_state() -> dict[str, float | int]:
        return stall.as_dict()

    @app.post("/_local/faults", response_model=None)
    async def local_faults(spec: FaultSpec, manager: ManagerDep) -> dict[str, bool] | JSONResponse:
        if spec.app not in registry:
            return _not_found(f"App {spec.app!r}")
        manager.add_fault(spec)
        return {"ok": True}

    # --- files -------------------------------------------------------------------

    @app.get("/files/{file_id}", response_model=None)
    async def get_file(file_id: str, files: FilesDep) -> FileResponse | JSONResponse:
        path = files.path_for(file_id)
        if path is None:
            return _not_found("File")
        return FileResponse(path, media_type=FileStore.content_type(path))

    # --- fal queue protocol --------------------------------------------------------

    @app.get(
        "/{owner}/{alias}/requests/{request_id}/status", response_model=None, dependencies=STALLED
    )
    async def status(
        owner: str, alias: str, request_id: str, manager: ManagerDep, logs: str | None = None
    ) -> JSONResponse:
        job = manager.get(f"{owner}/{alias}", request_id)
        if job is None:
            return _not_found("Request")
        with_logs = (logs or "").lower() in ("1", "true", "yes")
        body = {**manager.status(job, with_logs=with_logs), **urls(job)}
        code = 200 if body["status"] == State.COMPLETED.value else 202
        return JSONResponse(body, status_code=code, headers={"X-Fal-Request-Id": request_id})

    @app.get("/{owner}/{alias}/requests/{request_id}", response_model=None, dependencies=STALLED)
    async def result(owner: str, alias: str, request_id: str, manager: ManagerDep) -> JSONResponse:
        job = manager.get(f"{owner}/{alias}", request_id)
        if job is None:
            return _not_found("Request")
        if job.state != State.COMPLETED:
            return _error(400, "Request is still in progress", request_id=request_id)
        if job.error is not None:
            return _error(job.http_status, job.error, job.error_type, request_id=request_id)
        manager.mark_fetched(job)
        return JSONResponse(job.result, headers={"X-Fal-Request-Id": request_id})

    @app.put(
        "/{owner}/{alias}/requests/{request_id}/cancel", response_model=None, dependencies=STALLED
    )
    async def cancel(owner: str, alias: str, request_id: str, manager: ManagerDep) -> JSONResponse:
        job = manager.get(f"{owner}/{alias}", request_id)
        if job is None:
            return _not_found("Request")
        if manager.cancel(job):
            return JSONResponse({"status": "CANCELLATION_REQUESTED"}, status_code=202)
        return JSONResponse({"status": "ALREADY_COMPLETED"}, status_code=400)

    async def submit(
        app_id: str, request: Request, manager: JobManager, fal_webhook: str | None
    ) -> JSONResponse:
        spec: AppSpec[Any] | None = registry.get(app_id)
        if spec is None:
            return _not_found(f"App {app_id!r}")
        try:
            arguments = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return _error(
                422, [{"type": "json_invalid", "loc": ["body"], "msg": "Body is not valid JSON"}]
            )
        if not isinstance(arguments, dict):
            return _error(
                422, [{"type": "model_type", "loc": ["body"], "msg": "Body must be a JSON object"}]
            )
        try:
            inputs = spec.input_model.model_validate(arguments)
        except ValidationError as exc:
            if app_id in mimicked:
                return _error(422, mimicry.validation_detail(exc))
            return _error(422, json.loads(exc.json(include_url=False)))
        lifecycle = _lifecycle(request.headers.get(LIFECYCLE_HEADER))
        if isinstance(lifecycle, JSONResponse):
            return lifecycle
        fault = manager.take_fault(app_id)
        if fault is not None and fault.kind in SUBMIT_FAULTS:
            manager.reject(app_id, arguments)
            logger.info("rejected app=%s (injected %s)", app_id, fault.kind)
        if fault is not None and fault.kind == "submit_500":
            return _error(500, "Internal server error (injected)", "internal_error")
        if fault is not None and fault.kind == "submit_422":
            return _error(
                422, [{"type": "value_error", "loc": ["body"], "msg": "Rejected (injected)"}]
            )
        if fault is not None and fault.kind == "submit_403":
            # As fal answers every request of a locked or exhausted account.
            return _error(403, ACCOUNT_LOCKED_DETAIL)
        job = manager.submit(app_id, arguments, inputs, fal_webhook, fault, lifecycle)
        body = {
            "request_id": job.request_id,
            "status": "IN_QUEUE",
            **urls(job),
            "queue_position": manager.status(job, with_logs=False).get("queue_position", 0),
        }
        return JSONResponse(body, headers={"X-Fal-Request-Id": job.request_id})

    @app.post("/{owner}/{alias}", response_model=None, dependencies=STALLED)
    async def submit_app(
        owner: str,
        alias: str,
        request: Request,
        manager: ManagerDep,
        fal_webhook: str | None = None,
    ) -> JSONResponse:
        return await submit(f"{owner}/{alias}", request, manager, fal_webhook)

    # An endpoint id of more segments (fal-ai/flux-pro/kontext) has a route of its own.
    for app_id in registry:
        if app_id.count("/") > 1:
            app.add_api_route(
                f"/{app_id}",
                _submit_to(app_id, submit),
                methods=["POST"],
                response_model=None,
                dependencies=STALLED,
            )
    return app


def _submit_to(
    app_id: str, submit: Callable[[str, Request, JobManager, str | None], Awaitable[JSONResponse]]
) -> Callable[..., Awaitable[JSONResponse]]:
    async def submit_endpoint(
        request: Request, manager: ManagerDep, fal_webhook: str | None = None
    ) -> JSONResponse:
        return await submit(app_id, request, manager, fal_webhook)

    return submit_endpoint
