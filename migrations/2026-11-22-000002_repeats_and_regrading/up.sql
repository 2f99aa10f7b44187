-- Repeats, item thresholds and re-grading (expand only: every new column has
-- a default, so code that predates it keeps working).

ALTER TABLE evaluations
    -- Runs of each item x model (pass@k, flakiness).
    ADD COLUMN repeats integer NOT NULL DEFAULT 1 CHECK (repeats BETWEEN 1 AND 100),
    -- When set, an item passes when its weighted score reaches it.
    ADD COLUMN threshold double precision CHECK (threshold BETWEEN 0 AND 1),
    -- A re-grading: outputs come from this evaluation, no model is called again.
    ADD COLUMN source_evaluation_id uuid,
    ADD CONSTRAINT evaluations_source_fkey
        FOREIGN KEY (tenant_id, source_evaluation_id) REFERENCES evaluations (tenant_id, id);

ALTER TABLE evaluation_results
    ADD COLUMN repeat_index integer NOT NULL DEFAULT 0 CHECK (repeat_index >= 0),
    ADD COLUMN finish_reason text,
    -- What judge calls cost for this row, apart from generation.
    ADD COLUMN grading_cost_usd double precision NOT NULL DEFAULT 0,
    DROP CONSTRAINT evaluation_results_pkey,
    ADD PRIMARY KEY (evaluation_id, item_position, model, repeat_index);
