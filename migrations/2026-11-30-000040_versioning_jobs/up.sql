-- Versioning jobs: eval-gated promotions and prompt optimizations. Each row
-- is the job's whole state (a state machine the worker advances); Redis only
-- carries `{tenant_id, id}` and may lose it: the sweeper pushes again every
-- unfinished row whose push is gone.

CREATE TABLE promotions (
    id                      uuid PRIMARY KEY,
    tenant_id               uuid NOT NULL,
    prompt_id               uuid NOT NULL,
    label                   text NOT NULL,
    candidate_version_id    uuid NOT NULL,
    -- What the label named at submission: the move is a compare-and-set on it.
    baseline_version_id     uuid NOT NULL,
    -- dataset_id, models, graders, params, repeat, threshold.
    setup                   jsonb NOT NULL,
    policy                  jsonb NOT NULL,
    status                  text NOT NULL DEFAULT 'queued' CHECK (status IN
        ('queued', 'evaluating', 'promoted', 'rejected', 'superseded', 'failed', 'canceled')),
    baseline_evaluation_id  uuid,
    candidate_evaluation_id uuid,
    -- The baseline's evaluation was a finished identical one, not a new run.
    baseline_reused         boolean NOT NULL DEFAULT false,
    candidate_reused        boolean NOT NULL DEFAULT false,
    comparison              jsonb,
    reason                  text,
    -- The optimization that chained it, if any.
    optimization_id         uuid,
    -- Task id of the live push, so the sweeper can ask Redis whether it is gone.
    job_id                  uuid,
    request_id              text,
    created_at              timestamptz NOT NULL DEFAULT now(),
    updated_at              timestamptz NOT NULL DEFAULT now(),
    finished_at             timestamptz,
    FOREIGN KEY (tenant_id, prompt_id) REFERENCES prompts (tenant_id, id),
    FOREIGN KEY (tenant_id, prompt_id, candidate_version_id)
        REFERENCES prompt_versions (tenant_id, prompt_id, id),
    FOREIGN KEY (tenant_id, prompt_id, baseline_version_id)
        REFERENCES prompt_versions (tenant_id, prompt_id, id)
);
CREATE INDEX promotions_tenant_idx ON promotions (tenant_id, id);
CREATE INDEX promotions_unfinished_idx ON promotions (updated_at)
    WHERE status IN ('queued', 'evaluating');

CREATE TABLE optimizations (
    id                       uuid PRIMARY KEY,
    tenant_id                uuid NOT NULL,
    prompt_id                uuid NOT NULL,
    from_version_id          uuid NOT NULL,
    setup                    jsonb NOT NULL,
    optimizer_model          text NOT NULL,
    candidates               integer NOT NULL CHECK (candidates BETWEEN 1 AND 8),
    rounds                   integer NOT NULL CHECK (rounds BETWEEN 1 AND 5),
    validation_split         double precision NOT NULL,
    seed                     bigint NOT NULL,
    max_cost_usd             double precision NOT NULL,
    promote_to               text,
    status                   text NOT NULL DEFAULT 'queued' CHECK (status IN
        ('queued', 'running', 'succeeded', 'budget_exhausted', 'failed', 'canceled')),
    train_dataset_id         uuid,
    validation_dataset_id    uuid,
    -- Rounds done so far; the current round's parent.
    round                    integer NOT NULL DEFAULT 0,
    current_version_id       uuid NOT NULL,
    -- The current parent's evaluations (training: failing cases; validation: the bar).
    parent_train_evaluation_id      uuid,
    parent_validation_evaluation_id uuid,
    -- The original parent's validation evaluation (the winner is compared with it).
    origin_validation_evaluation_id uuid,
    optimizer_cost_usd       double precision NOT NULL DEFAULT 0,
    proposals_valid          integer NOT NULL DEFAULT 0,
    proposals_invalid        integer NOT NULL DEFAULT 0,
    winner_version_id        uuid,
    comparison               jsonb,
    reason                   text,
    promotion_id             uuid,
    job_id                   uuid,
    request_id               text,
    created_at               timestamptz NOT NULL DEFAULT now(),
    updated_at               timestamptz NOT NULL DEFAULT now(),
    finished_at              timestamptz,
    FOREIGN KEY (tenant_id, prompt_id) REFERENCES prompts (tenant_id, id),
    FOREIGN KEY (tenant_id, prompt_id, from_version_id)
        REFERENCES prompt_versions (tenant_id, prompt_id, id)
);
CREATE INDEX optimizations_tenant_idx ON optimizations (tenant_id, id);
CREATE INDEX optimizations_unfinished_idx ON optimizations (updated_at)
    WHERE status IN ('queued', 'running');

-- One row per proposal of a round, valid or not; written with the round's
-- optimizer cost in one transaction, so a re-run never counts a round twice.
CREATE TABLE optimization_candidates (
    optimization_id  uuid NOT NULL REFERENCES optimizations (id) ON DELETE CASCADE,
    round            integer NOT NULL,
    index            integer NOT NULL,
    tenant_id        uuid NOT NULL,
    -- NULL for an invalid proposal (never committed).
    version_id       uuid,
    invalid_reason   text,
    rationale        text NOT NULL,
    evaluation_id    uuid,
    pass_rate        double precision,
    mean_score       double precision,
    cost_usd         double precision,
    -- Input tokens of its messages as written (the tie-break: fewer wins).
    tokens           bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (optimization_id, round, index)
);

-- Optimizations commit their candidates on `opt/<optimization id>`, a name
-- no user may create (user branch names have no `/`).
ALTER TABLE prompt_branches DROP CONSTRAINT prompt_branches_name_check;
ALTER TABLE prompt_branches ADD CONSTRAINT prompt_branches_name_check
    CHECK (name ~ '^[a-z0-9_.-]{1,64}$' OR name ~ '^opt/[0-9a-f-]{36}$');
