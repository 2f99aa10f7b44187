-- Repeated runs have no place in the old key: drop them first.
DELETE FROM evaluation_results WHERE repeat_index > 0;
ALTER TABLE evaluation_results
    DROP CONSTRAINT evaluation_results_pkey,
    ADD PRIMARY KEY (evaluation_id, item_position, model),
    DROP COLUMN grading_cost_usd,
    DROP COLUMN finish_reason,
    DROP COLUMN repeat_index;

DELETE FROM evaluations WHERE source_evaluation_id IS NOT NULL;
ALTER TABLE evaluations
    DROP CONSTRAINT evaluations_source_fkey,
    DROP COLUMN source_evaluation_id,
    DROP COLUMN threshold,
    DROP COLUMN repeats;
