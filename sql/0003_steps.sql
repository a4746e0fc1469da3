-- tasker schema, version 3: the step lifecycle -- claim, complete/fail,
-- heartbeat, release -- and the task bookkeeping they share.
--
-- Lock order.  Every function that locks several rows takes them in this
-- order, and rows of one table in key order, so concurrent batches wait
-- for each other instead of deadlocking:
--     queue rows  ->  step rows  ->  task rows
-- Claims take queue rows with SKIP LOCKED (they never wait for them).
-- Operator actions (cancel, retry) that race with a batch on the same task
-- can still deadlock in rare interleavings; PostgreSQL detects that, and
-- the C store repeats the aborted transaction (SQLSTATE 40P01).
BEGIN;
DO $$ BEGIN PERFORM pg_advisory_xact_lock(7366231101); END $$;

-- Applies per-task counter changes (several entries per task are summed)
-- and finalizes the tasks that have nothing left to run: complete when
-- every step is done, else error -- the memory store's rule.  Records the
-- task transition and notifies 'tasker_done' with the task uuid.
-- Locks: the task rows, updated in id order.
CREATE OR REPLACE FUNCTION tasker._tasks_apply(p_ids bigint[], p_done int[], p_active int[],
                                               p_error int[], p_worker int)
RETURNS void LANGUAGE plpgsql
-- Batches are small next to the tables; planner statistics (often taken
-- when the queue was empty) must not turn key lookups into table scans.
SET enable_seqscan = off AS $$
DECLARE
    v_now timestamptz := now();
    v_n   bigint;
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
        RETURNING t.id, t.uuid, t.state, t.finished_at),
    fin AS (
        SELECT upd.id, upd.uuid, upd.state FROM upd
        WHERE upd.finished_at = v_now AND upd.state IN (2, 3)),
    tr AS (
        INSERT INTO tasker.transitions (task_id, step_idx, at, from_state, to_state, attempt,
                                        reason, worker_id)
        SELECT fin.id, NULL, v_now, 1, fin.state, 0, CASE fin.state WHEN 2 THEN 2 ELSE 3 END,
               p_worker
        FROM fin ORDER BY fin.id)
    SELECT count(*) INTO v_n FROM (SELECT pg_notify('tasker_done', fin.uuid::text) FROM fin) x;
END
$$;

-- Moves a step's queue row to the archive and records a dead letter.  The
-- caller holds the queue row and has put the step in error.
CREATE OR REPLACE FUNCTION tasker._dead_letter(p_task_id bigint, p_idx int, p_attempts int,
                                               p_class text, p_message text, p_reason smallint)
RETURNS void LANGUAGE sql AS $$
    WITH q AS (
        DELETE FROM tasker.queue q WHERE q.task_id = p_task_id AND q.step_idx = p_idx
        RETURNING q.*),
    a AS (
        INSERT INTO tasker.queue_archive (task_id, step_idx, namespace_id, handler, priority,
                                          enqueued_at, read_count, attempt, archived_at, reason)
        SELECT q.task_id, q.step_idx, q.namespace_id, q.handler, q.priority, q.enqueued_at,
               q.read_count, q.attempt, now(), 'dead_letter' FROM q)
    INSERT INTO tasker.dead_letters (task_id, step_idx, namespace_id, handler, attempts,
                                     error_class, error_message, reason, created_at)
    SELECT t.id, p_idx, t.namespace_id, ts.handler, p_attempts, p_class, p_message, p_reason, now()
    FROM tasker.tasks t JOIN tasker.template_steps ts
         ON ts.template_id = t.template_id AND ts.idx = p_idx
    WHERE t.id = p_task_id
$$;

-- A claimed attempt whose lease ran out (its worker died or stalled):
-- the attempt failed with class tasker.LeaseExpired.  With attempts left
-- the step waits for a retry that is due at once (the claim that found it
-- takes it); otherwise it goes to error.  Reason "timed_out" in both cases.
-- The caller holds the queue row.  Locks: the step row, then (error only)
-- the task row.
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

-- Claims up to p_limit ready steps whose handler is in p_handlers for
-- worker p_worker, highest priority first, then oldest.  Each claimed step
-- is in_progress with attempt = attempts + 1, and its queue row is leased
-- until now() + p_lease_ms (the lease expiry; `attempt` is the fencing
-- token a completion must present).  Returns what a handler needs: names,
-- the task's context, the dependencies' names and results (JSON text, NULL
-- for none).
-- Locks: queue rows (SKIP LOCKED), pending task rows (id order), the
-- claimed step rows (key order; only a cancel or retry of the same task
-- can hold one, briefly).
CREATE OR REPLACE FUNCTION tasker.claim(p_worker int, p_handlers text[], p_limit int,
                                        p_lease_ms int)
RETURNS TABLE (task_id bigint, step_idx int, attempt int, max_attempts int, step_uuid uuid,
               task_uuid uuid, step_name text, handler text, namespace text,
               template_name text, context text, dep_names text[], dep_results text[])
LANGUAGE plpgsql
-- Batches are small next to the tables; planner statistics (often taken
-- when the queue was empty) must not turn key lookups into table scans.
SET enable_seqscan = off AS $$
DECLARE
    v_now   timestamptz := now();
    v_until timestamptz := now() + p_lease_ms * interval '1 millisecond';
    v_t     bigint[];
    v_i     int[];
    v_vis   timestamptz[];
    v_exp   boolean[];
    v_rows  int;
BEGIN
    SELECT array_agg(c.task_id), array_agg(c.step_idx), array_agg(c.visible_at),
           array_agg(c.leased_by IS NOT NULL)
    INTO v_t, v_i, v_vis, v_exp
    FROM (SELECT q.task_id, q.step_idx, q.visible_at, q.leased_by FROM tasker.queue q
          WHERE q.handler = ANY(p_handlers) AND q.visible_at <= v_now
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

    -- Tasks whose first step this is: pending -> running, recorded before
    -- the step's claim as the memory store does.
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
    -- The update locks the step rows (key order) and re-checks their state,
    -- so a step cancelled meanwhile is left alone.
    s AS (
        UPDATE tasker.steps s
        SET state = 2, attempts = s.attempts + 1, started_at = v_now, finished_at = NULL,
            enqueued_at = CASE WHEN l.old_state = 3 THEN least(l.due, v_now) ELSE s.enqueued_at END
        FROM l WHERE s.task_id = l.task_id AND s.idx = l.idx AND s.state IN (1, 3)
        RETURNING s.task_id, s.idx, s.attempts, s.budget, s.uuid, l.old_state, l.due),
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
                 ORDER BY u.o)
    FROM s JOIN tasker.tasks t ON t.id = s.task_id
         JOIN tasker.templates tp ON tp.id = t.template_id
         JOIN tasker.namespaces n ON n.id = tp.namespace_id
         JOIN tasker.template_steps ts ON ts.template_id = t.template_id AND ts.idx = s.idx;
    GET DIAGNOSTICS v_rows = ROW_COUNT;

    -- Rows whose step can no longer run (cancelled, finished, pruned) are
    -- garbage: drop them so they are not found again.
    IF v_rows < cardinality(v_t) THEN
        DELETE FROM tasker.queue q USING unnest(v_t, v_i) AS k(task_id, idx)
        WHERE q.task_id = k.task_id AND q.step_idx = k.idx
          AND NOT EXISTS (SELECT 1 FROM tasker.steps s
                          WHERE s.task_id = k.task_id AND s.idx = k.idx AND s.state IN (1, 2, 3));
    END IF;
END
$$;

-- Records the outcome of a batch of attempts; each entry stands alone (a
-- refused entry does not affect the others) and the batch is one
-- transaction.  Entry i is attempt p_attempts[i] of step
-- (p_task_ids[i], p_idxs[i]); p_ok[i] true: success with result
-- p_results[i] (JSON text or NULL); false: failure described by
-- p_classes/p_messages/p_retryable/p_retry_after (ms, -1 none)/p_contexts.
-- Returns one row per entry: status 0 recorded, 1 refused because the
-- attempt no longer holds its lease (logged in tasker.fenced), 2 refused
-- because the step was cancelled.
-- Locks: the entries' queue rows (key order; this is the fence: a
-- reclaimer holding one makes us wait, then the re-check sees its new
-- attempt), then the steps changed (their queue rows already fence them)
-- and their dependents (updated in key order), then the task rows (id
-- order).  Locking is done by the updates themselves: a separate SELECT ...
-- FOR UPDATE first would write every row twice.
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
BEGIN
    -- The lease test is computed on the locked row rather than filtered on:
    -- a filter on leased_by/visible_at gets selectivity estimates from
    -- statistics taken when nothing was leased, and the planner then
    -- scans the whole queue.  Joining on the key alone is always an index
    -- lookup per entry.
    SELECT coalesce(array_agg(x.o) FILTER (WHERE x.valid), '{}') INTO v_ord FROM (
        SELECT u.o::int AS o,
               (q.attempt = u.att AND q.leased_by IS NOT NULL AND q.visible_at > v_now) AS valid
        FROM unnest(p_task_ids, p_idxs, p_attempts) WITH ORDINALITY AS u(tid, idx, att, o)
             JOIN tasker.queue q ON q.task_id = u.tid AND q.step_idx = u.idx
        ORDER BY q.task_id, q.step_idx
        FOR UPDATE OF q) x;

    IF cardinality(v_ord) > 0 THEN
        -- Successes: the step is complete, its queue row goes.
        WITH ok AS (
            SELECT u.tid, u.idx, u.res
            FROM unnest(p_task_ids, p_idxs, p_results, p_ok) WITH ORDINALITY AS u(tid, idx, res, okf, o)
            WHERE u.o = ANY(v_ord) AND u.okf),
        s AS (
            UPDATE tasker.steps s SET state = 4, result = ok.res::json, finished_at = v_now
            FROM ok WHERE s.task_id = ok.tid AND s.idx = ok.idx
            RETURNING s.task_id, s.idx, s.attempts),
        tr AS (
            INSERT INTO tasker.transitions (task_id, step_idx, at, from_state, to_state, attempt,
                                            reason, worker_id)
            SELECT s.task_id, s.idx, v_now, 2, 4, s.attempts, 9, p_worker FROM s
            ORDER BY s.task_id, s.idx),
        dq AS (
            DELETE FROM tasker.queue q USING s WHERE q.task_id = s.task_id AND q.step_idx = s.idx)
        SELECT array_agg(s.task_id), array_agg(s.idx) INTO v_st, v_si FROM s;

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
                RETURNING st.task_id, st.idx, st.state, st.attempts, st.remaining, st.enqueued_at),
            rdy AS (
                SELECT d.task_id, d.idx, d.attempts, t.namespace_id, t.priority, ts.handler
                FROM d JOIN tasker.tasks t ON t.id = d.task_id
                       JOIN tasker.template_steps ts ON ts.template_id = t.template_id AND ts.idx = d.idx
                WHERE d.state = 1 AND d.remaining = 0 AND d.enqueued_at = v_now),
            qi AS (
                INSERT INTO tasker.queue (task_id, step_idx, namespace_id, handler, priority,
                                          visible_at, enqueued_at)
                SELECT r.task_id, r.idx, r.namespace_id, r.handler, r.priority, v_now, v_now FROM rdy r),
            tr AS (
                INSERT INTO tasker.transitions (task_id, step_idx, at, from_state, to_state,
                                                attempt, reason, worker_id)
                SELECT r.task_id, r.idx, v_now, 0, 1, r.attempts, 7, p_worker FROM rdy r
                ORDER BY r.task_id, r.idx),
            per AS (
                SELECT k.tid, 1 AS dn, -1 AS da FROM unnest(v_st) AS k(tid)
                UNION ALL
                SELECT r.task_id, 0, 1 FROM rdy r)
            SELECT array_agg(per.tid), array_agg(per.dn), array_agg(per.da),
                   (SELECT count(*) FROM rdy)::int
            INTO v_t, v_dn, v_da, v_ready FROM per;
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

        IF coalesce(v_ready, 0) > 0 OR v_now0 THEN
            PERFORM pg_notify('tasker_ready', '');
        END IF;
        IF v_due IS NOT NULL THEN
            -- A delayed retry: listeners arm a timer for it.
            PERFORM pg_notify('tasker_ready',
                              (extract(epoch FROM v_due) * 1000)::bigint::text);
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
                    WHEN EXISTS (SELECT 1 FROM tasker.transitions tr
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

-- One round trip for a worker that keeps busy: records a batch of
-- completions (tasker.complete_steps) and claims up to p_limit steps
-- (tasker.claim) in the same transaction -- often the very steps the batch
-- made ready.  Rows with kind 0 are completion statuses (ord, status);
-- rows with kind 1 are claims (the columns of tasker.claim).
CREATE OR REPLACE FUNCTION tasker.complete_and_claim(
    p_worker int, p_task_ids bigint[], p_idxs int[], p_attempts int[], p_ok boolean[],
    p_results text[], p_classes text[], p_messages text[], p_retryable boolean[],
    p_retry_after bigint[], p_contexts text[], p_handlers text[], p_limit int, p_lease_ms int)
RETURNS TABLE (kind int, ord int, status int, task_id bigint, step_idx int, attempt int,
               max_attempts int, step_uuid uuid, task_uuid uuid, step_name text, handler text,
               namespace text, template_name text, context text, dep_names text[],
               dep_results text[])
LANGUAGE plpgsql AS $$
BEGIN
    RETURN QUERY
    SELECT 0, c.ord, c.status, NULL::bigint, NULL::int, NULL::int, NULL::int, NULL::uuid,
           NULL::uuid, NULL::text, NULL::text, NULL::text, NULL::text, NULL::text, NULL::text[],
           NULL::text[]
    FROM tasker.complete_steps(p_worker, p_task_ids, p_idxs, p_attempts, p_ok, p_results,
                               p_classes, p_messages, p_retryable, p_retry_after, p_contexts) c;
    IF p_limit > 0 THEN
        RETURN QUERY
        SELECT 1, NULL::int, NULL::int, c.* FROM tasker.claim(p_worker, p_handlers, p_limit,
                                                              p_lease_ms) c;
    END IF;
END
$$;

-- Renews the leases of attempts this worker still runs.  Returns one row
-- per entry: held true (renewed until now() + p_lease_ms), false (lost:
-- expired, reclaimed, cancelled or finished; the attempt's completion
-- will be refused).  An entry whose queue row is locked right now (being
-- completed or reclaimed) is in neither list; the next heartbeat decides.
-- Locks: the entries' queue rows, SKIP LOCKED.
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
        WHERE q.attempt = k.att AND q.leased_by = p_worker AND q.visible_at > v_now
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
                        AND q.leased_by = p_worker AND q.visible_at > v_now);
END
$$;

-- Gives claimed attempts back (a worker stopping): the steps are enqueued
-- again at once (reason "released").  p_uncount[i] true: the attempt never
-- reached a handler and does not count (the memory store's rule); its
-- number is used again by the next claim, which is safe because nobody
-- holds a handle to it.  Returns how many were released.
-- Locks: queue rows (key order), then step rows.
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

-- The earliest time a queue row for these handlers becomes visible (a
-- delayed retry or a lease expiring), for an idle worker's timer.
CREATE OR REPLACE FUNCTION tasker.next_due(p_handlers text[]) RETURNS timestamptz
LANGUAGE sql STABLE AS $$
    SELECT min(q.visible_at) FROM tasker.queue q
    WHERE q.handler = ANY(p_handlers) AND q.visible_at > now()
$$;

-- Registers a worker process; its id appears in the transitions it makes.
CREATE OR REPLACE FUNCTION tasker.worker_register(p_host text, p_pid int) RETURNS int
LANGUAGE sql AS $$
    INSERT INTO tasker.workers (host, pid) VALUES (p_host, p_pid) RETURNING id
$$;

CREATE OR REPLACE FUNCTION tasker.worker_stopped(p_worker int) RETURNS void
LANGUAGE sql AS $$
    UPDATE tasker.workers SET stopped_at = now(), last_seen_at = now() WHERE id = p_worker
$$;

INSERT INTO tasker.schema_version (version, name) VALUES (3, 'steps')
    ON CONFLICT (version) DO NOTHING;

COMMIT;
