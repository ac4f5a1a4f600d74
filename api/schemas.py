"""The public HTTP contract (web app and Chrome extension). Change only additively."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from pydantic import BaseModel, Field, field_validator, model_validator

from api.services import text
from workflows.contract import Status

GenerationStatus = Status


class SignupCreate(BaseModel):
    email: str = Field(max_length=320, description="Stored normalised: Unicode NFKC, case-folded")
    password: str = Field(
        max_length=256,
        description=f"At least {text.MIN_PASSWORD_CHARS} characters, not a common password",
    )

    @field_validator("email")
    @classmethod
    def _email(cls, value: str) -> str:
        return text.normalize_email(value)

    @model_validator(mode="after")
    def _password(self) -> SignupCreate:
        text.check_new_password(self.password, email=self.email)
        return self


class LoginCreate(BaseModel):
    email: str = Field(max_length=320)
    password: str = Field(max_length=256)

    @field_validator("email")
    @classmethod
    def _email(cls, value: str) -> str:
        return text.normalize_email(value)

    @field_validator("password")
    @classmethod
    def _password(cls, value: str) -> str:
        text.check_password_text(value)
        return value


class UserPublic(BaseModel):
    id: UUID
    email: str


class SignupPublic(BaseModel):
    token: str
    user: UserPublic


class LoginPublic(BaseModel):
    token: str


class SessionPublic(BaseModel):
    """A browser session: its id travels only in the HttpOnly cookie; the page keeps the
    CSRF token and sends it as X-CSRF-Token on every state-changing request."""

    csrf_token: str
    user: UserPublic


class PasswordChange(BaseModel):
    current_password: str = Field(max_length=256)
    new_password: str = Field(
        max_length=256,
        description=f"At least {text.MIN_PASSWORD_CHARS} characters, not a common password",
    )


class DeviceTokenCreate(BaseModel):
    name: str = Field(max_length=400, description="What it is for, e.g. 'Chrome at work'")

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return text.clean_label(value, max_chars=100)


class DeviceTokenPublic(BaseModel):
    id: UUID
    name: str | None
    created_at: datetime
    expires_at: datetime


class DeviceTokenCreated(DeviceTokenPublic):
    token: str = Field(description="Shown this once: send it as 'Authorization: Bearer <token>'")


class DeviceTokenList(BaseModel):
    tokens: list[DeviceTokenPublic]


class PairingCodeCreated(BaseModel):
    code: str = Field(description="Type it in the extension's popup: 8 characters, ABCD-EFGH")
    expires_at: datetime = Field(description="It works once, until then (10 minutes)")


class PairingRedeem(DeviceTokenCreate):
    code: str = Field(
        max_length=64, description="A pairing code, in any case, with or without its dash"
    )
    name: str = Field("Chrome extension", max_length=400, description="The device token's name")


class ExtensionPublic(BaseModel):
    extension_ids: list[str] = Field(
        description="The Chrome extension's ids, for chrome.runtime.sendMessage"
    )


class MePublic(BaseModel):
    id: UUID
    email: str
    balance: int
    owed: int = Field(
        default=0,
        description="Tokens owed for a payment refunded or disputed after its tokens were"
        " spent; the next purchase settles them, and no generation starts until it does",
    )
    email_verified: bool = Field(description="Whether the emailed verification link was followed")


class AccountDelete(BaseModel):
    password: str = Field(max_length=256, description="The account's password, to confirm")

    @field_validator("password")
    @classmethod
    def _password(cls, value: str) -> str:
        text.check_password_text(value)
        return value


class EmailToken(BaseModel):
    """The token of an emailed link (the part after ``#token=``)."""

    token: str = Field(min_length=1, max_length=200)


class EmailVerified(BaseModel):
    verified: bool
    granted: int = Field(description="Tokens granted by this verification; 0 if already")


class PasswordResetRequest(BaseModel):
    email: str = Field(max_length=320)

    @field_validator("email")
    @classmethod
    def _email(cls, value: str) -> str:
        return text.normalize_email(value)


class PasswordResetConfirm(BaseModel):
    token: str = Field(min_length=1, max_length=200)
    new_password: str = Field(
        max_length=256,
        description=f"At least {text.MIN_PASSWORD_CHARS} characters, not a common password",
    )


class GenerationCreated(BaseModel):
    id: UUID
    status: GenerationStatus
    events_url: str


class GenerationPublic(BaseModel):
    id: UUID
    status: GenerationStatus
    step: str | None
    error: str | None
    character_id: UUID | None


class CharacterAssets(BaseModel):
    webm: str = Field(description="Transparent VP9 WebM (Chrome, Firefox, Edge)")
    webp: str = Field(description="Animated WebP fallback with alpha")
    png: str = Field(description="Transparent PNG poster (first frame)")


class CharacterPublic(BaseModel):
    id: UUID
    prompt: str
    created_at: datetime
    assets: CharacterAssets = Field(
        description="Signed links, valid for 15 minutes; or fetch"
        " /v1/characters/{id}/assets/{format} with your credentials"
    )
    shared: bool = Field(False, description="Whether its public share page is on")
    share_url: str | None = Field(None, description="The public share page, while it is on")


class ShareChange(BaseModel):
    shared: bool


class ShareState(BaseModel):
    shared: bool
    share_url: str | None


class SharedCharacter(BaseModel):
    """A shared character as anyone sees it: its animation, nothing of its owner."""

    assets: CharacterAssets
    width: int
    height: int


class CharacterList(BaseModel):
    characters: list[CharacterPublic]


class PackPublic(BaseModel):
    id: str
    name: str
    tokens: int
    price: int = Field(description="In the currency's minor units (cents)")
    currency: str = Field(description="ISO 4217, lower case (eur)")


class PackList(BaseModel):
    packs: list[PackPublic]


class CheckoutCreate(BaseModel):
    pack: str = Field(max_length=40, description="A pack's id from GET /v1/billing/packs")


class CheckoutCreated(BaseModel):
    url: str = Field(description="Stripe's hosted payment page: send the buyer there")


class StripeWebhookReceived(BaseModel):
    duplicate: bool = Field(description="True for a repeat of an event already acted on")


class LedgerEntryPublic(BaseModel):
    """One movement of tokens on your account."""

    id: int
    kind: str = Field(
        description="purchase, signup_grant, admin_grant (from us, with its reason), grant,"
        " charge, refund, reversal (tokens of a refunded or disputed payment taken back),"
        " reinstatement (given back: a dispute won) or debt (tokens owed, settled out of a"
        " credit); more kinds may come"
    )
    delta: int = Field(description="Tokens added (positive) or taken (negative)")
    created_at: datetime
    generation_id: UUID | None = Field(description="The generation a charge or refund is for")
    payment_id: str | None = Field(
        default=None,
        description="The payment (Stripe Checkout Session) a purchase, reversal or"
        " reinstatement belongs to",
    )
    reason: str | None = Field(
        description="What it was, in words: the reason we gave for a grant of ours, else a"
        " description of its kind"
    )


class LedgerPage(BaseModel):
    entries: list[LedgerEntryPublic] = Field(description="Newest first")
    next_before: int | None = Field(
        description="Send as ?before= for the next page; null when this is the last"
    )
