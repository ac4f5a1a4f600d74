-- The table holds API bearer tokens (their SHA-256); "sessions" will name the web app's
-- cookie sessions, which are a different thing.
ALTER TABLE sessions RENAME TO bearer_tokens;
ALTER INDEX sessions_user_idx RENAME TO bearer_tokens_user_idx;
ALTER INDEX sessions_pkey RENAME TO bearer_tokens_pkey;
