"""Workflow shapes shared by the tests (the same graphs as tests/c/test_shapes.c)."""

import itertools
import threading
from collections import defaultdict


def parse(spec):
    """'a; b<a; c<a; d<b,c' -> {"a": [], "b": ["a"], ...} (insertion-ordered)."""
    graph = {}
    for tok in spec.split(";"):
        tok = tok.strip()
        if not tok:
            continue
        name, _, deps = tok.partition("<")
        graph[name.strip()] = [d.strip() for d in deps.split(",") if d.strip()]
    return graph


LINEAR = parse("a; b<a; c<b; d<c; e<d; f<e; g<f; h<g")
DIAMOND = parse("top; left<top; right<top; bottom<left,right")
TREE = {"n1": []}
for _i in range(2, 16):
    TREE["n%d" % _i] = ["n%d" % (_i // 2)]
MIXED = parse("a; i<h,g; b<a; c<a; d<b,c; e<a,d; f<c; g<e,f; h; sink<a,b,c,d,e,f,g,h,i")
WIDE = {"root": []}
for _i in range(1000):
    WIDE["m%03d" % _i] = ["root"]
WIDE["sink"] = ["m%03d" % _i for _i in range(1000)]

SHAPES = {"linear": LINEAR, "diamond": DIAMOND, "tree": TREE, "mixed": MIXED, "wide": WIDE}


def expected_values(graph):
    """The value each node computes: 1 + the sum of its dependencies' values."""
    memo = {}

    def value(name):
        if name not in memo:
            memo[name] = 1 + sum(value(d) for d in graph[name])
        return memo[name]

    for name in graph:
        value(name)
    return memo


class Recorder:
    """Records when each (task, step) started and finished, from any thread."""

    def __init__(self):
        self.clock = itertools.count()
        self.lock = threading.Lock()
        self.events = defaultdict(list)  # (task, step) -> [(start, end)]

    def start(self):
        return next(self.clock)

    def finish(self, step, started):
        ended = next(self.clock)
        with self.lock:
            self.events[(step.task_uuid, step.name)].append((started, ended))

    def check(self, task_uuid, graph):
        """Every step ran once, after all of its dependencies had finished."""
        for name, deps in graph.items():
            runs = self.events.get((task_uuid, name), [])
            assert len(runs) == 1, "%s ran %d times in task %s" % (name, len(runs), task_uuid)
            started = runs[0][0]
            for dep in deps:
                dep_end = self.events[(task_uuid, dep)][0][1]
                assert dep_end < started, "%s started before %s finished" % (name, dep)


def register_node_handlers(app, graph, recorder, kind, prefix=""):
    """One handler per node computing 1 + sum(dependency results).

    kind: "sync", "async", or "mixed" (alternating by node index).
    """
    import asyncio

    for index, name in enumerate(graph):
        node_kind = kind if kind != "mixed" else ("async" if index % 2 else "sync")
        if node_kind == "sync":

            def handler(step, _deps=tuple(graph[name])):
                started = recorder.start()
                total = 1 + sum(step.results[d] for d in _deps)
                recorder.finish(step, started)
                return total

        else:

            async def handler(step, _deps=tuple(graph[name])):
                started = recorder.start()
                await asyncio.sleep(0)
                total = 1 + sum(step.results[d] for d in _deps)
                recorder.finish(step, started)
                return total

        app.register_handler(prefix + name, handler)


def template_for(app, tmpl_name, graph, prefix=""):
    steps = {
        name: {"depends_on": deps, "handler": prefix + name} for name, deps in graph.items()
    }
    return app.template("shapes/%s@1" % tmpl_name, steps=steps)
