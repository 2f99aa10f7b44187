-- Per-test assertions: an item may carry its own graders, applied with the
-- evaluation's. Nullable, so rows written by older code stay valid.
ALTER TABLE dataset_items ADD COLUMN graders JSONB;

-- How many items carry graders (an evaluation may then omit its own when
-- every item has some), and a hash of the uploaded content so a client can
-- find an identical dataset instead of uploading it again.
ALTER TABLE datasets
    ADD COLUMN items_with_graders INT NOT NULL DEFAULT 0,
    ADD COLUMN content_hash TEXT;

CREATE INDEX datasets_tenant_content_hash ON datasets (tenant_id, content_hash)
    WHERE content_hash IS NOT NULL;
