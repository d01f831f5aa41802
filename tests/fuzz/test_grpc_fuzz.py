"""Property-based fuzzing of the gRPC API from its proto: any message the wire can carry, and bytes
that are none, get an answer or a client-error status (never UNKNOWN, INTERNAL or UNAVAILABLE),
and the engine is idle afterwards."""

from __future__ import annotations

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmgate.v1 import inference_pb2 as pb
from lmgate.v1 import inference_pb2_grpc as pb_grpc

from conftest import MODELS, assert_idle
from proto_strategies import messages

CLIENT_ERRORS = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND}
SERVICE = pb.DESCRIPTOR.services_by_name["Inference"]
STREAMING = {m.name for m in SERVICE.methods if m.server_streaming}
EXAMPLES = {"Chat": 300, "Complete": 300}


@pytest.fixture(scope="module")
def channel(fuzz_server):
    with grpc.insecure_channel(fuzz_server.grpc_target) as channel:
        yield channel


def answered(call) -> None:
    """Run ``call``; a status other than OK must be a client error."""
    try:
        call()
    except grpc.RpcError as error:
        assert error.code() in CLIENT_ERRORS, (error.code(), error.details())


@pytest.mark.parametrize("method", [m.name for m in SERVICE.methods])
def test_any_message_is_answered_or_refused_as_a_client_error(channel, method):
    descriptor = SERVICE.methods_by_name[method]
    stub = pb_grpc.InferenceStub(channel)
    model = st.sampled_from([*MODELS, "nope"])

    @settings(max_examples=EXAMPLES.get(method, 50), deadline=None, derandomize=True,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(request=messages(descriptor.input_type, {"model": model}))
    def served(request):
        rpc = getattr(stub, method)
        if method in STREAMING:
            answered(lambda: list(rpc(request, timeout=120)))
        else:
            answered(lambda: rpc(request, timeout=120))

    served()


@pytest.mark.parametrize("method", [m.name for m in SERVICE.methods])
def test_bytes_that_may_be_no_message_are_refused_as_a_client_error(channel, method):
    path = f"/{SERVICE.full_name}/{method}"
    call = (channel.unary_stream if method in STREAMING else channel.unary_unary)(path)

    @settings(max_examples=50, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(data=st.binary(max_size=256))
    def refused(data):
        answered(lambda: list(call(data, timeout=120)) if method in STREAMING else call(data, timeout=120))

    refused()


def test_the_server_is_idle_after_the_fuzzing(fuzz_server):
    assert_idle(fuzz_server)
