-- Rows that belong to a dataset or an evaluation carry their tenant, and the
-- foreign key now says the parent has that same tenant: a bug or a hand-made
-- row cannot file one tenant's items, results or chunks under another
-- tenant's dataset or evaluation. The parents' UNIQUE (tenant_id, id) backs
-- the keys; the children's primary keys still lead with the parent id, so
-- cascading deletes keep an index.
ALTER TABLE dataset_items
    DROP CONSTRAINT dataset_items_dataset_id_fkey,
    ADD CONSTRAINT dataset_items_tenant_dataset_fkey
        FOREIGN KEY (tenant_id, dataset_id) REFERENCES datasets (tenant_id, id) ON DELETE CASCADE;
ALTER TABLE evaluation_results
    DROP CONSTRAINT evaluation_results_evaluation_id_fkey,
    ADD CONSTRAINT evaluation_results_tenant_evaluation_fkey
        FOREIGN KEY (tenant_id, evaluation_id) REFERENCES evaluations (tenant_id, id) ON DELETE CASCADE;
ALTER TABLE evaluation_chunks
    DROP CONSTRAINT evaluation_chunks_evaluation_id_fkey,
    ADD CONSTRAINT evaluation_chunks_tenant_evaluation_fkey
        FOREIGN KEY (tenant_id, evaluation_id) REFERENCES evaluations (tenant_id, id) ON DELETE CASCADE;
ALTER TABLE superseded_results
    DROP CONSTRAINT superseded_results_evaluation_id_fkey,
    ADD CONSTRAINT superseded_results_tenant_evaluation_fkey
        FOREIGN KEY (tenant_id, evaluation_id) REFERENCES evaluations (tenant_id, id) ON DELETE CASCADE;
