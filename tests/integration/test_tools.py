"""Function calling on the real CPU engine through the official SDK: a forced call (``required``, a
named function) always parses and validates against its function's parameters (jsonschema checks,
at any temperature, alone, with n > 1 or batched with free requests); streamed calls assemble in the
SDK to the same call; the history of calls and results reaches the template; bad tools are 400s
naming the field, and a model without a call format says so."""

import asyncio
import contextlib
import json
import uuid
from collections.abc import Iterator
from typing import Literal

import grpc
import httpx
import jsonschema
import openai
import pytest
from pydantic import BaseModel, Field

from lmgate.server.settings import validate_settings
from lmgate.v1 import inference_pb2 as pb
from lmgate.v1 import inference_pb2_grpc as pb_grpc

from conftest import MODEL
from server_helpers import ServerThread

WEATHER = {
    "type": "object",
    "properties": {"city": {"enum": ["Paris", "Rome", "Oslo"]}, "unit": {"enum": ["celsius", "fahrenheit"]}},
    "required": ["city"],
}
ADD = {
    "type": "object",
    "properties": {"a": {"type": "integer", "minimum": 0, "maximum": 99}, "b": {"type": "integer", "maximum": 99}},
    "required": ["a", "b"],
}
TOOLS = [
    {
        "type": "function",
        "function": {"name": "get_weather", "description": "Weather of a city.", "parameters": WEATHER},
    },
    {"type": "function", "function": {"name": "add", "description": "Add two numbers.", "parameters": ADD}},
]
SCHEMAS = {"get_weather": WEATHER, "add": ADD}
QUESTION = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0)


def cold() -> dict:
    """A cache salt of its own: a prefill never resumed from another request's blocks (which may
    flip a greedy near-tie), so two requests compared are computed alike."""
    return {"extra_body": {"cache_salt": uuid.uuid4().hex}}


def assert_valid_calls(message, names=frozenset(SCHEMAS)):
    assert message.tool_calls, message
    for call in message.tool_calls:
        assert call.type == "function" and call.id.startswith("call_") and call.function.name in names
        jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])
    return message.tool_calls


@pytest.mark.parametrize("temperature", [0.0, 1.0, 1.8])
def test_required_always_makes_a_valid_call(client, temperature):
    completion = client.chat.completions.create(
        model=MODEL, messages=QUESTION, tools=TOOLS, tool_choice="required", temperature=temperature, seed=3,
        max_tokens=120,
    )  # fmt: skip
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    assert_valid_calls(choice.message)


def test_a_named_function_is_the_one_called_once(client):
    choice = {"type": "function", "function": {"name": "add"}}
    completion = client.chat.completions.create(
        model=MODEL, messages=QUESTION, tools=TOOLS, tool_choice=choice, temperature=1.0, seed=5, max_tokens=120, n=3
    )
    for c in completion.choices:
        calls = assert_valid_calls(c.message, {"add"})
        assert len(calls) == 1 and c.finish_reason == "tool_calls"
    assert len({c.message.tool_calls[0].id for c in completion.choices}) == 3  # ids are per call


def test_without_parallel_calls_there_is_one_call(client):
    completion = client.chat.completions.create(
        model=MODEL, messages=QUESTION, tools=TOOLS, tool_choice="required", parallel_tool_calls=False,
        temperature=1.5, seed=11, max_tokens=200,
    )  # fmt: skip
    assert len(assert_valid_calls(completion.choices[0].message)) == 1


def test_a_streamed_call_assembles_in_the_sdk_to_the_unstreamed_one(client):
    params = {"model": MODEL, "messages": QUESTION, "tools": TOOLS, "tool_choice": "required", "temperature": 0,
              "max_tokens": 120}  # fmt: skip
    with client.chat.completions.stream(**params, **cold()) as stream:
        events = list(stream)
        final = stream.get_final_completion()
    created = client.chat.completions.create(**params, **cold())
    streamed, whole = final.choices[0].message.tool_calls, created.choices[0].message.tool_calls
    assert [(c.function.name, c.function.arguments) for c in streamed] == [
        (c.function.name, c.function.arguments) for c in whole
    ]
    assert final.choices[0].finish_reason == "tool_calls"
    pieces = [e for e in events if e.type == "tool_calls.function.arguments.delta"]
    assert len(pieces) > 1  # the arguments stream as they are written, not in one piece at the end
    assert "".join(p.arguments_delta for p in pieces) == streamed[0].function.arguments


def test_the_first_delta_of_a_call_has_its_id_and_name_then_only_arguments(client):
    stream = client.chat.completions.create(
        model=MODEL, messages=QUESTION, tools=TOOLS, tool_choice="required", temperature=0, max_tokens=120,
        stream=True,
    )  # fmt: skip
    pieces = [c for chunk in stream for choice in chunk.choices for c in choice.delta.tool_calls or ()]
    first, rest = pieces[0], pieces[1:]
    assert first.id.startswith("call_") and first.type == "function" and first.function.name in SCHEMAS
    assert all(p.id is None and p.function.name is None and p.index == first.index for p in rest)


def test_a_call_and_its_result_in_the_history_reach_the_template(client, server):
    history = [
        *QUESTION,
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
        ]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21 degrees"},
    ]  # fmt: skip
    completion = client.chat.completions.create(model=MODEL, messages=history, tools=TOOLS, max_tokens=16)
    assert completion.choices[0].finish_reason in ("stop", "length", "tool_calls")
    body = {"model": MODEL, "messages": history, "tools": TOOLS, "add_generation_prompt": True}
    rendered = httpx.post(f"{server.base_url}/tokenize", json=body, timeout=30).json()
    text = httpx.post(f"{server.base_url}/detokenize", json={"model": MODEL, "tokens": rendered["tokens"]}).json()[
        "prompt"
    ]
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>' in text
    assert "<tool_response>\nsunny, 21 degrees\n</tool_response>" in text
    assert '"name": "add", "description": "Add two numbers."' in text
    assert rendered["count"] == completion.usage.prompt_tokens


def test_forced_calls_batched_with_free_requests_are_each_right(server):
    client = openai.AsyncOpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0)

    async def run():
        forced = [
            client.chat.completions.create(
                model=MODEL,
                messages=QUESTION,
                tools=TOOLS,
                tool_choice="required",
                temperature=1.0,
                seed=i,
                max_tokens=120,
            )
            for i in range(4)
        ]
        free = [client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=24, seed=i) for i in range(4)]
        return await asyncio.gather(*forced, *free)

    results = asyncio.run(run())
    for completion in results[:4]:
        assert_valid_calls(completion.choices[0].message)
    for completion in results[4:]:
        assert completion.choices[0].message.tool_calls is None and completion.choices[0].message.content
    assert server.wait_idle(MODEL).running == 0


def test_tool_choice_none_shows_the_tools_and_makes_no_call(client):
    completion = client.chat.completions.create(model=MODEL, messages=QUESTION, tools=TOOLS, tool_choice="none",
                                                max_tokens=24)  # fmt: skip
    assert completion.choices[0].message.tool_calls is None and completion.choices[0].finish_reason != "tool_calls"


@pytest.mark.parametrize(
    ("change", "param", "words"),
    [
        ({"tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice", "not among the tools"),
        ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "tools", "function name"),
        ({"tools": TOOLS * 65}, "tools", "at most 128 items"),
        ({"tools": [*TOOLS, TOOLS[0]]}, "tools", "unique"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}]}, "tools",
         "object schema"),
        ({"tools": [{"type": "function", "function": {"name": "deep", "parameters": json.loads(
            '{"type": "object", "properties": {"x": ' * 40 + "{}" + "}}" * 40)}}]}, "tools", "levels deep"),
        ({"tool_choice": "required", "tools": None}, "tool_choice", "needs tools"),
        ({"response_format": {"type": "json_object"}}, "response_format", "cannot be combined"),
        ({"functions": [{"name": "f"}]}, "functions", "legacy"),
        ({"messages": [{"role": "tool", "content": "21 degrees"}]}, "messages", "tool_call_id"),
    ],
)  # fmt: skip
def test_bad_tools_are_400s_naming_the_field(client, change, param, words):
    body = {"model": MODEL, "messages": QUESTION, "tools": TOOLS, **change}
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(**{k: v for k, v in body.items() if v is not None})
    assert words in caught.value.message and caught.value.param is not None
    assert caught.value.param.split(".")[0].split("[")[0] == param


@contextlib.contextmanager
def serving(gguf, tool_parser: str) -> Iterator[openai.OpenAI]:
    """A client of a server of its own for ``gguf`` with this ``tool_parser``."""
    settings = validate_settings({
        "server": {"grpc_port": 0},
        "models": [{"name": MODEL, "gguf": str(gguf), "max_seqs": 2, "tool_parser": tool_parser}],
    })  # fmt: skip
    with ServerThread(settings) as server:
        yield openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0)


def test_a_model_without_a_call_format_refuses_tools_and_still_chats(tiny_chat_path):
    with serving(tiny_chat_path, "none") as client:
        with pytest.raises(openai.BadRequestError) as caught:
            client.chat.completions.create(model=MODEL, messages=QUESTION, tools=TOOLS)
        assert caught.value.param == "tools" and "does not call tools" in caught.value.message
        plain = client.chat.completions.create(model=MODEL, messages=QUESTION, tools=TOOLS, tool_choice="none",
                                               max_tokens=8)  # fmt: skip
        assert plain.choices[0].message.content


def grpc_tools() -> list[pb.Tool]:
    return [pb.Tool(name=t["function"]["name"], description=t["function"]["description"],
                    parameters=json.dumps(t["function"]["parameters"])) for t in TOOLS]  # fmt: skip


def grpc_calls(responses) -> list[tuple[str, str, str]]:
    """The calls a Chat stream made, assembled from its ToolCallDelta pieces: (id, name, arguments)."""
    calls: dict[int, list[str]] = {}
    for response in responses:
        for piece in response.tool_calls:
            call = calls.setdefault(piece.index, ["", "", ""])
            call[0] += piece.id
            call[1] += piece.name
            call[2] += piece.arguments
    return [tuple(calls[i]) for i in sorted(calls)]


def test_grpc_chat_makes_the_same_forced_call_and_refuses_the_same_bad_tools(server, client):
    request = pb.ChatRequest(
        model=MODEL, messages=[pb.ChatMessage(role=pb.ROLE_USER, content=QUESTION[0]["content"])],
        sampling=pb.SamplingParams(temperature=0, max_tokens=120), tools=grpc_tools(),
        tool_choice=pb.ToolChoice(mode=pb.TOOL_CHOICE_MODE_REQUIRED), cache_salt=uuid.uuid4().hex,
    )  # fmt: skip
    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = pb_grpc.InferenceStub(channel)
        responses = list(stub.Chat(request))
        [(call_id, name, arguments)] = grpc_calls(responses)
        assert call_id.startswith("call_") and pb.FINISH_REASON_TOOL_CALLS in [r.finish_reason for r in responses]
        http = client.chat.completions.create(
            model=MODEL, messages=QUESTION, tools=TOOLS, tool_choice="required", temperature=0, max_tokens=120,
            **cold(),
        ).choices[0].message.tool_calls[0]  # fmt: skip
        assert (name, arguments) == (http.function.name, http.function.arguments)
        jsonschema.validate(json.loads(arguments), SCHEMAS[name])
        [listed] = stub.ListModels(pb.ListModelsRequest()).models
        card = client.models.retrieve(MODEL)
        assert listed.tools and card.tools and card.tool_format == "hermes"
        bad = pb.ChatRequest()
        bad.CopyFrom(request)
        bad.tool_choice.CopyFrom(pb.ToolChoice(mode=pb.TOOL_CHOICE_MODE_FUNCTION, function="nope"))
        with pytest.raises(grpc.RpcError) as caught:
            list(stub.Chat(bad))
        assert (
            caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "not among the tools" in caught.value.details()
        )
        assert ("lmgate-error-param", "tool_choice") in caught.value.trailing_metadata()


@pytest.mark.parametrize("backend", ["grpc", "openai"])
def test_a_gateway_passes_tools_to_its_upstream_and_its_calls_back(server, backend):
    upstream = (
        {"backend": "grpc", "target": server.grpc_target}
        if backend == "grpc"
        else {"backend": "openai", "base_url": f"{server.base_url}/v1", "send_cache_salt": True}
    )
    settings = validate_settings({
        "server": {"grpc_port": 0},
        "models": [{"name": "chain", "remote_model": MODEL, **upstream}],
    })  # fmt: skip
    history = [
        *QUESTION,
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}
        ]},
        {"role": "tool", "tool_call_id": "call_1", "content": "snow"},
        {"role": "user", "content": "And in Rome?"},
    ]  # fmt: skip
    params = {"messages": history, "tools": TOOLS, "tool_choice": "required", "temperature": 0, "max_tokens": 120}
    with ServerThread(settings) as gateway:
        via = openai.OpenAI(base_url=f"{gateway.base_url}/v1", api_key="unused", max_retries=0)
        direct = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0)
        hop = via.chat.completions.create(model="chain", **params, **cold())
        alone = direct.chat.completions.create(model=MODEL, **params, **cold())
        assert hop.choices[0].finish_reason == "tool_calls"
        assert [(c.function.name, c.function.arguments) for c in hop.choices[0].message.tool_calls] == [
            (c.function.name, c.function.arguments) for c in alone.choices[0].message.tool_calls
        ]
        assert hop.usage.prompt_tokens == alone.usage.prompt_tokens  # the history crossed the hop whole


class Address(BaseModel):
    city: Literal["Paris", "Rome"]


class Person(BaseModel):
    """What openai.pydantic_function_tool makes: a schema with $defs and $ref."""

    age: int = Field(ge=0, le=99)
    home: Address


def test_a_forced_call_of_a_pydantic_tool_with_refs_validates(client):
    tool = openai.pydantic_function_tool(Person, name="save_person")
    completion = client.chat.completions.create(
        model=MODEL, messages=QUESTION, tools=[tool], tool_choice="required", temperature=1.0, seed=2, max_tokens=160
    )
    [call] = completion.choices[0].message.tool_calls
    assert call.function.name == "save_person"
    Person.model_validate_json(call.function.arguments)


AGENT_TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Get the current weather in a city.",
     "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}},
]  # fmt: skip


@pytest.mark.parametrize("temperature", [1.0, 1.8])
def test_auto_calls_always_validate_and_free_text_stays_free(client, temperature):
    """tool_choice auto decodes under a lazy grammar: free text, but from a call's marker on the call
    parses and validates, at any temperature; the choices that make no call end as plain text."""
    completion = client.chat.completions.create(
        model=MODEL, messages=QUESTION, tools=TOOLS, temperature=temperature, seed=5, n=6, max_tokens=120,
    )  # fmt: skip
    made_calls = 0
    for choice in completion.choices:
        if choice.message.tool_calls:
            made_calls += 1
            assert_valid_calls(choice.message)
        assert "<tool_call>" not in (choice.message.content or "")
    assert made_calls > 0


def test_beam_search_with_tools_decodes_auto_without_the_grammar(client):
    """Beams decode without grammars (a forced call with beams is a 400), so auto stays parsed only."""
    completion = client.chat.completions.create(model=MODEL, messages=QUESTION, tools=TOOLS, n=2, max_tokens=16,
                                                extra_body={"use_beam_search": True})  # fmt: skip
    assert len(completion.choices) == 2


def test_an_agent_loop_on_the_embedded_model(client):
    """tool_choice auto on the shipped model: it calls the tool for a weather question, reads the result
    sent back (in the JSON its training's get_weather returns) and answers in its terms; a question
    needing no tool gets a plain answer."""
    messages = [{"role": "user", "content": "What is the weather in Paris?"}]
    first = client.chat.completions.create(model=MODEL, messages=messages, tools=AGENT_TOOLS, temperature=0,
                                           max_tokens=120)  # fmt: skip
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    [call] = choice.message.tool_calls
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}
    messages += [choice.message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": json.dumps(
                     {"city": "Paris", "temperature": 21, "unit": "celsius", "condition": "sunny"})}]  # fmt: skip
    final = client.chat.completions.create(model=MODEL, messages=messages, tools=AGENT_TOOLS, temperature=0,
                                           max_tokens=120)  # fmt: skip
    assert final.choices[0].finish_reason == "stop" and final.choices[0].message.tool_calls is None
    answer = final.choices[0].message.content
    assert answer.startswith("It is sunny and") and "Paris" in answer, answer  # its own words for the result
    plain = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "What does a cow say?"}],
                                           tools=AGENT_TOOLS, temperature=0, max_tokens=60)  # fmt: skip
    assert plain.choices[0].message.tool_calls is None and "moo" in plain.choices[0].message.content.lower()


@pytest.fixture(scope="module")
def control_marker_gguf(tiny_chat_path, tmp_path_factory):
    """tiny-chat with its last token turned into a ``[TOOL_CALLS]`` control token, as in Mistral's
    vocabularies (llama.cpp renders a control token as nothing), served with the mistral call format."""
    from gguf import GGUFReader, GGUFValueType, GGUFWriter, TokenType
    from gguf.scripts.gguf_new_metadata import MetadataDetails, copy_with_new_metadata

    reader = GGUFReader(tiny_chat_path)
    tokens = reader.fields["tokenizer.ggml.tokens"].contents()
    types = reader.fields["tokenizer.ggml.token_type"].contents()
    marker = len(tokens) - 1
    tokens[marker], types[marker] = "[TOOL_CALLS]", int(TokenType.CONTROL)
    path = tmp_path_factory.mktemp("marker") / "tiny-chat-marker.gguf"
    writer = GGUFWriter(path, reader.fields["general.architecture"].contents())
    changes = {
        "tokenizer.ggml.tokens": MetadataDetails(GGUFValueType.ARRAY, tokens, sub_type=GGUFValueType.STRING),
        "tokenizer.ggml.token_type": MetadataDetails(GGUFValueType.ARRAY, types, sub_type=GGUFValueType.INT32),
    }
    copy_with_new_metadata(reader, writer, changes, [])
    return path, marker


def test_a_call_marker_the_vocabulary_holds_as_a_control_token_reaches_the_parser(control_marker_gguf):
    """The forced call's grammar names ``[TOOL_CALLS]`` by token id, and the engine shows that control
    token's text to a request with tools, so the call is parsed; a request without tools still sees
    control tokens as nothing."""
    path, marker = control_marker_gguf
    with serving(path, "mistral") as client:
        forced = client.chat.completions.create(model=MODEL, messages=QUESTION, tools=TOOLS, tool_choice="required",
                                                parallel_tool_calls=False, max_tokens=60, logprobs=True)  # fmt: skip
        choice = forced.choices[0]
        assert choice.finish_reason == "tool_calls" and not choice.message.content
        assert_valid_calls(choice.message)
        # The marker came as its one token (the grammar allowed no spelling of it in text).
        assert choice.logprobs.content[0].token == "[TOOL_CALLS]"

        free = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=1,
                                              logit_bias={str(marker): 100})  # fmt: skip
        assert free.usage.completion_tokens == 1 and free.choices[0].message.content == ""
