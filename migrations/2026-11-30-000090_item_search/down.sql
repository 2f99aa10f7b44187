DROP INDEX IF EXISTS dataset_items_vars_trigrams;
DROP EXTENSION IF EXISTS pg_trgm;
