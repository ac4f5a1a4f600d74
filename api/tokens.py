"""Device tokens: named bearer tokens for the Chrome extension and other API clients,
listed and revoked by their id. Making or revoking one takes a caller signed in with the
password (AccountHolder), never a device token."""

from __future__ import annotations

from uuid import UUID

from fastapi import APIRouter, status

from api.deps import AccountHolder, AccountsDep, CurrentCaller
from api.errors import documented
from api.schemas import DeviceTokenCreate, DeviceTokenCreated, DeviceTokenList, DeviceTokenPublic
from infra.database import records

router = APIRouter(prefix="/v1/tokens", tags=["tokens"])


def _public(token: records.DeviceToken) -> DeviceTokenPublic:
    return DeviceTokenPublic(
        id=token.id, name=token.name, created_at=token.created_at, expires_at=token.expires_at
    )


@router.get("", response_model=DeviceTokenList, responses=documented(401))
async def list_tokens(caller: CurrentCaller, accounts: AccountsDep) -> DeviceTokenList:
    return DeviceTokenList(tokens=[_public(t) for t in await accounts.device_tokens(caller.user)])


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=DeviceTokenCreated,
    responses=documented(401, 403, 422),
)
async def create_token(
    body: DeviceTokenCreate, caller: AccountHolder, accounts: AccountsDep
) -> DeviceTokenCreated:
    token, made = await accounts.create_device_token(caller.user, body.name)
    return DeviceTokenCreated(**_public(made).model_dump(), token=token)


@router.delete(
    "/{token_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=documented(401, 403, 404, 422),
)
async def revoke_token(token_id: UUID, caller: AccountHolder, accounts: AccountsDep) -> None:
    await accounts.revoke_device_token(caller.user, token_id)
