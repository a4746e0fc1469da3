-- tasker schema, version 8: a step's first attempt is claimed on its queue
-- row alone.
--
-- A claim used to write three rows per step: the queue row (leased), the
-- step row (in progress, attempt 1, started, worker) and, for a task's
-- first step, the task row (running).  The queue row already holds all of
-- it -- the lease, the attempt, the worker -- and now also the time of the
-- claim (leased_at).  So the usual claim (a step's first attempt, on rows
-- whose history is still their timestamps) writes the queue row only: the
-- step row stays `enqueued` and the task row `pending`, and what they stand
-- for is read through the queue row:
--
--   a step row in state enqueued whose queue row is leased is in progress,
--   with the queue row's attempt, worker and leased_at as its start;
--   a task row in state pending with a leased queue row is running, since
--   the earliest leased_at.
--
-- The views tasker.steps_current and tasker.tasks_current read rows that
-- way, and every reader (task JSON, readiness, counts, history) uses them.
-- The completion writes the claim into the step row together with its
-- result (enqueued -> complete in one update), and the task's start with
-- its first progress.  Anything unusual first writes the claim into the
-- rows (tasker._write_claims) and then goes on as before: a failure, a
-- lease expiring, a release, a cancel.  Retries and steps or tasks with a
-- written history (the `hist` flag) are claimed as before.
--
-- Also: template_steps carries its namespace, template name and version, so
-- a claim reads one template row per step instead of three.  Ages in
-- milliseconds are computed in float8 (date_part): extract() computes in
-- numeric, which cost more than a microsecond per step.
BEGIN;
DO $$ BEGIN PERFORM pg_advisory_xact_lock(7366231101); END $$;

ALTER TABLE tasker.queue ADD COLUMN IF NOT EXISTS leased_at timestamptz;
UPDATE tasker.queue SET leased_at = now() WHERE leased_by IS NOT NULL AND leased_at IS NULL;
-- Whether the row's step has dependents: a completion counts them down only
-- then.  Rows from before (and rows written by the rarer paths, which leave
-- the default) say true, which is always safe.
ALTER TABLE tasker.queue ADD COLUMN IF NOT EXISTS has_dependents boolean NOT NULL DEFAULT true;

ALTER TABLE tasker.template_steps ADD COLUMN IF NOT EXISTS namespace text;
ALTER TABLE tasker.template_steps ADD COLUMN IF NOT EXISTS template_name text;
ALTER TABLE tasker.template_steps ADD COLUMN IF NOT EXISTS template_version text;
UPDATE tasker.template_steps ts
SET namespace = n.name, template_name = tp.name, template_version = tp.version
FROM tasker.templates tp JOIN tasker.namespaces n ON n.id = tp.namespace_id
WHERE tp.id = ts.template_id AND ts.namespace IS NULL;

-- A template's steps are inserted after the template (one transaction,
-- once per version), so the names are there to copy.
CREATE OR REPLACE FUNCTION tasker._template_step_names() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    SELECT n.name, tp.name, tp.version
    INTO NEW.namespace, NEW.template_name, NEW.template_version
    FROM tasker.templates tp JOIN tasker.namespaces n ON n.id = tp.namespace_id
    WHERE tp.id = NEW.template_id;
    RETURN NEW;
END
$$;
CREATE OR REPLACE TRIGGER template_steps_names BEFORE INSERT ON tasker.template_steps
FOR EACH ROW EXECUTE FUNCTION tasker._template_step_names();

-- Steps as they are: one in state enqueued whose queue row is leased is in
-- progress (see the top).
CREATE OR REPLACE VIEW tasker.steps_current AS
    SELECT s.task_id, s.idx, s.uuid,
           CASE WHEN q.task_id IS NULL THEN s.state ELSE 2::smallint END AS state,
           coalesce(q.attempt, s.attempts) AS attempts, s.budget, s.remaining, s.result,
           s.enqueued_at, coalesce(q.leased_at, s.started_at) AS started_at, s.finished_at,
           coalesce(q.leased_by, s.worker_id) AS worker_id, s.hist
    FROM tasker.steps s
         LEFT JOIN tasker.queue q ON s.state = 1 AND q.task_id = s.task_id
                                 AND q.step_idx = s.idx AND q.leased_by IS NOT NULL;

-- The earliest claim of a task that only its queue rows record (NULL: none
-- leased).  A pending task with one is running since then.
CREATE OR REPLACE FUNCTION tasker._claimed_at(p_task_id bigint) RETURNS timestamptz
LANGUAGE sql STABLE AS $$
    SELECT min(q.leased_at) FROM tasker.queue q
    WHERE q.task_id = p_task_id AND q.leased_by IS NOT NULL
$$;

-- Tasks as they are: one pending with a leased queue row is running.
CREATE OR REPLACE VIEW tasker.tasks_current AS
    SELECT t.id, t.uuid, t.template_id, t.namespace_id,
           CASE WHEN t.state = 0 AND c.at IS NOT NULL THEN 1::smallint ELSE t.state END AS state,
           t.priority, t.idempotency_key, t.context, t.n_steps, t.n_done, t.n_active, t.n_error,
           t.created_at, coalesce(t.started_at, c.at) AS started_at, t.finished_at, t.hist
    FROM tasker.tasks t
         CROSS JOIN LATERAL (SELECT CASE WHEN t.state = 0 THEN tasker._claimed_at(t.id) END
                             AS at) c;

-- Writes claims held by queue rows alone into their step and task rows:
-- the steps given by (p_task_ids[k], p_idxs[k]), or every step of the
-- task when p_idxs[k] is NULL.  Idempotent.  Called before any unusual
-- change, so that it starts from rows that say what they are.  Locks the
-- step rows, then the task rows.
CREATE OR REPLACE FUNCTION tasker._write_claims(p_task_ids bigint[], p_idxs int[])
RETURNS void LANGUAGE plpgsql
SET enable_seqscan = off AS $$
BEGIN
    WITH c AS (
        SELECT q.task_id, q.step_idx, q.attempt, q.leased_by, q.leased_at
        FROM unnest(p_task_ids, p_idxs) AS k(tid, idx)
             JOIN tasker.queue q ON q.task_id = k.tid AND (k.idx IS NULL OR q.step_idx = k.idx)
        WHERE q.leased_by IS NOT NULL),
    s AS (
        UPDATE tasker.steps s
        SET state = 2, attempts = c.attempt, started_at = c.leased_at, finished_at = NULL,
            worker_id = c.leased_by
        FROM (SELECT * FROM c ORDER BY c.task_id, c.step_idx) c
        WHERE s.task_id = c.task_id AND s.idx = c.step_idx AND s.state = 1
        RETURNING s.task_id, s.idx, s.attempts, s.started_at, s.worker_id, s.hist)
    INSERT INTO tasker.transitions (task_id, step_idx, at, from_state, to_state, attempt, reason,
                                    worker_id)
    SELECT s.task_id, s.idx, s.started_at, 1, 2, s.attempts, 8, s.worker_id FROM s WHERE s.hist
    ORDER BY s.task_id, s.idx;

    WITH t AS (
        UPDATE tasker.tasks t SET state = 1, started_at = c.at
        FROM (SELECT tc.id, tc.started_at AS at FROM tasker.tasks_current tc
              WHERE tc.id = ANY(p_task_ids) AND tc.state = 1 AND tc.started_at IS NOT NULL
              ORDER BY tc.id) c
        WHERE t.id = c.id AND t.state = 0
        RETURNING t.id, t.started_at, t.hist)
    INSERT INTO tasker.transitions (task_id, step_idx, at, from_state, to_state, attempt, reason)
    SELECT t.id, NULL, t.started_at, 0, 1, 0, 1 FROM t WHERE t.hist ORDER BY t.id;
END
$$;

-- tasker.history (0007) with the claims held by queue rows alone: a step's
-- claim (enqueued -> in progress) and its task's start (pending -> running).
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
    WHERE NOT s.hist
    UNION ALL
    SELECT NULL::bigint, s.task_id, s.idx, q.leased_at, 1::smallint, 2::smallint, q.attempt,
           8::smallint, q.leased_by, 4
    FROM tasker.steps s JOIN tasker.queue q ON q.task_id = s.task_id AND q.step_idx = s.idx
    WHERE NOT s.hist AND s.state = 1 AND q.leased_by IS NOT NULL
    UNION ALL
    SELECT NULL::bigint, t.id, NULL::int, c.at, 0::smallint, 1::smallint, 0, 1::smallint,
           NULL::int, 1
    FROM tasker.tasks t
         CROSS JOIN LATERAL (SELECT tasker._claimed_at(t.id) AS at) c
    WHERE NOT t.hist AND t.state = 0 AND c.at IS NOT NULL;

-- An enqueued step completing is usual too: its claim was on the queue row.
CREATE OR REPLACE TRIGGER steps_hist AFTER UPDATE ON tasker.steps
FOR EACH ROW WHEN (NOT OLD.hist AND NOT NEW.hist AND NOT (
    (OLD.state = 0 AND NEW.state IN (0, 1)) OR
    (OLD.state = 1 AND NEW.state IN (2, 4) AND OLD.attempts = 0) OR
    (OLD.state = 2 AND NEW.state = 4)))
EXECUTE FUNCTION tasker._step_hist();

-- tasker.uuid_v7 (0002): the milliseconds in float8 (see the top).
CREATE OR REPLACE FUNCTION tasker.uuid_v7(at timestamptz DEFAULT clock_timestamp()) RETURNS uuid
LANGUAGE sql VOLATILE PARALLEL SAFE AS $$
    SELECT encode(set_bit(set_bit(overlay(uuid_send(gen_random_uuid())
                  PLACING substring(int8send((date_part('epoch', at) * 1000)::bigint) FROM 3)
                  FROM 1 FOR 6), 52, 1), 53, 1), 'hex')::uuid
$$;

-- tasker.create_task (0007): queue rows say whether their step has dependents.
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
                              enqueued_at, has_dependents)
    SELECT v_id, ts.idx, v_nsid, ts.handler, p_priority, v_now, v_now,
           cardinality(ts.dependents) > 0
    FROM tasker.template_steps ts
    WHERE ts.template_id = v_tid AND cardinality(ts.dep_idx) = 0;

    IF v_roots > 0 AND NOT tasker._quiet() THEN
        PERFORM pg_notify('tasker_ready', '');
    END IF;
    RETURN QUERY SELECT 0, v_uuid, NULL::text;
END
$$;

-- tasker.claim_ns (0007): a step's first attempt is claimed on its queue row alone;
-- the template's names come from template_steps.
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

    -- A step's first attempt (a row without written history) is claimed on
    -- its queue row alone: `lean`.  Others are written into the step row as
    -- before; a pending task with written history starts as before.
    RETURN QUERY
    WITH k AS (
        SELECT * FROM unnest(v_t, v_i, v_vis) AS k(task_id, idx, vis)),
    l AS (
        SELECT s.task_id, s.idx, s.state AS old_state, s.attempts, s.budget, s.uuid,
               s.enqueued_at, greatest(k.vis, s.finished_at) AS due,
               (s.state = 1 AND s.attempts = 0 AND NOT s.hist) AS lean,
               t.uuid AS task_uuid, t.context, t.template_id, t.state AS task_state,
               t.hist AS task_hist
        FROM k JOIN tasker.steps s ON s.task_id = k.task_id AND s.idx = k.idx
               JOIN tasker.tasks t ON t.id = k.task_id
        WHERE s.state IN (1, 3)
        ORDER BY s.task_id, s.idx),
    tu AS (
        UPDATE tasker.tasks t SET state = 1, started_at = v_now
        FROM (SELECT DISTINCT l.task_id FROM l WHERE l.task_state = 0 AND l.task_hist) p
        WHERE t.id = p.task_id AND t.state = 0
        RETURNING t.id),
    tut AS (
        INSERT INTO tasker.transitions (task_id, step_idx, at, from_state, to_state, attempt,
                                        reason, worker_id)
        SELECT tu.id, NULL, v_now, 0, 1, 0, 1, p_worker FROM tu ORDER BY tu.id),
    s AS (
        UPDATE tasker.steps s
        SET state = 2, attempts = s.attempts + 1, started_at = v_now, finished_at = NULL,
            worker_id = p_worker,
            enqueued_at = CASE WHEN l.old_state = 3 THEN least(l.due, v_now) ELSE s.enqueued_at END
        FROM l WHERE NOT l.lean AND s.task_id = l.task_id AND s.idx = l.idx AND s.state IN (1, 3)
        RETURNING s.task_id, s.idx, s.attempts, l.budget, l.uuid, l.old_state, l.due,
                  s.enqueued_at, s.hist, l.task_uuid, l.context, l.template_id),
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
    c AS (
        SELECT l.task_id, l.idx, 1 AS attempts, l.budget, l.uuid, l.enqueued_at, l.task_uuid,
               l.context, l.template_id
        FROM l WHERE l.lean
        UNION ALL
        SELECT s.task_id, s.idx, s.attempts, s.budget, s.uuid, s.enqueued_at, s.task_uuid,
               s.context, s.template_id
        FROM s),
    q AS (
        UPDATE tasker.queue q
        SET visible_at = v_until, read_count = q.read_count + 1, leased_by = p_worker,
            attempt = c.attempts, leased_at = v_now
        FROM c WHERE q.task_id = c.task_id AND q.step_idx = c.idx)
    SELECT c.task_id, c.idx, c.attempts, c.budget, c.uuid, c.task_uuid, ts.name, ts.handler,
           ts.namespace, ts.template_name, c.context::text, ts.dep_names,
           CASE WHEN cardinality(ts.dep_idx) > 0 THEN
               ARRAY(SELECT d.result::text
                     FROM unnest(ts.dep_idx) WITH ORDINALITY AS u(i, o)
                          JOIN tasker.steps d ON d.task_id = c.task_id AND d.idx = u.i
                     ORDER BY u.o) ELSE '{}' END,
           ts.template_version, ts.timeout_ms,
           greatest(date_part('epoch', v_now - coalesce(c.enqueued_at, v_now)) * 1000, 0)
    FROM c JOIN tasker.template_steps ts ON ts.template_id = c.template_id AND ts.idx = c.idx;
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



-- tasker.complete_steps (0007): an enqueued step (claimed on its queue row)
-- completes with its claim written; failures write their claims first.
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
    v_ss    timestamptz[];
    v_dt    bigint[];
    v_di    int[];
    v_rt    bigint[];
    v_ts    timestamptz[];
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
        RETURNING u.o::int AS o, q.task_id, q.step_idx, q.attempt, q.leased_by, q.leased_at,
                  q.has_dependents),
    -- A step still enqueued was claimed on its queue row alone: its claim
    -- is written now, with its result.
    s AS (
        UPDATE tasker.steps s
        SET state = 4, result = p_results[dq.o]::json, finished_at = v_now, attempts = dq.attempt,
            started_at = CASE WHEN s.state = 1 THEN dq.leased_at ELSE s.started_at END,
            worker_id = CASE WHEN s.state = 1 THEN dq.leased_by ELSE s.worker_id END
        FROM dq WHERE s.task_id = dq.task_id AND s.idx = dq.step_idx
        RETURNING s.task_id, s.idx, s.attempts, s.hist, s.started_at, dq.o, dq.has_dependents),
    tr AS (
        INSERT INTO tasker.transitions (task_id, step_idx, at, from_state, to_state, attempt,
                                        reason, worker_id)
        SELECT s.task_id, s.idx, v_now, 2, 4, s.attempts, 9, p_worker FROM s WHERE s.hist
        ORDER BY s.task_id, s.idx)
    SELECT array_agg(s.task_id), array_agg(s.idx), array_agg(s.started_at),
           coalesce(array_agg(s.o), '{}'), array_agg(s.task_id) FILTER (WHERE s.has_dependents),
           array_agg(s.idx) FILTER (WHERE s.has_dependents)
    INTO v_st, v_si, v_ss, v_ord, v_dt, v_di FROM s;

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
        -- Their claims into the step rows first (a failure is unusual).
        PERFORM tasker._write_claims(array_agg(u.tid), array_agg(u.idx))
        FROM unnest(p_task_ids, p_idxs, p_ok) WITH ORDINALITY AS u(tid, idx, okf, o)
        WHERE NOT u.okf AND u.o = ANY(v_ord);
    END IF;

    IF cardinality(v_ord) > 0 THEN

        -- Their dependents count down; those reaching zero are enqueued.
        -- (Only steps with dependents: their queue rows say so.)
        IF v_dt IS NOT NULL THEN
            WITH dep AS (
                SELECT k.tid, d.idx, count(*)::int AS n
                FROM unnest(v_dt, v_di) AS k(tid, idx)
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
                       t.created_at, d.hist, cardinality(ts.dependents) > 0 AS has_dependents
                FROM d JOIN tasker.tasks t ON t.id = d.task_id
                       JOIN tasker.template_steps ts ON ts.template_id = t.template_id AND ts.idx = d.idx
                WHERE d.state = 1 AND d.remaining = 0 AND d.enqueued_at = v_now),
            qi AS (
                INSERT INTO tasker.queue (task_id, step_idx, namespace_id, handler, priority,
                                          visible_at, enqueued_at, has_dependents)
                -- Visible since the task was created: claims go by priority,
                -- then by the age of the task, so the steps of tasks under way
                -- come before the first steps of newer ones (and the claim
                -- in this same transaction takes them first).
                SELECT r.task_id, r.idx, r.namespace_id, r.handler, r.priority,
                       least(r.created_at, v_now), v_now, r.has_dependents FROM rdy r),
            tr AS (
                INSERT INTO tasker.transitions (task_id, step_idx, at, from_state, to_state,
                                                attempt, reason, worker_id)
                SELECT r.task_id, r.idx, v_now, 0, 1, r.attempts, 7, p_worker FROM rdy r
                WHERE r.hist ORDER BY r.task_id, r.idx)
            SELECT array_agg(r.task_id), count(*)::int,
                   array_agg(DISTINCT r.handler ORDER BY r.handler)
            INTO v_rt, v_ready, v_rh FROM rdy r;
        END IF;
        -- Per task: steps done and no longer active, steps made ready.
        IF v_st IS NOT NULL THEN
            v_t := v_st || coalesce(v_rt, '{}');
            v_dn := array_fill(1, ARRAY[cardinality(v_st)])
                    || array_fill(0, ARRAY[coalesce(cardinality(v_rt), 0)]);
            v_da := array_fill(-1, ARRAY[cardinality(v_st)])
                    || array_fill(1, ARRAY[coalesce(cardinality(v_rt), 0)]);
            v_ts := v_ss;
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

        PERFORM tasker._tasks_apply(v_t, v_dn, v_da, v_de, p_worker, v_ts);

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



-- tasker._tasks_apply (0007): a pending task with progress is running, since
-- the first claim of its steps; p_started[k] is when the step of entry k
-- started, if known (a one-step task needs nothing else).
CREATE OR REPLACE FUNCTION tasker._tasks_apply(p_ids bigint[], p_done int[], p_active int[],
                                               p_error int[], p_worker int,
                                               p_started timestamptz[])
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
        SELECT u.id, sum(u.dn)::int AS dn, sum(u.da)::int AS da, sum(u.de)::int AS de,
               min(u.st) AS started
        FROM unnest(p_ids, p_done, p_active, p_error, p_started) AS u(id, dn, da, de, st)
        GROUP BY u.id ORDER BY u.id),
    upd AS (
        UPDATE tasker.tasks t
        SET n_done = t.n_done + d.dn, n_active = t.n_active + d.da, n_error = t.n_error + d.de,
            state = CASE WHEN t.state IN (0, 1) AND t.n_active + d.da = 0
                         THEN CASE WHEN t.n_done + d.dn = t.n_steps THEN 2 ELSE 3 END
                         WHEN t.state = 0 THEN 1
                         ELSE t.state END,
            finished_at = CASE WHEN t.state IN (0, 1) AND t.n_active + d.da = 0
                               THEN v_now ELSE t.finished_at END,
            started_at = CASE
                WHEN t.state <> 0 OR t.started_at IS NOT NULL THEN t.started_at
                WHEN t.n_steps = 1 AND d.started IS NOT NULL THEN d.started
                ELSE least(d.started,
                           (SELECT min(st.started_at) FROM tasker.steps st
                            WHERE st.task_id = t.id),
                           tasker._claimed_at(t.id)) END
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
                 date_part('epoch', v_now - fin.created_at) * 1000 AS age
          FROM fin) x;
    IF v_fin IS NOT NULL THEN
        PERFORM set_config('tasker.finished',
                           coalesce(nullif(current_setting('tasker.finished', true), '') || ',', '')
                           || v_fin, true);
    END IF;
END
$$;

-- The callers of the unusual paths, which know no start times.
CREATE OR REPLACE FUNCTION tasker._tasks_apply(p_ids bigint[], p_done int[], p_active int[],
                                               p_error int[], p_worker int)
RETURNS void LANGUAGE sql AS $$
    SELECT tasker._tasks_apply(p_ids, p_done, p_active, p_error, p_worker, NULL)
$$;

-- tasker._lease_expired (0003): the claim into the step row first.
CREATE OR REPLACE FUNCTION tasker._lease_expired(p_task_id bigint, p_idx int, p_worker int)
RETURNS void LANGUAGE plpgsql
-- Batches are small next to the tables; planner statistics (often taken
-- when the queue was empty) must not turn key lookups into table scans.
SET enable_seqscan = off AS $$
DECLARE
    v_now timestamptz := now();
    q     record;
    s     record;
    v_msg text;
BEGIN
    PERFORM tasker._write_claims(ARRAY[p_task_id], ARRAY[p_idx]);
    SELECT * INTO q FROM tasker.queue WHERE task_id = p_task_id AND step_idx = p_idx;
    SELECT st.state, st.attempts, st.budget INTO s FROM tasker.steps st
    WHERE st.task_id = p_task_id AND st.idx = p_idx FOR UPDATE;
    IF NOT FOUND THEN
        DELETE FROM tasker.queue WHERE task_id = p_task_id AND step_idx = p_idx;
        RETURN;
    END IF;
    IF s.state <> 2 OR s.attempts <> q.attempt THEN
        -- The row no longer matches its step (not expected); make it consistent.
        IF s.state IN (1, 3) THEN
            UPDATE tasker.queue SET leased_by = NULL, attempt = s.attempts
            WHERE task_id = p_task_id AND step_idx = p_idx;
        ELSE
            DELETE FROM tasker.queue WHERE task_id = p_task_id AND step_idx = p_idx;
        END IF;
        RETURN;
    END IF;
    v_msg := format('the lease of worker %s expired before attempt %s completed',
                    q.leased_by, s.attempts);
    INSERT INTO tasker.step_errors (task_id, step_idx, attempt, class, message, retryable,
                                    context, at, worker_id)
    VALUES (p_task_id, p_idx, s.attempts, 'tasker.LeaseExpired', v_msg, true,
            json_build_object('worker', q.leased_by, 'lease_expired_at', tasker.iso(q.visible_at)),
            v_now, p_worker);
    IF s.attempts < s.budget THEN
        UPDATE tasker.steps SET state = 3, finished_at = v_now
        WHERE task_id = p_task_id AND idx = p_idx;
        INSERT INTO tasker.transitions (task_id, step_idx, at, from_state, to_state, attempt,
                                        reason, worker_id)
        VALUES (p_task_id, p_idx, v_now, 2, 3, s.attempts, 15, p_worker);
        UPDATE tasker.queue SET leased_by = NULL WHERE task_id = p_task_id AND step_idx = p_idx;
    ELSE
        UPDATE tasker.steps SET state = 5, finished_at = v_now
        WHERE task_id = p_task_id AND idx = p_idx;
        INSERT INTO tasker.transitions (task_id, step_idx, at, from_state, to_state, attempt,
                                        reason, worker_id)
        VALUES (p_task_id, p_idx, v_now, 2, 5, s.attempts, 15, p_worker);
        PERFORM tasker._dead_letter(p_task_id, p_idx, s.attempts, 'tasker.LeaseExpired', v_msg,
                                    15::smallint);
        PERFORM tasker._tasks_apply(ARRAY[p_task_id], ARRAY[0], ARRAY[-1], ARRAY[1], p_worker);
    END IF;
END
$$;



-- tasker.release_steps (0003): the claims into the step rows first.
CREATE OR REPLACE FUNCTION tasker.release_steps(p_worker int, p_task_ids bigint[], p_idxs int[],
                                                p_attempts int[], p_uncount boolean[])
RETURNS int LANGUAGE plpgsql
-- Batches are small next to the tables; planner statistics (often taken
-- when the queue was empty) must not turn key lookups into table scans.
SET enable_seqscan = off AS $$
DECLARE
    v_now timestamptz := now();
    v_n   int;
BEGIN
    -- The queue rows first (lock order), then their claims into the step rows.
    PERFORM 1 FROM unnest(p_task_ids, p_idxs, p_attempts) AS u(tid, idx, att)
                   JOIN tasker.queue q ON q.task_id = u.tid AND q.step_idx = u.idx
    WHERE q.attempt = u.att AND q.leased_by = p_worker
    ORDER BY q.task_id, q.step_idx FOR UPDATE OF q;
    PERFORM tasker._write_claims(p_task_ids, p_idxs);
    WITH l AS (
        SELECT q.task_id, q.step_idx, u.unc
        FROM unnest(p_task_ids, p_idxs, p_attempts, p_uncount) AS u(tid, idx, att, unc)
             JOIN tasker.queue q ON q.task_id = u.tid AND q.step_idx = u.idx
        WHERE q.attempt = u.att AND q.leased_by = p_worker
        ORDER BY q.task_id, q.step_idx
        FOR UPDATE OF q),
    s AS (
        UPDATE tasker.steps s
        SET state = 1, attempts = s.attempts - CASE WHEN l.unc THEN 1 ELSE 0 END,
            started_at = NULL, enqueued_at = v_now
        FROM l WHERE s.task_id = l.task_id AND s.idx = l.step_idx AND s.state = 2
        RETURNING s.task_id, s.idx, s.attempts),
    tr AS (
        INSERT INTO tasker.transitions (task_id, step_idx, at, from_state, to_state, attempt,
                                        reason, worker_id)
        SELECT s.task_id, s.idx, v_now, 2, 1, s.attempts, 14, p_worker FROM s
        ORDER BY s.task_id, s.idx),
    q AS (
        UPDATE tasker.queue q SET visible_at = v_now, leased_by = NULL, attempt = s.attempts
        FROM s WHERE q.task_id = s.task_id AND q.step_idx = s.idx)
    SELECT count(*) INTO v_n FROM s;
    IF v_n > 0 THEN
        PERFORM pg_notify('tasker_ready', '');
    END IF;
    RETURN v_n;
END
$$;



-- tasker._archive_queue_rows (0004; cancel): the claims into the step rows first.
CREATE OR REPLACE FUNCTION tasker._archive_queue_rows(p_task_id bigint, p_reason text)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1 FROM tasker.queue q WHERE q.task_id = p_task_id ORDER BY q.step_idx FOR UPDATE;
    PERFORM tasker._write_claims(ARRAY[p_task_id], ARRAY[NULL::int]);
    WITH d AS (
        DELETE FROM tasker.queue q WHERE q.task_id = p_task_id RETURNING q.*)
    INSERT INTO tasker.queue_archive (task_id, step_idx, namespace_id, handler, priority,
                                      enqueued_at, read_count, attempt, archived_at, reason)
    SELECT d.task_id, d.step_idx, d.namespace_id, d.handler, d.priority, d.enqueued_at,
           d.read_count, d.attempt, now(), p_reason FROM d;
END
$$;

-- Readers (0004, 0007): rows as they are.
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
            FROM tasker.steps_current s
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
    FROM tasker.tasks_current t
         JOIN tasker.templates tp ON tp.id = t.template_id
         JOIN tasker.namespaces n ON n.id = tp.namespace_id
    WHERE t.uuid = p_uuid
$$;



CREATE OR REPLACE FUNCTION tasker.step_readiness(p_uuid uuid)
RETURNS TABLE (step text, state text, ready boolean, reason text)
LANGUAGE sql STABLE AS $$
    SELECT ts.name, tasker.step_state_name(s.state),
           t.state IN (0, 1) AND (s.state = 1 OR (s.state = 0 AND w.n = 0)),
           CASE
               WHEN t.state NOT IN (0, 1) AND s.state NOT IN (4, 6, 7, 8)
                   THEN 'task is ' || tasker.task_state_name(t.state)
               WHEN s.state = 1 THEN 'enqueued'
               WHEN s.state = 0 AND w.n = 0 THEN 'dependencies met'
               WHEN s.state = 0 AND w.failed > 0 THEN 'a dependency failed: ' || w.names
               WHEN s.state = 0 THEN 'waiting for ' || w.names
               WHEN s.state = 2 THEN 'in progress (attempt ' || s.attempts || ')'
               WHEN s.state = 3 THEN 'retry due at ' || coalesce(tasker.iso(q.visible_at), '?')
               WHEN s.state = 5 THEN 'failed after ' || s.attempts || ' attempt(s)'
               ELSE tasker.step_state_name(s.state)
           END
    FROM tasker.tasks_current t
         JOIN tasker.steps_current s ON s.task_id = t.id
         JOIN tasker.template_steps ts ON ts.template_id = t.template_id AND ts.idx = s.idx
         LEFT JOIN tasker.queue q ON q.task_id = s.task_id AND q.step_idx = s.idx
         CROSS JOIN LATERAL (
             SELECT count(*) AS n, count(*) FILTER (WHERE d.state = 5) AS failed,
                    string_agg(dts.name || ' (' || tasker.step_state_name(d.state) || ')', ', '
                               ORDER BY u.o) AS names
             FROM unnest(ts.dep_idx) WITH ORDINALITY AS u(i, o)
                  JOIN tasker.steps_current d ON d.task_id = s.task_id AND d.idx = u.i
                  JOIN tasker.template_steps dts ON dts.template_id = ts.template_id AND dts.idx = u.i
             WHERE d.state NOT IN (4, 7)) w
    WHERE t.uuid = p_uuid
    ORDER BY s.idx
$$;



-- Counted from the rows, then the pending tasks with a leased queue row
-- (few: the queue holds only what is ready or in flight) moved to running,
-- so that a large backlog costs no lookup per task.
CREATE OR REPLACE FUNCTION tasker.task_counts()
RETURNS TABLE (namespace text, state text, tasks bigint)
LANGUAGE sql STABLE AS $$
    WITH raw AS (
        SELECT t.namespace_id, t.state, count(*) AS n FROM tasker.tasks t GROUP BY 1, 2),
    lean AS (
        SELECT t.namespace_id, count(*) AS n FROM tasker.tasks t
        WHERE t.state = 0
          AND t.id IN (SELECT q.task_id FROM tasker.queue q WHERE q.leased_by IS NOT NULL)
        GROUP BY 1),
    adj AS (
        SELECT r.namespace_id, r.state,
               r.n - CASE WHEN r.state = 0 THEN coalesce(l.n, 0) ELSE 0 END AS n
        FROM raw r LEFT JOIN lean l ON l.namespace_id = r.namespace_id
        UNION ALL
        SELECT l.namespace_id, 1::smallint, l.n FROM lean l)
    SELECT n.name, tasker.task_state_name(a.state), sum(a.n)::bigint
    FROM adj a JOIN tasker.namespaces n ON n.id = a.namespace_id
    GROUP BY n.name, a.state HAVING sum(a.n) > 0 ORDER BY n.name, a.state
$$;

INSERT INTO tasker.schema_version (version, name) VALUES (8, 'lean_claim')
    ON CONFLICT (version) DO NOTHING;

COMMIT;
