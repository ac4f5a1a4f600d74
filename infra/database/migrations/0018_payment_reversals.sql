-- Refunds and disputes of token purchases (billing/payments.py, apply_payment_change).
--
-- A payment refunded (wholly or in part) or disputed takes back the tokens it bought, in
-- proportion to the money that went back: the unspent ones as a ledger 'reversal', the
-- rest as a debt (token_debts) that blocks new generations until it is settled. A credit
-- to an account that owes (a purchase, a grant, a generation's refund) settles the debt
-- first, as a ledger 'debt' entry. A dispute the seller wins gives back what it took: the
-- debt it left is cancelled (a negative token_debts row) and the rest comes back as a
-- ledger 'reinstatement'.

ALTER TABLE checkout_sessions ADD COLUMN payment_intent text UNIQUE;
-- Stripe's charge.amount_refunded: the money given back so far, which only grows.
ALTER TABLE checkout_sessions ADD COLUMN amount_refunded integer NOT NULL DEFAULT 0
    CHECK (amount_refunded >= 0);
-- A paid session of a deleted account credits nobody: its payment is refunded in full at
-- Stripe, and the refund's id is kept here.
ALTER TABLE checkout_sessions ADD COLUMN returned_refund text;

-- The disputes of our payments, by Stripe's id. A closed dispute is final (an event about
-- it that arrives late changes nothing).
CREATE TABLE payment_disputes (
    id          text PRIMARY KEY,
    session_id  text NOT NULL REFERENCES checkout_sessions (id),
    amount      integer NOT NULL CHECK (amount > 0),
    status      text NOT NULL,
    closed      boolean NOT NULL DEFAULT false,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX payment_disputes_session ON payment_disputes (session_id);

-- What an account owes: rows add (a take-back its balance could not cover) or cancel (a
-- dispute won), ledger 'debt' entries settle. Outstanding = sum(tokens) + sum(debt deltas).
-- Gone with the account: a deleted account's debt is forgiven.
CREATE TABLE token_debts (
    id              bigserial PRIMARY KEY,
    user_id         uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    session_id      text NOT NULL REFERENCES checkout_sessions (id),
    tokens          integer NOT NULL CHECK (tokens <> 0),
    idempotency_key text NOT NULL UNIQUE,
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX token_debts_user ON token_debts (user_id);
CREATE INDEX token_debts_session ON token_debts (session_id);

-- The payment (Checkout Session) a purchase, reversal or reinstatement belongs to.
ALTER TABLE ledger_entries ADD COLUMN payment_id text;
ALTER TABLE ledger_entries DROP CONSTRAINT ledger_entries_kind_check;
ALTER TABLE ledger_entries ADD CONSTRAINT ledger_entries_kind_check CHECK (
    kind IN ('grant', 'purchase', 'charge', 'refund', 'reversal', 'reinstatement', 'debt')
);
CREATE INDEX ledger_payment_idx ON ledger_entries (payment_id) WHERE payment_id IS NOT NULL;
CREATE INDEX ledger_debt_idx ON ledger_entries (user_id) WHERE kind = 'debt';

ALTER TABLE ledger_entries DISABLE TRIGGER ledger_append_only;
UPDATE ledger_entries SET payment_id = substr(idempotency_key, length('purchase:') + 1)
    WHERE kind = 'purchase' AND idempotency_key LIKE 'purchase:%';
ALTER TABLE ledger_entries ENABLE TRIGGER ledger_append_only;

-- The erasure of a deleted account's entries removes the payment too (Stripe links a
-- payment to the buyer's email).
CREATE OR REPLACE FUNCTION ledger_is_append_only() RETURNS trigger AS $$
BEGIN
    IF TG_OP = 'UPDATE'
        AND OLD.user_id IS NOT NULL AND NEW.user_id IS NULL
        AND NEW.erased_account IS NOT NULL
        AND NEW.generation_id IS NULL AND NEW.reason IS NULL AND NEW.payment_id IS NULL
        AND NEW.idempotency_key = 'erased:' || OLD.id
        AND NEW.id = OLD.id AND NEW.delta = OLD.delta AND NEW.kind = OLD.kind
        AND NEW.refund_of IS NOT DISTINCT FROM OLD.refund_of
        AND NEW.created_at = OLD.created_at
    THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'ledger_entries is append-only';
END;
$$ LANGUAGE plpgsql;
