"""A production API with payments on refuses to start without both Stripe secrets, each
of its kind: otherwise buyers pay and are never credited."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from infra.settings import Settings

PRODUCTION = {
    "environment": "production",
    "signing_secret": "a-real-secret-of-this-deployment",
    "fal_key": "fal-key",
}


@pytest.mark.parametrize(
    ("key", "webhook_secret", "refusal"),
    [
        ("sk_live_abc", None, "BITBUDDIES_STRIPE_WEBHOOK_SECRET"),
        ("sk_live_abc", "sk_live_abc", "BITBUDDIES_STRIPE_WEBHOOK_SECRET"),
        ("whsec_abc", "whsec_abc", "STRIPE_SECRET_KEY must be a Stripe secret key"),
        ("pk_live_abc", "whsec_abc", "STRIPE_SECRET_KEY must be a Stripe secret key"),
    ],
)
def test_production_refuses_stripe_secrets_that_cannot_credit_a_purchase(
    key: str, webhook_secret: str | None, refusal: str
) -> None:
    with pytest.raises(ValidationError, match=refusal):
        Settings.model_validate(
            {**PRODUCTION, "STRIPE_SECRET_KEY": key, "stripe_webhook_secret": webhook_secret}
        )


def test_production_takes_both_secrets_or_neither() -> None:
    on = Settings.model_validate(
        {**PRODUCTION, "STRIPE_SECRET_KEY": "rk_live_abc", "stripe_webhook_secret": "whsec_x"}
    )
    assert on.stripe_secret_key is not None
    off = Settings.model_validate(PRODUCTION)  # purchases off: checkouts answer 503
    assert off.stripe_secret_key is None and not off.uses_local_stripe
    local = Settings.model_validate(
        {"environment": "local", "STRIPE_SECRET_KEY": "sk_test_abc", "stripe_webhook_secret": None}
    )
    assert local.stripe_secret_key is not None  # local mode checks nothing
