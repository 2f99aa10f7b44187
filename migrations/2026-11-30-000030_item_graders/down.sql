DROP INDEX datasets_tenant_content_hash;
ALTER TABLE datasets DROP COLUMN content_hash, DROP COLUMN items_with_graders;
ALTER TABLE dataset_items DROP COLUMN graders;
