DROP INDEX evaluations_tenant_active_idx;
DROP TABLE tenant_limits;
DROP TABLE idempotency_keys;
ALTER TABLE api_keys
    DROP COLUMN name,
    DROP COLUMN expires_at;
