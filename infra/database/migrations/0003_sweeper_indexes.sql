-- What the sweeper and cleanup look up, without scanning whole tables as they grow:
-- a generation's provider jobs, and the open generations that stopped moving.
CREATE INDEX provider_jobs_generation_idx ON provider_jobs (generation_id);
CREATE INDEX generations_open_idx ON generations (updated_at)
    WHERE status IN ('queued', 'running');
