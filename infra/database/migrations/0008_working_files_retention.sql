-- A generation's working files (the uploaded photo and every intermediate result, under
-- generations/<id>/ in storage) are deleted once it has ended and the retention setting
-- has passed; only the character's assets stay. This records when that was done, and
-- the index finds what is still to do without scanning finished work.
ALTER TABLE generations ADD COLUMN files_discarded_at timestamptz;
CREATE INDEX generations_files_to_discard ON generations (updated_at)
    WHERE files_discarded_at IS NULL AND status IN ('completed', 'failed', 'cancelled');
