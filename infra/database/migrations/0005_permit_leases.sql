-- A permit whose job may be in flight at the provider is never handed to another job on
-- time alone. A lease is marked submitted just before its job is sent; from then on it
-- ends only when it is released (fetch, the workflow's cleanup, a refused submit, or the
-- sweeper settling an ended workflow), never by expiry. Only a lease taken but never
-- used for a submit (its worker died in between) still expires after its TTL.
--
-- `generation_id` lets the sweeper free a submitted lease whose job was never recorded in
-- provider_jobs (the worker died between sending the job and recording it).
ALTER TABLE provider_permits
    ADD COLUMN submitted_at  timestamptz,
    ADD COLUMN generation_id uuid;
CREATE INDEX provider_permits_generation_idx ON provider_permits (generation_id)
    WHERE generation_id IS NOT NULL;

-- Leases taken before this migration whose job was recorded are submitted ones.
UPDATE provider_permits p SET submitted_at = j.created_at, generation_id = j.generation_id
    FROM provider_jobs j WHERE j.idempotency_key = p.holder;

-- As in 0002, with one change: an expired lease is deleted only if it was never marked
-- submitted and no job is recorded under its holder key (a worker still running the
-- code from before this migration records jobs but does not mark leases).
CREATE OR REPLACE FUNCTION acquire_provider_permit(
    p_limiter text, p_holder text, p_ttl interval, p_max integer
) RETURNS boolean
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    held integer;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext(p_limiter));
    DELETE FROM provider_permits p
        WHERE p.limiter = p_limiter AND p.expires_at < now() AND p.submitted_at IS NULL
          AND NOT EXISTS (SELECT 1 FROM provider_jobs j WHERE j.idempotency_key = p.holder);
    UPDATE provider_permits SET expires_at = now() + p_ttl
        WHERE limiter = p_limiter AND holder = p_holder;
    IF FOUND THEN
        RETURN true;
    END IF;
    SELECT count(*) INTO held FROM provider_permits WHERE limiter = p_limiter;
    IF held >= p_max THEN
        RETURN false;
    END IF;
    INSERT INTO provider_permits (limiter, holder, expires_at)
        VALUES (p_limiter, p_holder, now() + p_ttl);
    RETURN true;
END;
$$;
