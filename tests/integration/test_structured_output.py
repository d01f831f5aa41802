"""Structured outputs on the real CPU engine, through the official SDK: every answer parses and
validates against its schema (checked by jsonschema, not by us), at any temperature, alone or
batched with free requests; hostile constraints are 400s naming the field, and the engine lives on."""

import asyncio
import json
import re

import httpx
import jsonschema
import openai
import pytest
from pydantic import BaseModel, Field

from conftest import MODEL


class Weather(BaseModel):
    city: str = Field(max_length=12)
    temperature: int = Field(ge=-50, le=50)
    sky: str = Field(json_schema_extra={"enum": ["sunny", "cloudy", "rainy"]})


WEATHER_SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 12},
        "temperature": {"type": "integer", "minimum": -50, "maximum": 50},
        "sky": {"enum": ["sunny", "cloudy", "rainy"]},
    },
    "required": ["city", "temperature", "sky"],
    "additionalProperties": False,
}
QUESTION = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def async_client(server):
    return openai.AsyncOpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0)


def schema_format(schema: dict) -> dict:
    return {"type": "json_schema", "json_schema": {"name": "weather", "schema": schema, "strict": True}}


@pytest.mark.parametrize("temperature", [0.0, 1.0, 1.8])
def test_parse_with_a_pydantic_model_returns_a_parsed_object(client, temperature):
    completion = client.chat.completions.parse(
        model=MODEL, messages=QUESTION, response_format=Weather, temperature=temperature, seed=7, max_tokens=120
    )
    message = completion.choices[0].message
    assert completion.choices[0].finish_reason == "stop"
    assert isinstance(message.parsed, Weather)
    jsonschema.validate(json.loads(message.content), Weather.model_json_schema())


def test_responses_parse_with_a_pydantic_model_returns_a_parsed_object(client):
    response = client.responses.parse(
        model=MODEL, input="What is the weather in Paris?", text_format=Weather, temperature=1.0, max_output_tokens=120
    )
    assert response.status == "completed"
    assert isinstance(response.output_parsed, Weather)
    assert response.text.format.type == "json_schema"


def test_n_choices_each_follow_the_schema(client):
    completion = client.chat.completions.create(
        model=MODEL, messages=QUESTION, response_format=schema_format(WEATHER_SCHEMA), n=3, temperature=1.2,
        seed=11, max_tokens=120,
    )  # fmt: skip
    assert len(completion.choices) == 3
    for choice in completion.choices:
        jsonschema.validate(json.loads(choice.message.content), WEATHER_SCHEMA)


def test_json_object_is_a_json_object(client):
    completion = client.chat.completions.create(
        model=MODEL, messages=QUESTION, response_format={"type": "json_object"}, temperature=0.9, seed=5,
        max_tokens=200,
    )  # fmt: skip
    if completion.choices[0].finish_reason == "stop":  # an object may be long; one that ended is whole
        assert isinstance(json.loads(completion.choices[0].message.content), dict)
    else:
        assert completion.choices[0].message.content.startswith("{")


def test_streamed_structured_output_assembles_to_valid_json(client):
    stream = client.chat.completions.create(
        model=MODEL, messages=QUESTION, response_format=schema_format(WEATHER_SCHEMA), stream=True, max_tokens=120
    )
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    jsonschema.validate(json.loads(text), WEATHER_SCHEMA)


@pytest.mark.parametrize(
    ("structured", "check"),
    [
        ({"choice": ["yes", "no", "maybe"]}, lambda text: text in {"yes", "no", "maybe"}),
        ({"regex": "[0-9]{3}-[a-z]{2,4}"}, lambda text: re.fullmatch("[0-9]{3}-[a-z]{2,4}", text)),
        ({"grammar": 'start: "the answer is " ("red" | "blue")'}, lambda text: text in {"the answer is red",
                                                                                        "the answer is blue"}),
        ({"json": WEATHER_SCHEMA}, lambda text: jsonschema.validate(json.loads(text), WEATHER_SCHEMA) is None),
    ],
    ids=["choice", "regex", "grammar", "json"],
)  # fmt: skip
def test_vllm_structured_outputs_constrain_chat_and_completions(client, structured, check):
    chat = client.chat.completions.create(
        model=MODEL, messages=QUESTION, temperature=1.0, max_tokens=80, extra_body={"structured_outputs": structured}
    )
    assert check(chat.choices[0].message.content)
    completion = client.completions.create(
        model=MODEL, prompt="Answer:", temperature=1.0, max_tokens=80, extra_body={"structured_outputs": structured}
    )
    assert check(completion.choices[0].text)


async def test_constrained_and_free_requests_share_a_batch_and_each_stays_right(async_client):
    """A free greedy request batched with constrained ones gives the text it gives alone."""
    alone = await async_client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=0, max_tokens=40)
    constrained = [
        async_client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=1.0, seed=i, max_tokens=120,
                                             response_format=schema_format(WEATHER_SCHEMA))
        for i in range(3)
    ]  # fmt: skip
    free = async_client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=0, max_tokens=40)
    *answers, together = await asyncio.gather(*constrained, free)
    for answer in answers:
        jsonschema.validate(json.loads(answer.choices[0].message.content), WEATHER_SCHEMA)
    assert together.choices[0].message.content == alone.choices[0].message.content


def nested(depth: int) -> dict:
    schema: dict = {"type": "string"}
    for _ in range(depth):
        schema = {"type": "object", "properties": {"a": schema}, "required": ["a"]}
    return schema


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"response_format": schema_format(nested(40))}, "response_format"),
        ({"response_format": schema_format({"type": "object", "properties": {"x": {"type": "strin"}}})},
         "response_format"),
        ({"response_format": schema_format({"enum": ["x" * 1000] * 100})}, "response_format"),  # 100 KB
        ({"structured_outputs": {"regex": "(unclosed"}}, "structured_outputs"),
        ({"structured_outputs": {"grammar": "start: missing_rule"}}, "structured_outputs"),
        ({"structured_outputs": {"choice": []}}, "structured_outputs"),
        ({"structured_outputs": {"regex": "a", "choice": ["a"]}}, "structured_outputs"),
        ({"response_format": {"type": "json_schema"}}, "response_format"),
        ({"response_format": {"type": "json_object"}, "structured_outputs": {"regex": "a"}}, None),
        ({"response_format": {"type": "json_object"}, "use_beam_search": True, "n": 2}, "use_beam_search"),
        ({"response_format": {"type": "json_object"}, "ignore_eos": True}, "ignore_eos"),
    ],
)  # fmt: skip
def test_hostile_or_impossible_constraints_are_400s_naming_the_field(client, extra, param):
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=8, extra_body=extra)
    assert err.value.status_code == 400
    if param is not None:
        assert err.value.body["param"] == param
    ok = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=4)  # the engine lives on
    assert ok.choices[0].finish_reason in {"stop", "length"}


def test_a_schema_nested_deeper_than_python_s_stack_is_a_400(server):
    depth = 5000
    schema = '{"type": "object", "properties": {"a": ' * depth + '{"type": "string"}' + "}}" * depth
    body = (
        f'{{"model": "{MODEL}", "max_tokens": 4, "messages": [{{"role": "user", "content": "hi"}}], '
        f'"response_format": {{"type": "json_schema", "json_schema": {{"name": "deep", "schema": {schema}}}}}}}'
    )
    response = httpx.post(f"{server.base_url}/v1/chat/completions", content=body,
                          headers={"Content-Type": "application/json"}, timeout=60)  # fmt: skip
    assert response.status_code == 400, response.text
    assert response.json()["error"]["type"] == "invalid_request_error"
