-- Per-key overrides of the server's tenantLimits (NULL: the server's value).
ALTER TABLE api_keys ADD COLUMN max_concurrent BIGINT;
ALTER TABLE api_keys ADD COLUMN max_queue BIGINT;
ALTER TABLE api_keys ADD COLUMN max_sessions BIGINT;
