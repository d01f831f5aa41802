"""A front lmgate routing to worker lmgates over gRPC, all real processes on loopback."""

import json
import signal

import httpx
import openai
import pytest

from server_helpers import Process, config, wait_ready

SYSTEM = "You are Gate, a small and helpful model. Answer in short sentences. " * 3


@pytest.fixture(scope="module")
def fleet(tiny_chat_path, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fleet")
    chat_worker = config(tmp, "worker", [{"name": "tiny-chat", "gguf": str(tiny_chat_path), "check_integrity": True}])
    workers = [
        Process(chat_worker),
        Process(chat_worker),
        Process(config(tmp, "echo", [{"name": "echo", "backend": "fake"}])),
    ]
    for w in workers:
        wait_ready(w.url)
    front = Process(config(tmp, "front", [
        {"name": "chat", "aliases": ["default"], "backend": "grpc", "remote_model": "tiny-chat",
         "target": [workers[0].target, workers[1].target]},
        {"name": "echo", "backend": "grpc", "target": workers[2].target},
    ]))  # fmt: skip
    wait_ready(front.url)
    yield front, workers
    for p in (front, *workers):
        p.stop()


def chat(front, content: str, **params) -> str:
    client = openai.OpenAI(base_url=f"{front.url}/v1", api_key="unused", max_retries=0)
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": content}]
    reply = client.chat.completions.create(model="chat", messages=messages, temperature=0, max_tokens=32, **params)
    return reply.choices[0].message.content


def test_requests_for_two_models_land_on_their_workers(fleet):
    front, (w1, w2, w3) = fleet
    before = [w.metric("lmgate_requests_total", status="ok") for w in (w1, w2, w3)]
    client = openai.OpenAI(base_url=f"{front.url}/v1", api_key="unused", max_retries=0)
    echoed = client.completions.create(model="echo", prompt="one two three")
    assert echoed.choices[0].text == "one two three"
    assert "moo" in chat(front, "What does a cow say?")
    after = [w.metric("lmgate_requests_total", status="ok") for w in (w1, w2, w3)]
    assert after[2] - before[2] == 1  # the echo worker got the echo request
    assert (after[0] - before[0]) + (after[1] - before[1]) == 1  # one chat worker got the chat request


def test_the_same_prefix_lands_on_the_same_replica_and_hits_its_prefix_cache(fleet):
    front, (w1, w2, _) = fleet
    before = [w.metric("lmgate_prefix_cache_hits_total") for w in (w1, w2)]
    questions = ("What does a dog say?", "What does a pig say?", "What does a hen say?", "What is two plus two?",
                 "What does a duck say?", "Where do fish live?")  # fmt: skip
    for question in questions:  # routed by the system prompt they share, whatever the question
        chat(front, question)
    gained = [w.metric("lmgate_prefix_cache_hits_total") - b for w, b in zip((w1, w2), before, strict=True)]
    assert sorted(g > 0 for g in gained) == [False, True]  # all on one worker, whose cache hit
    assert max(gained) >= 5 * 32  # five repeats of a system prompt of several blocks
    # A system prompt shorter than a block: the questions met on the ring, by the prompt they share.
    assert front.metric("lmgate_router_decisions_total", model="chat", reason="affinity") >= len(questions)


def test_a_conversation_follows_its_own_replica_turn_after_turn(fleet):
    """Conversations without a system prompt: each one's later turns land where its first turn did
    (their blocks match there), and different conversations spread over both workers."""
    front, (w1, w2, _) = fleet
    client = openai.OpenAI(base_url=f"{front.url}/v1", api_key="unused", max_retries=0)
    homes, before_prefix = [], front.metric("lmgate_router_decisions_total", model="chat", reason="prefix")
    for name in ("Tom", "Mia", "Ben", "Sam", "Lily", "Max"):
        history = [{"role": "user", "content": f"Tell me a long story about {name}. " * 12}]
        before = [w.metric("lmgate_requests_total", status="ok") for w in (w1, w2)]
        for _ in range(3):
            reply = client.chat.completions.create(model="chat", messages=history, temperature=0, max_tokens=16)
            history += [{"role": "assistant", "content": reply.choices[0].message.content},
                        {"role": "user", "content": "And then?"}]  # fmt: skip
        gained = [w.metric("lmgate_requests_total", status="ok") - b for w, b in zip((w1, w2), before, strict=True)]
        assert sorted(gained) == [0, 3]  # every turn on one worker
        homes.append(gained.index(3))
    assert set(homes) == {0, 1}
    # The front knew: every later turn matched the blocks it had routed there.
    assert front.metric("lmgate_router_decisions_total", model="chat", reason="prefix") - before_prefix == 12


def test_a_worker_killed_mid_stream_ends_that_stream_with_an_error_and_the_survivor_serves(fleet):
    front, (w1, w2, _) = fleet
    body = {"model": "chat", "prompt": "Once upon a time", "max_tokens": 1500, "ignore_eos": True, "stream": True}
    with httpx.stream("POST", f"{front.url}/v1/completions", json=body, timeout=60) as response:
        lines = response.iter_lines()
        assert next(lines).startswith("data: ")
        busy = next(w for w in (w1, w2) if w.metric("lmgate_requests_running") >= 1)
        busy.stop(signal.SIGKILL)
        rest = list(lines)  # ends: no hang
    events = [line.removeprefix("data: ") for line in rest if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    errors = [json.loads(e)["error"] for e in events[:-1] if '"error"' in e]
    assert errors and errors[0]["type"] == "service_unavailable"
    for question in ("What does a cow say?", "What does a duck say?", "What does a cat say?"):
        assert chat(front, question)  # the survivor serves them all
