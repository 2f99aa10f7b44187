-- Webhooks: endpoints (a tenant's, or one evaluation's `webhook_url`), the
-- events they are sent, each delivery's state and every attempt.
--
-- The outbox: an event and its deliveries are written in the transaction
-- that finishes the evaluation or versioning job, so PostgreSQL is the
-- record of what is owed; workers push due deliveries to Redis and record
-- each attempt here.

CREATE TABLE webhooks (
    id            uuid PRIMARY KEY,
    tenant_id     uuid NOT NULL REFERENCES tenants (id),
    url           text NOT NULL CHECK (length(url) <= 2048),
    -- Signing key, shown once at creation.
    secret        text NOT NULL,
    -- Event types sent; NULL: every type.
    events        jsonb,
    -- Set for the webhook given with one evaluation (`webhook_url`): it is
    -- sent that evaluation's events only. No foreign key: the row is written
    -- just before the evaluation's, so no event can finish before it exists.
    evaluation_id uuid,
    created_at    timestamptz NOT NULL DEFAULT now(),
    deleted_at    timestamptz
);
CREATE INDEX webhooks_tenant_idx ON webhooks (tenant_id, id) WHERE deleted_at IS NULL;
CREATE INDEX webhooks_evaluation_idx ON webhooks (evaluation_id) WHERE evaluation_id IS NOT NULL;

CREATE TABLE webhook_events (
    -- Sent as `Assay-Event-Id` (and `id` in the body) on every attempt of
    -- every delivery: the receiver's deduplication key.
    id            uuid PRIMARY KEY,
    tenant_id     uuid NOT NULL,
    event_type    text NOT NULL,
    resource_type text NOT NULL,
    resource_id   uuid NOT NULL,
    -- The exact bytes every attempt sends and signs.
    body          text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE webhook_deliveries (
    id               uuid PRIMARY KEY,
    tenant_id        uuid NOT NULL,
    webhook_id       uuid NOT NULL REFERENCES webhooks (id),
    event_id         uuid NOT NULL REFERENCES webhook_events (id),
    status           text NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'succeeded', 'failed')),
    attempts         integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    -- An attempt in progress holds the delivery until then, so no second
    -- attempt runs beside it; a crashed worker's hold expires.
    locked_until     timestamptz,
    -- Task id of the live push (NULL: due for a push), so a push lost in
    -- Redis is found and redone.
    job_id           uuid,
    pushed_at        timestamptz,
    last_status_code integer,
    last_error       text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    finished_at      timestamptz,
    UNIQUE (webhook_id, event_id)
);
CREATE INDEX webhook_deliveries_webhook_idx ON webhook_deliveries (webhook_id, id);
CREATE INDEX webhook_deliveries_due_idx ON webhook_deliveries (next_attempt_at)
    WHERE status = 'pending';

CREATE TABLE webhook_attempts (
    delivery_id uuid NOT NULL REFERENCES webhook_deliveries (id) ON DELETE CASCADE,
    attempt     integer NOT NULL,
    tenant_id   uuid NOT NULL,
    started_at  timestamptz NOT NULL,
    duration_ms integer NOT NULL,
    -- The receiver's HTTP status (NULL: no answer).
    status_code integer,
    -- Why it failed, briefly (NULL: it succeeded).
    error       text,
    PRIMARY KEY (delivery_id, attempt)
);
