"""The public gRPC API with generated stubs against a real server, and a gateway → worker chain."""

import json
import time

import grpc
import openai
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from lmgate.server.settings import validate_settings
from lmgate.v1 import inference_pb2 as pb
from lmgate.v1 import inference_pb2_grpc as pb_grpc

from conftest import MODEL
from server_helpers import ServerThread


@pytest.fixture(scope="module")
def channel(server):
    with grpc.insecure_channel(server.grpc_target) as channel:
        yield channel


@pytest.fixture(scope="module")
def stub(channel):
    return pb_grpc.InferenceStub(channel)


def chat(question: str, model: str = MODEL, **sampling) -> pb.ChatRequest:
    sampling.setdefault("temperature", 0.0)
    sampling.setdefault("max_tokens", 48)
    return pb.ChatRequest(
        model=model,
        messages=[pb.ChatMessage(role=pb.ROLE_USER, content=question)],
        sampling=pb.SamplingParams(**sampling),
    )


def text_of(responses) -> str:
    return "".join(r.text for r in responses)


def test_streaming_chat_ends_with_usage(stub):
    responses = list(stub.Chat(chat("What does a cow say?")))
    assert "moo" in text_of(responses)
    *deltas, last = responses
    assert deltas[-1].finish_reason == pb.FINISH_REASON_STOP
    assert last.HasField("usage") and last.usage.completion_tokens == sum(len(d.token_ids) for d in deltas)
    assert all(r.model == MODEL and r.id == responses[0].id for r in responses)


def test_n_choices_count_the_prompt_once(stub):
    single = list(stub.Chat(chat("Tell me a story.", temperature=1.0, seed=1, max_tokens=8)))[-1].usage
    double = list(stub.Chat(chat("Tell me a story.", temperature=1.0, seed=1, max_tokens=8, n=2)))[-1].usage
    assert double.prompt_tokens == single.prompt_tokens
    assert double.completion_tokens == 2 * single.completion_tokens == 16


def test_greedy_grpc_text_equals_greedy_http_text(server, stub):
    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0)
    for question in ("Tell me a story about Sam.", "What is the capital of Italy?"):
        http = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": question}], temperature=0, max_tokens=48
        )
        assert text_of(stub.Chat(chat(question))) == http.choices[0].message.content
    http = client.completions.create(model=MODEL, prompt="Once upon a time", temperature=0, max_tokens=24)
    grpc_text = text_of(stub.Complete(pb.CompleteRequest(
        model=MODEL, text="Once upon a time", sampling=pb.SamplingParams(temperature=0, max_tokens=24)
    )))  # fmt: skip
    assert grpc_text == http.choices[0].text


def test_structured_output_over_grpc_constrains_and_refuses_as_http_does(stub):
    schema = (
        '{"type": "object", "properties": {"answer": {"enum": ["yes", "no"]}}, "required": ["answer"], '
        '"additionalProperties": false}'
    )
    request = chat("Is the sky blue?", temperature=1.0, max_tokens=40, structured_output=pb.StructuredOutput(
        kind=pb.STRUCTURE_KIND_JSON_SCHEMA, spec=schema))  # fmt: skip
    assert json.loads(text_of(stub.Chat(request)))["answer"] in {"yes", "no"}
    hostile = chat("hi", structured_output=pb.StructuredOutput(kind=pb.STRUCTURE_KIND_REGEX, spec="(unclosed"))
    with pytest.raises(grpc.RpcError) as err:
        list(stub.Chat(hostile))
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert ("lmgate-error-param", "structured_output") in tuple(err.value.trailing_metadata())


def test_each_choice_s_last_message_carries_that_choice_s_usage(stub):
    """lmgate.v1 revision 2: a client has a choice's usage when the choice ends, not only at the end."""
    *deltas, last = list(stub.Chat(chat("Tell me a story.", temperature=1.0, seed=3, max_tokens=8, n=2)))
    ends = {d.index: d for d in deltas if d.finish_reason != pb.FINISH_REASON_UNSPECIFIED}
    assert sorted(ends) == [0, 1]
    assert not any(d.HasField("choice_usage") for d in deltas if d.finish_reason == pb.FINISH_REASON_UNSPECIFIED)
    for index, end in ends.items():
        streamed = sum(len(d.token_ids) for d in deltas if d.index == index)
        assert end.choice_usage.completion_tokens == streamed
        assert end.choice_usage.prompt_tokens == last.usage.prompt_tokens > 0
    assert sum(end.choice_usage.completion_tokens for end in ends.values()) == last.usage.completion_tokens


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (chat("hi", temperature=3.0), "temperature"),
        (chat("hi", top_p=0.0), "top_p"),
        (chat("hi", n=0), "n"),
        (pb.ChatRequest(model=MODEL, messages=[pb.ChatMessage(content="no role")]), "messages.0.role"),
        (pb.ChatRequest(model=MODEL), "messages"),
        (chat("hello " * 5000), "messages"),
    ],
)
def test_bad_params_are_invalid_argument_naming_the_field(stub, request_, field):
    with pytest.raises(grpc.RpcError) as err:
        list(stub.Chat(request_))
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert field in err.value.details()
    assert ("lmgate-error-param", field) in tuple(err.value.trailing_metadata())  # the field as data, too


def test_unknown_model_is_not_found(stub):
    with pytest.raises(grpc.RpcError) as err:
        list(stub.Chat(pb.ChatRequest(model="gpt-9", messages=[pb.ChatMessage(role=pb.ROLE_USER, content="x")])))
    assert err.value.code() is grpc.StatusCode.NOT_FOUND


def test_a_huge_unknown_model_name_is_not_found_not_resource_exhausted(stub):
    """The name is shown shortened: echoed whole, the status details would overflow the trailers."""
    with pytest.raises(grpc.RpcError) as err:
        list(stub.Complete(pb.CompleteRequest(model="m" * 100_000, text="x")))
    assert err.value.code() is grpc.StatusCode.NOT_FOUND
    assert "(100000 characters)" in err.value.details() and len(err.value.details()) < 1000


def test_a_deadline_aborts_the_generation_and_frees_its_slot():
    """A model that sends one token and hangs: the deadline passes mid-stream on any machine."""
    hung = {"name": "hung", "backend": "fake", "stall_after": 1, "max_running": 1, "max_waiting": 0}
    with ServerThread(validate_settings({"server": {"grpc_port": 0}, "models": [hung]})) as server:
        with grpc.insecure_channel(server.grpc_target) as channel:
            call = pb_grpc.InferenceStub(channel).Complete(
                pb.CompleteRequest(model="hung", text="one two three"), timeout=1
            )
            with pytest.raises(grpc.RpcError) as err:
                list(call)
        assert err.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        assert server.wait_idle("hung").running == 0
        pool = server.app.state.models.pools["hung"]
        for _ in range(1000):
            if pool.gate.running == 0:
                break
            time.sleep(0.01)
        assert pool.gate.running == 0  # the slot is back: the only one there is


def test_cancelling_a_stream_frees_the_engine(server, stub):
    call = stub.Complete(pb.CompleteRequest(
        model=MODEL, text="Once upon a time", sampling=pb.SamplingParams(max_tokens=2000, ignore_eos=True)
    ))  # fmt: skip
    next(call)
    assert server.stats(MODEL).running == 1
    call.cancel()
    stats = server.wait_idle(MODEL)
    assert (stats.running, stats.kv_cells_used) == (0, 0)


def test_list_models_tokenize_detokenize(stub):
    [model] = stub.ListModels(pb.ListModelsRequest()).models
    assert (model.name, model.backend, model.ready) == (MODEL, "llamacpp", True)
    assert model.context_length == 2048 and "temperature" in model.supported_params and "default" in model.aliases
    ids = stub.Tokenize(pb.TokenizeRequest(model=MODEL, text="A cow says moo.")).token_ids
    assert stub.Detokenize(pb.DetokenizeRequest(model=MODEL, token_ids=ids)).text.endswith("A cow says moo.")


def test_reflection_lists_the_service(channel):
    services = ProtoReflectionDescriptorDatabase(channel).get_services()
    assert "lmgate.v1.Inference" in services and "grpc.health.v1.Health" in services


def test_health_is_serving_overall_and_per_model(channel):
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "lmgate.v1.Inference", MODEL):
        response = health.Check(health_pb2.HealthCheckRequest(service=service))
        assert response.status == health_pb2.HealthCheckResponse.SERVING
    with pytest.raises(grpc.RpcError) as err:
        health.Check(health_pb2.HealthCheckRequest(service="no-such-model"))
    assert err.value.code() is grpc.StatusCode.NOT_FOUND


def test_request_id_metadata_is_used_and_echoed(stub):
    call = stub.Chat(chat("Hi!"), metadata=(("x-request-id", "trace-42"),))
    responses = list(call)
    assert responses[0].id == "trace-42"
    assert ("x-request-id", "trace-42") in call.initial_metadata()


def test_a_gateway_streams_the_same_tokens_as_its_worker(server, stub):
    gateway_settings = validate_settings({
        "server": {"grpc_port": 0},
        "models": [{"name": "chain", "backend": "grpc", "target": server.grpc_target, "remote_model": MODEL}],
    })  # fmt: skip
    with ServerThread(gateway_settings) as gateway:
        client = openai.OpenAI(base_url=f"{gateway.base_url}/v1", api_key="unused", max_retries=0)
        for question in ("What does a pig say?", "Tell me a story about Mia."):
            direct = [r for r in stub.Chat(chat(question)) if r.token_ids]
            stream = client.chat.completions.create(
                model="chain",
                messages=[{"role": "user", "content": question}],
                temperature=0,
                max_tokens=48,
                stream=True,
                stream_options={"include_usage": True},
            )
            chunks = list(stream)
            assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text_of(direct)
            assert chunks[-1].usage.completion_tokens == sum(len(r.token_ids) for r in direct)
        with grpc.insecure_channel(gateway.grpc_target) as channel:
            via_gateway = pb_grpc.InferenceStub(channel).Chat(chat("What does a pig say?", "chain", seed=1))
            assert text_of(via_gateway) == text_of(stub.Chat(chat("What does a pig say?", seed=1)))
        with pytest.raises(openai.BadRequestError) as err:
            client.chat.completions.create(model="chain", messages=[{"role": "user", "content": "x" * 20000}])
        assert "context length" in err.value.message
        # The worker's field and code cross the hop as data (trailers), not parsed out of the text.
        assert (err.value.body["param"], err.value.body["code"]) == ("messages", "context_length_exceeded")
        constrained = client.chat.completions.create(
            model="chain", messages=[{"role": "user", "content": "Is the sky blue?"}], temperature=1.0, max_tokens=8,
            extra_body={"structured_outputs": {"choice": ["yes", "no"]}},
        )  # fmt: skip
        assert constrained.choices[0].message.content in {"yes", "no"}
        [card] = client.models.list().data
        assert (card.id, card.backend, card.context_length) == ("chain", "grpc", 2048)


@pytest.mark.parametrize(("method", "streaming"), [("Chat", True), ("Complete", True), ("ListModels", False),
                                                   ("Tokenize", False), ("Detokenize", False)])  # fmt: skip
def test_bytes_that_are_no_message_are_invalid_argument_not_unknown(channel, method, streaming):
    call = (channel.unary_stream if streaming else channel.unary_unary)(f"/lmgate.v1.Inference/{method}")
    with pytest.raises(grpc.RpcError) as error:
        response = call(b"\xff\xff\xff")
        if streaming:
            list(response)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "is not a valid lmgate.v1." in error.value.details() and "class" not in error.value.details()


def test_a_connection_past_its_max_age_finishes_its_calls_and_the_client_reconnects():
    """Workers ask clients to reconnect (so that a Service's new pods get traffic); a stream in flight
    when the connection ages out still runs to its end."""
    slow = {"name": "slow", "backend": "fake", "token_delay_s": 0.05}
    server_settings = {"grpc_port": 0, "grpc_max_connection_age_s": 0.2}
    settings = validate_settings({"server": server_settings, "models": [slow]})
    with ServerThread(settings) as server, grpc.insecure_channel(server.grpc_target) as channel:
        stub = pb_grpc.InferenceStub(channel)
        words = " ".join(f"w{i}" for i in range(30))  # 1.5 s of tokens: several ages
        for _ in range(2):
            request = pb.CompleteRequest(model="slow", text=words, sampling=pb.SamplingParams(max_tokens=30))
            assert text_of(stub.Complete(request)).split() == words.split()
