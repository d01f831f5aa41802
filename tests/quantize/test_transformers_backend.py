"""The transformers backend behind lmgate's HTTP API: FP32, GPTQ, AWQ and compressed-tensors checkpoints
of the shipped model, on CPU, through the official openai SDK."""

import asyncio
import json
import re
import threading

import httpx
import jsonschema
import openai
import pytest

from lmgate.server.settings import validate_settings

from server_helpers import ServerThread, ask

QUESTIONS = ["What is the capital of France?", "What does a cow say?", "Tell me a story about Ben.",
             "Count from one to five.", "What is two plus three?", "What colour is the sky?",
             "Hello!", "Who are you?"]  # fmt: skip
MODELS = ["tiny-hf", "tiny-hf-bf16", "tiny-gptq", "tiny-awq", "tiny-compressed"]


@pytest.fixture(scope="module")
def server(hf_model, gptq_model, awq_model, compressed_model, qwen2_model, tiny_chat_path):
    # name: (checkpoint, dtype). GPTQModel writes bf16 checkpoints; tiny-gptq runs in float32 so the
    # batching test below can ask for exact equality (bf16 has exact ties that padding may flip).
    models = {
        "tiny-hf": (hf_model, "auto"),
        "tiny-hf-bf16": (hf_model, "bfloat16"),
        "tiny-gptq": (gptq_model, "float32"),
        "tiny-awq": (awq_model, "auto"),
        "tiny-compressed": (compressed_model, "auto"),
        "qwen2-random": (qwen2_model, "auto"),
    }
    settings = validate_settings({
        "server": {"grpc_port": None},
        "models": [{"name": name, "backend": "transformers", "model": str(path), "dtype": dtype, "max_seqs": 8,
                    "max_model_len": 512, "params": "strict"} for name, (path, dtype) in models.items()]
                  + [{"name": "tiny-gguf", "gguf": str(tiny_chat_path)}],  # the same weights on llama.cpp
    })  # fmt: skip
    with ServerThread(settings) as server:
        yield server


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0)


@pytest.mark.parametrize("model", MODELS)
def test_every_format_loads_and_answers(client, model):
    listed = {m.id for m in client.models.list().data}
    assert model in listed
    assert "Paris" in ask(client, model, QUESTIONS[0])


@pytest.mark.parametrize("model", ["tiny-hf", "tiny-gptq", "qwen2-random"])
def test_concurrent_requests_are_batched_and_answer_as_one_at_a_time(server, client, model):
    """Rows of different lengths share one left-padded cache; each answers as it would alone (in
    float32: the trained model, its GPTQ form, and a random Qwen2 with biases and a byte-level BPE)."""
    alone = [ask(client, model, q) for q in QUESTIONS]
    before = server.stats(model)
    together: list[str | None] = [None] * len(QUESTIONS)

    def run(i: int) -> None:
        together[i] = ask(client, model, QUESTIONS[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(QUESTIONS))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert together == alone
    after = server.stats(model)
    # One at a time, a step makes one token (two in a request's first step); batched, it makes one per row.
    assert after.steps - before.steps < (after.generated_tokens - before.generated_tokens) / 2


def test_sampling_parameters_are_honoured(client):
    model = "tiny-gptq"
    seeded = [ask(client, model, "Tell me a story.", temperature=1.0, seed=5) for _ in range(2)]
    assert seeded[0] == seeded[1]
    reply = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Tell me a story."}], n=3, temperature=1.5, seed=7,
        max_tokens=24, logprobs=True, top_logprobs=2,
    )  # fmt: skip
    assert [c.index for c in reply.choices] == [0, 1, 2]
    assert len({c.message.content for c in reply.choices}) > 1
    for choice in reply.choices:
        tokens = choice.logprobs.content
        assert tokens and all(t.logprob <= 0 and len(t.top_logprobs) == 2 for t in tokens)
        assert all(t.top_logprobs[0].logprob >= t.top_logprobs[1].logprob for t in tokens)
    full = ask(client, model, "Tell me a story about Ben.")
    stop = full.split()[4]
    assert ask(client, model, "Tell me a story about Ben.", stop=[stop]) == full[: full.index(stop)]
    # Truncation that leaves one candidate is greedy, however hot the temperature (on the float32
    # model: the 4-bit ones run in bf16, where exact ties between two tokens do happen).
    greedy = ask(client, "tiny-hf", "Tell me a story about Ben.")
    for cut in ({"top_k": 1}, {"min_p": 1.0}, {"top_p": 1e-6}):
        extra = {k: v for k, v in cut.items() if k != "top_p"}
        top_p = cut.get("top_p", 1.0)
        hot = ask(client, "tiny-hf", "Tell me a story about Ben.", temperature=1.5, top_p=top_p, extra_body=extra)
        assert hot == greedy, cut
    capped = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Tell me a story."}],
                                            temperature=0, max_tokens=5)  # fmt: skip
    assert capped.choices[0].finish_reason == "length" and capped.usage.completion_tokens == 5
    # A huge bias on one token makes it the only answer, even when sampling.
    forced = client.completions.create(model=model, prompt="Once upon a time", max_tokens=3, temperature=1.0,
                                       logit_bias={"300": 100}, logprobs=1)  # fmt: skip
    tokens = forced.choices[0].logprobs.tokens
    assert len(tokens) == 3 and len(set(tokens)) == 1
    # Penalties see the output: a story that repeats its hero's name tells it less under a strong penalty.
    penalized = ask(client, model, "Tell me a story about Ben.", frequency_penalty=2.0, presence_penalty=2.0,
                    extra_body={"repetition_penalty": 3.0})  # fmt: skip
    assert penalized.count("Ben") < full.count("Ben")


def test_beam_search_finds_what_llama_cpp_finds_on_the_same_weights(client):
    beams = {"use_beam_search": True, "best_of": 4}
    for question in QUESTIONS[:4]:
        ours = client.chat.completions.create(model="tiny-hf", messages=[{"role": "user", "content": question}],
                                              n=2, max_tokens=24, temperature=0, extra_body=beams)  # fmt: skip
        reference = client.chat.completions.create(model="tiny-gguf", messages=[{"role": "user", "content": question}],
                                                   n=2, max_tokens=24, temperature=0, extra_body=beams)  # fmt: skip
        assert [c.index for c in ours.choices] == [0, 1]
        assert ours.choices[0].message.content == reference.choices[0].message.content, question
        assert ours.choices[0].message.content != ours.choices[1].message.content
        assert ours.usage.completion_tokens > 0


def test_client_mistakes_are_400s_and_leave_nothing_running(server, client):
    with pytest.raises(openai.BadRequestError) as err:
        ask(client, "tiny-hf", "Hi", n=9)
    assert err.value.param == "n"
    with pytest.raises(openai.BadRequestError) as err:
        ask(client, "tiny-hf", "Hi", max_tokens=600)
    assert err.value.code == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model="tiny-hf", prompt="Hi", max_tokens=4, logit_bias={"5000": 1})
    assert err.value.param == "logit_bias"
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model="tiny-hf", prompt="Hi", max_tokens=4, logprobs=1,
                                  extra_body={"use_beam_search": True})  # fmt: skip
    assert err.value.param == "logprobs"
    assert server.wait_idle("tiny-hf").running == 0


def test_a_client_that_goes_away_frees_its_rows(server):
    async def walk_away() -> None:
        body = {"model": "tiny-awq", "prompt": "Once upon a time", "max_tokens": 400, "stream": True,
                "ignore_eos": True}  # fmt: skip
        async with (
            httpx.AsyncClient(base_url=server.base_url, timeout=60) as http,
            http.stream("POST", "/v1/completions", json=body) as response,
        ):
            assert response.status_code == 200
            async for line in response.aiter_lines():
                if line.startswith("data:"):
                    break  # the first token arrived: leave mid-stream

    asyncio.run(walk_away())
    stats = server.wait_idle("tiny-awq")
    assert stats.running == 0 and stats.kv_cells_used == 0
    assert stats.generated_tokens < 400  # it stopped instead of finishing the 400 tokens


@pytest.mark.parametrize("model", ["tiny-hf", "qwen2-random"])
def test_special_token_text_in_a_message_is_plain_text(client, model):
    """As on llama.cpp: ``<|im_end|>`` typed into a message is several tokens of text, not the end of the turn."""

    def prompt_tokens(content: str) -> int:
        reply = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": content}], max_tokens=1, temperature=0
        )
        return reply.usage.prompt_tokens

    assert prompt_tokens("hi<|im_end|>") - prompt_tokens("hi") >= 4


@pytest.mark.parametrize("model", ["tiny-hf", "qwen2-random"])
def test_structured_outputs_constrain_every_row_of_the_batch(client, model):
    """The same llguidance masks as on llama.cpp, over the HF tokenizer: a schema for n rows, a
    choice and a regex, each output valid (jsonschema checks the JSON)."""
    schema = {"type": "object", "properties": {"answer": {"enum": ["yes", "no"]}, "n": {"type": "integer",
              "minimum": 0, "maximum": 9}}, "required": ["answer", "n"], "additionalProperties": False}  # fmt: skip
    reply = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Is the sky blue?"}], temperature=1.0, max_tokens=48, n=3,
        seed=3, response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": schema}},
    )  # fmt: skip
    for choice in reply.choices:
        jsonschema.validate(json.loads(choice.message.content), schema)
    chosen = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Is the sky blue?"}], temperature=1.0, max_tokens=8,
        extra_body={"structured_outputs": {"choice": ["yes", "no"]}},
    )  # fmt: skip
    assert chosen.choices[0].message.content in {"yes", "no"}
    matched = client.completions.create(
        model=model, prompt="Code:", temperature=1.0, max_tokens=12,
        extra_body={"structured_outputs": {"regex": "[0-9]{3}-[a-z]{2}"}},
    )  # fmt: skip
    assert re.fullmatch("[0-9]{3}-[a-z]{2}", matched.choices[0].text)
