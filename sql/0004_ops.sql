-- tasker schema, version 4: reading tasks (JSON, readiness), operator
-- actions (cancel, retry, resolve, forget, dead letters, pruning) and
-- status counts.
BEGIN;
DO $$ BEGIN PERFORM pg_advisory_xact_lock(7366231101); END $$;

-- ---- reading ------------------------------------------------------------------

-- The task as JSON, in the format of tasker_task_get (TASK_JSON.md); NULL
-- if there is no such task.  Reads a consistent snapshot; locks nothing.
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
                ORDER BY tr.at, tr.id)
            FROM tasker.transitions tr
                 LEFT JOIN tasker.template_steps ts
                        ON ts.template_id = t.template_id AND ts.idx = tr.step_idx
            WHERE tr.task_id = t.id), '[]'::json))
    FROM tasker.tasks t
         JOIN tasker.templates tp ON tp.id = t.template_id
         JOIN tasker.namespaces n ON n.id = tp.namespace_id
    WHERE t.uuid = p_uuid
$$;

-- Readiness computed from scratch (not from the counters the engine keeps):
-- every step of the task, whether it can run now, and if not, why.  For
-- operators ("why is this step not running?") and as the reference the
-- incremental counters are checked against.
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
    FROM tasker.tasks t
         JOIN tasker.steps s ON s.task_id = t.id
         JOIN tasker.template_steps ts ON ts.template_id = t.template_id AND ts.idx = s.idx
         LEFT JOIN tasker.queue q ON q.task_id = s.task_id AND q.step_idx = s.idx
         CROSS JOIN LATERAL (
             SELECT count(*) AS n, count(*) FILTER (WHERE d.state = 5) AS failed,
                    string_agg(dts.name || ' (' || tasker.step_state_name(d.state) || ')', ', '
                               ORDER BY u.o) AS names
             FROM unnest(ts.dep_idx) WITH ORDINALITY AS u(i, o)
                  JOIN tasker.steps d ON d.task_id = s.task_id AND d.idx = u.i
                  JOIN tasker.template_steps dts ON dts.template_id = ts.template_id AND dts.idx = u.i
             WHERE d.state NOT IN (4, 7)) w
    WHERE t.uuid = p_uuid
    ORDER BY s.idx
$$;

-- Task counts by namespace and state.
CREATE OR REPLACE FUNCTION tasker.task_counts()
RETURNS TABLE (namespace text, state text, tasks bigint)
LANGUAGE sql STABLE AS $$
    SELECT n.name, tasker.task_state_name(t.state), count(*)
    FROM tasker.tasks t JOIN tasker.namespaces n ON n.id = t.namespace_id
    GROUP BY n.name, t.state ORDER BY n.name, t.state
$$;

-- Queue depth by namespace: rows ready to claim, leased, waiting for a
-- retry, and the age of the oldest ready row.
CREATE OR REPLACE FUNCTION tasker.queue_stats()
RETURNS TABLE (namespace text, ready bigint, leased bigint, delayed bigint,
               oldest_ready_age_ms float8)
LANGUAGE sql STABLE AS $$
    SELECT n.name,
           count(*) FILTER (WHERE q.visible_at <= now() AND q.leased_by IS NULL),
           count(*) FILTER (WHERE q.leased_by IS NOT NULL),
           count(*) FILTER (WHERE q.visible_at > now() AND q.leased_by IS NULL),
           extract(epoch FROM now() - min(q.visible_at)
                   FILTER (WHERE q.visible_at <= now() AND q.leased_by IS NULL))::float8 * 1000
    FROM tasker.queue q JOIN tasker.namespaces n ON n.id = q.namespace_id
    GROUP BY n.name ORDER BY n.name
$$;

-- ---- operator actions --------------------------------------------------------------
--
-- Each returns (status, state): status 0 done; 1 no such task; 2 the task
-- or step is in a state that does not allow it (state names it); 3 no
-- such step.

-- Cancels a task: every step not finished becomes cancelled (a handler
-- still running one is refused when it completes), then the task.
-- Locks: the task's queue rows, its step rows (index order), its row.
CREATE OR REPLACE FUNCTION tasker.cancel_task(p_uuid uuid)
RETURNS TABLE (status int, state text)
LANGUAGE plpgsql AS $$
DECLARE
    v_now   timestamptz := now();
    v_id    bigint;
    v_state smallint;
BEGIN
    SELECT t.id, t.state INTO v_id, v_state FROM tasker.tasks t WHERE t.uuid = p_uuid;
    IF v_id IS NULL THEN
        RETURN QUERY SELECT 1, NULL::text;
        RETURN;
    END IF;
    IF v_state NOT IN (0, 1, 3) THEN
        RETURN QUERY SELECT 2, tasker.task_state_name(v_state);
        RETURN;
    END IF;
    -- Queue rows first (lock order); a completion holding one finishes first.
    PERFORM tasker._archive_queue_rows(v_id, 'cancelled');
    PERFORM 1 FROM tasker.steps s WHERE s.task_id = v_id ORDER BY s.idx FOR UPDATE;
    -- Rows enqueued by completions that committed while we waited.
    PERFORM tasker._archive_queue_rows(v_id, 'cancelled');
    SELECT t.state INTO v_state FROM tasker.tasks t WHERE t.id = v_id FOR UPDATE;
    IF v_state NOT IN (0, 1, 3) THEN
        RETURN QUERY SELECT 2, tasker.task_state_name(v_state);
        RETURN;
    END IF;

    WITH o AS (
        SELECT s.idx, s.state AS old FROM tasker.steps s
        WHERE s.task_id = v_id AND s.state IN (0, 1, 2, 3, 5)),
    c AS (
        UPDATE tasker.steps s SET state = 6, finished_at = v_now
        FROM o WHERE s.task_id = v_id AND s.idx = o.idx
        RETURNING s.idx, o.old, s.attempts)
    INSERT INTO tasker.transitions (task_id, step_idx, at, from_state, to_state, attempt, reason)
    SELECT v_id, c.idx, v_now, c.old, 6, c.attempts, 4 FROM c ORDER BY c.idx;

    UPDATE tasker.dead_letters SET resolved_at = v_now, resolution = 'cancelled'
    WHERE task_id = v_id AND resolved_at IS NULL;
    UPDATE tasker.tasks SET state = 4, finished_at = v_now, n_active = 0, n_error = 0
    WHERE id = v_id;
    INSERT INTO tasker.transitions (task_id, step_idx, at, from_state, to_state, attempt, reason)
    VALUES (v_id, NULL, v_now, v_state, 4, 0, 4);
    PERFORM pg_notify('tasker_done', p_uuid::text);
    RETURN QUERY SELECT 0, 'cancelled'::text;
END
$$;

-- Deletes a task's queue rows (in key order) into the archive.
CREATE OR REPLACE FUNCTION tasker._archive_queue_rows(p_task_id bigint, p_reason text)
RETURNS void LANGUAGE sql AS $$
    WITH l AS (
        SELECT q.step_idx FROM tasker.queue q WHERE q.task_id = p_task_id
        ORDER BY q.step_idx FOR UPDATE),
    d AS (
        DELETE FROM tasker.queue q USING l
        WHERE q.task_id = p_task_id AND q.step_idx = l.step_idx RETURNING q.*)
    INSERT INTO tasker.queue_archive (task_id, step_idx, namespace_id, handler, priority,
                                      enqueued_at, read_count, attempt, archived_at, reason)
    SELECT d.task_id, d.step_idx, d.namespace_id, d.handler, d.priority, d.enqueued_at,
           d.read_count, d.attempt, now(), p_reason FROM d
$$;

-- Enqueues steps of a task that are in error again, each with a fresh
-- budget of max_attempts attempts (reason p_reason: manual_retry).  The
-- caller holds the step and task rows.  Returns how many were enqueued.
CREATE OR REPLACE FUNCTION tasker._requeue_errors(p_task_id bigint, p_idxs int[])
RETURNS int LANGUAGE plpgsql AS $$
DECLARE
    v_now timestamptz := now();
    v_n   int;
BEGIN
    WITH r AS (
        UPDATE tasker.steps s SET state = 1, budget = s.attempts + ts.max_attempts,
                                  enqueued_at = v_now
        FROM tasker.tasks t, tasker.template_steps ts
        WHERE s.task_id = p_task_id AND s.state = 5 AND (p_idxs IS NULL OR s.idx = ANY(p_idxs))
          AND t.id = p_task_id AND ts.template_id = t.template_id AND ts.idx = s.idx
        RETURNING s.idx, s.attempts, t.namespace_id, t.priority, ts.handler),
    q AS (
        INSERT INTO tasker.queue (task_id, step_idx, namespace_id, handler, priority, visible_at,
                                  enqueued_at, attempt)
        SELECT p_task_id, r.idx, r.namespace_id, r.handler, r.priority, v_now, v_now, r.attempts
        FROM r),
    tr AS (
        INSERT INTO tasker.transitions (task_id, step_idx, at, from_state, to_state, attempt,
                                        reason)
        SELECT p_task_id, r.idx, v_now, 5, 1, r.attempts, 5 FROM r ORDER BY r.idx),
    dl AS (
        UPDATE tasker.dead_letters d SET resolved_at = v_now, resolution = 'manual_retry'
        FROM r WHERE d.task_id = p_task_id AND d.step_idx = r.idx AND d.resolved_at IS NULL)
    SELECT count(*) INTO v_n FROM r;
    IF v_n > 0 THEN
        UPDATE tasker.tasks SET n_error = n_error - v_n, n_active = n_active + v_n
        WHERE id = p_task_id;
        PERFORM pg_notify('tasker_ready', '');
    END IF;
    RETURN v_n;
END
$$;

-- Manual retry of a task in error: its steps in error run again.
-- Locks: the task's step rows (index order), then its row.
CREATE OR REPLACE FUNCTION tasker.retry_task(p_uuid uuid)
RETURNS TABLE (status int, state text)
LANGUAGE plpgsql AS $$
DECLARE
    v_now   timestamptz := now();
    v_id    bigint;
    v_state smallint;
BEGIN
    SELECT t.id INTO v_id FROM tasker.tasks t WHERE t.uuid = p_uuid;
    IF v_id IS NULL THEN
        RETURN QUERY SELECT 1, NULL::text;
        RETURN;
    END IF;
    PERFORM 1 FROM tasker.steps s WHERE s.task_id = v_id ORDER BY s.idx FOR UPDATE;
    SELECT t.state INTO v_state FROM tasker.tasks t WHERE t.id = v_id FOR UPDATE;
    IF v_state <> 3 THEN
        RETURN QUERY SELECT 2, tasker.task_state_name(v_state);
        RETURN;
    END IF;
    UPDATE tasker.tasks SET state = 1, finished_at = NULL WHERE id = v_id;
    INSERT INTO tasker.transitions (task_id, step_idx, at, from_state, to_state, attempt, reason)
    VALUES (v_id, NULL, v_now, 3, 1, 0, 5);
    PERFORM tasker._requeue_errors(v_id, NULL);
    RETURN QUERY SELECT 0, 'running'::text;
END
$$;

-- Marks a step in error resolved_manually with a result (JSON text or
-- NULL); its dependents may then run.  A task in error runs again if that
-- enqueued something, or becomes resolved_manually if every step is done.
-- Locks: the step and its dependents (index order), then the task row.
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
        RETURNING st.idx, st.state, st.attempts, st.remaining, st.enqueued_at),
    rdy AS (
        SELECT d.idx, d.attempts, t.namespace_id, t.priority, ts.handler
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
        SELECT v_id, r.idx, v_now, 0, 1, r.attempts, 7 FROM rdy r ORDER BY r.idx)
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

-- Deletes every row of the given (final) tasks.  Returns how many tasks.
CREATE OR REPLACE FUNCTION tasker._delete_tasks(p_ids bigint[]) RETURNS int
LANGUAGE plpgsql AS $$
DECLARE
    v_n int;
BEGIN
    DELETE FROM tasker.queue WHERE task_id = ANY(p_ids);
    DELETE FROM tasker.queue_archive WHERE task_id = ANY(p_ids);
    DELETE FROM tasker.dead_letters WHERE task_id = ANY(p_ids);
    DELETE FROM tasker.step_errors WHERE task_id = ANY(p_ids);
    DELETE FROM tasker.transitions WHERE task_id = ANY(p_ids);
    DELETE FROM tasker.fenced WHERE task_id = ANY(p_ids);
    DELETE FROM tasker.steps WHERE task_id = ANY(p_ids);
    DELETE FROM tasker.tasks WHERE id = ANY(p_ids);
    GET DIAGNOSTICS v_n = ROW_COUNT;
    RETURN v_n;
END
$$;

-- Deletes a finished task and everything recorded about it.
CREATE OR REPLACE FUNCTION tasker.forget_task(p_uuid uuid)
RETURNS TABLE (status int, state text)
LANGUAGE plpgsql AS $$
DECLARE
    v_id    bigint;
    v_state smallint;
BEGIN
    SELECT t.id, t.state INTO v_id, v_state FROM tasker.tasks t WHERE t.uuid = p_uuid FOR UPDATE;
    IF v_id IS NULL THEN
        RETURN QUERY SELECT 1, NULL::text;
    ELSIF v_state NOT IN (2, 3, 4, 5) THEN
        RETURN QUERY SELECT 2, tasker.task_state_name(v_state);
    ELSE
        PERFORM tasker._delete_tasks(ARRAY[v_id]);
        RETURN QUERY SELECT 0, tasker.task_state_name(v_state);
    END IF;
END
$$;

-- Retention: deletes up to p_batch tasks that finished (complete,
-- cancelled or resolved_manually; with p_include_errors also error) before
-- now() - p_older_than.  Returns how many; call again until it returns
-- less than p_batch (each call is one short transaction).
-- Locks: the chosen task rows (SKIP LOCKED: a task being retried right now
-- is left for the next run).
CREATE OR REPLACE FUNCTION tasker.prune(p_older_than interval, p_batch int DEFAULT 1000,
                                        p_include_errors boolean DEFAULT false)
RETURNS int LANGUAGE plpgsql AS $$
DECLARE
    v_ids bigint[];
BEGIN
    SELECT array_agg(x.id) INTO v_ids FROM (
        SELECT t.id FROM tasker.tasks t
        WHERE t.finished_at IS NOT NULL AND t.finished_at < now() - p_older_than
          AND (t.state IN (2, 4, 5) OR (p_include_errors AND t.state = 3))
        ORDER BY t.finished_at LIMIT p_batch
        FOR UPDATE SKIP LOCKED) x;
    IF v_ids IS NULL THEN
        RETURN 0;
    END IF;
    RETURN tasker._delete_tasks(v_ids);
END
$$;

-- ---- dead letters --------------------------------------------------------------------

CREATE OR REPLACE FUNCTION tasker.dlq_list(p_limit int DEFAULT 100, p_namespace text DEFAULT NULL)
RETURNS TABLE (id bigint, task_uuid uuid, namespace text, template text, step text,
               handler text, attempts int, error_class text, error_message text,
               reason text, created_at text)
LANGUAGE sql STABLE AS $$
    SELECT d.id, t.uuid, n.name, tp.name || '@' || tp.version, ts.name, d.handler, d.attempts,
           d.error_class, d.error_message, tasker.reason_name(d.reason), tasker.iso(d.created_at)
    FROM tasker.dead_letters d
         JOIN tasker.tasks t ON t.id = d.task_id
         JOIN tasker.templates tp ON tp.id = t.template_id
         JOIN tasker.namespaces n ON n.id = d.namespace_id
         JOIN tasker.template_steps ts ON ts.template_id = t.template_id AND ts.idx = d.step_idx
    WHERE d.resolved_at IS NULL AND (p_namespace IS NULL OR n.name = p_namespace)
    ORDER BY d.created_at, d.id
    LIMIT p_limit
$$;

-- Runs a dead-lettered step again with a fresh attempt budget; a task in
-- error runs again.  Locks: the task's step rows (index order), its row.
CREATE OR REPLACE FUNCTION tasker.dlq_requeue(p_id bigint)
RETURNS TABLE (status int, state text)
LANGUAGE plpgsql AS $$
DECLARE
    v_now   timestamptz := now();
    v_d     record;
    v_state smallint;
BEGIN
    SELECT d.task_id, d.step_idx INTO v_d FROM tasker.dead_letters d
    WHERE d.id = p_id AND d.resolved_at IS NULL;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 1, NULL::text;
        RETURN;
    END IF;
    PERFORM 1 FROM tasker.steps s WHERE s.task_id = v_d.task_id ORDER BY s.idx FOR UPDATE;
    SELECT t.state INTO v_state FROM tasker.tasks t WHERE t.id = v_d.task_id FOR UPDATE;
    IF v_state NOT IN (1, 3) THEN
        RETURN QUERY SELECT 2, tasker.task_state_name(v_state);
        RETURN;
    END IF;
    IF v_state = 3 THEN
        UPDATE tasker.tasks SET state = 1, finished_at = NULL WHERE id = v_d.task_id;
        INSERT INTO tasker.transitions (task_id, step_idx, at, from_state, to_state, attempt,
                                        reason)
        VALUES (v_d.task_id, NULL, v_now, 3, 1, 0, 5);
    END IF;
    IF tasker._requeue_errors(v_d.task_id, ARRAY[v_d.step_idx]) = 0 THEN
        RAISE EXCEPTION 'tasker: dead letter % names a step that is not in error', p_id
            USING ERRCODE = 'TK002';
    END IF;
    UPDATE tasker.dead_letters SET resolution = 'requeued' WHERE id = p_id;
    RETURN QUERY SELECT 0, 'enqueued'::text;
END
$$;

-- Removes open dead letters (created before now() - p_older_than; NULL:
-- all), leaving their steps in error.  Returns how many.
CREATE OR REPLACE FUNCTION tasker.dlq_purge(p_older_than interval DEFAULT NULL,
                                            p_namespace text DEFAULT NULL)
RETURNS int LANGUAGE plpgsql AS $$
DECLARE
    v_n int;
BEGIN
    DELETE FROM tasker.dead_letters d
    USING tasker.namespaces n
    WHERE n.id = d.namespace_id AND d.resolved_at IS NULL
      AND (p_older_than IS NULL OR d.created_at < now() - p_older_than)
      AND (p_namespace IS NULL OR n.name = p_namespace);
    GET DIAGNOSTICS v_n = ROW_COUNT;
    RETURN v_n;
END
$$;

INSERT INTO tasker.schema_version (version, name) VALUES (4, 'ops')
    ON CONFLICT (version) DO NOTHING;

COMMIT;
