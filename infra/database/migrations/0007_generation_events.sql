-- The durable record of a generation's progress. Redis only wakes the streams up: it may
-- lose everything at any moment (a restart without persistence, a cache-tier hosted
-- Redis), and an event id that a client holds as its Last-Event-ID must never name a
-- different event afterwards. Ids are positions (1, 2, 3, ...) per generation, given
-- out under the generation row's lock, so they are gapless and never reused.
CREATE TABLE generation_events (
    generation_id uuid NOT NULL REFERENCES generations (id) ON DELETE CASCADE,
    id            bigint NOT NULL CHECK (id > 0),
    dedupe        text NOT NULL,
    kind          text NOT NULL CHECK (kind IN ('progress', 'completed', 'failed')),
    data          jsonb NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (generation_id, id),
    UNIQUE (generation_id, dedupe)
);
-- At most one terminal event per generation.
CREATE UNIQUE INDEX generation_events_one_terminal ON generation_events (generation_id)
    WHERE kind <> 'progress';

-- Append one event, at most once per dedupe key (an activity retried after a crash does
-- not repeat itself), and nothing after the terminal event. Returns the event that now
-- stands for the request: the new one, the earlier one with the same dedupe key, or the
-- terminal event when the log has ended.
CREATE FUNCTION append_generation_event(
    p_generation uuid, p_dedupe text, p_kind text, p_data jsonb
) RETURNS TABLE (event_id bigint, event_kind text, event_data jsonb)
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    PERFORM 1 FROM generations g WHERE g.id = p_generation FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no generation %', p_generation USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN QUERY
        SELECT e.id, e.kind, e.data FROM generation_events e
        WHERE e.generation_id = p_generation AND (e.dedupe = p_dedupe OR e.kind <> 'progress')
        ORDER BY (e.dedupe = p_dedupe) DESC
        LIMIT 1;
    IF FOUND THEN
        RETURN;
    END IF;
    RETURN QUERY
        INSERT INTO generation_events AS n (generation_id, id, dedupe, kind, data)
        SELECT p_generation, coalesce(max(x.id), 0) + 1, p_dedupe, p_kind, p_data
            FROM generation_events x WHERE x.generation_id = p_generation
        RETURNING n.id, n.kind, n.data;
END;
$$;
