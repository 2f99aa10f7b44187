DROP TABLE tenant_spend;
DROP TABLE tenant_budgets;
ALTER TABLE evaluations
    DROP COLUMN request_id,
    DROP COLUMN cancel_reason,
    DROP COLUMN cost_estimate,
    DROP COLUMN committed_usd,
    DROP COLUMN max_cost_usd;
