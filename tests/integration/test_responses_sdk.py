"""The Responses API with the official openai SDK (responses.create / responses.stream) against a real
server running the embedded model: it answers as chat does, streams OpenAI's typed events, and
continues a stored conversation with previous_response_id."""

import json
import uuid

import httpx
import openai
import pytest

from conftest import MODEL

GREEDY = {"temperature": 0, "max_output_tokens": 48}


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0)


def chat(client, messages, max_tokens=48, **extra):
    completion = client.chat.completions.create(
        model=MODEL, messages=messages, temperature=0, max_tokens=max_tokens, **extra
    )
    return completion.choices[0].message.content, completion.usage


def cold(name: str) -> dict:
    """A cache salt of its own: the prompt is prefilled whole, not resumed from another request's cached
    blocks (a resumed prefill computes the last logits in a smaller batch, which can flip a near-tie)."""
    return {"extra_body": {"cache_salt": f"{name}-{uuid.uuid4().hex}"}}


def test_a_response_is_the_chat_answer_to_the_same_conversation(client):
    response = client.responses.create(model=MODEL, input="What is the capital of France?", **GREEDY, **cold("r"))
    text, usage = chat(client, [{"role": "user", "content": "What is the capital of France?"}], **cold("c"))
    assert response.status == "completed" and response.output_text == text and "Paris" in text
    assert response.id.startswith("resp_") and response.output[0].role == "assistant"
    assert response.usage.input_tokens == usage.prompt_tokens
    assert response.usage.output_tokens == usage.completion_tokens
    assert response.usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_instructions_and_message_items_become_the_chat_messages(client):
    items = [{"role": "user", "content": [{"type": "input_text", "text": "Tell me a story about Tom."}]}]
    response = client.responses.create(
        model=MODEL, instructions="You are a storyteller.", input=items, **GREEDY, **cold("responses")
    )
    text, _ = chat(
        client, [{"role": "system", "content": "You are a storyteller."}, *items_as_chat(items)], **cold("chat")
    )
    assert response.output_text == text and response.instructions == "You are a storyteller."


def items_as_chat(items):
    return [{"role": i["role"], "content": "".join(p["text"] for p in i["content"])} for i in items]


def test_streamed_events_come_in_openais_order_and_add_up_to_the_answer(client):
    with client.responses.stream(model=MODEL, input="What does a cow say?", **GREEDY, **cold("s")) as stream:
        events = list(stream)
        final = stream.get_final_response()
    kinds = [e.type for e in events]
    assert kinds[:4] == [
        "response.created", "response.in_progress", "response.output_item.added", "response.content_part.added"
    ]  # fmt: skip
    assert kinds[-4:] == [
        "response.output_text.done", "response.content_part.done", "response.output_item.done", "response.completed"
    ]  # fmt: skip
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    created = client.responses.create(model=MODEL, input="What does a cow say?", **GREEDY, **cold("c"))
    assert deltas == final.output_text == created.output_text != ""
    assert final.usage.output_tokens == created.usage.output_tokens


def test_previous_response_id_continues_the_stored_conversation(client):
    first = client.responses.create(model=MODEL, input="What is the capital of France?", **GREEDY)
    second = client.responses.create(
        model=MODEL, input="What does a cow say?", previous_response_id=first.id, **GREEDY, **cold("r")
    )
    text, usage = chat(client, [
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": first.output_text},
        {"role": "user", "content": "What does a cow say?"},
    ], **cold("c"))  # fmt: skip
    assert second.output_text == text and second.previous_response_id == first.id
    assert second.usage.input_tokens == usage.prompt_tokens
    assert client.responses.retrieve(second.id).output_text == second.output_text


def test_a_streamed_response_is_stored_too(client):
    with client.responses.stream(model=MODEL, input="What is the capital of France?", **GREEDY) as stream:
        first = stream.get_final_response()
    second = client.responses.create(model=MODEL, input="And the opposite of hot?", previous_response_id=first.id,
                                     **GREEDY)  # fmt: skip
    assert second.status == "completed" and second.usage.input_tokens > first.usage.total_tokens


def test_store_false_keeps_nothing(client):
    unstored = client.responses.create(model=MODEL, input="What is the capital of France?", store=False, **GREEDY)
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model=MODEL, input="And Italy?", previous_response_id=unstored.id, **GREEDY)
    assert caught.value.code == "previous_response_not_found" and caught.value.param == "previous_response_id"
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(unstored.id)


def test_max_output_tokens_makes_an_incomplete_response(client):
    response = client.responses.create(model=MODEL, input="Tell me a story.", temperature=0, max_output_tokens=5)
    assert response.status == "incomplete" and response.incomplete_details.reason == "max_output_tokens"
    assert response.usage.output_tokens == 5 and response.output_text


def test_a_deleted_response_cannot_be_continued(client):
    response = client.responses.create(model=MODEL, input="What is the capital of France?", **GREEDY)
    client.responses.delete(response.id)
    with pytest.raises(openai.BadRequestError):
        client.responses.create(model=MODEL, input="And Italy?", previous_response_id=response.id, **GREEDY)


def test_refusals_name_the_field(client):
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model=MODEL, input="hi", tools=[{"type": "web_search"}])
    assert caught.value.param.startswith("tools") and "only function tools" in caught.value.message
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="nope", input="hi")


def test_a_stream_closed_early_frees_the_engine(server):
    body = {"model": MODEL, "input": "Tell me a story.", "stream": True, "max_output_tokens": 400}
    with httpx.stream("POST", f"{server.base_url}/v1/responses", json=body, timeout=60) as response:
        for line in response.iter_lines():
            if "response.output_text.delta" in line:
                break
    stats = server.wait_idle(MODEL)
    assert stats.running == 0 and stats.waiting == 0


def test_logprobs_come_with_the_text_when_included(client):
    response = client.responses.create(
        model=MODEL, input="What does a cow say?", include=["message.output_text.logprobs"], top_logprobs=2,
        **GREEDY, **cold("l"),
    )  # fmt: skip
    logprobs = response.output[0].content[0].logprobs
    assert len(logprobs) == response.usage.output_tokens
    assert all(len(lp.top_logprobs) == 2 and lp.logprob <= 0 for lp in logprobs)
    tokens = "".join(lp.token for lp in logprobs).replace("▁", " ").strip()
    assert tokens.startswith(response.output_text.strip())  # then the end-of-turn token, as in chat
    plain = client.responses.create(model=MODEL, input="What does a cow say?", **GREEDY, **cold("p"))
    assert plain.output[0].content[0].logprobs is None and plain.output_text == response.output_text


def test_the_cache_salt_partitions_the_prompt_cache(client):
    """The vLLM ``cache_salt`` extension holds on the Responses API as on chat: a repeat hits the prompt
    cache only under the same salt."""
    prompt = "Tell me a long story about a red fox who lives in a big forest near the river."
    salt = cold("salted")
    first = client.responses.create(model=MODEL, input=prompt, **GREEDY, **salt)
    again = client.responses.create(model=MODEL, input=prompt, **GREEDY, **salt)
    other = client.responses.create(model=MODEL, input=prompt, **GREEDY, **cold("other"))
    assert first.usage.input_tokens_details.cached_tokens == 0
    assert again.usage.input_tokens_details.cached_tokens > 0
    assert other.usage.input_tokens_details.cached_tokens == 0


WEATHER = {"type": "object", "properties": {"city": {"enum": ["Paris", "Rome"]}}, "required": ["city"]}
TOOLS = [{"type": "function", "name": "get_weather", "description": "Weather of a city.", "parameters": WEATHER}]
CALLS = {"temperature": 0, "max_output_tokens": 120}


def test_a_required_call_is_a_function_call_item(client):
    response = client.responses.create(model=MODEL, input="What is the weather in Paris?", tools=TOOLS,
                                       tool_choice="required", **CALLS)  # fmt: skip
    [call] = [item for item in response.output if item.type == "function_call"]
    assert call.name == "get_weather" and call.call_id.startswith("call_") and call.status == "completed"
    assert json.loads(call.arguments)["city"] in ("Paris", "Rome") and response.status == "completed"
    assert response.tool_choice == "required" and response.tools[0].name == "get_weather"


def test_a_streamed_call_comes_as_typed_events_and_the_same_item(client):
    params = {"model": MODEL, "input": "What is the weather in Rome?", "tools": TOOLS, "tool_choice": "required",
              **CALLS}  # fmt: skip
    with client.responses.stream(**params, **cold("s")) as stream:
        events = list(stream)
        final = stream.get_final_response()
    created = client.responses.create(**params, **cold("c"))
    kinds = [e.type for e in events]
    assert "response.function_call_arguments.delta" in kinds and kinds[-1] == "response.completed"
    assert kinds.index("response.output_item.added") < kinds.index("response.function_call_arguments.delta")
    pieces = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    [streamed] = [i for i in final.output if i.type == "function_call"]
    [whole] = [i for i in created.output if i.type == "function_call"]
    assert pieces == streamed.arguments == whole.arguments and streamed.name == whole.name


def test_a_call_output_continues_the_stored_conversation(client):
    first = client.responses.create(model=MODEL, input="What is the weather in Paris?", tools=TOOLS,
                                    tool_choice="required", **CALLS)  # fmt: skip
    [call] = [item for item in first.output if item.type == "function_call"]
    result = {"type": "function_call_output", "call_id": call.call_id, "output": "sunny, 21 degrees"}
    second = client.responses.create(model=MODEL, input=[result], previous_response_id=first.id, tools=TOOLS,
                                     tool_choice="none", **GREEDY)  # fmt: skip
    # The same turn sent whole, as items: the call replayed, then its output.
    replayed = client.responses.create(
        model=MODEL, tools=TOOLS, tool_choice="none", **GREEDY,
        input=[{"role": "user", "content": "What is the weather in Paris?"},
               {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
               result],
    )  # fmt: skip
    assert second.status == "completed" and second.output[0].type == "message"
    assert second.usage.input_tokens == replayed.usage.input_tokens > first.usage.input_tokens
