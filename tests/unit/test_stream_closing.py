"""A request's stream gives back what it holds however it ends: read to the end, failed, or closed
before its first delta (an async generator closed before it started never runs its ``finally``: a gRPC
cancel landing between opening a stream and reading it leaked the admission slot for ever)."""

import time

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from lmgate.backends.types import GenerateRequest, SamplingParams
from lmgate.server.app import create_app
from lmgate.server.closing_stream import ClosingStream
from lmgate.server.placement.generation import merge
from lmgate.server.settings import validate_settings
from lmgate.v1 import inference_pb2 as pb
from lmgate.v1 import inference_pb2_grpc as pb_grpc

from server_helpers import ServerThread


def settings(**model):
    return validate_settings({
        "server": {"grpc_port": 0},
        "models": [{"name": "one", "backend": "fake", "max_running": 8, "max_waiting": 0, **model}],
    })  # fmt: skip


def requests_total(app, status: str) -> float:
    families = text_string_to_metric_families(app.state.metrics.render().decode())
    return sum(s.value for f in families for s in f.samples
               if s.name == "lmgate_requests_total" and s.labels["status"] == status)  # fmt: skip


def request(i: int = 0) -> GenerateRequest:
    return GenerateRequest(f"r{i}", "one", SamplingParams(max_tokens=8), prompt="a b c")


async def test_cleanup_runs_once_whether_the_stream_ends_fails_or_is_closed_unstarted():
    async def items():
        yield 1
        yield 2

    async def failing():
        yield 1
        raise ValueError("boom")

    cleanups = []

    async def cleanup():
        cleanups.append(1)

    ended = ClosingStream(items(), cleanup)
    assert [x async for x in ended] == [1, 2]
    assert len(cleanups) == 1
    failed = ClosingStream(failing(), cleanup)
    with pytest.raises(ValueError):
        _ = [x async for x in failed]
    unstarted = ClosingStream(items(), cleanup)
    for stream in (ended, failed, unstarted):
        await stream.aclose()
        await stream.aclose()
    assert len(cleanups) == 3


async def test_a_dispatched_stream_closed_before_its_first_read_frees_its_slot_and_is_counted():
    app = create_app(settings())
    registry, dispatcher, metrics = app.state.models, app.state.dispatcher, app.state.metrics
    await registry.start()
    try:
        pool = registry.pool("one")
        for make in (lambda d: d.streams[0], lambda d: merge(d.streams, 1)):
            with metrics.request("grpc", "/lmgate.v1.Inference/Complete", "one", "r0") as tracker:
                dispatched = await dispatcher.open("one", [request()])
                stream = tracker.watch(make(dispatched), 1)
            assert pool.gate.running == 1
            await stream.aclose()  # never read: a cancel before the first message
            assert pool.gate.running == 0
        assert requests_total(app, "aborted") == 2
        two = await dispatcher.open("one", [request(1), request(2)])
        await merge(two.streams, 1).aclose()
        assert pool.gate.running == 0
    finally:
        await registry.shutdown()


def test_grpc_calls_cancelled_at_any_moment_leak_no_slot():
    """Half the calls are cancelled at once (some before the server sees them), half after their first
    message; afterwards the gate is idle, and every call that was served is counted."""
    with ServerThread(settings(token_delay_s=0.01)) as server:
        pool = server.app.state.models.pool("one")
        with grpc.insecure_channel(server.grpc_target) as channel:
            stub = pb_grpc.InferenceStub(channel)
            sampling = pb.SamplingParams(max_tokens=50)
            for i in range(100):
                call = stub.Complete(pb.CompleteRequest(model="one", text="a b c", sampling=sampling))
                if i % 2:
                    next(call)
                call.cancel()

        def served() -> float:
            return requests_total(server.app, "aborted") + requests_total(server.app, "ok")

        for _ in range(1000):  # bounded wait for the cancels to land, not a timing claim
            if pool.gate.running == pool.gate.waiting == 0 and served() >= 50:
                break
            time.sleep(0.01)
        assert pool.gate.running == pool.gate.waiting == 0
        assert 50 <= served() <= 100
        assert server.app.state.drain.in_flight() == 0
