-- Scale-out: an evaluation is planned into chunks (a range of items x one
-- model), each run by whichever worker takes it from the queue. PostgreSQL
-- holds the plan and each chunk's state, so work lost in Redis is found and
-- queued again. Expand only: new tables and columns with defaults.

CREATE TABLE evaluation_chunks (
    evaluation_id    uuid NOT NULL REFERENCES evaluations (id) ON DELETE CASCADE,
    -- Order of planning: models interleave, so every model progresses together.
    chunk_index      integer NOT NULL CHECK (chunk_index >= 0),
    tenant_id        uuid NOT NULL,
    model            text NOT NULL,
    -- Item positions first_position..=last_position, every repeat of each.
    first_position   integer NOT NULL CHECK (first_position >= 0),
    last_position    integer NOT NULL,
    -- pending: planned, not in the queue; queued: pushed as job_id;
    -- running: a worker holds the lease; done: every run has a result;
    -- canceled: its evaluation was canceled or failed.
    status           text NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'queued', 'running', 'done', 'canceled')),
    -- The queue task of its latest push: what the sweeper looks for in Redis.
    job_id           uuid,
    queued_at        timestamptz,
    -- The worker running it, until when; renewed while it runs, so a dead
    -- worker's chunk is found by its expired lease.
    lease_owner      text,
    lease_expires_at timestamptz,
    -- Times a worker started it (more than one: a crash, a shutdown, a retry).
    starts           integer NOT NULL DEFAULT 0,
    -- The queue it travels on: its evaluation's priority, one level up for
    -- the first chunk of each model (short evaluations finish fast beside
    -- long ones, as in a multi-level feedback queue).
    priority         text NOT NULL DEFAULT 'normal' CHECK (priority IN ('high', 'normal', 'low')),
    finished_at      timestamptz,
    PRIMARY KEY (evaluation_id, chunk_index),
    CHECK (last_position >= first_position)
);
-- What the sweeper and the refill read: unfinished chunks by state.
CREATE INDEX evaluation_chunks_unfinished_idx ON evaluation_chunks (status, evaluation_id)
    WHERE status IN ('pending', 'queued', 'running');
CREATE INDEX evaluation_chunks_lease_idx ON evaluation_chunks (lease_owner)
    WHERE status = 'running';

ALTER TABLE evaluations
    -- Served from its own queue: high before normal before low.
    ADD COLUMN priority text NOT NULL DEFAULT 'normal' CHECK (priority IN ('high', 'normal', 'low')),
    -- Runs of the evaluation: 1, then one more per resume or retry-errors.
    ADD COLUMN run integer NOT NULL DEFAULT 1 CHECK (run >= 1);

-- Results that retry-errors replaced: kept for the record, never counted.
CREATE TABLE superseded_results (
    evaluation_id  uuid NOT NULL REFERENCES evaluations (id) ON DELETE CASCADE,
    -- The evaluation's run that wrote the row.
    run            integer NOT NULL,
    model          text NOT NULL,
    item_position  integer NOT NULL,
    repeat_index   integer NOT NULL,
    tenant_id      uuid NOT NULL,
    item_key       text NOT NULL,
    status         text NOT NULL,
    output         text,
    error          text,
    attempts       integer NOT NULL,
    cost_usd       double precision NOT NULL,
    created_at     timestamptz NOT NULL,
    superseded_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (evaluation_id, run, item_position, model, repeat_index)
);
