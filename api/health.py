"""Liveness (the process answers) and health (everything it depends on answers)."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from temporalio.api.workflowservice.v1 import GetSystemInfoRequest

from infra import liveness
from infra.database import ping

router = APIRouter(tags=["health"])
CHECK_TIMEOUT_SECONDS = 2.0


@router.get("/livez")
async def livez() -> dict[str, bool]:
    return {"ok": True}


async def _postgres(request: Request) -> None:
    await ping(request.app.state.db)


async def _redis(request: Request) -> None:
    await request.app.state.redis.ping()


async def _temporal(request: Request) -> None:
    # GetSystemInfo is what the SDK itself calls on connect, so every Temporal deployment
    # (dev server, self-hosted, Cloud) answers it; the gRPC health service is not exposed
    # everywhere.
    await request.app.state.temporal.workflow_service.get_system_info(GetSystemInfoRequest())


async def _workers(request: Request, queue: str) -> None:
    if not await liveness.alive(request.app.state.redis, queue):
        raise RuntimeError(f"no live worker on task queue {queue!r}")


@router.get("/healthz", responses={503: {"description": "something is missing"}})
async def healthz(request: Request) -> JSONResponse:
    settings = request.app.state.settings
    checks: dict[str, Any] = {
        "postgres": _postgres(request),
        "redis": _redis(request),
        "temporal": _temporal(request),
        # "worker": the interactive pool's (its old name kept for whoever reads this). The
        # batch pool is not checked: it is optional, and scaled to zero while no bulk job
        # runs; a batch generation only waits for it.
        "worker": _workers(request, settings.task_queue),
        "media_worker": _workers(request, settings.media_task_queue),
        "housekeeping_worker": _workers(request, settings.housekeeping_task_queue),
    }
    results = await asyncio.gather(
        *(asyncio.wait_for(c, CHECK_TIMEOUT_SECONDS) for c in checks.values()),
        return_exceptions=True,
    )
    status = {
        name: "ok"
        if not isinstance(result, BaseException)
        else f"{type(result).__name__}: {result}"
        for name, result in zip(checks, results, strict=True)
    }
    missing = [name for name, value in status.items() if value != "ok"]
    body = {"ok": not missing, "checks": status, "missing": missing}
    return JSONResponse(body, status_code=503 if missing else 200)
