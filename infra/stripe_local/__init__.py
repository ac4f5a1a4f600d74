"""The local stand-in for Stripe (``python -m infra.stripe_local``): the part of Stripe's
API that billing uses (Checkout Sessions), a hosted payment page with a Pay button, and
signed webhook deliveries with retries. See server.py."""
