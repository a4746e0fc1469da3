-- tasker schema, version 6: notifications after the commit.
--
-- A transaction that has called pg_notify takes a database-wide lock as it
-- commits and holds it until its commit record is on disk, so transactions
-- that notify commit one after another, each waiting for its own flush:
-- no two of them share a disk write.  Task creation and step completion
-- both notified, so under load every commit queued behind that lock.
--
-- With the session setting tasker.quiet = 'on' (the library sets it on its
-- connections) the functions below no longer notify inside the
-- transaction: tasker.create_task leaves it to the caller;
-- tasker.complete_steps_ev returns a row with ord 0 telling whether steps
-- were made ready (status 1) and when a delayed retry is due (task_age_ms,
-- epoch milliseconds); tasker.complete_and_claim_ns adds a row of kind 2
-- when its own claim took every step the batch made ready; the tasks a
-- batch finished were already reported.  The library then sends the
-- notifications with tasker.notify_after in a transaction of their own
-- whose commit does not wait for the disk, so the lock is held for
-- microseconds, and durable commits are grouped again.
--
-- Without the setting (older libraries, psql) everything notifies in the
-- transaction as before.
--
-- Steps made ready by a completion are queued as visible since their task
-- was created, so claims (priority, then visible_at) prefer the steps of
-- tasks already under way to the first steps of newer tasks, and the claim
-- riding along with the completion takes them first: a task's parallel
-- steps stay with the worker that made them ready.
--
-- Two fewer writes per step on the hot path, too: a completion deletes its
-- queue row with the lease test in the DELETE itself instead of locking
-- the row first (failures still lock, then update), and a claim takes a
-- task from pending to running with one UPDATE instead of a lock and an
-- update.
BEGIN;
DO $$ BEGIN PERFORM pg_advisory_xact_lock(7366231101); END $$;

CREATE OR REPLACE FUNCTION tasker._quiet() RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT coalesce(current_setting('tasker.quiet', true), '') = 'on'
$$;

-- Set (transaction-local) by tasker.complete_steps_ev while it runs
-- tasker.complete_steps for a quiet session: what that call would notify
-- is reported to the caller instead.  Anything else in the same
-- transaction (a lease expiry found by the claim that follows) notifies.
CREATE OR REPLACE FUNCTION tasker._deferring() RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT coalesce(current_setting('tasker.defer', true), '') = 'on'
$$;

-- pg_notify with a result (1), so that it can sit in a select list.
CREATE OR REPLACE FUNCTION tasker._notify(p_channel text, p_payload text) RETURNS int
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify(p_channel, p_payload);
    RETURN 1;
END
$$;

-- Sends notifications in a transaction that records nothing, so its commit
-- need not wait for the disk (set_config with is_local: until the end of
-- the transaction, which is this statement's).
CREATE OR REPLACE FUNCTION tasker.notify_after(p_channels text[], p_payloads text[])
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM set_config('synchronous_commit', 'off', true);
    PERFORM pg_notify(u.c, u.p) FROM unnest(p_channels, p_payloads) AS u(c, p);
END
$$;

-- tasker.create_task (0002); quiet: the caller notifies.
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

    LOOP
        IF p_key IS NOT NULL THEN
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
        END IF;
        INSERT INTO tasker.tasks (uuid, template_id, namespace_id, state, priority,
                                  idempotency_key, context, n_steps, n_active, created_at)
        VALUES (tasker.uuid_v7(v_now), v_tid, v_nsid, 0, p_priority, p_key,
                coalesce(p_context, '{}')::json, v_n, v_roots, v_now)
        ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
        RETURNING id, uuid INTO v_id, v_uuid;
        -- No row: a concurrent create with the same key committed first;
        -- look it up again (a new statement sees its row).
        EXIT WHEN v_id IS NOT NULL;
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

    INSERT INTO tasker.transitions (task_id, step_idx, at, from_state, to_state, attempt, reason)
    VALUES (v_id, NULL, v_now, NULL, 0, 0, 0);
    INSERT INTO tasker.transitions (task_id, step_idx, at, from_state, to_state, attempt, reason)
    SELECT v_id, ts.idx, v_now, 0, 1, 0, 7
    FROM tasker.template_steps ts
    WHERE ts.template_id = v_tid AND cardinality(ts.dep_idx) = 0;

    IF v_roots > 0 AND NOT tasker._quiet() THEN
        PERFORM pg_notify('tasker_ready', '');
    END IF;
    RETURN QUERY SELECT 0, v_uuid, NULL::text;
END
$$;

-- tasker.complete_steps (0003); deferring: what to notify goes to the
-- transaction-local settings tasker.ready and tasker.due.
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
    -- lookup per entry whatever the statistics say.
    WITH dq AS (
        DELETE FROM tasker.queue q
        USING unnest(p_task_ids, p_idxs, p_attempts, p_ok) WITH ORDINALITY AS u(tid, idx, att, okf, o)
        WHERE q.task_id = u.tid AND q.step_idx = u.idx AND u.okf
          AND q.attempt = u.att AND q.leased_by IS NOT NULL AND q.visible_at > v_now
        RETURNING u.o::int AS o, q.task_id, q.step_idx),
    s AS (
        UPDATE tasker.steps s SET state = 4, result = p_results[dq.o]::json, finished_at = v_now
        FROM dq WHERE s.task_id = dq.task_id AND s.idx = dq.step_idx
        RETURNING s.task_id, s.idx, s.attempts, dq.o),
    tr AS (
        INSERT INTO tasker.transitions (task_id, step_idx, at, from_state, to_state, attempt,
                                        reason, worker_id)
        SELECT s.task_id, s.idx, v_now, 2, 4, s.attempts, 9, p_worker FROM s
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
                RETURNING st.task_id, st.idx, st.state, st.attempts, st.remaining, st.enqueued_at),
            rdy AS (
                SELECT d.task_id, d.idx, d.attempts, t.namespace_id, t.priority, ts.handler,
                       t.created_at
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
                ORDER BY r.task_id, r.idx),
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

-- tasker._tasks_apply (0005), notifying unless deferring (then
-- the tasks it finishes are reported through tasker.finished).
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

-- tasker.claim_ns (0005), locking a task's row once, not twice, when its
-- first step is claimed.
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
    -- (The index scan over the key array visits them in key order.)
    WITH u AS (
        UPDATE tasker.tasks t SET state = 1, started_at = v_now
        WHERE t.id = ANY(v_t) AND t.state = 0 RETURNING t.id)
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

-- tasker.complete_steps_ev (0005) with the row of ord 0 (see the top).
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
    v_ready text;
    v_due text;
BEGIN
    PERFORM set_config('tasker.finished', '', true);
    PERFORM set_config('tasker.ready', '', true);
    PERFORM set_config('tasker.due', '', true);
    PERFORM set_config('tasker.defer', CASE WHEN tasker._quiet() THEN 'on' ELSE '' END, true);
    SELECT array_agg(c.ord), array_agg(c.status) INTO v_o, v_s
    FROM tasker.complete_steps(p_worker, p_task_ids, p_idxs, p_attempts, p_ok, p_results,
                               p_classes, p_messages, p_retryable, p_retry_after, p_contexts) c;
    PERFORM set_config('tasker.defer', '', true);
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
    v_ready := current_setting('tasker.ready', true);
    v_due := current_setting('tasker.due', true);
    IF coalesce(v_ready, '') <> '' OR coalesce(v_due, '') <> '' THEN
        RETURN QUERY SELECT 0, (coalesce(v_ready, '') <> '')::int, NULL::smallint, NULL::bigint,
                            NULL::smallint, nullif(v_due, '')::float8;
    END IF;
END
$$;

-- tasker.complete_and_claim_ns (0005) with the row of kind 2 (see the top).
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
DECLARE
    v_ready text;
    v_rows  int;
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
        GET DIAGNOSTICS v_rows = ROW_COUNT;
        -- Steps made ready that this claim could take but left: none, if
        -- it claimed fewer than it could.  Then nobody needs waking for
        -- them: a row of kind 2 tells the caller to skip tasker_ready.
        v_ready := current_setting('tasker.ready', true);
        IF tasker._quiet() AND v_rows < p_limit AND coalesce(v_ready, '') NOT IN ('', '*')
           AND coalesce(cardinality(p_skip_ns), 0) = 0 AND v_ready::text[] <@ p_handlers THEN
            RETURN QUERY
            SELECT 2, NULL::int, NULL::int, NULL::smallint, NULL::bigint, NULL::smallint,
                   NULL::float8, NULL::bigint, NULL::int, NULL::int, NULL::int, NULL::uuid,
                   NULL::uuid, NULL::text, NULL::text, NULL::text, NULL::text, NULL::text,
                   NULL::text[], NULL::text[], NULL::text, NULL::bigint, NULL::float8;
        END IF;
    END IF;
END
$$;

-- tasker.queue_stats (0004): a ready row's age counts from when it became
-- ready (enqueued_at, or the end of its retry delay), not from visible_at,
-- which for a step made ready by a completion is its task's creation.
CREATE OR REPLACE FUNCTION tasker.queue_stats()
RETURNS TABLE (namespace text, ready bigint, leased bigint, delayed bigint,
               oldest_ready_age_ms float8)
LANGUAGE sql STABLE AS $$
    SELECT n.name,
           count(*) FILTER (WHERE q.visible_at <= now() AND q.leased_by IS NULL),
           count(*) FILTER (WHERE q.leased_by IS NOT NULL),
           count(*) FILTER (WHERE q.visible_at > now() AND q.leased_by IS NULL),
           greatest(extract(epoch FROM now() - min(greatest(q.visible_at, q.enqueued_at))
                            FILTER (WHERE q.visible_at <= now() AND q.leased_by IS NULL))::float8
                    * 1000, 0)
    FROM tasker.queue q JOIN tasker.namespaces n ON n.id = q.namespace_id
    GROUP BY n.name ORDER BY n.name
$$;

INSERT INTO tasker.schema_version (version, name) VALUES (6, 'notify')
    ON CONFLICT (version) DO NOTHING;

COMMIT;
