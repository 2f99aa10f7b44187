-- The API as a contract: key lifecycle, idempotent POSTs, per-tenant limits.

-- Keys may expire and carry a name an operator chose; a key past its
-- expiry answers 401 like a revoked one.
ALTER TABLE api_keys
    ADD COLUMN expires_at timestamptz,
    ADD COLUMN name text CHECK (name IS NULL OR length(name) BETWEEN 1 AND 200);

-- One row per Idempotency-Key a tenant sent on a POST, kept 24 hours.
-- Claimed (status in_progress) before the work starts, completed with the
-- response to replay. A claim whose request died is taken over once
-- `locked_at` is older than the lock timeout, so no key stays stuck.
CREATE TABLE idempotency_keys (
    tenant_id        uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    idempotency_key  text NOT NULL CHECK (length(idempotency_key) BETWEEN 1 AND 255),
    -- Who holds the claim: only that request may complete or release it.
    claim_id         uuid NOT NULL,
    status           text NOT NULL CHECK (status IN ('in_progress', 'completed')),
    -- SHA-256 of method, path, query, content type and body; set on completion.
    request_hash     bytea,
    response_status  integer,
    response_headers jsonb,
    response_body    bytea,
    locked_at        timestamptz NOT NULL DEFAULT now(),
    created_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, idempotency_key),
    CHECK (status = 'in_progress' OR (request_hash IS NOT NULL AND response_status IS NOT NULL))
);
-- The purge of keys older than 24 hours goes by age.
CREATE INDEX idempotency_keys_created_idx ON idempotency_keys (created_at);

-- Per-tenant overrides of the deployment's defaults; NULL keeps the default.
CREATE TABLE tenant_limits (
    tenant_id               uuid PRIMARY KEY REFERENCES tenants (id) ON DELETE CASCADE,
    reads_per_minute        integer CHECK (reads_per_minute > 0),
    read_burst              integer CHECK (read_burst > 0),
    writes_per_minute       integer CHECK (writes_per_minute > 0),
    write_burst             integer CHECK (write_burst > 0),
    max_runs_per_evaluation integer CHECK (max_runs_per_evaluation > 0),
    max_active_evaluations  integer CHECK (max_active_evaluations > 0),
    updated_at              timestamptz NOT NULL DEFAULT now()
);

-- The active-evaluations quota counts a tenant's queued and running ones at each submission.
CREATE INDEX evaluations_tenant_active_idx ON evaluations (tenant_id)
    WHERE status IN ('queued', 'running');
