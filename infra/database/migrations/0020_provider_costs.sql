-- Provider costs (activities/models.py records them): one row per provider job whose
-- result was fetched: what it ran, how long from its submission to the fetch, and what it cost us (the
-- adapter's price of a call: the fal model map, or BITBUDDIES_LOCAL_MODEL_COSTS).
-- `bitbuddies costs` sums them per day, step and endpoint; `bitbuddies inspect` shows a
-- generation's.
--
-- request_id is unique: a fetch retried after it recorded finds its row and records
-- nothing more. The generation is kept while it exists; when its account is deleted the
-- row stays, without it: the spend happened either way (anonymous, as the ledger keeps a
-- deleted account's entries stripped of identity). A fetch that ends after the deletion
-- records its row without a generation too (infra/database/costs.py).
CREATE TABLE provider_costs (
    id            bigserial PRIMARY KEY,
    request_id    text NOT NULL UNIQUE,
    generation_id uuid REFERENCES generations (id) ON DELETE SET NULL,
    step          text NOT NULL,
    app           text NOT NULL,
    -- submission (provider_jobs.created_at) to the fetch that recorded this row
    seconds       double precision NOT NULL CHECK (seconds >= 0),
    cost_usd      numeric(12, 6) NOT NULL CHECK (cost_usd >= 0),
    recorded_at   timestamptz NOT NULL DEFAULT now()
);
-- per-day sums (`bitbuddies costs`, the daily spend alert)
CREATE INDEX provider_costs_recorded_idx ON provider_costs (recorded_at);
CREATE INDEX provider_costs_generation_idx ON provider_costs (generation_id);
