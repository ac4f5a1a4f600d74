-- Device tokens (the Chrome extension, API clients) are bearer tokens with a name, listed
-- and revoked by their id; a log-in's token has no name. A device token cannot make or
-- revoke tokens, nor change the password (api/deps.py: Caller.device).
ALTER TABLE bearer_tokens ADD COLUMN id uuid NOT NULL DEFAULT gen_random_uuid();
ALTER TABLE bearer_tokens ADD COLUMN name text;
ALTER TABLE bearer_tokens ADD COLUMN device boolean NOT NULL DEFAULT false;
CREATE UNIQUE INDEX bearer_tokens_id_key ON bearer_tokens (id);
