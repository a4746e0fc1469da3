-- tasker schema, version 2: names, time formats, retry delays, template
-- registration and task creation.
BEGIN;
DO $$ BEGIN PERFORM pg_advisory_xact_lock(7366231101); END $$;

-- ---- names of the C enums --------------------------------------------------

CREATE OR REPLACE FUNCTION tasker.task_state_name(s smallint) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT (ARRAY['pending', 'running', 'complete', 'error', 'cancelled',
                  'resolved_manually'])[s + 1]
$$;

CREATE OR REPLACE FUNCTION tasker.step_state_name(s smallint) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT (ARRAY['pending', 'enqueued', 'in_progress', 'waiting_for_retry', 'complete',
                  'error', 'cancelled', 'resolved_manually', 'skipped'])[s + 1]
$$;

CREATE OR REPLACE FUNCTION tasker.reason_name(r smallint) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT (ARRAY['created', 'started', 'completed', 'failed', 'cancelled', 'manual_retry',
                  'manual_resolve', 'dependencies_met', 'claimed', 'succeeded',
                  'retry_scheduled', 'retry_due', 'retries_exhausted', 'permanent_failure',
                  'released', 'timed_out'])[r + 1]
$$;

-- "2026-11-23T17:11:07.123456Z", the format of task JSON (TASK_JSON.md).
CREATE OR REPLACE FUNCTION tasker.iso(t timestamptz) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT to_char(t AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
$$;

CREATE OR REPLACE FUNCTION tasker.ms_between(a timestamptz, b timestamptz) RETURNS float8
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN a IS NOT NULL AND b IS NOT NULL AND b >= a
                THEN extract(epoch FROM (b - a))::float8 * 1000 END
$$;

-- Time-ordered UUID (version 7 layout): 48 bits of Unix milliseconds, then
-- the random bits of gen_random_uuid() with the version nibble set to 7.
-- Keeps the uuid indexes append-friendly like the C library's UUIDs.
CREATE OR REPLACE FUNCTION tasker.uuid_v7(at timestamptz DEFAULT clock_timestamp()) RETURNS uuid
LANGUAGE sql VOLATILE PARALLEL SAFE AS $$
    SELECT encode(set_bit(set_bit(overlay(uuid_send(gen_random_uuid())
                  PLACING substring(int8send((extract(epoch FROM at) * 1000)::bigint) FROM 3)
                  FROM 1 FOR 6), 52, 1), 53, 1), 'hex')::uuid
$$;

-- The delay before the next attempt, exactly as capi/core/backoff.c
-- computes it: retry_after_ms >= 0 replaces the policy (capped by max_ms);
-- otherwise none = 0, linear = base*n, exponential = base*2^(n-1), capped by
-- max_ms, then scaled by a random factor in [1 - jitter, 1].
CREATE OR REPLACE FUNCTION tasker.backoff_ms(backoff smallint, base_ms bigint, max_ms bigint,
                                             jitter float8, attempts int, retry_after_ms bigint)
RETURNS bigint LANGUAGE plpgsql VOLATILE PARALLEL SAFE AS $$
DECLARE
    d numeric;
BEGIN
    IF retry_after_ms IS NOT NULL AND retry_after_ms >= 0 THEN
        RETURN least(retry_after_ms, max_ms);
    END IF;
    d := CASE backoff
             WHEN 1 THEN base_ms::numeric * attempts
             WHEN 2 THEN base_ms::numeric * power(2::numeric, least(greatest(attempts - 1, 0), 60))
             ELSE 0 END;
    d := least(d, max_ms);
    IF jitter > 0 THEN
        d := floor(d * (1 - jitter * random())::numeric);
    END IF;
    RETURN d::bigint;
END
$$;

-- ---- templates ---------------------------------------------------------------

-- Stores a template version from its JSON (tasker_template_to_json of a
-- template the library has already checked).  Returns the template id, 0
-- if it was stored before with the same definition (no change), or raises
-- 'tasker: template exists' (SQLSTATE TK001) if stored with another
-- definition.  Also returns the version currently recorded as the latest
-- for namespace/name, with that row locked (FOR UPDATE) so the caller can
-- compare versions and update it in the same transaction.
-- Locks: the namespace row (insert or key share), the template key.
CREATE OR REPLACE FUNCTION tasker.register_template(p_definition jsonb,
    OUT template_id int, OUT created boolean, OUT latest_version text)
LANGUAGE plpgsql AS $$
DECLARE
    v_ns   text := p_definition->>'namespace';
    v_name text := p_definition->>'name';
    v_ver  text := p_definition->>'version';
    v_nsid int;
    v_old  jsonb;
BEGIN
    INSERT INTO tasker.namespaces (name) VALUES (v_ns) ON CONFLICT (name) DO NOTHING;
    SELECT n.id INTO v_nsid FROM tasker.namespaces n WHERE n.name = v_ns;

    INSERT INTO tasker.templates (namespace_id, name, version, definition, n_steps)
    VALUES (v_nsid, v_name, v_ver, p_definition, jsonb_array_length(p_definition->'steps'))
    ON CONFLICT (namespace_id, name, version) DO NOTHING
    RETURNING id INTO template_id;

    IF template_id IS NULL THEN
        SELECT t.id, t.definition INTO template_id, v_old FROM tasker.templates t
        WHERE t.namespace_id = v_nsid AND t.name = v_name AND t.version = v_ver;
        IF v_old IS DISTINCT FROM p_definition THEN
            RAISE EXCEPTION 'tasker: template %/%@% exists with other steps', v_ns, v_name, v_ver
                USING ERRCODE = 'TK001';
        END IF;
        created := false;
    ELSE
        created := true;
        -- Steps in template order; dependencies resolved to indexes.
        INSERT INTO tasker.template_steps (template_id, idx, name, handler, dep_idx, dep_names,
                                           dependents, max_attempts, backoff, base_ms, max_ms,
                                           jitter, timeout_ms)
        SELECT template_id, s.o - 1, s.j->>'name', s.j->>'handler',
               ARRAY(SELECT (SELECT e.o - 1 FROM jsonb_array_elements(p_definition->'steps')
                                            WITH ORDINALITY AS e(j, o)
                             WHERE e.j->>'name' = d.name)
                     FROM jsonb_array_elements_text(s.j->'depends_on') WITH ORDINALITY AS d(name, o)
                     ORDER BY d.o),
               ARRAY(SELECT d.name FROM jsonb_array_elements_text(s.j->'depends_on')
                                    WITH ORDINALITY AS d(name, o) ORDER BY d.o),
               '{}',
               (s.j->'retry'->>'max_attempts')::int,
               CASE s.j->'retry'->>'backoff' WHEN 'none' THEN 0 WHEN 'linear' THEN 1 ELSE 2 END,
               (s.j->'retry'->>'base_ms')::bigint, (s.j->'retry'->>'max_ms')::bigint,
               (s.j->'retry'->>'jitter')::float8, coalesce((s.j->>'timeout_ms')::bigint, 0)
        FROM jsonb_array_elements(p_definition->'steps') WITH ORDINALITY AS s(j, o);
        -- dependents: the steps listing this one, once per listing (like the
        -- memory store, which decrements once per dependency entry).
        UPDATE tasker.template_steps ts SET dependents = x.deps
        FROM (SELECT d.dep AS idx, array_agg(t2.idx ORDER BY t2.idx) AS deps
              FROM tasker.template_steps t2, unnest(t2.dep_idx) AS d(dep)
              WHERE t2.template_id = register_template.template_id
              GROUP BY d.dep) x
        WHERE ts.template_id = register_template.template_id AND ts.idx = x.idx;
    END IF;

    INSERT INTO tasker.template_latest (namespace_id, name, template_id)
    VALUES (v_nsid, v_name, template_id) ON CONFLICT (namespace_id, name) DO NOTHING;
    SELECT t.version INTO latest_version
    FROM tasker.template_latest l JOIN tasker.templates t ON t.id = l.template_id
    WHERE l.namespace_id = v_nsid AND l.name = v_name
    FOR UPDATE OF l;
END
$$;

-- Makes template `p_template_id` the latest of its namespace/name (called
-- by the registering process after comparing versions).
CREATE OR REPLACE FUNCTION tasker.set_latest_template(p_template_id int) RETURNS void
LANGUAGE sql AS $$
    UPDATE tasker.template_latest l SET template_id = t.id
    FROM tasker.templates t
    WHERE t.id = p_template_id AND l.namespace_id = t.namespace_id AND l.name = t.name
$$;

-- ---- tasks ------------------------------------------------------------------------

-- Creates a task of p_ns/p_name (p_version NULL: the latest version) and
-- enqueues its root steps, in one transaction.  One row comes back:
--   status 0  created: task_uuid is the new task
--   status 1  a task with this idempotency key and template exists: its uuid
--   status 2  no such template
--   status 3  the idempotency key is used by a task of another template
--             (task_uuid is that task, detail its template)
-- Locks: only the new rows, and the idempotency key's index entry (a
-- concurrent create with the same key waits for this one to commit).
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

    IF v_roots > 0 THEN
        PERFORM pg_notify('tasker_ready', '');
    END IF;
    RETURN QUERY SELECT 0, v_uuid, NULL::text;
END
$$;

INSERT INTO tasker.schema_version (version, name) VALUES (2, 'tasks')
    ON CONFLICT (version) DO NOTHING;

COMMIT;
