"""The billing routes: HTTP in, a call to BillingService (api/services/billing.py), HTTP
out. Buying tokens takes a signed-in user; the Stripe webhook takes no credentials but
the delivery's own signature (Stripe calls it, not a browser: no cookie, so no CSRF)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Header, Request

from api import limits
from api.deps import CurrentUser
from api.errors import documented
from api.schemas import (
    CheckoutCreate,
    CheckoutCreated,
    PackList,
    PackPublic,
    StripeWebhookReceived,
)
from api.services.billing import BillingService

router = APIRouter(prefix="/v1/billing", tags=["billing"])


def _billing(request: Request) -> BillingService:
    service: BillingService = request.app.state.billing
    return service


BillingDep = Annotated[BillingService, Depends(_billing)]


@router.get("/packs", response_model=PackList, responses=documented(401))
async def list_packs(_: CurrentUser, billing: BillingDep) -> PackList:
    """The token packs for sale."""
    return PackList(
        packs=[
            PackPublic(id=p.id, name=p.name, tokens=p.tokens, price=p.price, currency=p.currency)
            for p in billing.packs()
        ]
    )


@router.post(
    "/checkout",
    response_model=CheckoutCreated,
    responses=documented(
        401,
        403,
        422,
        429,
        503,
        s422="No such pack, a bad Idempotency-Key, or one reused for another pack",
        s429="Too many checkouts opened this hour",
        s503="The payment provider cannot be reached, or payments are off; retry",
    ),
)
async def create_checkout(
    body: CheckoutCreate,
    user: CurrentUser,
    billing: BillingDep,
    request: Request,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
) -> CheckoutCreated:
    """A Stripe Checkout Session for one pack: send the buyer to ``url``. The tokens are
    credited when Stripe reports the payment (its webhook), not when the buyer comes
    back. The same Idempotency-Key gives back the same session."""
    await limits.checkout_allowed(request, str(user.id))
    return CheckoutCreated(url=await billing.checkout(user.id, body.pack, idempotency_key))


@router.post(
    "/stripe/webhook",
    response_model=StripeWebhookReceived,
    responses=documented(
        400,
        s400="Not signed with our webhook secret, signed more than 300 s ago, or not an"
        " event: nothing was done",
    ),
)
async def stripe_webhook(request: Request, billing: BillingDep) -> StripeWebhookReceived:
    """Stripe calls this with each event. The body is read raw: the signature covers it."""
    body = await request.body()
    new = await billing.webhook(request.headers, body)
    return StripeWebhookReceived(duplicate=not new)
