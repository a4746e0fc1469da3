-- tasker schema, version 1: the tables.
--
-- Applied by `tasker migrate` (or `psql -f`); safe to run again: every object
-- is created only when missing and the version row is inserted once.
--
-- State and reason columns are smallints holding the C enums of
-- include/tasker.h (tasker_task_state, tasker_step_state) and
-- capi/core/states.h (tk_reason); tasker.task_state_name() and friends in
-- 0002 turn them into the names used in task JSON.
--
-- The hot tables (steps, queue, transitions, step_errors) have no foreign
-- keys: a foreign-key check takes a share lock on the parent row for every
-- insert, and the task row is the one lock every completion of a task
-- already needs.  Integrity is kept by the functions in 0002-0004, which
-- are the only writers; tasker.prune() deletes a task's rows together.
BEGIN;

CREATE SCHEMA IF NOT EXISTS tasker;

CREATE TABLE IF NOT EXISTS tasker.schema_version (
    version    int PRIMARY KEY,
    name       text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);

-- Two migrators started at once queue up here instead of racing.
DO $$ BEGIN PERFORM pg_advisory_xact_lock(7366231101); END $$;

CREATE TABLE IF NOT EXISTS tasker.namespaces (
    id         serial PRIMARY KEY,
    name       text NOT NULL UNIQUE,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- A template version is immutable once stored: `definition` is the
-- template's JSON (tasker_template_to_json) and is compared on
-- re-registration.
CREATE TABLE IF NOT EXISTS tasker.templates (
    id           serial PRIMARY KEY,
    namespace_id int NOT NULL REFERENCES tasker.namespaces (id),
    name         text NOT NULL,
    version      text NOT NULL,
    definition   jsonb NOT NULL,
    n_steps      int NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    UNIQUE (namespace_id, name, version)
);

-- The highest version of each namespace/name.  Versions compare with
-- numeric parts as numbers ("10" > "9"), which SQL ordering cannot express,
-- so the registering process (tk_version_cmp) maintains this row.
CREATE TABLE IF NOT EXISTS tasker.template_latest (
    namespace_id int NOT NULL REFERENCES tasker.namespaces (id),
    name         text NOT NULL,
    template_id  int NOT NULL REFERENCES tasker.templates (id),
    PRIMARY KEY (namespace_id, name)
);

-- One row per step of a template version.  dep_idx / dependents are the
-- graph as step indexes, so readiness needs no name lookups.
CREATE TABLE IF NOT EXISTS tasker.template_steps (
    template_id  int NOT NULL REFERENCES tasker.templates (id),
    idx          int NOT NULL,
    name         text NOT NULL,
    handler      text NOT NULL,
    dep_idx      int[] NOT NULL,
    dep_names    text[] NOT NULL,
    dependents   int[] NOT NULL,
    max_attempts int NOT NULL,
    backoff      smallint NOT NULL, -- 0 none, 1 linear, 2 exponential
    base_ms      bigint NOT NULL,
    max_ms       bigint NOT NULL,
    jitter       float8 NOT NULL,
    timeout_ms   bigint NOT NULL,
    PRIMARY KEY (template_id, idx)
);

-- Processes that claimed steps; transitions name the worker that made them.
CREATE TABLE IF NOT EXISTS tasker.workers (
    id           serial PRIMARY KEY,
    host         text NOT NULL,
    pid          int NOT NULL,
    started_at   timestamptz NOT NULL DEFAULT now(),
    last_seen_at timestamptz NOT NULL DEFAULT now(),
    stopped_at   timestamptz
);

-- n_active counts steps enqueued, in progress or waiting for a retry; the
-- task is final when it reaches 0 (complete if n_done = n_steps, else
-- error), exactly as the memory store decides.
CREATE TABLE IF NOT EXISTS tasker.tasks (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    uuid            uuid NOT NULL UNIQUE,
    template_id     int NOT NULL,
    namespace_id    int NOT NULL,
    state           smallint NOT NULL,
    priority        int NOT NULL,
    idempotency_key text,
    context         json NOT NULL,
    n_steps         int NOT NULL,
    n_done          int NOT NULL DEFAULT 0,
    n_active        int NOT NULL DEFAULT 0,
    n_error         int NOT NULL DEFAULT 0,
    created_at      timestamptz NOT NULL,
    started_at      timestamptz,
    finished_at     timestamptz
) WITH (fillfactor = 80);
CREATE UNIQUE INDEX IF NOT EXISTS tasks_idempotency_key
    ON tasker.tasks (idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS tasks_finished_at
    ON tasker.tasks (finished_at) WHERE finished_at IS NOT NULL;

-- One row per step of a task; `remaining` counts unfinished dependencies
-- (readiness is incremental: completing a step decrements its dependents).
-- The low fillfactor leaves room for HOT updates: a step row changes state
-- about four times and none of the changed columns is indexed.
CREATE TABLE IF NOT EXISTS tasker.steps (
    task_id     bigint NOT NULL,
    idx         int NOT NULL,
    uuid        uuid NOT NULL,
    state       smallint NOT NULL,
    attempts    int NOT NULL DEFAULT 0,
    budget      int NOT NULL,   -- attempts allowed; grows on manual retry
    remaining   int NOT NULL,
    result      json,
    enqueued_at timestamptz,
    started_at  timestamptz,
    finished_at timestamptz,
    PRIMARY KEY (task_id, idx)
) WITH (fillfactor = 70);

-- The queue: one row per step that is ready, leased or waiting for a retry.
-- pgmq-like: a row is claimable when visible_at <= now(); a claim pushes
-- visible_at to the lease's expiry, so a lease nobody renews makes the row
-- visible again by itself.  `attempt` is the attempt number of the current
-- lease and is the fencing token (it only grows, even across manual
-- retries).  Every namespace is a logical queue (namespace_id) in this one
-- table, so no SQL is ever built from a namespace name.
CREATE TABLE IF NOT EXISTS tasker.queue (
    task_id      bigint NOT NULL,
    step_idx     int NOT NULL,
    namespace_id int NOT NULL,
    handler      text NOT NULL,
    priority     int NOT NULL,
    visible_at   timestamptz NOT NULL,
    enqueued_at  timestamptz NOT NULL,
    read_count   int NOT NULL DEFAULT 0,
    attempt      int NOT NULL DEFAULT 0,
    leased_by    int,           -- worker id while leased, else NULL
    PRIMARY KEY (task_id, step_idx)
);
CREATE INDEX IF NOT EXISTS queue_claim ON tasker.queue (priority DESC, visible_at);

-- Queue rows that left without a successful completion (dead-lettered,
-- cancelled), kept for inspection until their task is pruned.
CREATE TABLE IF NOT EXISTS tasker.queue_archive (
    task_id      bigint NOT NULL,
    step_idx     int NOT NULL,
    namespace_id int NOT NULL,
    handler      text NOT NULL,
    priority     int NOT NULL,
    enqueued_at  timestamptz NOT NULL,
    read_count   int NOT NULL,
    attempt      int NOT NULL,
    archived_at  timestamptz NOT NULL,
    reason       text NOT NULL
);
CREATE INDEX IF NOT EXISTS queue_archive_task ON tasker.queue_archive (task_id);

-- Steps that went to error (retries exhausted or a permanent failure).
CREATE TABLE IF NOT EXISTS tasker.dead_letters (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    task_id       bigint NOT NULL,
    step_idx      int NOT NULL,
    namespace_id  int NOT NULL,
    handler       text NOT NULL,
    attempts      int NOT NULL,
    error_class   text,
    error_message text,
    reason        smallint NOT NULL,
    created_at    timestamptz NOT NULL,
    resolved_at   timestamptz,
    resolution    text          -- 'requeued', 'manual_retry', 'manual_resolve', 'cancelled'
);
CREATE INDEX IF NOT EXISTS dead_letters_task ON tasker.dead_letters (task_id);
CREATE INDEX IF NOT EXISTS dead_letters_open ON tasker.dead_letters (created_at)
    WHERE resolved_at IS NULL;

-- Every failed attempt.
CREATE TABLE IF NOT EXISTS tasker.step_errors (
    task_id   bigint NOT NULL,
    step_idx  int NOT NULL,
    attempt   int NOT NULL,
    class     text NOT NULL,
    message   text NOT NULL,
    retryable boolean NOT NULL,
    context   json,
    at        timestamptz NOT NULL,
    worker_id int
);
CREATE INDEX IF NOT EXISTS step_errors_task ON tasker.step_errors (task_id);

-- The audit trail of task (step_idx NULL) and step state changes.  `id`
-- orders entries made at the same instant (one transaction has one now()).
CREATE TABLE IF NOT EXISTS tasker.transitions (
    id         bigint GENERATED ALWAYS AS IDENTITY,
    task_id    bigint NOT NULL,
    step_idx   int,
    at         timestamptz NOT NULL,
    from_state smallint,
    to_state   smallint NOT NULL,
    attempt    int NOT NULL,
    reason     smallint NOT NULL,
    worker_id  int
);
CREATE INDEX IF NOT EXISTS transitions_task ON tasker.transitions (task_id);

-- Completions refused because the attempt no longer held its lease.
CREATE TABLE IF NOT EXISTS tasker.fenced (
    at              timestamptz NOT NULL,
    task_id         bigint NOT NULL,
    step_idx        int NOT NULL,
    attempt         int NOT NULL,
    worker_id       int,
    current_attempt int,
    step_state      smallint
);

INSERT INTO tasker.schema_version (version, name) VALUES (1, 'schema')
    ON CONFLICT (version) DO NOTHING;

COMMIT;
