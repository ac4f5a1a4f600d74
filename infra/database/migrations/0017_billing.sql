-- Token purchases with Stripe Checkout (api/services/billing.py).
--
-- checkout_sessions: one row per Checkout Session we created, written before its URL is
-- handed out. tokens and amount are copied from the pack at that moment, so a later
-- change of the packs never changes what a paid session credits. Status:
--   open     created, not paid (yet)
--   pending  completed with an asynchronous payment method still clearing
--   paid     credited (ledger entry of kind 'purchase' keyed by the session id)
--   failed   the asynchronous payment failed
--   expired  Stripe expired it unpaid
-- user_id becomes NULL when the account is deleted: the record of a payment stays.
CREATE TABLE checkout_sessions (
    id          text PRIMARY KEY,
    user_id     uuid REFERENCES users (id) ON DELETE SET NULL,
    pack        text NOT NULL,
    tokens      integer NOT NULL CHECK (tokens > 0),
    amount      integer NOT NULL CHECK (amount > 0),
    currency    text NOT NULL,
    status      text NOT NULL DEFAULT 'open'
                CHECK (status IN ('open', 'pending', 'paid', 'failed', 'expired')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX checkout_sessions_user ON checkout_sessions (user_id);

-- The inbox of Stripe webhook events, one row per event id, written in the same
-- transaction as what the event did: Stripe delivers at least once, and a repeat finds
-- its row and changes nothing.
CREATE TABLE stripe_events (
    id           text PRIMARY KEY,
    type         text NOT NULL,
    session_id   text,
    received_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX stripe_events_session ON stripe_events (session_id);
