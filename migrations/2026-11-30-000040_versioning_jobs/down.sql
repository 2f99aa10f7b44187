DELETE FROM prompt_branches WHERE name LIKE 'opt/%';
ALTER TABLE prompt_branches DROP CONSTRAINT prompt_branches_name_check;
ALTER TABLE prompt_branches ADD CONSTRAINT prompt_branches_name_check
    CHECK (name ~ '^[a-z0-9_.-]{1,64}$');
DROP TABLE optimization_candidates;
DROP TABLE optimizations;
DROP TABLE promotions;
