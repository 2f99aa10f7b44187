-- Foundation schema. Every row a tenant owns carries tenant_id, and every
-- query filters on it; composite foreign keys (tenant_id, id) make it
-- impossible for a row of one tenant to point at another tenant's row.

CREATE TABLE tenants (
    id          uuid PRIMARY KEY,
    name        text NOT NULL UNIQUE CHECK (length(name) BETWEEN 1 AND 200),
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE api_keys (
    id          uuid PRIMARY KEY,
    tenant_id   uuid NOT NULL REFERENCES tenants (id),
    -- SHA-256 of the whole key; the key itself is shown once and never stored.
    key_hash    bytea NOT NULL UNIQUE,
    -- First characters of the key, so an operator can tell keys apart.
    key_prefix  text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);
CREATE INDEX api_keys_tenant_idx ON api_keys (tenant_id);

CREATE TABLE prompts (
    id          uuid PRIMARY KEY,
    tenant_id   uuid NOT NULL REFERENCES tenants (id),
    name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    description text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, name),
    UNIQUE (tenant_id, id)
);

-- Immutable: there is no UPDATE path in the code, and a trigger refuses one.
CREATE TABLE prompt_versions (
    id             uuid PRIMARY KEY,
    tenant_id      uuid NOT NULL,
    prompt_id      uuid NOT NULL,
    version        integer NOT NULL CHECK (version >= 1),
    parent_id      uuid REFERENCES prompt_versions (id),
    -- Chat messages whose contents are Jinja templates: [{"role", "content"}].
    messages       jsonb NOT NULL,
    -- Default model parameters (temperature, max_tokens, ...).
    params         jsonb NOT NULL DEFAULT '{}'::jsonb,
    -- SHA-256 over the canonical JSON of messages and params.
    content_hash   text NOT NULL,
    commit_message text NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (tenant_id, prompt_id) REFERENCES prompts (tenant_id, id),
    UNIQUE (prompt_id, version),
    UNIQUE (tenant_id, id)
);

CREATE TABLE datasets (
    id          uuid PRIMARY KEY,
    tenant_id   uuid NOT NULL REFERENCES tenants (id),
    name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    description text,
    item_count  integer NOT NULL CHECK (item_count > 0),
    -- Variables every item defines: what a template may use without a check per item.
    variables   jsonb NOT NULL CHECK (jsonb_typeof(variables) = 'array'),
    -- Whether every item has an expected output (so `expected` is always defined).
    all_expected boolean NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, id)
);

CREATE TABLE dataset_items (
    dataset_id  uuid NOT NULL REFERENCES datasets (id) ON DELETE CASCADE,
    -- 0-based position in the dataset: the key that evaluations page and chunk by.
    position    integer NOT NULL CHECK (position >= 0),
    tenant_id   uuid NOT NULL,
    -- Stable id given by the user (or the position as text): what results refer to.
    item_key    text NOT NULL CHECK (length(item_key) BETWEEN 1 AND 200),
    vars        jsonb NOT NULL,
    expected    jsonb,
    PRIMARY KEY (dataset_id, position),
    UNIQUE (dataset_id, item_key)
);

CREATE TABLE evaluations (
    id                uuid PRIMARY KEY,
    tenant_id         uuid NOT NULL,
    prompt_version_id uuid NOT NULL,
    dataset_id        uuid NOT NULL,
    -- Model names, in the order the user gave them.
    models            jsonb NOT NULL CHECK (jsonb_typeof(models) = 'array' AND jsonb_array_length(models) >= 1),
    graders           jsonb NOT NULL,
    -- Model parameters that override the prompt version's defaults.
    params            jsonb NOT NULL DEFAULT '{}'::jsonb,
    status            text NOT NULL DEFAULT 'queued'
                      CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'canceled')),
    total             integer NOT NULL CHECK (total >= 0),
    completed         integer NOT NULL DEFAULT 0,
    passed            integer NOT NULL DEFAULT 0,
    failed            integer NOT NULL DEFAULT 0,
    errored           integer NOT NULL DEFAULT 0,
    summary           jsonb,
    error             text,
    created_at        timestamptz NOT NULL DEFAULT now(),
    started_at        timestamptz,
    finished_at       timestamptz,
    updated_at        timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (tenant_id, prompt_version_id) REFERENCES prompt_versions (tenant_id, id),
    FOREIGN KEY (tenant_id, dataset_id) REFERENCES datasets (tenant_id, id),
    UNIQUE (tenant_id, id),
    CHECK (completed = passed + failed + errored AND completed <= total)
);
CREATE INDEX evaluations_tenant_idx ON evaluations (tenant_id, id DESC);
CREATE INDEX evaluations_unfinished_idx ON evaluations (status) WHERE status IN ('queued', 'running');

CREATE TABLE evaluation_results (
    evaluation_id  uuid NOT NULL REFERENCES evaluations (id) ON DELETE CASCADE,
    model          text NOT NULL,
    item_position  integer NOT NULL,
    tenant_id      uuid NOT NULL,
    item_key       text NOT NULL,
    status         text NOT NULL CHECK (status IN ('passed', 'failed', 'errored')),
    output         text,
    score          double precision,
    grades         jsonb NOT NULL DEFAULT '[]'::jsonb,
    latency_ms     integer,
    input_tokens   integer NOT NULL DEFAULT 0,
    output_tokens  integer NOT NULL DEFAULT 0,
    cost_usd       double precision NOT NULL DEFAULT 0,
    attempts       integer NOT NULL DEFAULT 1,
    error          text,
    created_at     timestamptz NOT NULL DEFAULT now(),
    -- One row per item x model: a re-delivered job's INSERT ... ON CONFLICT DO NOTHING
    -- can never write a second one.
    PRIMARY KEY (evaluation_id, item_position, model)
);

-- Append-only audit trail: who did what to which resource, when.
CREATE TABLE events (
    id            bigserial PRIMARY KEY,
    tenant_id     uuid NOT NULL REFERENCES tenants (id),
    -- "api_key:<id>" for API calls, "worker:<name>" or "system" otherwise.
    actor         text NOT NULL,
    action        text NOT NULL,
    resource_type text NOT NULL,
    resource_id   uuid NOT NULL,
    data          jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX events_resource_idx ON events (tenant_id, resource_type, resource_id);

CREATE FUNCTION assay_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% rows are immutable', TG_TABLE_NAME;
END;
$$;
CREATE TRIGGER events_append_only BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION assay_refuse_change();
CREATE TRIGGER prompt_versions_immutable BEFORE UPDATE ON prompt_versions
    FOR EACH ROW EXECUTE FUNCTION assay_refuse_change();
