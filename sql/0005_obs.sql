-- tasker schema, version 5: what the store needs for observability and
-- resilience (issue 5).
--
--  * tasker.claim_ns: tasker.claim restricted by namespace (skip the
--    namespaces whose circuit is open, or claim from one namespace only,
--    so that one namespace whose queue operations fail is isolated from
--    the others), waiting at most 2 s for a row lock, and returning the
--    template version, the step's timeout_ms and how long the step waited
--    in the queue (for metrics, events and handler timeouts).
--  * tasker.complete_steps_ev: tasker.complete_steps plus what the batch
--    did (events and counters say whether a failure was retried or
--    dead-lettered and which tasks the batch finished), and handler
--    timeouts recorded with reason "timed_out" as the memory store does.
--    tasker._tasks_apply is replaced by the same function that also notes
--    the tasks it finishes for it.
--  * tasker.complete_and_claim_ns: both in one transaction.
--  * tasker.cancel_task_ev: tasker.cancel_task plus the task's names.
--  * An index for the status view's newest failures.
--
-- The functions of versions 3 and 4 are unchanged, so processes running
-- an older library keep working on a database migrated to version 5.
BEGIN;
DO $$ BEGIN PERFORM pg_advisory_xact_lock(7366231101); END $$;

-- tasker.claim (0003) with two filters: p_skip_ns names namespaces not to
-- claim from (NULL or {}: none); p_only_ns, if not NULL, the one
-- namespace to claim from.  Extra columns: template_version, timeout_ms,
-- queue_wait_ms (from the step becoming ready to this claim).
-- lock_timeout: a claim never waits long for a row somebody holds (an
-- operator's transaction, a stuck session); it fails instead, and the
-- namespace's circuit counts the failure.
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

    SELECT array_agg(c.task_id), array_agg(c.step_idx), array_agg(c.visible_at),
           array_agg(c.leased_by IS NOT NULL)
    INTO v_t, v_i, v_vis, v_exp
    FROM (SELECT q.task_id, q.step_idx, q.visible_at, q.leased_by FROM tasker.queue q
          WHERE q.handler = ANY(p_handlers) AND q.visible_at <= v_now
            AND (v_only IS NULL OR q.namespace_id = v_only)
            AND (v_skip IS NULL OR q.namespace_id <> ALL(v_skip))
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
    WITH p AS (
        SELECT t.id FROM tasker.tasks t
        WHERE t.id = ANY(v_t) AND t.state = 0 ORDER BY t.id FOR UPDATE),
    u AS (
        UPDATE tasker.tasks t SET state = 1, started_at = v_now
        FROM p WHERE t.id = p.id AND t.state = 0 RETURNING t.id)
    INSERT INTO tasker.transitions (task_id, step_idx, at, from_state, to_state, attempt, reason,
                                    worker_id)
    SELECT u.id, NULL, v_now, 0, 1, 0, 1, p_worker FROM u;

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
            enqueued_at = CASE WHEN l.old_state = 3 THEN least(l.due, v_now) ELSE s.enqueued_at END
        FROM l WHERE s.task_id = l.task_id AND s.idx = l.idx AND s.state IN (1, 3)
        RETURNING s.task_id, s.idx, s.attempts, s.budget, s.uuid, l.old_state, l.due,
                  s.enqueued_at),
    tr AS (
        INSERT INTO tasker.transitions (task_id, step_idx, at, from_state, to_state, attempt,
                                        reason, worker_id)
        SELECT x.task_id, x.idx, x.at, x.f, x.t, x.attempt, x.reason, p_worker
        FROM (SELECT s.task_id, s.idx, least(s.due, v_now) AS at, 3::smallint AS f,
                     1::smallint AS t, s.attempts - 1 AS attempt, 11::smallint AS reason, 1 AS ord
              FROM s WHERE s.old_state = 3
              UNION ALL
              SELECT s.task_id, s.idx, v_now, 1::smallint, 2::smallint, s.attempts, 8::smallint, 2
              FROM s) x
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

-- tasker._tasks_apply (0003), unchanged except that it also appends the
-- tasks it finishes to the transaction-local setting tasker.finished
-- ('id:state:age_ms,...'), so that tasker.complete_steps_ev can report
-- them without reading the task rows again.
CREATE OR REPLACE FUNCTION tasker._tasks_apply(p_ids bigint[], p_done int[], p_active int[],
                                               p_error int[], p_worker int)
RETURNS void LANGUAGE plpgsql
SET enable_seqscan = off AS $$
DECLARE
    v_now timestamptz := now();
    v_n   bigint;
    v_fin text;
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
        RETURNING t.id, t.uuid, t.state, t.finished_at, t.created_at),
    fin AS (
        SELECT upd.id, upd.uuid, upd.state, upd.created_at FROM upd
        WHERE upd.finished_at = v_now AND upd.state IN (2, 3)),
    tr AS (
        INSERT INTO tasker.transitions (task_id, step_idx, at, from_state, to_state, attempt,
                                        reason, worker_id)
        SELECT fin.id, NULL, v_now, 1, fin.state, 0, CASE fin.state WHEN 2 THEN 2 ELSE 3 END,
               p_worker
        FROM fin ORDER BY fin.id)
    SELECT count(*), string_agg(x.id::text || ':' || x.state || ':' || x.age, ',')
    INTO v_n, v_fin
    FROM (SELECT pg_notify('tasker_done', fin.uuid::text), fin.id, fin.state,
                 (extract(epoch FROM v_now - fin.created_at) * 1000)::float8 AS age
          FROM fin) x;
    IF v_fin IS NOT NULL THEN
        PERFORM set_config('tasker.finished',
                           coalesce(nullif(current_setting('tasker.finished', true), '') || ',', '')
                           || v_fin, true);
    END IF;
END
$$;

-- tasker.complete_steps (0003), then what the batch did, for events and
-- counters.  Three kinds of rows:
--   ord, status                one per entry, as tasker.complete_steps
--   ord, step_state            failures recorded: the step's state now
--                              (3 waiting for retry, 5 error)
--   task_id, task_state, task_age_ms
--                              a task this transaction finished (2 / 3)
-- p_timed_out[i] true: the failure is a handler timeout, recorded with
-- reason timed_out (15) as the memory store does.  Only failures and
-- finished tasks cost anything beyond tasker.complete_steps.
CREATE OR REPLACE FUNCTION tasker.complete_steps_ev(
    p_worker int, p_task_ids bigint[], p_idxs int[], p_attempts int[], p_ok boolean[],
    p_results text[], p_classes text[], p_messages text[], p_retryable boolean[],
    p_retry_after bigint[], p_contexts text[], p_timed_out boolean[])
RETURNS TABLE (ord int, status int, step_state smallint, task_id bigint, task_state smallint,
               task_age_ms float8)
LANGUAGE plpgsql
SET enable_seqscan = off AS $$
DECLARE
    v_o   int[];
    v_s   int[];
    v_fin text;
BEGIN
    PERFORM set_config('tasker.finished', '', true);
    SELECT array_agg(c.ord), array_agg(c.status) INTO v_o, v_s
    FROM tasker.complete_steps(p_worker, p_task_ids, p_idxs, p_attempts, p_ok, p_results,
                               p_classes, p_messages, p_retryable, p_retry_after, p_contexts) c;
    v_fin := current_setting('tasker.finished', true);
    RETURN QUERY SELECT r.o, r.st, NULL::smallint, NULL::bigint, NULL::smallint, NULL::float8
                 FROM unnest(v_o, v_s) AS r(o, st);
    IF false = ANY(p_ok) THEN
        IF p_timed_out IS NOT NULL AND true = ANY(p_timed_out) THEN
            WITH tmo AS (
                SELECT u.tid, u.idx, u.att
                FROM unnest(p_task_ids, p_idxs, p_attempts, p_timed_out)
                     WITH ORDINALITY AS u(tid, idx, att, tmo, o)
                     JOIN unnest(v_o, v_s) AS r(o, st) ON r.o = u.o
                WHERE u.tmo AND r.st = 0),
            tr AS (
                UPDATE tasker.transitions tr SET reason = 15
                FROM tmo WHERE tr.task_id = tmo.tid AND tr.step_idx = tmo.idx
                           AND tr.attempt = tmo.att AND tr.from_state = 2 AND tr.at = now()
                           AND tr.worker_id = p_worker)
            UPDATE tasker.dead_letters d SET reason = 15
            FROM tmo WHERE d.task_id = tmo.tid AND d.step_idx = tmo.idx
                       AND d.attempts = tmo.att AND d.created_at = now();
        END IF;
        RETURN QUERY
        SELECT u.o::int, NULL::int, s.state, NULL::bigint, NULL::smallint, NULL::float8
        FROM unnest(p_task_ids, p_idxs, p_ok) WITH ORDINALITY AS u(tid, idx, okf, o)
             JOIN unnest(v_o, v_s) AS r(o, st) ON r.o = u.o
             JOIN tasker.steps s ON s.task_id = u.tid AND s.idx = u.idx
        WHERE NOT u.okf AND r.st = 0;
    END IF;
    IF v_fin IS NOT NULL AND v_fin <> '' THEN
        RETURN QUERY
        SELECT NULL::int, NULL::int, NULL::smallint, split_part(e, ':', 1)::bigint,
               split_part(e, ':', 2)::smallint, split_part(e, ':', 3)::float8
        FROM unnest(string_to_array(v_fin, ',')) AS e;
    END IF;
END
$$;

-- tasker.complete_and_claim (0003) on the functions above.  Rows with kind
-- 0 are tasker.complete_steps_ev's (ord .. task_age_ms, its task_id named
-- fin_task_id), rows with kind 1 claims (the columns of tasker.claim_ns).
CREATE OR REPLACE FUNCTION tasker.complete_and_claim_ns(
    p_worker int, p_task_ids bigint[], p_idxs int[], p_attempts int[], p_ok boolean[],
    p_results text[], p_classes text[], p_messages text[], p_retryable boolean[],
    p_retry_after bigint[], p_contexts text[], p_timed_out boolean[], p_handlers text[],
    p_limit int, p_lease_ms int, p_skip_ns text[])
RETURNS TABLE (kind int, ord int, status int, step_state smallint, fin_task_id bigint,
               task_state smallint, task_age_ms float8, task_id bigint, step_idx int,
               attempt int, max_attempts int, step_uuid uuid, task_uuid uuid, step_name text,
               handler text, namespace text, template_name text, context text,
               dep_names text[], dep_results text[], template_version text, timeout_ms bigint,
               queue_wait_ms float8)
LANGUAGE plpgsql AS $$
BEGIN
    RETURN QUERY
    SELECT 0, c.ord, c.status, c.step_state, c.task_id, c.task_state, c.task_age_ms,
           NULL::bigint, NULL::int, NULL::int, NULL::int, NULL::uuid, NULL::uuid, NULL::text,
           NULL::text, NULL::text, NULL::text, NULL::text, NULL::text[], NULL::text[],
           NULL::text, NULL::bigint, NULL::float8
    FROM tasker.complete_steps_ev(p_worker, p_task_ids, p_idxs, p_attempts, p_ok, p_results,
                                  p_classes, p_messages, p_retryable, p_retry_after, p_contexts,
                                  p_timed_out) c;
    IF p_limit > 0 THEN
        RETURN QUERY
        SELECT 1, NULL::int, NULL::int, NULL::smallint, NULL::bigint, NULL::smallint,
               NULL::float8, c.*
        FROM tasker.claim_ns(p_worker, p_handlers, p_limit, p_lease_ms, p_skip_ns, NULL) c;
    END IF;
END
$$;

-- tasker.cancel_task (0004), then what it did, for the events: the first
-- row is cancel_task's (status, state) with the task's namespace, template
-- name and version (NULL when there is no such task); when it cancelled
-- the task, one row per step it cancelled follows (step_idx, step_uuid,
-- attempt; the other columns NULL).
CREATE OR REPLACE FUNCTION tasker.cancel_task_ev(p_uuid uuid)
RETURNS TABLE (status int, state text, namespace text, template_name text,
               template_version text, step_idx int, step_uuid uuid, attempt int)
LANGUAGE plpgsql AS $$
DECLARE
    v_status int;
    v_state  text;
BEGIN
    SELECT c.status, c.state INTO v_status, v_state FROM tasker.cancel_task(p_uuid) c;
    RETURN QUERY
    SELECT v_status, v_state, n.name, tp.name, tp.version, NULL::int, NULL::uuid, NULL::int
    FROM (SELECT 1) one
         LEFT JOIN tasker.tasks t ON t.uuid = p_uuid
         LEFT JOIN tasker.templates tp ON tp.id = t.template_id
         LEFT JOIN tasker.namespaces n ON n.id = tp.namespace_id;
    IF v_status = 0 THEN
        RETURN QUERY
        SELECT NULL::int, NULL::text, NULL::text, NULL::text, NULL::text, tr.step_idx, s.uuid,
               tr.attempt
        FROM tasker.tasks t
             JOIN tasker.transitions tr ON tr.task_id = t.id
             JOIN tasker.steps s ON s.task_id = t.id AND s.idx = tr.step_idx
        WHERE t.uuid = p_uuid AND tr.at = now() AND tr.to_state = 6 AND tr.reason = 4
        ORDER BY tr.step_idx;
    END IF;
END
$$;

-- The status view lists the newest failures first.
CREATE INDEX IF NOT EXISTS step_errors_at ON tasker.step_errors (at);

INSERT INTO tasker.schema_version (version, name) VALUES (5, 'obs')
    ON CONFLICT (version) DO NOTHING;

COMMIT;
