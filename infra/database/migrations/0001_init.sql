-- Accounts, the token ledger, generations, characters, and provider concurrency permits.

CREATE TABLE users (
    id            uuid PRIMARY KEY,
    email         text NOT NULL,
    password_hash text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX users_email_key ON users (lower(email));

-- Bearer tokens are random; only their SHA-256 is stored.
CREATE TABLE sessions (
    token_hash bytea PRIMARY KEY,
    user_id    uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL
);
CREATE INDEX sessions_user_idx ON sessions (user_id);

-- The balance is a cached sum of the ledger, updated in the same transaction as each
-- entry; the CHECK makes a negative balance impossible even under concurrent charges.
CREATE TABLE balances (
    user_id uuid PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    tokens  integer NOT NULL DEFAULT 0 CHECK (tokens >= 0)
);

CREATE TABLE generations (
    id              uuid PRIMARY KEY,
    user_id         uuid NOT NULL REFERENCES users (id),
    idempotency_key text,
    prompt          text NOT NULL,
    photo_key       text NOT NULL,
    status          text NOT NULL DEFAULT 'queued'
                    CHECK (status IN ('queued', 'running', 'completed', 'failed', 'cancelled')),
    step            text,
    error           text,
    error_code      text,
    character_id    uuid,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX generations_idempotency_key ON generations (user_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX generations_user_idx ON generations (user_id, created_at DESC);
CREATE INDEX generations_status_idx ON generations (status, created_at);

-- Append-only. Every entry carries a unique idempotency key, so a retried charge or refund
-- finds its earlier entry instead of moving money again. `refund_of` is unique, so one
-- charge is refunded at most once whatever key the refund came with.
CREATE TABLE ledger_entries (
    id              bigserial PRIMARY KEY,
    user_id         uuid NOT NULL REFERENCES users (id),
    delta           integer NOT NULL CHECK (delta <> 0),
    kind            text NOT NULL CHECK (kind IN ('grant', 'purchase', 'charge', 'refund')),
    idempotency_key text NOT NULL UNIQUE,
    generation_id   uuid REFERENCES generations (id),
    refund_of       bigint UNIQUE REFERENCES ledger_entries (id),
    reason          text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    CHECK ((kind = 'refund') = (refund_of IS NOT NULL))
);
CREATE INDEX ledger_user_idx ON ledger_entries (user_id, id);
CREATE INDEX ledger_generation_idx ON ledger_entries (generation_id);

CREATE FUNCTION ledger_is_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'ledger_entries is append-only';
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER ledger_append_only BEFORE UPDATE OR DELETE ON ledger_entries
    FOR EACH ROW EXECUTE FUNCTION ledger_is_append_only();

CREATE TABLE characters (
    id            uuid PRIMARY KEY,
    user_id       uuid NOT NULL REFERENCES users (id),
    generation_id uuid NOT NULL UNIQUE REFERENCES generations (id),
    prompt        text NOT NULL,
    webm_key      text NOT NULL,
    webp_key      text NOT NULL,
    png_key       text NOT NULL,
    width         integer NOT NULL,
    height        integer NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX characters_user_idx ON characters (user_id, created_at DESC);

-- Model jobs already submitted to a provider, by the workflow's idempotency key, so a
-- retried submit returns the earlier job instead of paying for a second one.
CREATE TABLE provider_jobs (
    idempotency_key text PRIMARY KEY,
    generation_id   uuid NOT NULL,
    step            text NOT NULL,
    app             text NOT NULL,
    request_id      text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now()
);

-- Leases that cap jobs in flight per model across every worker. A holder renews its
-- lease while its job runs; a lease nobody renews (a terminated workflow) expires.
CREATE TABLE provider_permits (
    limiter    text NOT NULL,
    holder     text NOT NULL,
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (limiter, holder)
);
