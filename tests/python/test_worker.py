"""`python -m tasker worker`: real worker processes sharing a real PostgreSQL.

Each test gets a fresh migrated database (the `pg_url` fixture), writes an
app module into its own directory, and starts workers with
``python -m tasker worker`` as a user would.  A producer in the test process
creates the tasks; what happened is checked through the API (task records:
step states, attempts and the transition history) and through a file where
every handler invocation appends what it did and in which process.
"""

import ctypes
import json
import os
import signal
import subprocess
import sys
import time

import pytest

import tasker

TEMPLATES = [
    {
        "namespace": "wt",
        "name": "diamond",
        "steps": [
            {"name": "a", "handler": "work"},
            {"name": "b", "handler": "awork", "depends_on": ["a"]},
            {"name": "c", "handler": "work", "depends_on": ["a"]},
            {"name": "d", "handler": "join", "depends_on": ["b", "c"]},
        ],
    },
    {"namespace": "wt", "name": "one", "steps": [{"name": "s", "handler": "work"}]},
    {"namespace": "wt", "name": "aone", "steps": [{"name": "s", "handler": "awork"}]},
    {"namespace": "other", "name": "one", "steps": [{"name": "s", "handler": "other"}]},
    {"namespace": "other", "name": "shared", "steps": [{"name": "s", "handler": "work"}]},
]

APP = '''
import asyncio, json, os, time
import tasker

app = tasker.Coordinator()
RUNS = os.environ["WAPP_RUNS"]

def record(step, what):
    line = json.dumps({"pid": os.getpid(), "task": step.task_uuid, "step": step.name,
                       "attempt": step.attempt, "what": what})
    with open(RUNS, "a") as f:
        f.write(line + "\\n")

@app.handler("work")
def work(step):
    record(step, "start")
    time.sleep(step.context.get("sleep", 0))
    record(step, "end")
    return {"pid": os.getpid()}

@app.handler("awork")
async def awork(step):
    record(step, "start")
    ctx = step.context
    await asyncio.sleep(ctx["retry_sleep"] if step.attempt > 1 and "retry_sleep" in ctx
                        else ctx.get("sleep", 0))
    record(step, "end")
    return {"pid": os.getpid()}

@app.handler("join")
def join(step):
    record(step, "start")
    record(step, "end")
    return sorted(step.results)

@app.handler("other")
def other(step):
    record(step, "start")
    record(step, "end")
    return "other"

for t in json.loads(%r):
    app.template(t)
''' % json.dumps(TEMPLATES)


def _die_with_parent():
    """Runs in the worker before exec: SIGKILL it if the test process dies, so
    an interrupted test run leaves no worker behind."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class Env:
    """A directory with the app module, the workers started in it, and a producer."""

    def __init__(self, tmp_path, url):
        self.dir = tmp_path
        self.url = url
        self.runs = tmp_path / "runs.jsonl"
        (tmp_path / "wapp.py").write_text(APP)
        self.procs = []
        self.producer = tasker.Coordinator(database_url=url)
        for t in TEMPLATES:
            self.producer.template(t)

    def env(self):
        env = dict(os.environ)
        env["WAPP_RUNS"] = str(self.runs)
        env.pop("TASKER_DATABASE_URL", None)
        return env

    def worker(self, *args, wait=True):
        """Starts `python -m tasker worker`; waits until it logged worker_started."""
        n = len(self.procs)
        log = self.dir / ("worker%d.log" % n)
        cmd = [sys.executable, "-m", "tasker", "worker", "--database-url", self.url,
               "--app", "wapp:app", *args]
        with open(log, "w") as f:
            proc = subprocess.Popen(cmd, cwd=str(self.dir), env=self.env(),
                                    stdout=subprocess.DEVNULL, stderr=f,
                                    preexec_fn=_die_with_parent)
        proc.log = log
        self.procs.append(proc)
        if wait:
            deadline = time.monotonic() + 60
            while "worker_started" not in log.read_text():
                if proc.poll() is not None:
                    pytest.fail("worker exited with %s: %s" % (proc.returncode, log.read_text()))
                if time.monotonic() > deadline:
                    pytest.fail("worker did not start: %s" % log.read_text())
                time.sleep(0.05)
        return proc

    def log_lines(self, proc):
        return [json.loads(l) for l in proc.log.read_text().splitlines() if l.strip()]

    def runs_of(self):
        if not self.runs.exists():
            return []
        return [json.loads(l) for l in self.runs.read_text().splitlines() if l.strip()]

    def wait_for(self, predicate, timeout=30, what="condition"):
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                pytest.fail("timed out waiting for %s" % what)
            time.sleep(0.05)

    def steps_in_progress(self):
        """Steps in progress in the whole database, read in one snapshot."""
        import _pg

        return int(_pg.psql(self.url, sql="SELECT count(*) FROM tasker.steps_current WHERE state = 2"))

    def check_each_step_completed_once(self, handles):
        """Every task complete; every step reached `complete` exactly once."""
        for h in handles:
            info = self.producer.info(h.uuid)
            assert info["state"] == "complete", info
            for s in info["steps"]:
                assert s["state"] == "complete", s
                completions = [t for t in info["transitions"]
                               if t["step"] == s["name"] and t["to"] == "complete"]
                assert len(completions) == 1, (s["name"], info["transitions"])

    def close(self):
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait(30)
        self.producer.close()


@pytest.fixture
def wenv(tmp_path, pg_url):
    e = Env(tmp_path, pg_url)
    try:
        yield e
    finally:
        e.close()


def _stop(proc, sig=signal.SIGTERM, timeout=60):
    proc.send_signal(sig)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("worker did not exit %ss after %s: %s" % (timeout, sig, proc.log.read_text()))


def test_two_workers_finish_what_a_producer_creates(wenv):
    w1 = wenv.worker("--concurrency", "2")
    w2 = wenv.worker("--concurrency", "2")
    handles = [wenv.producer.submit("wt/diamond", {"sleep": 0.02}) for _ in range(30)]
    assert wenv.producer.wait_all(handles, timeout=120) == ["complete"] * 30
    # The producer ran nothing itself; the results came from the workers.
    pids = set()
    for h in handles:
        res = h.result
        assert res["d"] == ["b", "c"]
        pids.update(res[s]["pid"] for s in ("a", "b", "c"))
    assert pids == {w1.pid, w2.pid}, "both workers took part"
    wenv.check_each_step_completed_once(handles)
    runs = wenv.runs_of()
    assert len([r for r in runs if r["what"] == "end"]) == 30 * 4  # no step ran twice
    assert _stop(w1) == 0 and _stop(w2, signal.SIGINT) == 0
    # Structured logs: every line is JSON; the library's events are there too.
    for w in (w1, w2):
        lines = wenv.log_lines(w)
        events = [l["event"] for l in lines]
        assert events[0] == "worker_started" and events[-1] == "worker_stopped"
        assert all({"time", "level", "event"} <= set(l) for l in lines)
        assert lines[-1]["exit_code"] == 0
    completed = [l for w in (w1, w2) for l in wenv.log_lines(w) if l["event"] == "task_completed"]
    assert {l["task_uuid"] for l in completed} == {h.uuid for h in handles}


def test_concurrency_bounds_the_steps_a_worker_holds(wenv):
    w = wenv.worker("--concurrency", "2", "--log-level", "debug")
    handles = [wenv.producer.submit("wt/aone", {"sleep": 0.3}) for _ in range(8)]
    peak = 0
    deadline = time.monotonic() + 60
    while not all(h.status() == "complete" for h in handles):
        peak = max(peak, wenv.steps_in_progress())
        assert time.monotonic() < deadline, "tasks did not finish"
        time.sleep(0.03)
    assert 1 <= peak <= 2, "a worker with --concurrency 2 held %d steps" % peak
    # --log-level debug adds every step's events.
    assert any(l["event"] == "step_started" for l in wenv.log_lines(w))
    assert _stop(w) == 0


def test_sigterm_lets_running_steps_finish_and_another_worker_does_the_rest(wenv):
    a = wenv.worker("--concurrency", "2", "--drain-timeout", "30")
    handles = [wenv.producer.submit("wt/one", {"sleep": 1.0}) for _ in range(6)]
    wenv.wait_for(lambda: len([r for r in wenv.runs_of() if r["what"] == "start"]) >= 2,
                  what="worker A to start two steps")
    t0 = time.monotonic()
    assert _stop(a) == 0, a.log.read_text()
    assert time.monotonic() - t0 < 20
    runs = wenv.runs_of()
    a_started = [r for r in runs if r["pid"] == a.pid and r["what"] == "start"]
    a_ended = [r for r in runs if r["pid"] == a.pid and r["what"] == "end"]
    assert len(a_started) == 2 and len(a_ended) == 2, "A finished what it had started"
    done = [h for h in handles if h.status() == "complete"]
    assert len(done) == 2, "A's two steps were recorded before it exited"
    last = wenv.log_lines(a)[-1]
    assert last["event"] == "worker_stopped" and last["steps_succeeded"] == 2
    assert any(l["event"] == "worker_drained" for l in wenv.log_lines(a))

    b = wenv.worker("--concurrency", "4")
    assert wenv.producer.wait_all(handles, timeout=60) == ["complete"] * 6
    wenv.check_each_step_completed_once(handles)
    runs = wenv.runs_of()
    assert len([r for r in runs if r["pid"] == b.pid and r["what"] == "end"]) == 4
    assert all(s["attempts"] == 1 for h in handles for s in h.steps)
    assert _stop(b) == 0


def test_drain_timeout_releases_running_steps_and_exits_3(wenv):
    a = wenv.worker("--concurrency", "2", "--drain-timeout", "0.5")
    handles = [wenv.producer.submit("wt/aone", {"sleep": 30, "retry_sleep": 0.1})
               for _ in range(2)]
    wenv.wait_for(lambda: len(wenv.runs_of()) >= 2, what="worker A to start two steps")
    assert _stop(a) == 3, a.log.read_text()
    events = [l["event"] for l in wenv.log_lines(a)]
    assert "worker_drain_timeout" in events and events[-1] == "worker_stopped"
    # Released, not failed: back in the queue at once (no lease to wait out),
    # with no error recorded against them.
    for h in handles:
        info = wenv.producer.info(h.uuid)
        (s,) = info["steps"]
        assert s["state"] == "enqueued" and not s["errors"], s
    released = [t for h in handles for t in wenv.producer.info(h.uuid)["transitions"]
                if t["reason"] == "released"]
    assert len(released) == 2
    # Another worker finishes every task (a second attempt sleeps briefly).
    b = wenv.worker("--concurrency", "4")
    assert wenv.producer.wait_all(handles, timeout=60) == ["complete"] * 2
    wenv.check_each_step_completed_once(handles)
    assert all(s["attempts"] == 2 for h in handles for s in h.steps)
    assert _stop(b) == 0


def test_sigkill_mid_step_another_worker_finishes_after_the_lease(wenv):
    lease = ("--set", "postgres.lease_ms=1500")
    a = wenv.worker("--concurrency", "1", *lease)
    h = wenv.producer.submit("wt/one", {"sleep": 2.0})
    wenv.wait_for(lambda: len(wenv.runs_of()) >= 1, what="worker A to start the step")
    a.kill()
    a.wait(30)
    t_kill = time.monotonic()
    b = wenv.worker("--concurrency", "1", *lease)
    assert h.wait(timeout=60) == "complete"
    elapsed = time.monotonic() - t_kill
    wenv.check_each_step_completed_once([h])
    (s,) = h.steps
    assert s["attempts"] == 2  # A's attempt was lost with its lease
    runs = wenv.runs_of()
    assert [r["pid"] for r in runs if r["what"] == "end"] == [b.pid]
    assert elapsed >= 0.5  # B waited for the lease to expire (minus the time A held it)
    assert _stop(b) == 0


def test_namespace_limits_what_a_worker_serves(wenv):
    # "other" has a handler of its own and one ("work") that wt's templates
    # use too: a worker for "other" runs other's steps only.
    w = wenv.worker("--namespace", "other")
    mine = [wenv.producer.submit("other/one"), wenv.producer.submit("other/shared")]
    theirs = wenv.producer.submit("wt/one")
    assert [h.wait(timeout=30) for h in mine] == ["complete", "complete"]
    time.sleep(0.5)
    assert theirs.status() == "pending"  # no worker serves namespace wt
    assert _stop(w) == 0
    w2 = wenv.worker("--namespace", "wt")
    assert theirs.wait(timeout=30) == "complete"
    assert _stop(w2) == 0


def _run_worker(args, cwd, env=None, timeout=60):
    full = dict(os.environ)
    full.pop("TASKER_DATABASE_URL", None)
    full.update(env or {})
    return subprocess.run([sys.executable, "-m", "tasker", "worker", *args], cwd=str(cwd),
                          env=full, capture_output=True, text=True, timeout=timeout)


def test_help(tmp_path):
    out = _run_worker(["--help"], tmp_path)
    assert out.returncode == 0
    for opt in ("--database-url", "--app", "--namespace", "--concurrency", "--drain-timeout",
                "--log-level", "exit status"):
        assert opt in out.stdout
    top = subprocess.run([sys.executable, "-m", "tasker", "--help"], capture_output=True,
                         text=True, timeout=60)
    assert top.returncode == 0 and "worker" in top.stdout


BAD_APPS = {
    "syntax.py": "def broken(:\n",
    "raises.py": "raise RuntimeError('no config here')\n",
    "notapp.py": "import tasker\napp = 42\n",
    "noh.py": "import tasker\napp = tasker.Coordinator()\n",
}


@pytest.mark.parametrize(
    "args, env, message",
    [
        (["--app", "x:app"], {}, "no database"),
        (["--database-url", "dbname=x"], {}, "no app"),
        (["--database-url", "dbname=x", "--app", "nocolon"], {}, "MODULE:ATTR"),
        (["--database-url", "dbname=x", "--app", "nosuchmodule:app"], {}, "cannot import module 'nosuchmodule'"),
        (["--database-url", "dbname=x", "--app", "syntax:app"], {}, "SyntaxError"),
        (["--database-url", "dbname=x", "--app", "raises:app"], {}, "RuntimeError at"),
        (["--database-url", "dbname=x", "--app", "notapp:app"], {}, "is a int, not a tasker.Coordinator"),
        (["--database-url", "dbname=x", "--app", "notapp:nothing"], {}, "has no attribute 'nothing'"),
        (["--database-url", "dbname=x", "--app", "noh:app"], {}, "declares no handlers"),
        (["--database-url", "dbname=x", "--app", "x:app", "--concurrency", "0"], {}, "--concurrency"),
        (["--database-url", "dbname=x", "--app", "x:app", "--bogus"], {}, "unrecognized arguments"),
        (["--app", "wapp:app"],
         {"TASKER_DATABASE_URL": "host=127.0.0.1 port=1 user=u password=s3cret connect_timeout=2"},
         "cannot use the database"),
    ],
    ids=["no-url", "no-app", "bad-spec", "no-module", "syntax", "raises", "not-app",
         "no-attr", "no-handlers", "concurrency", "unknown-option", "unreachable"],
)
def test_bad_arguments_exit_2_with_one_clear_line(tmp_path, args, env, message):
    for name, text in BAD_APPS.items():
        (tmp_path / name).write_text(text)
    (tmp_path / "wapp.py").write_text(APP)
    env = dict(env, WAPP_RUNS=str(tmp_path / "runs"))
    out = _run_worker(args, tmp_path, env)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert message in lines[0], lines[0]
    assert "Traceback" not in out.stderr
    assert "s3cret" not in out.stderr  # connection strings are logged without passwords


def test_database_without_schema_is_a_clear_error(tmp_path, pg_template):
    import _pg

    name, url = _pg.create_database()  # empty: not migrated
    try:
        (tmp_path / "wapp.py").write_text(APP)
        out = _run_worker(["--database-url", url, "--app", "wapp:app"], tmp_path,
                          {"WAPP_RUNS": str(tmp_path / "runs")})
        assert out.returncode == 2, out.stderr
        assert "tasker migrate" in out.stderr and "Traceback" not in out.stderr
        assert len(out.stderr.strip().splitlines()) == 1
    finally:
        _pg.drop_database(name)


def test_docs_example(wenv):
    """The app and producer of docs/python.md ("Running workers against
    PostgreSQL") work as printed."""
    import re

    doc = os.path.join(os.path.dirname(__file__), "..", "..", "docs", "python.md")
    with open(doc) as f:
        text = f.read()
    section = text.split("## Running workers against PostgreSQL", 1)[1].split("\n## ", 1)[0]
    app_code, producer_code = re.findall(r"```python\n(.*?)```", section, re.S)[:2]
    (wenv.dir / "shop_tasks.py").write_text(app_code)
    producer_code = producer_code.replace("postgresql://tasker@db.internal/shop", wenv.url)
    (wenv.dir / "produce.py").write_text(producer_code)
    w = wenv.worker("--app", "shop_tasks:app")  # the last --app wins
    out = subprocess.run([sys.executable, "produce.py"], cwd=str(wenv.dir), env=wenv.env(),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.strip() == "{'tracking': 'TRK-0'}"
    assert _stop(w) == 0


def test_worker_app_example(pg_url, tmp_path):
    """examples/python/worker_app.py: two workers and its producer."""
    examples = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                            "examples", "python")
    env = dict(os.environ, TASKER_DATABASE_URL=pg_url)
    procs = []
    try:
        for i in range(2):
            log = tmp_path / ("w%d.log" % i)
            with open(log, "w") as f:
                procs.append(subprocess.Popen(
                    [sys.executable, "-m", "tasker", "worker", "--app", "worker_app:app",
                     "--concurrency", "4"], cwd=examples, env=env, stdout=subprocess.DEVNULL,
                    stderr=f, preexec_fn=_die_with_parent))
        out = subprocess.run([sys.executable, "worker_app.py", "--orders", "8"], cwd=examples,
                             env=env, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stdout + out.stderr
        assert "8 orders shipped by" in out.stdout
        assert "TRK-1007-8 charged 2000" in out.stdout
        for p in procs:
            p.send_signal(signal.SIGTERM)
            assert p.wait(60) == 0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(30)
