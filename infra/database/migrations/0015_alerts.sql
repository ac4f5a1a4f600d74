-- Owner alerts (infra/alerts.py): every alert raised, whether it was sent to the owner's
-- phone, went to the log (no Pushover keys), or was suppressed as a repeat of one sent
-- within the dedupe window (and later counted in a digest). `bitbuddies alerts` lists it.
--
-- user_id and generation_id are plain ids, not foreign keys: an alert is about something
-- that may be gone (a deleted account), and must be recordable all the same.
CREATE TABLE alerts (
    id            bigserial PRIMARY KEY,
    -- what raised it, once: a retried activity or a repeated sweep finds its row again
    source_key    text NOT NULL UNIQUE,
    kind          text NOT NULL,
    -- kind:step:error class; repeats of one key within the window are suppressed
    dedupe_key    text NOT NULL,
    title         text NOT NULL,
    message       text NOT NULL,
    user_id       uuid,
    generation_id uuid,
    workflow_id   text,
    run_id        text,
    step          text,
    error_class   text,
    refunded      boolean,
    link          text,
    priority      smallint NOT NULL CHECK (priority BETWEEN -2 AND 2),
    -- pending: recorded, not yet delivered; sent: Pushover accepted it; logged: no
    -- Pushover keys, it went to the log; suppressed: a repeat within the window
    delivery      text NOT NULL CHECK (delivery IN ('pending', 'sent', 'logged', 'suppressed')),
    -- a digest's count of the suppressed alerts it reports; NULL for any other alert
    digest_count  integer,
    -- a suppressed alert: the digest that counted it
    digested_in   bigint REFERENCES alerts (id),
    created_at    timestamptz NOT NULL DEFAULT now(),
    delivered_at  timestamptz
);
CREATE INDEX alerts_created_idx ON alerts (created_at);
CREATE INDEX alerts_dedupe_idx ON alerts (dedupe_key, created_at);
CREATE INDEX alerts_undigested_idx ON alerts (dedupe_key)
    WHERE delivery = 'suppressed' AND digested_in IS NULL;
CREATE INDEX alerts_pending_idx ON alerts (created_at) WHERE delivery = 'pending';
