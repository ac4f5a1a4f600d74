"""Device tokens: named bearer tokens for the Chrome extension and other API clients,
listed and revoked by their id. Making or revoking one takes a caller signed in with the
password (AccountHolder), never a device token; a device token can only end itself
(``/current``, the extension's Unpair).

Pairing codes make a device token without a credential: the account page makes one, the
extension's popup redeems it (rate limited per address; see api/services/accounts.py)."""

from __future__ import annotations

from uuid import UUID

from fastapi import APIRouter, Depends, status

from api import limits
from api.deps import AccountHolder, AccountsDep, CurrentCaller, CurrentDeviceToken
from api.errors import documented
from api.schemas import (
    DeviceTokenCreate,
    DeviceTokenCreated,
    DeviceTokenList,
    DeviceTokenPublic,
    PairingCodeCreated,
    PairingRedeem,
)
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
    return _created(token, made)


def _created(token: str, made: records.DeviceToken) -> DeviceTokenCreated:
    return DeviceTokenCreated(**_public(made).model_dump(), token=token)


@router.post(
    "/pairing-codes",
    status_code=status.HTTP_201_CREATED,
    response_model=PairingCodeCreated,
    responses=documented(401, 403),
)
async def create_pairing_code(caller: AccountHolder, accounts: AccountsDep) -> PairingCodeCreated:
    made = await accounts.create_pairing_code(caller.user)
    return PairingCodeCreated(code=made.code, expires_at=made.expires_at)


@router.post(
    "/pair",
    status_code=status.HTTP_201_CREATED,
    response_model=DeviceTokenCreated,
    responses=documented(400, 422, 429, s400="The code is unknown, expired or used"),
    dependencies=[Depends(limits.pairing_allowed)],
)
async def pair(body: PairingRedeem, accounts: AccountsDep) -> DeviceTokenCreated:
    token, made = await accounts.pair(body.code, body.name)
    return _created(token, made)


# Before "/{token_id}", which would take "current" for a malformed id.
@router.delete("/current", status_code=status.HTTP_204_NO_CONTENT, responses=documented(401, 403))
async def revoke_current_token(token: CurrentDeviceToken, accounts: AccountsDep) -> None:
    await accounts.end_token(token)


@router.delete(
    "/{token_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=documented(401, 403, 404, 422),
)
async def revoke_token(token_id: UUID, caller: AccountHolder, accounts: AccountsDep) -> None:
    await accounts.revoke_device_token(caller.user, token_id)
