DROP TABLE superseded_results;
ALTER TABLE evaluations DROP COLUMN run, DROP COLUMN priority;
DROP TABLE evaluation_chunks;
