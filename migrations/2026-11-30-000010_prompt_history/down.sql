ALTER TABLE evaluations DROP COLUMN prompt_ref;
DROP TABLE prompt_labels;
DROP TABLE prompt_branches;
DROP INDEX prompt_versions_parent_idx;
ALTER TABLE prompt_versions DROP CONSTRAINT prompt_versions_tenant_prompt_id_key;
ALTER TABLE api_keys DROP COLUMN scope;
