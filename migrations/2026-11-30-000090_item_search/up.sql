-- The viewer's text search finds items by their variables: a trigram index
-- answers `vars::text ILIKE '%term%'` without converting every item of a
-- 100,000-item dataset to text (about 150 ms a search without it). Paid at
-- upload, about 12 µs an item. pg_trgm ships with PostgreSQL (contrib) and is
-- a trusted extension: the database owner may create it.
CREATE EXTENSION IF NOT EXISTS pg_trgm;
CREATE INDEX dataset_items_vars_trigrams ON dataset_items USING gin ((vars::text) gin_trgm_ops);
