"""The gRPC edge converts protobuf to the internal types itself, and refuses what HTTP refuses in
the same words (backends/grpc/convert.py against the HTTP models of server/http/)."""

import pytest
from pydantic import ValidationError

from lmgate.backends.errors import InvalidRequest
from lmgate.backends.grpc import convert
from lmgate.backends.types import (
    ChatMessage,
    FinishReason,
    GenerateRequest,
    Role,
    SamplingParams,
    StructuredOutput,
    StructureKind,
    TokenDelta,
    Tool,
    ToolCall,
    ToolCallDelta,
    ToolChoice,
    Tools,
    Usage,
)
from lmgate.server.errors import from_validation_errors
from lmgate.server.http import convert as http_convert
from lmgate.server.http.protocol import ChatCompletionRequest, CompletionRequest
from lmgate.v1 import inference_pb2 as pb

MODEL = "m"
BAD_SAMPLING = [
    {"temperature": 3.0}, {"temperature": -0.5}, {"top_p": 0.0}, {"top_p": 1.5}, {"top_k": -2}, {"min_p": 1.5},
    {"n": 0}, {"n": 129}, {"max_tokens": 0}, {"presence_penalty": 2.5}, {"frequency_penalty": -3.0},
    {"repetition_penalty": 0.0}, {"repetition_penalty": 11.0}, {"best_of": 0}, {"length_penalty": 11.0},
    {"stop": [str(i) for i in range(17)]}, {"stop": ["a", ""]}, {"stop_token_ids": [1, 2**31]},
    {"logit_bias": {5: 101.0}}, {"logit_bias": {2**31: 1.0}},
    {"n": 3, "best_of": 2}, {"best_of": 2}, {"temperature": 3.0, "top_p": 0.0, "n": 0},
]  # fmt: skip


def http_error(model: type, body: dict) -> str:
    with pytest.raises(ValidationError) as err:
        model.model_validate(body)
    return from_validation_errors(err.value.errors()).message


def grpc_error(request) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as err:
        if isinstance(request, pb.ChatRequest):
            convert.chat_from_pb(request, "r")
        else:
            convert.complete_from_pb(request, "r")
    return err.value


def as_json(sampling: dict) -> dict:
    """The same values as an HTTP body writes them (logit_bias keys are strings in JSON)."""
    return {k: {str(t): b for t, b in v.items()} if k == "logit_bias" else v for k, v in sampling.items()}


@pytest.mark.parametrize("sampling", BAD_SAMPLING, ids=str)
def test_a_bad_sampling_value_is_refused_in_the_same_words_over_both_transports(sampling):
    chat_http = http_error(ChatCompletionRequest, {"model": MODEL, "messages": [{"role": "user", "content": "hi"}],
                                                   **as_json(sampling)})  # fmt: skip
    chat_grpc = grpc_error(pb.ChatRequest(model=MODEL, messages=[pb.ChatMessage(role=pb.ROLE_USER, content="hi")],
                                          sampling=pb.SamplingParams(**sampling)))  # fmt: skip
    assert chat_grpc.message == chat_http
    complete_http = http_error(CompletionRequest, {"model": MODEL, "prompt": "x", **as_json(sampling)})
    complete_grpc = grpc_error(pb.CompleteRequest(model=MODEL, text="x", sampling=pb.SamplingParams(**sampling)))
    assert complete_grpc.message == complete_http


@pytest.mark.parametrize(
    ("request_", "body", "param"),
    [
        (pb.ChatRequest(model=MODEL, messages=[pb.ChatMessage(content="x")]),
         {"model": MODEL, "messages": [{"role": "unspecified", "content": "x"}]}, "messages.0.role"),
        (pb.ChatRequest(model=MODEL), {"model": MODEL, "messages": []}, "messages"),
        (pb.ChatRequest(messages=[pb.ChatMessage(role=pb.ROLE_USER)]),
         {"model": "", "messages": [{"role": "user", "content": ""}]}, "model"),
        (pb.ChatRequest(model=MODEL, messages=[pb.ChatMessage(role=pb.ROLE_USER)],
                        sampling=pb.SamplingParams(logprobs=21)),
         {"model": MODEL, "messages": [{"role": "user", "content": ""}], "logprobs": True, "top_logprobs": 21},
         "top_logprobs"),
    ],
)  # fmt: skip
def test_a_bad_chat_request_names_its_field_as_data_and_in_the_words_http_uses(request_, body, param):
    error = grpc_error(request_)
    assert error.param == param
    assert error.message == http_error(ChatCompletionRequest, body)


def test_a_bad_prompt_names_its_field():
    assert grpc_error(pb.CompleteRequest(model=MODEL)).param == "prompt"
    assert grpc_error(pb.CompleteRequest(model=MODEL, token_ids=pb.TokenIds(ids=[]))).param == "prompt"
    assert grpc_error(pb.CompleteRequest(model=MODEL, token_ids=pb.TokenIds(ids=[1, 2**31]))).param == "prompt.1"
    assert grpc_error(pb.CompleteRequest(model=MODEL, text="x", sampling=pb.SamplingParams(logprobs=21))).param == (
        "logprobs"
    )


FULL = SamplingParams(
    temperature=0.7, top_p=0.9, top_k=5, min_p=0.1, repetition_penalty=1.1, presence_penalty=0.5,
    frequency_penalty=-0.5, seed=42, logit_bias=((5, 1.5), (7, -100.0)), max_tokens=7, stop=("a", "b"),
    stop_token_ids=(1, 2), logprobs=3, n=2,
    structured_output=StructuredOutput(StructureKind.JSON_SCHEMA, '{"type": "object"}'), speculative=False,
)  # fmt: skip
BEAM = SamplingParams(n=2, use_beam_search=True, best_of=4, length_penalty=0.5, max_tokens=9)
CALL = ToolCall("call_1", "get_weather", '{"city": "Paris"}')
MESSAGES = tuple(
    ChatMessage(role, role.value, tool_calls=(CALL,) if role is Role.ASSISTANT else (),
                tool_call_id="call_1" if role is Role.TOOL else None, name="ann" if role is Role.USER else None)
    for role in Role
)  # fmt: skip


@pytest.mark.parametrize("sampling", [SamplingParams(max_tokens=3), FULL, BEAM], ids=["plain", "full", "beam"])
@pytest.mark.parametrize(
    "request_",
    [GenerateRequest("r", MODEL, messages=MESSAGES), GenerateRequest("r", MODEL, prompt="Once"),
     GenerateRequest("r", MODEL, prompt_token_ids=(1, 2, 3))],
    ids=["chat", "text", "ids"],
)  # fmt: skip
def test_a_request_crosses_the_hop_to_a_worker_unchanged(request_, sampling):
    """What a gateway sends (to_pb) a worker reads back (from_pb) as the very same request."""
    sent = GenerateRequest(request_.request_id, MODEL, sampling, request_.prompt, request_.prompt_token_ids,
                           request_.messages)  # fmt: skip
    if sent.messages is not None:
        received = convert.chat_from_pb(convert.chat_to_pb(sent, MODEL), "r")
    else:
        received = convert.complete_from_pb(convert.complete_to_pb(sent, MODEL), "r")
    assert received == sent


@pytest.mark.parametrize(
    "tools",
    [Tools((Tool("get_weather", "Weather.", '{"type": "object", "properties": {"city": {"type": "string"}}}'),)),
     Tools((Tool("a"), Tool("b", "B.")), ToolChoice.FUNCTION, "b", parallel=False),
     Tools((Tool("a"),), ToolChoice.NONE)],
    ids=["auto", "named", "none"],
)  # fmt: skip
def test_tools_cross_the_hop_unchanged(tools):
    sent = GenerateRequest("r", MODEL, SamplingParams(max_tokens=3), messages=MESSAGES, tools=tools)
    assert convert.chat_from_pb(convert.chat_to_pb(sent, MODEL), "r") == sent
    deltas = [
        TokenDelta(0, "", tool_calls=(ToolCallDelta(0, "call_x", "a", ""),)),
        TokenDelta(0, "", tool_calls=(ToolCallDelta(0, arguments='{"x": 1}'),), finish_reason=FinishReason.TOOL_CALLS),
    ]
    assert [convert.delta_from_pb(convert.delta_to_pb(pb.ChatResponse, "r", MODEL, d)) for d in deltas] == deltas


@pytest.mark.parametrize(
    "sampling", [{}, {"temperature": 0.7, "max_tokens": 5, "n": 2, "logprobs": 2}, {"speculative": True}], ids=str
)
def test_grpc_takes_the_http_api_s_defaults(sampling):
    body = ChatCompletionRequest.model_validate(
        {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], **sampling}
        | ({"logprobs": True, "top_logprobs": sampling["logprobs"]} if "logprobs" in sampling else {})
    )
    over_http = http_convert.chat_request(body, "r")
    pb_request = pb.ChatRequest(model=MODEL, messages=[pb.ChatMessage(role=pb.ROLE_USER, content="hi")],
                                sampling=pb.SamplingParams(**sampling))  # fmt: skip
    assert convert.chat_from_pb(pb_request, "r") == over_http
    completion = CompletionRequest.model_validate({"model": MODEL, "prompt": "x", **sampling})
    pb_completion = pb.CompleteRequest(model=MODEL, text="x", sampling=pb.SamplingParams(**sampling))
    assert [convert.complete_from_pb(pb_completion, "r")] == http_convert.completion_requests(completion, "r")


def test_a_delta_and_its_choice_usage_cross_the_hop_unchanged():
    delta = TokenDelta(1, "hé", (5, 6), (), FinishReason.LENGTH, Usage(7, 2, 3))
    message = convert.delta_to_pb(pb.ChatResponse, "id", MODEL, delta)
    assert message.HasField("choice_usage") and not message.HasField("usage")
    assert convert.delta_from_pb(message) == delta
    middle = TokenDelta(0, "a", (1,))
    assert not convert.delta_to_pb(pb.CompleteResponse, "id", MODEL, middle).HasField("choice_usage")
    assert convert.delta_from_pb(convert.delta_to_pb(pb.CompleteResponse, "id", MODEL, middle)) == middle
