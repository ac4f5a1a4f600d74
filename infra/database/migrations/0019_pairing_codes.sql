-- Pairing codes: how the Chrome extension gets a device token when the web app cannot
-- message it (api/services/accounts.py, ``create_pairing_code`` and ``pair``). A code is
-- short enough to type, so only its SHA-256 is stored, it lives 10 minutes, and it is
-- deleted by the redeem that uses it, in the transaction that makes the device token (a
-- concurrent redeem of the same code finds the row gone). Housekeeping deletes expired
-- ones; an account's codes go with it.
CREATE TABLE pairing_codes (
    code_hash  bytea PRIMARY KEY,
    user_id    uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL
);
CREATE INDEX pairing_codes_user_idx ON pairing_codes (user_id);
CREATE INDEX pairing_codes_expiry_idx ON pairing_codes (expires_at);
