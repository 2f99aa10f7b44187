ALTER TABLE evaluation_chunks DROP COLUMN crashes;
