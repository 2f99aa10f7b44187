ALTER TABLE evaluations DROP COLUMN use_cache;
ALTER TABLE evaluation_results
    DROP COLUMN cached_tokens,
    DROP COLUMN cached,
    DROP COLUMN answered_by;
