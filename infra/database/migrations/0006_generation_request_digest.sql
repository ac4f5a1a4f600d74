-- What a generation was asked for (prompt and photo), so that an Idempotency-Key sent
-- again with a different request is refused instead of answered with the first one.
ALTER TABLE generations ADD COLUMN request_digest bytea;
