"""What the services refuse, in the services' own words. None of these knows HTTP:
api/errors.py maps each to its status and code, in one table."""

from __future__ import annotations

from typing import Any


class DomainError(Exception):
    """A rule refused the request. ``message`` is a sentence for the person using the
    app; ``retry_after`` (seconds) when trying again later will work."""

    def __init__(self, message: str, *, retry_after: int | None = None, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after
        self.details = details


class NotSignedIn(DomainError):
    """No credentials, or unknown, expired or revoked ones."""


class CsrfRefused(DomainError):
    """A state-changing request on a browser session without its CSRF token, or from
    another site."""


class NotAllowed(DomainError):
    """The credential may not do this (a device token managing tokens or the account)."""


class RateLimited(DomainError):
    """Too many requests of this kind from this caller; ``retry_after`` says when."""


class InvalidInput(DomainError):
    """A field breaks its rules (a control character in a prompt, a weak password)."""


class PhotoTooLarge(DomainError):
    """The photo has more bytes or pixels than allowed."""


class PhotoUnsupported(DomainError):
    """The upload is not a JPEG, PNG or WebP image."""


class KeyReused(DomainError):
    """An Idempotency-Key already names a different request."""


class NoTokens(DomainError):
    """The balance cannot pay for the generation."""


class TokensOwed(NoTokens):
    """The account owes tokens (a payment refunded or disputed after its tokens were
    spent): nothing is charged until a purchase settles it. ``owed`` says how many."""


class EmailTaken(DomainError):
    """An account with this email exists."""


class WrongPassword(DomainError):
    """No account with this email and password."""


class Busy(DomainError):
    """A bounded resource (password hashing) is saturated; retry shortly."""


class CouldNotStart(DomainError):
    """The generation was charged but its workflow could not be started; refunded."""


class NotFound(DomainError):
    """No such thing, or not the caller's (the two look the same)."""


class AlreadyEnded(DomainError):
    """The generation has ended (completed, failed or cancelled): nothing to cancel."""


class InvalidToken(DomainError):
    """An email link's token (verification, password reset) or a pairing code is unknown,
    expired or was used already (the three look the same)."""


class WebhookRefused(DomainError):
    """A provider webhook delivery that is not signed by the provider, is stale, or is
    malformed: nothing was done with it."""


class UnknownPack(InvalidInput):
    """No token pack with this id is for sale."""


class PaymentsUnavailable(Busy):
    """The payment provider could not be reached, or payments are not configured."""
