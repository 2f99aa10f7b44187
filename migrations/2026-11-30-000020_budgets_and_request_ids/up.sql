-- Budgets and request correlation.
--
-- evaluations.max_cost_usd: what the evaluation may spend (NULL: no cap).
-- evaluations.committed_usd: dollars spent by its calls plus the reservations
--   of calls in flight; workers reserve before a call and settle after it, and
--   stop starting calls when a reservation would pass max_cost_usd.
-- evaluations.cost_estimate: the estimate made at submission.
-- evaluations.cancel_reason: why a canceled evaluation was canceled (user,
--   budget, tenant_budget).
-- evaluations.request_id: the X-Request-Id of the request that submitted it,
--   so worker logs can name it even for jobs the sweeper pushes again.
ALTER TABLE evaluations
    ADD COLUMN max_cost_usd double precision CHECK (max_cost_usd IS NULL OR max_cost_usd >= 0),
    ADD COLUMN committed_usd double precision NOT NULL DEFAULT 0,
    ADD COLUMN cost_estimate jsonb,
    ADD COLUMN cancel_reason text CHECK (cancel_reason IN ('user', 'budget', 'tenant_budget')),
    ADD COLUMN request_id text CHECK (length(request_id) <= 128);

-- A tenant's monthly cap on what its evaluations spend.
CREATE TABLE tenant_budgets (
    tenant_id   uuid PRIMARY KEY REFERENCES tenants (id) ON DELETE CASCADE,
    monthly_usd double precision NOT NULL CHECK (monthly_usd >= 0),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- What a tenant's calls spent (and reserved) in a calendar month (UTC).
CREATE TABLE tenant_spend (
    tenant_id     uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    month         date NOT NULL,
    committed_usd double precision NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant_id, month)
);
