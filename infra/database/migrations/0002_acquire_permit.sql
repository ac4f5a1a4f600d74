-- Take (or renew) a provider permit in one round trip; see activities/permits.py.
-- Callers for one limiter are serialised by a transaction-scoped advisory lock, and the
-- function is VOLATILE, so under READ COMMITTED each statement below sees every permit
-- committed before the lock was granted: the count cannot go stale.
CREATE FUNCTION acquire_provider_permit(
    p_limiter text, p_holder text, p_ttl interval, p_max integer
) RETURNS boolean
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    held integer;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext(p_limiter));
    DELETE FROM provider_permits WHERE limiter = p_limiter AND expires_at < now();
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
