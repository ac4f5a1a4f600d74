"""The model provider's webhooks: HTTP in, a call to ProviderWebhookService
(api/services/providers.py), HTTP out. The provider calls these, not a person: no
credentials but the delivery's own signature."""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel

from api.errors import documented
from api.services.providers import ProviderWebhookService
from workflows.contract import PROVIDER_WEBHOOK_PATH

router = APIRouter(tags=["providers"])


def _webhooks(request: Request) -> ProviderWebhookService:
    service: ProviderWebhookService = request.app.state.provider_webhooks
    return service


WebhooksDep = Annotated[ProviderWebhookService, Depends(_webhooks)]


class WebhookReceived(BaseModel):
    # False for a repeat of a delivery already acted on, or when no workflow waits
    signalled: bool


@router.post(
    PROVIDER_WEBHOOK_PATH,
    response_model=WebhookReceived,
    responses=documented(
        400,
        422,
        503,
        s400="Not signed by the provider with one of its published keys, signed more than"
        " five minutes ago, or malformed: nothing was done",
        s422="generation_id is not a generation id",
        s503="Cannot be acted on now (the provider's keys or the workflow service are out of"
        " reach); the provider delivers again",
    ),
)
async def fal_webhook(
    request: Request,
    webhooks: WebhooksDep,
    generation_id: Annotated[UUID, Query(description="Set by us in the URL we gave fal")],
) -> WebhookReceived:
    """fal calls this when a job we submitted ends. The body is read raw: its SHA-256 is
    part of what fal signs."""
    body = await request.body()
    signalled = await webhooks.deliver(generation_id, request.headers, body)
    return WebhookReceived(signalled=signalled)
