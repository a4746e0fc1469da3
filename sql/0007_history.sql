-- tasker schema, version 7: the usual path's history is its timestamps.
--
-- Nearly every step is enqueued, claimed once and completes, and nearly
-- every task is created, starts and completes.  A transitions row for each
-- of those six moments, with its index entry, was a third of what a
-- one-step task wrote.  Now a step or task that goes the usual way writes
-- no transitions row: its row's own timestamps (enqueued_at, started_at,
-- finished_at; created_at, started_at, finished_at) are its history, and
-- the view tasker.history reads both kinds.
--
-- The first time anything else happens to a step (a failure, a lease
-- expiring, a release, a cancel, a manual retry or resolve) or to a task
-- (cancelled, retried, resolved), a trigger writes the rows that its
-- timestamps stood for, from the row as it was before that change, and
-- sets the row's `hist` flag.  From then on every transition of that step
-- or task is written as a row, as before.  The writers of the usual
-- transitions decide by the flag their own UPDATE returns, under the row
-- lock, so they never miss a flag set at the same time by another
-- transaction.  Rows written before this version keep their full history
-- (the flag is true for them).
--
-- The triggers run AFTER the update: a BEFORE row trigger makes every
-- UPDATE of its table lock the row first, which PostgreSQL logs, even when
-- the trigger's condition is false -- one more WAL record per update.

-- Also: lower fillfactors, so that updates of task and step rows find room
-- on their page (HOT) instead of moving the row and its index entries; and
-- a task without an idempotency key is inserted without ON CONFLICT.
BEGIN;
DO $$ BEGIN PERFORM pg_advisory_xact_lock(7366231101); END $$;

-- Existing rows get true (their history is all in tasker.transitions),
-- new ones false.
ALTER TABLE tasker.tasks ADD COLUMN IF NOT EXISTS hist boolean NOT NULL DEFAULT true;
ALTER TABLE tasker.tasks ALTER COLUMN hist SET DEFAULT false;
ALTER TABLE tasker.steps ADD COLUMN IF NOT EXISTS hist boolean NOT NULL DEFAULT true;
ALTER TABLE tasker.steps ALTER COLUMN hist SET DEFAULT false;
-- The worker that claimed the step's current attempt.
ALTER TABLE tasker.steps ADD COLUMN IF NOT EXISTS worker_id int;
ALTER TABLE tasker.tasks SET (fillfactor = 30);
ALTER TABLE tasker.steps SET (fillfactor = 30);
ALTER TABLE tasker.queue SET (fillfactor = 50);
-- Every finishing update had to move the row to add an entry to the index
-- on finished_at; retention finds old tasks by creation instead (a task
-- finished before a time was created before it), an index whose entry is
-- written once, with the row.
DROP INDEX IF EXISTS tasker.tasks_finished_at;
CREATE INDEX IF NOT EXISTS tasks_created_at ON tasker.tasks (created_at);

-- The transitions a step row stands for while its flag is false: enqueued
-- (attempt 0), claimed (its only attempt), complete.  `rank` orders rows
-- of the same instant (one transaction has one now()).
CREATE OR REPLACE FUNCTION tasker._step_rows(s tasker.steps)
RETURNS TABLE (at timestamptz, from_state smallint, to_state smallint, attempt int,
               reason smallint, worker_id int, rank int)
LANGUAGE sql IMMUTABLE AS $$
    SELECT v.* FROM (VALUES
        (s.enqueued_at, 0::smallint, 1::smallint, 0, 7::smallint, NULL::int, 3),
        (s.started_at, 1::smallint, 2::smallint, s.attempts, 8::smallint, s.worker_id, 4),
        (CASE WHEN s.state = 4 THEN s.finished_at END, 2::smallint, 4::smallint, s.attempts,
         9::smallint, s.worker_id, 2)) AS v(at, from_state, to_state, attempt, reason, worker_id,
                                            rank)
    WHERE v.at IS NOT NULL
$$;

-- The same for a task: created, running, complete or error.
CREATE OR REPLACE FUNCTION tasker._task_rows(t tasker.tasks)
RETURNS TABLE (at timestamptz, from_state smallint, to_state smallint, attempt int,
               reason smallint, worker_id int, rank int)
LANGUAGE sql IMMUTABLE AS $$
    SELECT v.* FROM (VALUES
        (t.created_at, NULL::smallint, 0::smallint, 0, 0::smallint, NULL::int, 0),
        (t.started_at, 0::smallint, 1::smallint, 0, 1::smallint, NULL::int, 1),
        (CASE WHEN t.state IN (2, 3) THEN t.finished_at END,
         CASE WHEN t.started_at IS NULL THEN 0 ELSE 1 END::smallint, t.state, 0,
         CASE WHEN t.state = 2 THEN 2 ELSE 3 END::smallint, NULL::int, 5))
        AS v(at, from_state, to_state, attempt, reason, worker_id, rank)
    WHERE v.at IS NOT NULL
$$;

-- Every transition: the rows written, and the ones rows without the flag
-- stand for (id NULL).  Order: at, then written rows by id, then the
-- others by rank and step.
CREATE OR REPLACE VIEW tasker.history AS
    SELECT tr.id, tr.task_id, tr.step_idx, tr.at, tr.from_state, tr.to_state, tr.attempt,
           tr.reason, tr.worker_id, NULL::int AS rank
    FROM tasker.transitions tr
    UNION ALL
    SELECT NULL::bigint, t.id, NULL::int, r.at, r.from_state, r.to_state, r.attempt, r.reason,
           r.worker_id, r.rank
    FROM tasker.tasks t CROSS JOIN LATERAL tasker._task_rows(t) r
    WHERE NOT t.hist
    UNION ALL
    SELECT NULL::bigint, s.task_id, s.idx, r.at, r.from_state, r.to_state, r.attempt, r.reason,
           r.worker_id, r.rank
    FROM tasker.steps s CROSS JOIN LATERAL tasker._step_rows(s) r
    WHERE NOT s.hist;

-- After a row without the flag changed in an unusual way: write what it
-- stood for, from the row as it was (OLD), and set the flag (an update
-- the triggers' conditions leave alone).
CREATE OR REPLACE FUNCTION tasker._step_hist() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO tasker.transitions (task_id, step_idx, at, from_state, to_state, attempt,
                                    reason, worker_id)
    SELECT OLD.task_id, OLD.idx, r.at, r.from_state, r.to_state, r.attempt, r.reason, r.worker_id
    FROM tasker._step_rows(OLD) r ORDER BY r.at, r.rank;
    UPDATE tasker.steps SET hist = true WHERE task_id = OLD.task_id AND idx = OLD.idx;
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION tasker._task_hist() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO tasker.transitions (task_id, step_idx, at, from_state, to_state, attempt,
                                    reason, worker_id)
    SELECT OLD.id, NULL, r.at, r.from_state, r.to_state, r.attempt, r.reason, r.worker_id
    FROM tasker._task_rows(OLD) r ORDER BY r.at, r.rank;
    UPDATE tasker.tasks SET hist = true WHERE id = OLD.id;
    RETURN NULL;
END
$$;

-- The usual changes: a step's dependencies counting down, it being
-- enqueued, claimed for its first attempt, completed; a task pending or
-- running being updated, starting or finishing.  Anything else is unusual.
CREATE OR REPLACE TRIGGER steps_hist AFTER UPDATE ON tasker.steps
FOR EACH ROW WHEN (NOT OLD.hist AND NOT NEW.hist AND NOT (
    (OLD.state = 0 AND NEW.state IN (0, 1)) OR
    (OLD.state = 1 AND NEW.state = 2 AND OLD.attempts = 0) OR
    (OLD.state = 2 AND NEW.state = 4)))
EXECUTE FUNCTION tasker._step_hist();

CREATE OR REPLACE TRIGGER tasks_hist AFTER UPDATE ON tasker.tasks
FOR EACH ROW WHEN (NOT OLD.hist AND NOT NEW.hist
                   AND NOT (OLD.state IN (0, 1) AND NEW.state IN (0, 1, 2, 3)))
EXECUTE FUNCTION tasker._task_hist();

-- tasker.create_task (0006): no transitions rows; no ON CONFLICT without a key.
CREATE OR REPLACE FUNCTION tasker.create_task(p_ns text, p_name text, p_version text,
                                              p_context text, p_key text, p_priority int)
RETURNS TABLE (status int, task_uuid uuid, detail text)
LANGUAGE plpgsql AS $$
DECLARE
    v_now   timestamptz := now();
    v_tid   int;
    v_nsid  int;
    v_n     int;
    v_roots int;
    v_id    bigint;
    v_uuid  uuid;
    v_other record;
BEGIN
    IF p_version IS NULL THEN
        SELECT l.template_id, l.namespace_id INTO v_tid, v_nsid
        FROM tasker.template_latest l JOIN tasker.namespaces n ON n.id = l.namespace_id
        WHERE n.name = p_ns AND l.name = p_name;
    ELSE
        SELECT t.id, t.namespace_id INTO v_tid, v_nsid
        FROM tasker.templates t JOIN tasker.namespaces n ON n.id = t.namespace_id
        WHERE n.name = p_ns AND t.name = p_name AND t.version = p_version;
    END IF;
    IF v_tid IS NULL THEN
        RETURN QUERY SELECT 2, NULL::uuid, NULL::text;
        RETURN;
    END IF;
    SELECT t.n_steps, (SELECT count(*) FROM tasker.template_steps ts
                       WHERE ts.template_id = t.id AND cardinality(ts.dep_idx) = 0)
    INTO v_n, v_roots FROM tasker.templates t WHERE t.id = v_tid;

    IF p_key IS NULL THEN
        -- Without a key there is no conflict to handle: a plain insert.
        INSERT INTO tasker.tasks (uuid, template_id, namespace_id, state, priority,
                                  idempotency_key, context, n_steps, n_active, created_at)
        VALUES (tasker.uuid_v7(v_now), v_tid, v_nsid, 0, p_priority, NULL,
                coalesce(p_context, '{}')::json, v_n, v_roots, v_now)
        RETURNING id, uuid INTO v_id, v_uuid;
    END IF;
    WHILE v_id IS NULL LOOP
        SELECT t.uuid, t.template_id, n.name || '/' || tp.name || '@' || tp.version AS key
        INTO v_other
        FROM tasker.tasks t JOIN tasker.templates tp ON tp.id = t.template_id
             JOIN tasker.namespaces n ON n.id = tp.namespace_id
        WHERE t.idempotency_key = p_key;
        IF FOUND THEN
            IF v_other.template_id = v_tid THEN
                RETURN QUERY SELECT 1, v_other.uuid, NULL::text;
            ELSE
                RETURN QUERY SELECT 3, v_other.uuid, v_other.key;
            END IF;
            RETURN;
        END IF;
        INSERT INTO tasker.tasks (uuid, template_id, namespace_id, state, priority,
                                  idempotency_key, context, n_steps, n_active, created_at)
        VALUES (tasker.uuid_v7(v_now), v_tid, v_nsid, 0, p_priority, p_key,
                coalesce(p_context, '{}')::json, v_n, v_roots, v_now)
        ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
        RETURNING id, uuid INTO v_id, v_uuid;
        -- No row: a concurrent create with the same key committed first;
        -- look it up again (a new statement sees its row).
    END LOOP;

    INSERT INTO tasker.steps (task_id, idx, uuid, state, budget, remaining, enqueued_at)
    SELECT v_id, ts.idx, tasker.uuid_v7(v_now),
           CASE WHEN cardinality(ts.dep_idx) = 0 THEN 1 ELSE 0 END,
           ts.max_attempts, cardinality(ts.dep_idx),
           CASE WHEN cardinality(ts.dep_idx) = 0 THEN v_now END
    FROM tasker.template_steps ts WHERE ts.template_id = v_tid;

    INSERT INTO tasker.queue (task_id, step_idx, namespace_id, handler, priority, visible_at,
                              enqueued_at)
    SELECT v_id, ts.idx, v_nsid, ts.handler, p_priority, v_now, v_now
    FROM tasker.template_steps ts
    WHERE ts.template_id = v_tid AND cardinality(ts.dep_idx) = 0;

    IF v_roots > 0 AND NOT tasker._quiet() THEN
        PERFORM pg_notify('tasker_ready', '');
    END IF;
    RETURN QUERY SELECT 0, v_uuid, NULL::text;
END
$$;

-- tasker.claim_ns (0006): transitions rows only for flagged rows; the step
-- row keeps the worker; claims only from the namespaces in the session's
-- tasker.namespaces, when set.
CREATE OR REPLACE FUNCTION tasker.claim_ns(p_worker int, p_handlers text[], p_limit int,
                                           p_lease_ms int, p_skip_ns text[], p_only_ns text)
RETURNS TABLE (task_id bigint, step_idx int, attempt int, max_attempts int, step_uuid uuid,
               task_uuid uuid, step_name text, handler text, namespace text,
               template_name text, context text, dep_names text[], dep_results text[],
               template_version text, timeout_ms bigint, queue_wait_ms float8)
LANGUAGE plpgsql
-- Batches are small next to the tables; planner statistics (often taken
-- when the queue was empty) must not turn key lookups into table scans.
SET enable_seqscan = off
SET lock_timeout = '2s' AS $$
DECLARE
    v_now   timestamptz := now();
    v_until timestamptz := now() + p_lease_ms * interval '1 millisecond';
    v_skip  int[];
    v_only  int;
    v_allow int[];
    v_t     bigint[];
    v_i     int[];
    v_vis   timestamptz[];
    v_exp   boolean[];
    v_rows  int;
BEGIN
    IF p_only_ns IS NOT NULL THEN
        SELECT n.id INTO v_only FROM tasker.namespaces n WHERE n.name = p_only_ns;
        IF v_only IS NULL THEN
            RETURN;
        END IF;
    END IF;
    IF p_skip_ns IS NOT NULL AND cardinality(p_skip_ns) > 0 THEN
        SELECT array_agg(n.id) INTO v_skip FROM tasker.namespaces n WHERE n.name = ANY(p_skip_ns);
    END IF;
    -- The namespaces this session serves: tasker.namespaces, a JSON array of
    -- names the library sets from postgres.namespaces; unset, all of them.
    IF coalesce(current_setting('tasker.namespaces', true), '') <> '' THEN
        SELECT coalesce(array_agg(n.id), '{}') INTO v_allow FROM tasker.namespaces n
        WHERE n.name IN (SELECT json_array_elements_text(
                             current_setting('tasker.namespaces')::json));
    END IF;

    SELECT array_agg(c.task_id), array_agg(c.step_idx), array_agg(c.visible_at),
           array_agg(c.leased_by IS NOT NULL)
    INTO v_t, v_i, v_vis, v_exp
    FROM (SELECT q.task_id, q.step_idx, q.visible_at, q.leased_by FROM tasker.queue q
          WHERE q.handler = ANY(p_handlers) AND q.visible_at <= v_now
            AND (v_only IS NULL OR q.namespace_id = v_only)
            AND (v_skip IS NULL OR q.namespace_id <> ALL(v_skip))
            AND (v_allow IS NULL OR q.namespace_id = ANY(v_allow))
          ORDER BY q.priority DESC, q.visible_at
          LIMIT p_limit
          FOR UPDATE SKIP LOCKED) c;
    IF v_t IS NULL THEN
        RETURN;
    END IF;

    -- Leased rows that became visible again: their lease expired.
    IF true = ANY(v_exp) THEN
        FOR k IN 1 .. cardinality(v_t) LOOP
            IF v_exp[k] THEN
                PERFORM tasker._lease_expired(v_t[k], v_i[k], p_worker);
            END IF;
        END LOOP;
    END IF;

    -- Tasks whose first step this is: pending -> running.
    -- (The index scan over the key array visits them in key order.)
    WITH u AS (
        UPDATE tasker.tasks t SET state = 1, started_at = v_now
        WHERE t.id = ANY(v_t) AND t.state = 0 RETURNING t.id, t.hist)
    INSERT INTO tasker.transitions (task_id, step_idx, at, from_state, to_state, attempt, reason,
                                    worker_id)
    SELECT u.id, NULL, v_now, 0, 1, 0, 1, p_worker FROM u WHERE u.hist;

    RETURN QUERY
    WITH k AS (
        SELECT * FROM unnest(v_t, v_i, v_vis) AS k(task_id, idx, vis)),
    l AS (
        SELECT s.task_id, s.idx, s.state AS old_state, greatest(k.vis, s.finished_at) AS due
        FROM tasker.steps s JOIN k ON s.task_id = k.task_id AND s.idx = k.idx
        WHERE s.state IN (1, 3)
        ORDER BY s.task_id, s.idx),
    s AS (
        UPDATE tasker.steps s
        SET state = 2, attempts = s.attempts + 1, started_at = v_now, finished_at = NULL,
            worker_id = p_worker,
            enqueued_at = CASE WHEN l.old_state = 3 THEN least(l.due, v_now) ELSE s.enqueued_at END
        FROM l WHERE s.task_id = l.task_id AND s.idx = l.idx AND s.state IN (1, 3)
        RETURNING s.task_id, s.idx, s.attempts, s.budget, s.uuid, l.old_state, l.due,
                  s.enqueued_at, s.hist),
    tr AS (
        INSERT INTO tasker.transitions (task_id, step_idx, at, from_state, to_state, attempt,
                                        reason, worker_id)
        SELECT x.task_id, x.idx, x.at, x.f, x.t, x.attempt, x.reason, p_worker
        FROM (SELECT s.task_id, s.idx, least(s.due, v_now) AS at, 3::smallint AS f,
                     1::smallint AS t, s.attempts - 1 AS attempt, 11::smallint AS reason, 1 AS ord
              FROM s WHERE s.old_state = 3 AND s.hist
              UNION ALL
              SELECT s.task_id, s.idx, v_now, 1::smallint, 2::smallint, s.attempts, 8::smallint, 2
              FROM s WHERE s.hist) x
        ORDER BY x.task_id, x.idx, x.ord),
    q AS (
        UPDATE tasker.queue q
        SET visible_at = v_until, read_count = q.read_count + 1, leased_by = p_worker,
            attempt = s.attempts
        FROM s WHERE q.task_id = s.task_id AND q.step_idx = s.idx)
    SELECT s.task_id, s.idx, s.attempts, s.budget, s.uuid, t.uuid, ts.name, ts.handler, n.name,
           tp.name, t.context::text, ts.dep_names,
           ARRAY(SELECT d.result::text
                 FROM unnest(ts.dep_idx) WITH ORDINALITY AS u(i, o)
                      JOIN tasker.steps d ON d.task_id = s.task_id AND d.idx = u.i
                 ORDER BY u.o),
           tp.version, ts.timeout_ms,
           greatest(extract(epoch FROM v_now - coalesce(s.enqueued_at, v_now)) * 1000, 0)::float8
    FROM s JOIN tasker.tasks t ON t.id = s.task_id
         JOIN tasker.templates tp ON tp.id = t.template_id
         JOIN tasker.namespaces n ON n.id = tp.namespace_id
         JOIN tasker.template_steps ts ON ts.template_id = t.template_id AND ts.idx = s.idx;
    GET DIAGNOSTICS v_rows = ROW_COUNT;

    -- Rows whose step can no longer run are garbage (see tasker.claim).
    IF v_rows < cardinality(v_t) THEN
        DELETE FROM tasker.queue q USING unnest(v_t, v_i) AS k(task_id, idx)
        WHERE q.task_id = k.task_id AND q.step_idx = k.idx
          AND NOT EXISTS (SELECT 1 FROM tasker.steps s
                          WHERE s.task_id = k.task_id AND s.idx = k.idx AND s.state IN (1, 2, 3));
    END IF;
END
$$;

-- tasker.complete_steps (0006): transitions rows for the usual changes only
-- for flagged rows; a batch sent again is recognised from tasker.history.
CREATE OR REPLACE FUNCTION tasker.complete_steps(
    p_worker int, p_task_ids bigint[], p_idxs int[], p_attempts int[], p_ok boolean[],
    p_results text[], p_classes text[], p_messages text[], p_retryable boolean[],
    p_retry_after bigint[], p_contexts text[])
RETURNS TABLE (ord int, status int)
LANGUAGE plpgsql
-- Batches are small next to the tables; planner statistics (often taken
-- when the queue was empty) must not turn key lookups into table scans.
SET enable_seqscan = off AS $$
DECLARE
    v_now   timestamptz := now();
    v_ord   int[];
    v_st    bigint[];
    v_si    int[];
    v_ready int;
    v_t     bigint[];
    v_dn    int[];
    v_da    int[];
    v_de    int[];
    v_due   timestamptz;
    v_now0  boolean;
    v_rh    text[];
BEGIN
    -- Successes whose attempt still holds its lease: the queue row goes and
    -- the step is complete.  The DELETE tests the lease on the row version
    -- it deletes (a concurrent change makes it test the new version), so
    -- no separate lock is taken first.  The join is on the key, an index
    -- lookup per entry: the lease's expiry is compared as a difference,
    -- which no index serves, because a plain visible_at > now() let the
    -- planner scan the claim index for leased rows (it guesses one) and
    -- test every entry against each of them, quadratic in the batch.
    WITH dq AS (
        DELETE FROM tasker.queue q
        USING unnest(p_task_ids, p_idxs, p_attempts, p_ok) WITH ORDINALITY AS u(tid, idx, att, okf, o)
        WHERE q.task_id = u.tid AND q.step_idx = u.idx AND u.okf
          AND q.attempt = u.att AND q.leased_by IS NOT NULL
          AND q.visible_at - v_now > interval '0'
        RETURNING u.o::int AS o, q.task_id, q.step_idx),
    s AS (
        UPDATE tasker.steps s SET state = 4, result = p_results[dq.o]::json, finished_at = v_now
        FROM dq WHERE s.task_id = dq.task_id AND s.idx = dq.step_idx
        RETURNING s.task_id, s.idx, s.attempts, s.hist, dq.o),
    tr AS (
        INSERT INTO tasker.transitions (task_id, step_idx, at, from_state, to_state, attempt,
                                        reason, worker_id)
        SELECT s.task_id, s.idx, v_now, 2, 4, s.attempts, 9, p_worker FROM s WHERE s.hist
        ORDER BY s.task_id, s.idx)
    SELECT array_agg(s.task_id), array_agg(s.idx), coalesce(array_agg(s.o), '{}')
    INTO v_st, v_si, v_ord FROM s;

    -- Failures whose attempt still holds its lease, locked in key order.
    IF false = ANY(p_ok) THEN
        SELECT v_ord || coalesce(array_agg(x.o) FILTER (WHERE x.valid), '{}') INTO v_ord FROM (
            SELECT u.o::int AS o,
                   (q.attempt = u.att AND q.leased_by IS NOT NULL AND q.visible_at > v_now) AS valid
            FROM unnest(p_task_ids, p_idxs, p_attempts, p_ok) WITH ORDINALITY AS u(tid, idx, att, okf, o)
                 JOIN tasker.queue q ON q.task_id = u.tid AND q.step_idx = u.idx
            WHERE NOT u.okf
            ORDER BY q.task_id, q.step_idx
            FOR UPDATE OF q) x;
    END IF;

    IF cardinality(v_ord) > 0 THEN

        -- Their dependents count down; those reaching zero are enqueued.
        IF v_st IS NOT NULL THEN
            WITH dep AS (
                SELECT k.tid, d.idx, count(*)::int AS n
                FROM unnest(v_st, v_si) AS k(tid, idx)
                     JOIN tasker.tasks t ON t.id = k.tid
                     JOIN tasker.template_steps ts ON ts.template_id = t.template_id AND ts.idx = k.idx
                     CROSS JOIN unnest(ts.dependents) AS d(idx)
                GROUP BY k.tid, d.idx),
            -- In key order: two batches decrementing the same steps lock them
            -- in the same order and so cannot deadlock.
            d AS (
                UPDATE tasker.steps st
                SET remaining = st.remaining - dep.n,
                    state = CASE WHEN st.state = 0 AND st.remaining - dep.n = 0 THEN 1 ELSE st.state END,
                    enqueued_at = CASE WHEN st.state = 0 AND st.remaining - dep.n = 0 THEN v_now
                                       ELSE st.enqueued_at END
                FROM (SELECT * FROM dep ORDER BY dep.tid, dep.idx) dep
                WHERE st.task_id = dep.tid AND st.idx = dep.idx
                RETURNING st.task_id, st.idx, st.state, st.attempts, st.remaining, st.enqueued_at,
                          st.hist),
            rdy AS (
                SELECT d.task_id, d.idx, d.attempts, t.namespace_id, t.priority, ts.handler,
                       t.created_at, d.hist
                FROM d JOIN tasker.tasks t ON t.id = d.task_id
                       JOIN tasker.template_steps ts ON ts.template_id = t.template_id AND ts.idx = d.idx
                WHERE d.state = 1 AND d.remaining = 0 AND d.enqueued_at = v_now),
            qi AS (
                INSERT INTO tasker.queue (task_id, step_idx, namespace_id, handler, priority,
                                          visible_at, enqueued_at)
                -- Visible since the task was created: claims go by priority,
                -- then by the age of the task, so the steps of tasks under way
                -- come before the first steps of newer ones (and the claim
                -- in this same transaction takes them first).
                SELECT r.task_id, r.idx, r.namespace_id, r.handler, r.priority,
                       least(r.created_at, v_now), v_now FROM rdy r),
            tr AS (
                INSERT INTO tasker.transitions (task_id, step_idx, at, from_state, to_state,
                                                attempt, reason, worker_id)
                SELECT r.task_id, r.idx, v_now, 0, 1, r.attempts, 7, p_worker FROM rdy r
                WHERE r.hist ORDER BY r.task_id, r.idx),
            per AS (
                SELECT k.tid, 1 AS dn, -1 AS da FROM unnest(v_st) AS k(tid)
                UNION ALL
                SELECT r.task_id, 0, 1 FROM rdy r)
            SELECT array_agg(per.tid), array_agg(per.dn), array_agg(per.da),
                   (SELECT count(*) FROM rdy)::int,
                   (SELECT array_agg(DISTINCT r.handler ORDER BY r.handler) FROM rdy r)
            INTO v_t, v_dn, v_da, v_ready, v_rh FROM per;
            v_de := array_fill(0, ARRAY[cardinality(v_t)]);
        END IF;

        -- Failures: record the error; retry later (the queue row becomes
        -- visible after the backoff) or go to error (dead letter).
        IF false = ANY(p_ok) THEN
        WITH f AS (
            SELECT u.tid, u.idx, u.cls, u.msg, u.rt, u.aft, u.ctx
            FROM unnest(p_task_ids, p_idxs, p_ok, p_classes, p_messages, p_retryable,
                        p_retry_after, p_contexts)
                 WITH ORDINALITY AS u(tid, idx, okf, cls, msg, rt, aft, ctx, o)
            WHERE u.o = ANY(v_ord) AND NOT u.okf),
        x AS (
            SELECT f.*, s.attempts, (f.rt AND s.attempts < s.budget) AS retry,
                   CASE WHEN f.rt AND s.attempts < s.budget
                        THEN v_now + tasker.backoff_ms(ts.backoff, ts.base_ms, ts.max_ms, ts.jitter,
                                                       s.attempts, f.aft) * interval '1 millisecond'
                   END AS due
            FROM f JOIN tasker.steps s ON s.task_id = f.tid AND s.idx = f.idx
                   JOIN tasker.tasks t ON t.id = f.tid
                   JOIN tasker.template_steps ts ON ts.template_id = t.template_id AND ts.idx = f.idx),
        e AS (
            INSERT INTO tasker.step_errors (task_id, step_idx, attempt, class, message, retryable,
                                            context, at, worker_id)
            SELECT x.tid, x.idx, x.attempts, x.cls, x.msg, x.rt, x.ctx::json, v_now, p_worker
            FROM x),
        st AS (
            UPDATE tasker.steps s SET state = CASE WHEN x.retry THEN 3 ELSE 5 END, finished_at = v_now
            FROM x WHERE s.task_id = x.tid AND s.idx = x.idx),
        tr AS (
            INSERT INTO tasker.transitions (task_id, step_idx, at, from_state, to_state, attempt,
                                            reason, worker_id)
            SELECT x.tid, x.idx, v_now, 2, CASE WHEN x.retry THEN 3 ELSE 5 END, x.attempts,
                   CASE WHEN x.retry THEN 10 WHEN x.rt THEN 12 ELSE 13 END, p_worker
            FROM x ORDER BY x.tid, x.idx),
        rq AS (
            UPDATE tasker.queue q SET visible_at = x.due, leased_by = NULL
            FROM x WHERE x.retry AND q.task_id = x.tid AND q.step_idx = x.idx),
        dq AS (
            DELETE FROM tasker.queue q USING x
            WHERE NOT x.retry AND q.task_id = x.tid AND q.step_idx = x.idx
            RETURNING q.*),
        qa AS (
            INSERT INTO tasker.queue_archive (task_id, step_idx, namespace_id, handler, priority,
                                              enqueued_at, read_count, attempt, archived_at, reason)
            SELECT dq.task_id, dq.step_idx, dq.namespace_id, dq.handler, dq.priority,
                   dq.enqueued_at, dq.read_count, dq.attempt, v_now, 'dead_letter' FROM dq),
        dl AS (
            INSERT INTO tasker.dead_letters (task_id, step_idx, namespace_id, handler, attempts,
                                             error_class, error_message, reason, created_at)
            SELECT dq.task_id, dq.step_idx, dq.namespace_id, dq.handler, x.attempts, x.cls, x.msg,
                   CASE WHEN x.rt THEN 12 ELSE 13 END, v_now
            FROM dq JOIN x ON x.tid = dq.task_id AND x.idx = dq.step_idx)
        SELECT v_t || coalesce(array_agg(x.tid) FILTER (WHERE NOT x.retry), '{}'),
               v_dn || coalesce(array_agg(0) FILTER (WHERE NOT x.retry), '{}'),
               v_da || coalesce(array_agg(-1) FILTER (WHERE NOT x.retry), '{}'),
               coalesce(v_de, '{}') || coalesce(array_agg(1) FILTER (WHERE NOT x.retry), '{}'),
               min(x.due) FILTER (WHERE x.due > v_now),
               coalesce(bool_or(x.due <= v_now), false)
        INTO v_t, v_dn, v_da, v_de, v_due, v_now0
        FROM x;
        END IF;

        PERFORM tasker._tasks_apply(v_t, v_dn, v_da, v_de, p_worker);

        IF tasker._deferring() THEN
            -- The caller notifies after its commit (tasker.complete_steps_ev
            -- reports what): '*' wake every claimer, else the handlers of
            -- the steps made ready; the due time of a delayed retry.
            PERFORM set_config('tasker.ready',
                               CASE WHEN v_now0 THEN '*'
                                    WHEN coalesce(v_ready, 0) > 0 THEN v_rh::text
                                    ELSE '' END, true);
            PERFORM set_config('tasker.due',
                               coalesce((extract(epoch FROM v_due) * 1000)::bigint::text, ''),
                               true);
        ELSE
            IF coalesce(v_ready, 0) > 0 OR v_now0 THEN
                PERFORM pg_notify('tasker_ready', '');
            END IF;
            IF v_due IS NOT NULL THEN
                -- A delayed retry: listeners arm a timer for it.
                PERFORM pg_notify('tasker_ready',
                                  (extract(epoch FROM v_due) * 1000)::bigint::text);
            END IF;
        END IF;
    END IF;

    -- One status per entry.  Refused ones: cancelled, or the lease is gone
    -- (logged).  An entry this worker already recorded (a batch sent again
    -- after its connection broke during the commit) counts as recorded.
    IF cardinality(v_ord) = cardinality(p_task_ids) THEN
        RETURN QUERY SELECT g.i, 0 FROM generate_series(1, cardinality(p_task_ids)) AS g(i);
        RETURN;
    END IF;
    RETURN QUERY
    WITH st AS (
        SELECT u.o::int AS o, u.tid, u.idx, u.att, s.state, s.attempts,
               CASE WHEN u.o = ANY(v_ord) THEN 0
                    WHEN s.state = 6 THEN 2
                    WHEN EXISTS (SELECT 1 FROM tasker.history tr
                                 WHERE tr.task_id = u.tid AND tr.step_idx = u.idx
                                   AND tr.attempt = u.att AND tr.worker_id = p_worker
                                   AND tr.from_state = 2 AND tr.reason IN (9, 10, 12, 13)) THEN 0
                    ELSE 1 END AS status
        FROM unnest(p_task_ids, p_idxs, p_attempts) WITH ORDINALITY AS u(tid, idx, att, o)
             LEFT JOIN tasker.steps s ON s.task_id = u.tid AND s.idx = u.idx),
    fz AS (
        INSERT INTO tasker.fenced (at, task_id, step_idx, attempt, worker_id, current_attempt,
                                   step_state)
        SELECT v_now, st.tid, st.idx, st.att, p_worker, st.attempts, st.state
        FROM st WHERE st.status = 1)
    SELECT st.o, st.status FROM st ORDER BY st.o;
END
$$;

-- tasker._tasks_apply (0006): a finished task's row only when flagged.
CREATE OR REPLACE FUNCTION tasker._tasks_apply(p_ids bigint[], p_done int[], p_active int[],
                                               p_error int[], p_worker int)
RETURNS void LANGUAGE plpgsql
SET enable_seqscan = off AS $$
DECLARE
    v_now timestamptz := now();
    v_n   bigint;
    v_fin text;
    v_defer boolean := tasker._deferring();
BEGIN
    IF p_ids IS NULL OR cardinality(p_ids) = 0 THEN
        RETURN;
    END IF;
    WITH d AS (
        SELECT u.id, sum(u.dn)::int AS dn, sum(u.da)::int AS da, sum(u.de)::int AS de
        FROM unnest(p_ids, p_done, p_active, p_error) AS u(id, dn, da, de)
        GROUP BY u.id ORDER BY u.id),
    upd AS (
        UPDATE tasker.tasks t
        SET n_done = t.n_done + d.dn, n_active = t.n_active + d.da, n_error = t.n_error + d.de,
            state = CASE WHEN t.state IN (0, 1) AND t.n_active + d.da = 0
                         THEN CASE WHEN t.n_done + d.dn = t.n_steps THEN 2 ELSE 3 END
                         ELSE t.state END,
            finished_at = CASE WHEN t.state IN (0, 1) AND t.n_active + d.da = 0
                               THEN v_now ELSE t.finished_at END
        FROM d WHERE t.id = d.id
        RETURNING t.id, t.uuid, t.state, t.finished_at, t.created_at, t.hist),
    fin AS (
        SELECT upd.id, upd.uuid, upd.state, upd.created_at, upd.hist FROM upd
        WHERE upd.finished_at = v_now AND upd.state IN (2, 3)),
    tr AS (
        INSERT INTO tasker.transitions (task_id, step_idx, at, from_state, to_state, attempt,
                                        reason, worker_id)
        SELECT fin.id, NULL, v_now, 1, fin.state, 0, CASE fin.state WHEN 2 THEN 2 ELSE 3 END,
               p_worker
        FROM fin WHERE fin.hist ORDER BY fin.id)
    SELECT count(*), string_agg(x.id::text || ':' || x.state || ':' || x.age, ',')
    INTO v_n, v_fin
    FROM (SELECT CASE WHEN v_defer THEN 1 ELSE tasker._notify('tasker_done', fin.uuid::text) END,
                 fin.id, fin.state,
                 (extract(epoch FROM v_now - fin.created_at) * 1000)::float8 AS age
          FROM fin) x;
    IF v_fin IS NOT NULL THEN
        PERFORM set_config('tasker.finished',
                           coalesce(nullif(current_setting('tasker.finished', true), '') || ',', '')
                           || v_fin, true);
    END IF;
END
$$;

-- tasker.task_json (0004): transitions from tasker.history.
CREATE OR REPLACE FUNCTION tasker.task_json(p_uuid uuid) RETURNS json
LANGUAGE sql STABLE AS $$
    SELECT json_build_object(
        'uuid', t.uuid, 'namespace', n.name, 'name', tp.name, 'version', tp.version,
        'state', tasker.task_state_name(t.state), 'priority', t.priority,
        'idempotency_key', t.idempotency_key, 'context', t.context,
        'created_at', tasker.iso(t.created_at), 'finished_at', tasker.iso(t.finished_at),
        'duration_ms', tasker.ms_between(t.created_at, t.finished_at),
        'steps', (
            SELECT json_agg(json_build_object(
                'name', ts.name, 'uuid', s.uuid, 'handler', ts.handler,
                'state', tasker.step_state_name(s.state), 'attempts', s.attempts,
                'max_attempts', s.budget, 'depends_on', to_json(ts.dep_names),
                'result', s.result,
                'result_kind', CASE WHEN s.result IS NULL THEN 'none' ELSE 'json' END,
                'errors', coalesce((
                    SELECT json_agg(json_build_object(
                        'attempt', e.attempt, 'class', e.class, 'message', e.message,
                        'retryable', e.retryable, 'context', e.context, 'at', tasker.iso(e.at))
                        ORDER BY e.at, e.attempt)
                    FROM tasker.step_errors e WHERE e.task_id = t.id AND e.step_idx = s.idx),
                    '[]'::json),
                'enqueued_at', tasker.iso(s.enqueued_at), 'started_at', tasker.iso(s.started_at),
                'finished_at', tasker.iso(s.finished_at),
                'duration_ms', tasker.ms_between(s.started_at, s.finished_at))
                ORDER BY s.idx)
            FROM tasker.steps s
                 JOIN tasker.template_steps ts ON ts.template_id = t.template_id AND ts.idx = s.idx
            WHERE s.task_id = t.id),
        'transitions', coalesce((
            SELECT json_agg(json_build_object(
                'at', tasker.iso(tr.at), 'step', ts.name,
                'from', CASE WHEN tr.step_idx IS NULL THEN tasker.task_state_name(tr.from_state)
                             ELSE tasker.step_state_name(tr.from_state) END,
                'to', CASE WHEN tr.step_idx IS NULL THEN tasker.task_state_name(tr.to_state)
                           ELSE tasker.step_state_name(tr.to_state) END,
                'attempt', tr.attempt, 'reason', tasker.reason_name(tr.reason))
                ORDER BY tr.at, tr.id IS NULL, tr.id, tr.rank, tr.step_idx)
            FROM tasker.history tr
                 LEFT JOIN tasker.template_steps ts
                        ON ts.template_id = t.template_id AND ts.idx = tr.step_idx
            WHERE tr.task_id = t.id), '[]'::json))
    FROM tasker.tasks t
         JOIN tasker.templates tp ON tp.id = t.template_id
         JOIN tasker.namespaces n ON n.id = tp.namespace_id
    WHERE t.uuid = p_uuid
$$;

-- tasker.resolve_step (0004): dependents enqueued get rows only when flagged.
CREATE OR REPLACE FUNCTION tasker.resolve_step(p_uuid uuid, p_step text, p_result text)
RETURNS TABLE (status int, state text)
LANGUAGE plpgsql AS $$
DECLARE
    v_now   timestamptz := now();
    v_id    bigint;
    v_idx   int;
    v_deps  int[];
    v_sst   smallint;
    v_tst   smallint;
    v_ready int;
    v_t     record;
BEGIN
    SELECT t.id, ts.idx, ts.dependents INTO v_id, v_idx, v_deps
    FROM tasker.tasks t LEFT JOIN tasker.template_steps ts
         ON ts.template_id = t.template_id AND ts.name = p_step
    WHERE t.uuid = p_uuid;
    IF v_id IS NULL THEN
        RETURN QUERY SELECT 1, NULL::text;
        RETURN;
    END IF;
    IF v_idx IS NULL THEN
        RETURN QUERY SELECT 3, NULL::text;
        RETURN;
    END IF;
    PERFORM 1 FROM tasker.steps s
    WHERE s.task_id = v_id AND (s.idx = v_idx OR s.idx = ANY(v_deps))
    ORDER BY s.idx FOR UPDATE;
    SELECT s.state INTO v_sst FROM tasker.steps s WHERE s.task_id = v_id AND s.idx = v_idx;
    IF v_sst <> 5 THEN
        RETURN QUERY SELECT 2, tasker.step_state_name(v_sst);
        RETURN;
    END IF;
    UPDATE tasker.steps SET state = 7, result = p_result::json, finished_at = v_now
    WHERE task_id = v_id AND idx = v_idx;
    INSERT INTO tasker.transitions (task_id, step_idx, at, from_state, to_state, attempt, reason)
    SELECT v_id, v_idx, v_now, 5, 7, s.attempts, 6 FROM tasker.steps s
    WHERE s.task_id = v_id AND s.idx = v_idx;
    UPDATE tasker.dead_letters SET resolved_at = v_now, resolution = 'manual_resolve'
    WHERE task_id = v_id AND step_idx = v_idx AND resolved_at IS NULL;

    WITH dep AS (
        SELECT d.idx, count(*)::int AS n FROM unnest(v_deps) AS d(idx) GROUP BY d.idx),
    d AS (
        UPDATE tasker.steps st
        SET remaining = st.remaining - dep.n,
            state = CASE WHEN st.state = 0 AND st.remaining - dep.n = 0 THEN 1 ELSE st.state END,
            enqueued_at = CASE WHEN st.state = 0 AND st.remaining - dep.n = 0 THEN v_now
                               ELSE st.enqueued_at END
        FROM dep WHERE st.task_id = v_id AND st.idx = dep.idx
        RETURNING st.idx, st.state, st.attempts, st.remaining, st.enqueued_at, st.hist),
    rdy AS (
        SELECT d.idx, d.attempts, t.namespace_id, t.priority, ts.handler, d.hist
        FROM d JOIN tasker.tasks t ON t.id = v_id
               JOIN tasker.template_steps ts ON ts.template_id = t.template_id AND ts.idx = d.idx
        WHERE d.state = 1 AND d.remaining = 0 AND d.enqueued_at = v_now),
    qi AS (
        INSERT INTO tasker.queue (task_id, step_idx, namespace_id, handler, priority, visible_at,
                                  enqueued_at, attempt)
        SELECT v_id, r.idx, r.namespace_id, r.handler, r.priority, v_now, v_now, r.attempts
        FROM rdy r),
    tr AS (
        INSERT INTO tasker.transitions (task_id, step_idx, at, from_state, to_state, attempt,
                                        reason)
        SELECT v_id, r.idx, v_now, 0, 1, r.attempts, 7 FROM rdy r WHERE r.hist ORDER BY r.idx)
    SELECT count(*) INTO v_ready FROM rdy;

    SELECT t.state, t.n_done, t.n_steps, t.uuid INTO v_t FROM tasker.tasks t
    WHERE t.id = v_id FOR UPDATE;
    v_tst := v_t.state;
    UPDATE tasker.tasks SET n_error = n_error - 1, n_done = n_done + 1,
                            n_active = n_active + v_ready
    WHERE id = v_id;
    IF v_tst = 3 THEN
        IF v_ready > 0 THEN
            UPDATE tasker.tasks SET state = 1, finished_at = NULL WHERE id = v_id;
            INSERT INTO tasker.transitions (task_id, step_idx, at, from_state, to_state, attempt,
                                            reason)
            VALUES (v_id, NULL, v_now, 3, 1, 0, 6);
        ELSIF v_t.n_done + 1 = v_t.n_steps THEN
            UPDATE tasker.tasks SET state = 5, finished_at = v_now WHERE id = v_id;
            INSERT INTO tasker.transitions (task_id, step_idx, at, from_state, to_state, attempt,
                                            reason)
            VALUES (v_id, NULL, v_now, 3, 5, 0, 6);
            PERFORM pg_notify('tasker_done', v_t.uuid::text);
        END IF;
    END IF;
    IF v_ready > 0 THEN
        PERFORM pg_notify('tasker_ready', '');
    END IF;
    RETURN QUERY SELECT 0, 'resolved_manually'::text;
END
$$;

-- tasker.claim (0003), kept for callers of the first versions: the same
-- claim as tasker.claim_ns, whose transitions rows follow the flags.
CREATE OR REPLACE FUNCTION tasker.claim(p_worker int, p_handlers text[], p_limit int,
                                        p_lease_ms int)
RETURNS TABLE (task_id bigint, step_idx int, attempt int, max_attempts int, step_uuid uuid,
               task_uuid uuid, step_name text, handler text, namespace text,
               template_name text, context text, dep_names text[], dep_results text[])
LANGUAGE sql AS $$
    SELECT c.task_id, c.step_idx, c.attempt, c.max_attempts, c.step_uuid, c.task_uuid,
           c.step_name, c.handler, c.namespace, c.template_name, c.context, c.dep_names,
           c.dep_results
    FROM tasker.claim_ns(p_worker, p_handlers, p_limit, p_lease_ms, NULL, NULL) c
$$;

-- tasker.heartbeat (0003): the lease test written so that no index serves
-- it (see tasker.complete_steps above): each entry is one key lookup.
CREATE OR REPLACE FUNCTION tasker.heartbeat(p_worker int, p_task_ids bigint[], p_idxs int[],
                                            p_attempts int[], p_lease_ms int)
RETURNS TABLE (ord int, held boolean)
LANGUAGE plpgsql
-- Batches are small next to the tables; planner statistics (often taken
-- when the queue was empty) must not turn key lookups into table scans.
SET enable_seqscan = off AS $$
DECLARE
    v_now timestamptz := now();
BEGIN
    UPDATE tasker.workers SET last_seen_at = v_now WHERE id = p_worker;
    RETURN QUERY
    WITH k AS (
        SELECT u.tid, u.idx, u.att, u.o::int AS o
        FROM unnest(p_task_ids, p_idxs, p_attempts) WITH ORDINALITY AS u(tid, idx, att, o)),
    l AS (
        SELECT k.o, q.task_id, q.step_idx
        FROM k JOIN tasker.queue q ON q.task_id = k.tid AND q.step_idx = k.idx
        WHERE q.attempt = k.att AND q.leased_by = p_worker AND q.visible_at - v_now > interval '0'
        ORDER BY q.task_id, q.step_idx
        FOR UPDATE OF q SKIP LOCKED),
    u AS (
        UPDATE tasker.queue q SET visible_at = v_now + p_lease_ms * interval '1 millisecond'
        FROM l WHERE q.task_id = l.task_id AND q.step_idx = l.step_idx
        RETURNING l.o)
    SELECT u.o, true FROM u
    UNION ALL
    SELECT k.o, false FROM k
    WHERE NOT EXISTS (SELECT 1 FROM tasker.queue q
                      WHERE q.task_id = k.tid AND q.step_idx = k.idx AND q.attempt = k.att
                        AND q.leased_by = p_worker AND q.visible_at - v_now > interval '0');
END
$$;

-- tasker.prune (0004): old tasks found by creation time (see the index above).
CREATE OR REPLACE FUNCTION tasker.prune(p_older_than interval, p_batch int DEFAULT 1000,
                                        p_include_errors boolean DEFAULT false)
RETURNS int LANGUAGE plpgsql AS $$
DECLARE
    v_ids bigint[];
BEGIN
    SELECT array_agg(x.id) INTO v_ids FROM (
        SELECT t.id FROM tasker.tasks t
        WHERE t.created_at < now() - p_older_than AND t.finished_at < now() - p_older_than
          AND (t.state IN (2, 4, 5) OR (p_include_errors AND t.state = 3))
        ORDER BY t.created_at LIMIT p_batch
        FOR UPDATE SKIP LOCKED) x;
    IF v_ids IS NULL THEN
        RETURN 0;
    END IF;
    RETURN tasker._delete_tasks(v_ids);
END
$$;

INSERT INTO tasker.schema_version (version, name) VALUES (7, 'history')
    ON CONFLICT (version) DO NOTHING;

COMMIT;
