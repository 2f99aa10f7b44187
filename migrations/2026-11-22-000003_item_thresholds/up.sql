-- An item's own pass mark on its weighted grader score (overrides the evaluation's).
ALTER TABLE dataset_items
    ADD COLUMN threshold double precision CHECK (threshold BETWEEN 0 AND 1);
