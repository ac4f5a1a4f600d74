-- A generation its owner cancelled ends with a terminal `cancelled` event (before, every
-- generation that did not complete ended with `failed`, its data saying which).
ALTER TABLE generation_events DROP CONSTRAINT generation_events_kind_check;
ALTER TABLE generation_events ADD CONSTRAINT generation_events_kind_check
    CHECK (kind IN ('progress', 'completed', 'failed', 'cancelled'));
