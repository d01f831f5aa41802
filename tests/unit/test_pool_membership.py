"""A discovered pool's replicas come and go by address: fresh ids, the router kept in step, one JSON line each."""

import asyncio
import json
import logging

from lmgate.backends.types import BackendStats
from lmgate.server.placement.pool import ModelPool, ModelState
from lmgate.server.settings import Settings


def discovered_pool(**settings: object) -> ModelPool:
    entry = {"name": "chat", "backend": "grpc", "discovery": {"kubernetes": {"service": "workers"}}, **settings}
    pool = ModelPool(Settings.model_validate({"models": [entry]}).models[0])
    pool.state = ModelState.LOADING  # as during the first list: replicas are registered, _load starts them
    return pool


async def test_addresses_become_replicas_with_fresh_ids_and_leave_with_their_router_state(caplog):
    pool = discovered_pool()
    assert pool.replicas == {} and pool.status == "loading" and pool.discovered == 0
    with caplog.at_level(logging.INFO, logger="lmgate.discovery"):
        pool.set_targets(frozenset({"10.0.0.1:50051", "10.0.0.2:50051"}))
        assert sorted(pool.targets.values()) == ["10.0.0.1:50051", "10.0.0.2:50051"]
        assert set(pool.router.replicas) == set(pool.replicas) == {0, 1}
        assert {r.name for r in pool.router.replicas.values()} == {"10.0.0.1:50051", "10.0.0.2:50051"}
        first = next(i for i, t in pool.targets.items() if t == "10.0.0.1:50051")

        pool.set_targets(frozenset({"10.0.0.2:50051"}))
        assert first not in pool.replicas and first not in pool.router.replicas and first not in pool.unusable
        pool.set_targets(frozenset({"10.0.0.1:50051", "10.0.0.2:50051"}))
        again = next(i for i, t in pool.targets.items() if t == "10.0.0.1:50051")
        assert again == 2  # the same address back: a new replica
        await asyncio.gather(*pool._retiring)  # the removed one closed (it had nothing open)
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "lmgate.discovery"]
    assert [(line["event"], line["target"], line["replica"]) for line in lines] == [
        ("replica_added", "10.0.0.1:50051", 0),
        ("replica_added", "10.0.0.2:50051", 1),
        ("replica_removed", "10.0.0.1:50051", 0),
        ("replica_added", "10.0.0.1:50051", 2),
    ]
    assert [line["replicas"] for line in lines] == [1, 2, 1, 2]


def test_a_ready_pool_without_replicas_says_it_is_discovering_and_serves_nothing():
    pool = discovered_pool()
    pool.state = ModelState.READY
    assert pool.status == "discovering" and not pool.healthy() and not pool.routable(now=0.0)


async def test_unloading_closes_a_removed_replica_whose_stream_never_ends():
    pool = discovered_pool(request_timeout_s=None)  # nothing bounds the wait for its streams
    pool.set_targets(frozenset({"10.0.0.1:50051", "10.0.0.2:50051"}))
    removed = pool.replicas[0]
    closed: list[bool] = []
    removed.stats = lambda: BackendStats(running=1)  # a stream that stays open
    removed.shutdown = lambda: asyncio.sleep(0, closed.append(True))
    pool.set_targets(frozenset({"10.0.0.2:50051"}))
    await asyncio.sleep(0.3)
    assert closed == []  # still waiting for its stream
    await asyncio.wait_for(pool.unload(), 10)  # a guard against hanging, not a speed assertion
    assert closed == [True]
