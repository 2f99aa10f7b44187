ALTER TABLE dataset_items DROP COLUMN threshold;
