-- What the provider layer records per result, and the per-evaluation cache
-- switch (expand only: every new column has a default).

ALTER TABLE evaluation_results
    -- The model that answered: the result's own model, or one of its fallbacks.
    ADD COLUMN answered_by text,
    -- The answer came from the response cache: no upstream call, no cost.
    ADD COLUMN cached boolean NOT NULL DEFAULT false,
    -- Input tokens the provider served from its own prompt cache.
    ADD COLUMN cached_tokens integer NOT NULL DEFAULT 0;

ALTER TABLE evaluations
    -- Whether deterministic calls may be answered from the response cache.
    ADD COLUMN use_cache boolean NOT NULL DEFAULT true;
