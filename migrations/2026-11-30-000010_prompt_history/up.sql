-- Prompt history like git: named branches whose heads move by compare-and-set,
-- labels that point at versions (some protected), and the key scope that may
-- force a protected label. Versions themselves stay immutable.

-- A key is an ordinary `member` or an `admin` (may force protected labels).
-- Existing keys become members.
ALTER TABLE api_keys
    ADD COLUMN scope text NOT NULL DEFAULT 'member' CHECK (scope IN ('member', 'admin'));

-- (tenant_id, prompt_id, id) is what branches and labels point at, so that a
-- head or a label can only name a version of its own prompt and tenant.
ALTER TABLE prompt_versions
    ADD CONSTRAINT prompt_versions_tenant_prompt_id_key UNIQUE (tenant_id, prompt_id, id);
-- Children of a version, and ancestry walks, go by parent.
CREATE INDEX prompt_versions_parent_idx ON prompt_versions (parent_id);

CREATE TABLE prompt_branches (
    -- Events about a branch name it by this id.
    id              uuid NOT NULL UNIQUE,
    tenant_id       uuid NOT NULL,
    prompt_id       uuid NOT NULL,
    name            text NOT NULL CHECK (name ~ '^[a-z0-9_.-]{1,64}$'),
    -- NULL only while the prompt has no version at all.
    head_version_id uuid,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (prompt_id, name),
    FOREIGN KEY (tenant_id, prompt_id) REFERENCES prompts (tenant_id, id),
    FOREIGN KEY (tenant_id, prompt_id, head_version_id)
        REFERENCES prompt_versions (tenant_id, prompt_id, id)
);

CREATE TABLE prompt_labels (
    id          uuid NOT NULL UNIQUE,
    tenant_id   uuid NOT NULL,
    prompt_id   uuid NOT NULL,
    name        text NOT NULL CHECK (name ~ '^[a-z0-9_.-]{1,36}$'),
    version_id  uuid NOT NULL,
    -- Only a promotion job or an admin key with `force` may move it.
    protected   boolean NOT NULL DEFAULT false,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (prompt_id, name),
    FOREIGN KEY (tenant_id, prompt_id) REFERENCES prompts (tenant_id, id),
    FOREIGN KEY (tenant_id, prompt_id, version_id)
        REFERENCES prompt_versions (tenant_id, prompt_id, id)
);

-- How an evaluation named its prompt when it was not by version id
-- ({"prompt": ..., "label": ...} or "branch"); prompt_version_id holds what
-- that resolved to at submission, and never changes afterwards.
ALTER TABLE evaluations ADD COLUMN prompt_ref jsonb;

-- Every existing prompt gets its `main` branch at its latest version.
INSERT INTO prompt_branches (id, tenant_id, prompt_id, name, head_version_id)
SELECT gen_random_uuid(), p.tenant_id, p.id, 'main',
       (SELECT v.id FROM prompt_versions v WHERE v.prompt_id = p.id ORDER BY v.version DESC LIMIT 1)
FROM prompts p;
