"""The HTTP edge on the fake backend: schema validation, error shapes, response and SSE shapes."""

import json

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmgate.server.app import create_app
from lmgate.server.settings import validate_settings

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"


@pytest.fixture(scope="module")
def client():
    config = validate_settings(
        {"server": {"grpc_port": 0}, "models": [{"name": "echo", "aliases": ["default"], "backend": "fake"}]}
    )
    with TestClient(create_app(config)) as client:
        yield client


def chat_body(**overrides):
    return {"model": "echo", "messages": [{"role": "user", "content": "one two three"}]} | overrides


def assert_openai_error(response, status: int, param: str | None):
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    assert error["param"] == param
    return error


def sse_events(response) -> list[str]:
    return [line.removeprefix("data: ") for line in response.text.split("\n\n") if line]


def test_health_and_ready(client):
    assert client.get("/health").json() == {"status": "ok"}
    ready = client.get("/ready")
    assert ready.status_code == 200 and ready.json()["models"] == {"echo": "ready"}


def test_chat_completion_shape_and_usage(client):
    body = client.post(CHAT, json=chat_body()).json()
    assert body["object"] == "chat.completion" and body["model"] == "echo"
    assert body["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "one two three"},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ]
    assert body["usage"]["prompt_tokens"] == 3 and body["usage"]["completion_tokens"] == 3
    assert body["usage"]["total_tokens"] == 6


def test_alias_resolves_to_the_model_and_request_id_is_echoed(client):
    response = client.post(CHAT, json=chat_body(model="default"), headers={"X-Request-Id": "abc-123"})
    assert response.headers["x-request-id"] == "abc-123"
    assert response.json()["id"] == "chatcmpl-abc-123"
    assert response.json()["model"] == "echo"


def test_streamed_chat_is_sse_with_role_first_usage_last_and_done(client):
    response = client.post(CHAT, json=chat_body(stream=True, stream_options={"include_usage": True}))
    assert response.headers["content-type"].startswith("text/event-stream")
    events = sse_events(response)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == "one two three"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 3
    assert [c["choices"][0].get("finish_reason") for c in chunks[:-1]][-1] == "stop"


def test_n_gives_indexed_choices(client):
    body = client.post(CHAT, json=chat_body(n=2)).json()
    assert [c["index"] for c in body["choices"]] == [0, 1]
    assert body["usage"]["completion_tokens"] == 6 and body["usage"]["prompt_tokens"] == 3


def test_completion_batch_numbers_choices_per_prompt_and_echoes(client):
    body = client.post(COMPLETIONS, json={"model": "echo", "prompt": ["a b", "c"], "n": 2, "echo": True}).json()
    assert [(c["index"], c["text"]) for c in body["choices"]] == [(0, "a ba b"), (1, "a ba b"), (2, "cc"), (3, "cc")]
    assert body["usage"]["prompt_tokens"] == 3


def test_completion_max_tokens_and_stop(client):
    body = client.post(COMPLETIONS, json={"model": "echo", "prompt": "a b c d", "max_tokens": 2}).json()
    assert body["choices"][0]["text"] == "a b" and body["choices"][0]["finish_reason"] == "length"
    body = client.post(COMPLETIONS, json={"model": "echo", "prompt": "a b c d", "stop": ["c"]}).json()
    assert body["choices"][0]["text"] == "a b" and body["choices"][0]["finish_reason"] == "stop"


def test_models_list_shows_backend_and_context(client):
    [card] = client.get("/v1/models").json()["data"]
    assert card["id"] == "echo" and card["backend"] == "fake" and card["context_length"] == 2048
    assert card["aliases"] == ["default"]
    assert client.get("/v1/models/default").json()["id"] == "echo"


def test_malformed_json_is_a_400(client):
    response = client.post(CHAT, content=b'{"model": "echo", bad', headers={"content-type": "application/json"})
    assert "JSON" in assert_openai_error(response, 400, None)["message"]


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_numbers_are_400s(client, value):
    raw = f'{{"model": "echo", "messages": [{{"role": "user", "content": "x"}}], "temperature": {value}}}'
    response = client.post(CHAT, content=raw.encode(), headers={"content-type": "application/json"})
    assert_openai_error(response, 400, "temperature")


def test_unknown_model_is_a_404_naming_the_served_models(client):
    error = assert_openai_error(client.post(CHAT, json=chat_body(model="gpt-9")), 404, "model")
    assert error["code"] == "model_not_found" and "echo" in error["message"]


def test_unknown_route_is_an_openai_shaped_404(client):
    response = client.get("/v1/nothing")
    assert response.status_code == 404 and "error" in response.json()


@pytest.mark.parametrize(
    ("overrides", "param"),
    [
        ({"temperature": "hot"}, "temperature"),
        ({"temperature": -0.1}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"n": 0}, "n"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_completion_tokens": -3}, "max_completion_tokens"),
        ({"presence_penalty": 2.5}, "presence_penalty"),
        ({"frequency_penalty": -2.5}, "frequency_penalty"),
        ({"min_p": 1.5}, "min_p"),
        ({"top_k": -2}, "top_k"),
        ({"repetition_penalty": 0}, "repetition_penalty"),
        ({"logit_bias": {"abc": 1}}, "logit_bias"),
        ({"logit_bias": {"5": 101}}, "logit_bias.5"),
        ({"stop": ["a"] * 17}, "stop"),
        ({"stop": 5}, "stop"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages.0.role"),
        ({"messages": [{"content": "hi"}]}, "messages.0.role"),
        ({"stream_options": {"include_usage": True}}, None),
        ({"top_logprobs": 3}, None),
        ({"tools": [{"type": "function"}]}, "tools.0.function"),
        ({"response_format": {"type": "json_schema"}}, "response_format"),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": 5}}}},
            "response_format",
        ),
        ({"structured_outputs": {"regex": "("}}, "structured_outputs"),
        ({"speculative": "yes"}, "speculative"),
        ({"model": ""}, "model"),
    ],
)
def test_invalid_chat_values_are_400s_naming_the_field(client, overrides, param):
    assert_openai_error(client.post(CHAT, json=chat_body(**overrides)), 400, param)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "echo"}, "prompt"),
        ({"model": "echo", "prompt": []}, "prompt"),
        ({"model": "echo", "prompt": "x", "logprobs": 21}, "logprobs"),
        ({"model": "echo", "prompt": "x", "suffix": "y"}, None),
        ({"model": "echo", "prompt": "x", "best_of": 3}, None),
        ({"model": "echo", "prompt": "x", "best_of": 1, "n": 2, "use_beam_search": True}, None),
        ({"model": "echo", "prompt": ["hi"] * 129}, None),  # at most 128 choices a request
        ({"model": "echo", "prompt": ["hi"] * 65, "n": 2}, None),
        ({"model": "echo", "prompt": "x", "stream": "yes"}, "stream"),
    ],
)
def test_invalid_completion_values_are_400s(client, body, param):
    assert_openai_error(client.post(COMPLETIONS, json=body), 400, param)


def test_prompt_over_the_context_is_a_400_with_the_openai_code(client):
    error = assert_openai_error(
        client.post(COMPLETIONS, json={"model": "echo", "prompt": "x", "max_tokens": 5000}), 400, "max_tokens"
    )
    assert error["code"] == "context_length_exceeded"


@settings(max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(temperature=st.floats(allow_nan=False, allow_infinity=False, min_value=-10, max_value=10))
def test_temperature_is_accepted_exactly_in_0_to_2(client, temperature):
    response = client.post(CHAT, json=chat_body(temperature=temperature, max_tokens=1))
    assert response.status_code == (200 if 0 <= temperature <= 2 else 400)


@settings(max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(top_p=st.floats(allow_nan=False, allow_infinity=False, min_value=-1, max_value=2))
def test_top_p_is_accepted_exactly_in_0_exclusive_to_1(client, top_p):
    response = client.post(CHAT, json=chat_body(top_p=top_p, max_tokens=1))
    assert response.status_code == (200 if 0 < top_p <= 1 else 400)


@settings(max_examples=30, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(
    body=st.dictionaries(
        st.sampled_from(["temperature", "n", "max_tokens", "stop", "seed", "top_k"]),
        st.one_of(st.none(), st.integers(-5, 5), st.text(max_size=3), st.floats(allow_nan=False, allow_infinity=False)),
    )
)
def test_no_client_mistake_is_a_500(client, body):
    response = client.post(CHAT, json=chat_body(**body))
    assert response.status_code in (200, 400)


@pytest.mark.parametrize(
    ("path", "body"),
    [
        (CHAT, chat_body(logit_bias={"--5": 1})),
        (CHAT, chat_body(logit_bias={"²": 1})),
        (CHAT, chat_body(logit_bias={"4294967296": 1})),
        (CHAT, chat_body(messages=[{"role": "user", "content": "hi \ud800"}])),
        (CHAT, chat_body(messages=[{"role": "user", "content": [{"type": "text", "text": "\udfff"}]}])),
        (CHAT, chat_body(stop=["\ud800"])),
        (CHAT, chat_body(top_k=2**31)),
        (CHAT, chat_body(seed=2**64 - 1)),
        (CHAT, chat_body(max_tokens=10**12)),
        (CHAT, chat_body(stop_token_ids=[10**20])),
        (COMPLETIONS, {"model": "echo", "prompt": "\ud800"}),
        (COMPLETIONS, {"model": "echo", "prompt": [-1]}),
        (COMPLETIONS, {"model": "echo", "prompt": [10**20]}),
        (COMPLETIONS, {"model": "echo", "prompt": [[1, 2], [2**40]]}),
    ],
)
def test_values_no_tokenizer_or_protobuf_can_hold_are_400s_not_500s(client, path, body):
    # json.dumps escapes a lone surrogate as JSON allows ("\\ud800"); it cannot be sent as UTF-8.
    response = client.post(path, content=json.dumps(body), headers={"content-type": "application/json"})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"], error


@pytest.mark.parametrize("path", [CHAT, COMPLETIONS])
def test_a_field_nobody_defines_is_refused_as_openai_refuses_it(client, path):
    body = chat_body(temprature=0.5) if path == CHAT else {"model": "echo", "prompt": "x", "temprature": 0.5}
    response = client.post(path, json=body)
    assert_openai_error(response, 400, None)
    assert "Unrecognized request argument supplied: temprature" in response.json()["error"]["message"]


def test_fields_openai_defines_without_effect_here_are_accepted_and_logged(client, caplog):
    extra = {"store": True, "metadata": {"team": "a"}, "service_tier": "auto", "user": "u-1"}
    with caplog.at_level("INFO", logger="lmgate.access"):
        response = client.post(CHAT, json=chat_body(**extra))
    assert response.status_code == 200, response.text
    [line] = [json.loads(r.message) for r in caplog.records if r.name == "lmgate.access"]
    assert line["ignored_fields"] == ["metadata", "service_tier", "store"]


@pytest.mark.parametrize(
    ("extra", "param"),
    [({"tool_choice": "required"}, "tool_choice"), ({"functions": [{"name": "f"}]}, "functions"),
     ({"function_call": {"name": "f"}}, "function_call")],
)  # fmt: skip
def test_forcing_a_function_call_is_refused_until_lmgate_calls_tools(client, extra, param):
    assert_openai_error(client.post(CHAT, json=chat_body(**extra)), 400, param)
