-- Provider webhook deliveries already acted on (api/services/providers.py), one row per
-- job and outcome (fal sends one per job: OK or ERROR): fal retries a delivery for
-- hours, and a replayed one must change nothing, so only the first signals the workflow. The sweep forgets rows after a
-- day (a delivery older than five minutes is refused by its timestamp anyway).
--
-- generation_id is a plain id, not a foreign key: a webhook may come for a generation
-- whose account was deleted since.
CREATE TABLE provider_webhooks (
    request_id    text NOT NULL,
    ok            boolean NOT NULL,
    generation_id uuid NOT NULL,
    received_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (request_id, ok)
);
CREATE INDEX provider_webhooks_received_at ON provider_webhooks (received_at);
