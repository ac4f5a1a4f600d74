"""The signed-in user's token ledger: HTTP in, api/services/ledger.py, HTTP out."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from api.deps import ConnDep, CurrentUser
from api.errors import documented
from api.schemas import LedgerEntryPublic, LedgerPage
from api.services import ledger as statements

router = APIRouter(prefix="/v1/billing", tags=["billing"])


@router.get(
    "/ledger",
    response_model=LedgerPage,
    responses=documented(401, 422, s422="`before` or `limit` out of range"),
)
async def get_ledger(
    user: CurrentUser,
    conn: ConnDep,
    before: Annotated[
        int | None,
        Query(ge=1, le=2**63 - 1, description="Entries with an id below this: a next_before"),
    ] = None,
    limit: Annotated[
        int, Query(ge=1, le=statements.MAX_PAGE, description="At most this many (1 to 100)")
    ] = statements.DEFAULT_PAGE,
) -> LedgerPage:
    """Your token ledger, newest first: purchases (each with its payment), sign-up and
    other grants, charges and refunds (each with its generation), and a refunded or
    disputed payment's reversals, reinstatements and debt settlements. Page with
    ``next_before``."""
    page = await statements.statement(conn, user.id, before=before, limit=limit)
    return LedgerPage(
        entries=[
            LedgerEntryPublic(
                id=e.id,
                kind=e.kind,
                delta=e.delta,
                created_at=e.created_at,
                generation_id=e.generation_id,
                payment_id=e.payment_id,
                reason=e.reason,
            )
            for e in page.entries
        ],
        next_before=page.next_before,
    )
