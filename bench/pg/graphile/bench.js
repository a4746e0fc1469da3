// graphile-worker's single-job throughput on the same PostgreSQL as tasker's
// postgres.jobs benchmark (bench/run postgres).
//
//   node bench.js --database-url postgres://user@host:port/db [--jobs N]
//                 [--repeats R] [--warmup W] [--config fast|unbatched]
//                 [--concurrency C]
//
// Configurations:
//   fast       the configuration graphile-worker's performance page reports
//              its figures with: local queue (500 jobs) and batched
//              completion (completeJobBatchDelay / failJobBatchDelay 0),
//              24 concurrent jobs, a pool of 25 connections.
//   unbatched  the same concurrency without the local queue and without
//              batched completion (each job fetched and completed on its own).
//
// Each repeat empties the job table, adds N jobs for the no-op task in one
// statement (graphile_worker.add_jobs; not timed), vacuums, starts one worker
// pool in this process and times from the first handler call to the moment
// the job table is empty again (every completion committed).  --warmup W runs
// W untimed repeats first, in the same process.  Prints one JSON line in
// bench/run's format: the median of the repeats.
"use strict";

const { Logger, run, runMigrations } = require("graphile-worker");
const { Pool } = require("pg");

function parseArgs(argv) {
  const o = { url: null, jobs: 20000, repeats: 3, warmup: 0, config: "fast", concurrency: 24 };
  for (let i = 2; i < argv.length; i++) {
    const a = argv[i];
    const v = argv[i + 1];
    if (a === "--database-url") o.url = v;
    else if (a === "--jobs") o.jobs = parseInt(v, 10);
    else if (a === "--repeats") o.repeats = parseInt(v, 10);
    else if (a === "--warmup") o.warmup = parseInt(v, 10);
    else if (a === "--config") o.config = v;
    else if (a === "--concurrency") o.concurrency = parseInt(v, 10);
    else throw new Error(`unknown argument ${a}`);
    i++;
  }
  if (!o.url) throw new Error("--database-url is required");
  if (!["fast", "unbatched"].includes(o.config)) throw new Error("--config fast|unbatched");
  return o;
}

function median(v) {
  const s = [...v].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// graphile-worker logs a line per job at level "info" by default; writing
// 20,000 lines would slow it down, so only warnings and errors get through.
const quietLogger = new Logger(() => (level, message) => {
  if (level === "error" || level === "warning") process.stderr.write(`graphile-worker ${level}: ${message}\n`);
});

function preset(o) {
  const worker = {
    connectionString: o.url,
    concurrentJobs: o.concurrency,
    maxPoolSize: o.concurrency + 1,
    pollInterval: 2000,
    logger: quietLogger,
    // No cron file, no task directory: the task list is given in code.
    crontabFile: "/nonexistent/crontab",
  };
  if (o.config === "fast") {
    worker.localQueue = { size: 500 };
    worker.completeJobBatchDelay = 0;
    worker.failJobBatchDelay = 0;
  }
  return { worker };
}

async function once(o, pool) {
  await pool.query("delete from graphile_worker._private_jobs");
  await pool.query("delete from graphile_worker._private_job_queues");
  const added = await pool.query(
    `select count(*)::int as n from graphile_worker.add_jobs(array(
       select json_populate_record(null::graphile_worker.job_spec,
                                   json_build_object('identifier', 'noop'))
       from generate_series(1, $1::int)))`,
    [o.jobs],
  );
  if (added.rows[0].n !== o.jobs) throw new Error(`added ${added.rows[0].n} jobs, wanted ${o.jobs}`);
  await pool.query("vacuum analyze graphile_worker._private_jobs");
  // WAL written while the worker runs (cluster-wide counters; read again
  // after the pool has stopped and its backends reported).
  const wal0 = (await pool.query("select wal_bytes::float8 as b, wal_records::float8 as r from pg_stat_wal")).rows[0];

  let calls = 0;
  let first = 0n;
  let allCalled;
  const called = new Promise((r) => (allCalled = r));
  const taskList = {
    noop: async () => {
      if (calls === 0) first = process.hrtime.bigint();
      if (++calls === o.jobs) allCalled();
    },
  };
  const runner = await run({ preset: preset(o), taskList, noHandleSignals: true });
  await called;
  // Every handler has run; the jobs are done once their completions are
  // committed (deleted rows).  Poll only now, so polling adds no load while
  // the jobs run.
  let end;
  for (;;) {
    const r = await pool.query("select count(*)::int as n from graphile_worker._private_jobs");
    if (r.rows[0].n === 0) {
      end = process.hrtime.bigint();
      break;
    }
    await sleep(1);
  }
  await runner.stop();
  await sleep(50);
  const wal1 = (await pool.query("select wal_bytes::float8 as b, wal_records::float8 as r from pg_stat_wal")).rows[0];
  const seconds = Number(end - first) / 1e9;
  return { rate: o.jobs / seconds, seconds, calls, walBytes: (wal1.b - wal0.b) / o.jobs, walRecords: (wal1.r - wal0.r) / o.jobs };
}

async function main() {
  const o = parseArgs(process.argv);
  // Migrations (not timed); a no-op when the schema is current.
  await runMigrations({ preset: { worker: { connectionString: o.url, logger: quietLogger } } });
  const pool = new Pool({ connectionString: o.url, max: 2 });
  const sync = (await pool.query("select current_setting('synchronous_commit') as s")).rows[0].s;
  const rates = [];
  const spans = [];
  const walBytes = [];
  const walRecords = [];
  // Untimed runs first: the first run in a process is slower (the JIT
  // compiles as it goes), and a warm process is graphile-worker at its best.
  for (let i = 0; i < o.warmup; i++) {
    const r = await once(o, pool);
    process.stderr.write(`graphile-worker ${o.config} warm-up ${i + 1}: ${r.rate.toFixed(0)} jobs/s\n`);
  }
  for (let i = 0; i < o.repeats; i++) {
    const r = await once(o, pool);
    if (r.calls !== o.jobs) throw new Error(`handler ran ${r.calls} times for ${o.jobs} jobs`);
    rates.push(r.rate);
    spans.push(r.seconds);
    walBytes.push(r.walBytes);
    walRecords.push(r.walRecords);
    process.stderr.write(
      `graphile-worker ${o.config} repeat ${i + 1}: ${r.rate.toFixed(0)} jobs/s (${r.seconds.toFixed(3)} s)\n`,
    );
  }
  await pool.end();
  const version = require("graphile-worker/package.json").version;
  const line = {
    bench: "postgres.jobs.graphile_worker",
    metric: "throughput",
    value: Math.round(median(rates)),
    unit: "jobs/s",
    params: {
      config: o.config === "fast" ? "local_queue+batched_completion" : "unbatched",
      jobs: o.jobs,
      processes: 1,
      concurrent_jobs: o.concurrency,
      max_pool_size: o.concurrency + 1,
      local_queue_size: o.config === "fast" ? 500 : null,
      complete_job_batch_delay_ms: o.config === "fast" ? 0 : null,
      graphile_worker_version: version,
      node_version: process.version,
      synchronous_commit: sync,
      jobs_created: "beforehand (graphile_worker.add_jobs, one statement)",
      handler: "async no-op",
      stat: "median",
      repeats: o.repeats,
      warmup_runs: o.warmup,
      best: Math.round(Math.max(...rates)),
      worst: Math.round(Math.min(...rates)),
      all: rates.map((r) => Math.round(r)),
      span_s: spans.map((s) => Number(s.toFixed(3))),
      wal_bytes_per_job: Math.round(median(walBytes)),
      wal_records_per_job: Number(median(walRecords).toFixed(1)),
    },
  };
  process.stdout.write(JSON.stringify(line) + "\n");
}

main().catch((e) => {
  process.stderr.write(`graphile bench: ${e.stack || e}\n`);
  process.exit(1);
});
