-- When each key was last used, to the hour: the key lookup (at most once per key, worker and
-- 10 s, thanks to the workers' key cache) sets it only when the stored time is an hour old,
-- so a busy key costs one row update an hour, not one per request.

ALTER TABLE api_keys ADD COLUMN last_used_at timestamptz;
