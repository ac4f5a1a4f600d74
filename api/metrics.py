"""``GET /metrics``: this API process's Prometheus metrics (infra/metrics.py), outside the
OpenAPI document. Who may read them is ``infra.metrics.access``: the bearer token of
BITBUDDIES_METRICS_TOKEN when it is set (401 without it); without one, loopback callers
locally and nobody in production, who get the 404 of any unknown address."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from starlette.exceptions import HTTPException

from api.services.errors import NotSignedIn
from infra import metrics
from infra.settings import Settings

router = APIRouter(tags=["metrics"])


@router.get("/metrics", include_in_schema=False)
async def read_metrics(request: Request) -> Response:
    settings: Settings = request.app.state.settings
    client = request.client.host if request.client else None
    verdict = metrics.access(settings, request.headers.get("Authorization"), client)
    if verdict == "unauthorized":
        raise NotSignedIn("Reading metrics needs the metrics token.")
    if verdict == "hidden":
        raise HTTPException(404)  # answered exactly as an unknown address
    return Response(await metrics.exposition_in_thread(), media_type=metrics.CONTENT_TYPE)
