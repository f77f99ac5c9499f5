-- Keys (stored as the SHA-256 of the key, never the key) and the audit trail. Times are Unix
-- milliseconds.
CREATE TABLE api_keys (
    id TEXT PRIMARY KEY NOT NULL,
    name TEXT NOT NULL,
    key_hash TEXT NOT NULL UNIQUE,
    key_prefix TEXT NOT NULL,
    tenant_id TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    last_used_at BIGINT,
    revoked_at BIGINT
);
CREATE INDEX api_keys_tenant ON api_keys (tenant_id);

CREATE TABLE audit_log (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    time BIGINT NOT NULL,
    key_id TEXT,
    tenant_id TEXT NOT NULL,
    runtime TEXT NOT NULL,
    status TEXT NOT NULL,
    exit_code BIGINT NOT NULL,
    duration_ms BIGINT NOT NULL,
    code_sha256 TEXT NOT NULL,
    input_bytes BIGINT NOT NULL,
    output_bytes BIGINT NOT NULL,
    code TEXT
);
CREATE INDEX audit_log_time ON audit_log (time);
CREATE INDEX audit_log_tenant_time ON audit_log (tenant_id, time);
