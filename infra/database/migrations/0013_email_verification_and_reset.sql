-- Email verification, password reset by email, and account deletion.

-- Set once the owner follows the link mailed to them. Accounts from before this stay
-- unverified until they do (in production that is when their free tokens are granted).
ALTER TABLE users ADD COLUMN email_verified_at timestamptz;

-- The links' tokens are random; only their SHA-256 is stored. Each is used once (deleted
-- on use, with every other one of its purpose for that user) and expires; housekeeping
-- deletes expired ones.
CREATE TABLE email_tokens (
    token_hash bytea PRIMARY KEY,
    user_id    uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    purpose    text NOT NULL CHECK (purpose IN ('verify_email', 'reset_password')),
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL
);
CREATE INDEX email_tokens_user_idx ON email_tokens (user_id, purpose);
CREATE INDEX email_tokens_expiry_idx ON email_tokens (expires_at);
-- Housekeeping deletes expired sessions and bearer tokens too.
CREATE INDEX sessions_expiry_idx ON sessions (expires_at);
CREATE INDEX bearer_tokens_expiry_idx ON bearer_tokens (expires_at);

-- A deleted account's ledger entries stay (the ledger keeps every token that moved) but
-- lose their identity: no user, no generation, no key or reason that names either.
-- `erased_account` is a random id made at deletion and stored nowhere else, so the
-- entries of one deleted account still add up together.
ALTER TABLE ledger_entries ALTER COLUMN user_id DROP NOT NULL;
ALTER TABLE ledger_entries ADD COLUMN erased_account uuid;
ALTER TABLE ledger_entries ADD CONSTRAINT ledger_entries_owned
    CHECK ((user_id IS NULL) = (erased_account IS NOT NULL));
CREATE INDEX ledger_erased_idx ON ledger_entries (erased_account) WHERE erased_account IS NOT NULL;

-- Still append-only: no entry is ever deleted, and the one update allowed is that erasure,
-- once per entry, leaving the amount, kind, refund link and time as they were.
CREATE OR REPLACE FUNCTION ledger_is_append_only() RETURNS trigger AS $$
BEGIN
    IF TG_OP = 'UPDATE'
        AND OLD.user_id IS NOT NULL AND NEW.user_id IS NULL
        AND NEW.erased_account IS NOT NULL
        AND NEW.generation_id IS NULL AND NEW.reason IS NULL
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

-- The generations of deleted accounts, kept for a day (the longest a generation runs) so
-- the housekeeping sweep deletes again whatever a workflow still running at deletion
-- writes to storage afterwards, and frees its provider permits. Random ids, nothing else.
CREATE TABLE erased_generations (
    generation_id uuid PRIMARY KEY,
    character_id  uuid,
    erased_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX erased_generations_at_idx ON erased_generations (erased_at);
