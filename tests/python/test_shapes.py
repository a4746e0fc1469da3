"""Every workflow shape of the C suite, run through Python handlers."""

import asyncio

import pytest

import tasker
from _pg import both_stores
from _shapes import SHAPES, Recorder, expected_values, register_node_handlers, template_for

# Every test here runs on the memory store and on PostgreSQL (issue 4): the
# same assertions, one process running the handlers.
pytestmark = both_stores

TASKS = {"linear": 10, "diamond": 20, "tree": 10, "mixed": 10, "wide": 2}


@pytest.mark.parametrize("kind", ["sync", "async", "mixed"])
@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_shape_sync_api(app, shape, kind):
    graph = SHAPES[shape]
    rec = Recorder()
    register_node_handlers(app, graph, rec, kind)
    tmpl = template_for(app, shape, graph)
    handles = [app.submit(tmpl, {"shape": shape, "i": i}) for i in range(TASKS[shape])]
    expected = expected_values(graph)
    for h in handles:
        assert h.wait(timeout=60) == "complete"
        assert h.result == expected
        rec.check(h.uuid, graph)


@pytest.mark.parametrize("shape", ["diamond", "mixed", "wide"])
def test_shape_async_api(app, shape):
    graph = SHAPES[shape]
    rec = Recorder()
    register_node_handlers(app, graph, rec, "mixed")
    tmpl = template_for(app, shape, graph)

    async def main():
        return await asyncio.gather(*(app.run(tmpl, {"i": i}) for i in range(TASKS[shape])))

    results = asyncio.run(main())
    expected = expected_values(graph)
    assert results == [expected] * TASKS[shape]
    assert len(rec.events) == TASKS[shape] * len(graph)


def test_step_states_recorded(app):
    graph = SHAPES["diamond"]
    register_node_handlers(app, graph, Recorder(), "sync")
    tmpl = template_for(app, "diamond", graph)
    h = app.submit(tmpl)
    h.wait(timeout=30)
    steps = h.steps
    assert [s["name"] for s in steps] == list(graph)
    assert all(s["state"] == "complete" and s["attempts"] == 1 for s in steps)
    bottom = steps[-1]
    assert sorted(bottom["depends_on"]) == ["left", "right"]
    # The memory store keeps results in-process as the objects themselves
    # (result_mode "object"); PostgreSQL stores JSON, since other processes
    # read them.
    assert bottom["result_kind"] == ("pointer" if app.store == "memory" else "json")
    info = h.info()
    assert info["state"] == "complete"
    reasons = [t["reason"] for t in info["transitions"]]
    assert "created" in reasons and "completed" in reasons


ORDER = {
    "validate": [],
    "reserve_inventory": ["validate"],
    "authorize_payment": ["validate"],
    "ship": ["reserve_inventory", "authorize_payment"],
    "notify": ["ship"],
}


def _order_handlers(app, asynchronous):
    def validate(step):
        assert step.namespace == "shop" and step.template == "order_fulfillment"
        qty = sum(item["qty"] for item in step.context["items"])
        return {"valid": qty > 0, "quantity": qty}

    def reserve_inventory(step):
        return {"reserved": step.results["validate"]["quantity"]}

    def authorize_payment(step):
        ctx = step.context
        return {
            "auth": "AUTH-%d" % ctx["order_id"],
            "amount_cents": ctx["amount_cents"],
            "valid": step.results["validate"]["valid"],
        }

    def ship(step):
        r = step.dependency("reserve_inventory")
        a = step.dependency("authorize_payment")
        return {"tracking": "TRK-%d-%d-%s" % (step.context["order_id"], r["reserved"], a["auth"])}

    def notify(step):
        return {
            "sent_to": "customer-%d" % step.context["order_id"],
            "tracking": step.results["ship"]["tracking"],
        }

    for fn in (validate, reserve_inventory, authorize_payment, ship, notify):
        if asynchronous:

            def wrap(fn):
                async def handler(step):
                    await asyncio.sleep(0.001)
                    return fn(step)

                return handler

            app.register_handler(fn.__name__, wrap(fn))
        else:
            app.register_handler(fn.__name__, fn)


@pytest.mark.parametrize("asynchronous", [False, True])
def test_order_fulfillment(app, asynchronous):
    _order_handlers(app, asynchronous)
    app.template({"namespace": "shop", "name": "order_fulfillment", "steps": ORDER})
    orders = [
        {"order_id": 1000 + i, "amount_cents": 500 * (i + 1),
         "items": [{"sku": "A", "qty": i + 1}, {"sku": "B", "qty": 2}]}
        for i in range(8)
    ]
    handles = [app.submit("shop/order_fulfillment", o) for o in orders]
    for order, h in zip(orders, handles):
        res = h.get(timeout=30)
        qty = order["items"][0]["qty"] + 2
        assert res["validate"] == {"valid": True, "quantity": qty}
        assert res["reserve_inventory"] == {"reserved": qty}
        assert res["authorize_payment"]["auth"] == "AUTH-%d" % order["order_id"]
        tracking = "TRK-%d-%d-AUTH-%d" % (order["order_id"], qty, order["order_id"])
        assert res["ship"] == {"tracking": tracking}
        assert res["notify"] == {"sent_to": "customer-%d" % order["order_id"],
                                 "tracking": tracking}
