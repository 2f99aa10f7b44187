ALTER TABLE superseded_results
    DROP CONSTRAINT superseded_results_tenant_evaluation_fkey,
    ADD CONSTRAINT superseded_results_evaluation_id_fkey
        FOREIGN KEY (evaluation_id) REFERENCES evaluations (id) ON DELETE CASCADE;
ALTER TABLE evaluation_chunks
    DROP CONSTRAINT evaluation_chunks_tenant_evaluation_fkey,
    ADD CONSTRAINT evaluation_chunks_evaluation_id_fkey
        FOREIGN KEY (evaluation_id) REFERENCES evaluations (id) ON DELETE CASCADE;
ALTER TABLE evaluation_results
    DROP CONSTRAINT evaluation_results_tenant_evaluation_fkey,
    ADD CONSTRAINT evaluation_results_evaluation_id_fkey
        FOREIGN KEY (evaluation_id) REFERENCES evaluations (id) ON DELETE CASCADE;
ALTER TABLE dataset_items
    DROP CONSTRAINT dataset_items_tenant_dataset_fkey,
    ADD CONSTRAINT dataset_items_dataset_id_fkey
        FOREIGN KEY (dataset_id) REFERENCES datasets (id) ON DELETE CASCADE;
