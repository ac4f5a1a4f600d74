-- Browser sessions. The cookie carries a random id; only its SHA-256 is stored, with the
-- CSRF token the pages send back (X-CSRF-Token) on every state-changing request.
CREATE TABLE sessions (
    id_hash    bytea PRIMARY KEY,
    user_id    uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    csrf_token text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL
);
CREATE INDEX sessions_user_idx ON sessions (user_id);
