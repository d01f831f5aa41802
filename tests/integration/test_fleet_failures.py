"""A gateway in front of workers that freeze or are not up yet: real processes on loopback."""

import json
import signal

import httpx
import pytest

from server_helpers import Process, config, free_port, poll, wait_ready
from server_helpers import ask_front as ask

# Fast detection so that the tests wait seconds, not the production defaults' tens of seconds.
FAST = {"backend": "grpc", "remote_model": "tiny-chat", "routing": "least_outstanding", "connect_timeout_s": 1,
        "health_interval_s": 0.2, "health_timeout_s": 1, "keepalive_s": 1, "keepalive_timeout_s": 1}  # fmt: skip


def worker_config(tmp, tiny_chat_path):
    return config(tmp, "worker", [{"name": "tiny-chat", "gguf": str(tiny_chat_path)}])


@pytest.fixture
def stopped():
    """Processes to SIGCONT and stop at the end, whatever the test did to them."""
    processes: list[Process] = []
    yield processes
    for p in processes:
        if p.process.poll() is None:
            p.process.send_signal(signal.SIGCONT)
        p.stop()


def test_a_frozen_worker_ends_its_streams_with_an_error_gets_no_requests_and_serves_once_thawed(
    tiny_chat_path, tmp_path, stopped
):
    workers = [Process(worker_config(tmp_path, tiny_chat_path)) for _ in range(2)]
    stopped.extend(workers)
    for w in workers:
        wait_ready(w.url)
    front = Process(config(tmp_path, "front", [{"name": "chat", **FAST, "target": [w.target for w in workers]}]))
    stopped.append(front)
    wait_ready(front.url)
    frozen, survivor = workers

    body = {"model": "chat", "prompt": "Once upon a time", "max_tokens": 2000, "ignore_eos": True, "stream": True}
    with httpx.stream("POST", f"{front.url}/v1/completions", json=body, timeout=120) as response:
        lines = response.iter_lines()
        assert next(lines).startswith("data: ")
        assert frozen.metric("lmgate_requests_running") == 1  # least outstanding: the first replica
        frozen.process.send_signal(signal.SIGSTOP)
        rest = list(lines)  # the keepalive ends it: no hang
    events = [line.removeprefix("data: ") for line in rest if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    assert any(json.loads(e).get("error", {}).get("type") == "service_unavailable" for e in events[:-1])

    poll(lambda: front.metric("lmgate_replicas_usable", model="chat") == 1, "the frozen worker marked unusable")
    served = survivor.metric("lmgate_requests_total", status="ok")
    for question in ("What does a cow say?", "What does a duck say?", "What does a cat say?"):
        assert ask(front, question)
    assert survivor.metric("lmgate_requests_total", status="ok") - served == 3

    frozen.process.send_signal(signal.SIGCONT)
    poll(lambda: front.metric("lmgate_replicas_usable", model="chat") == 2, "the thawed worker usable again")
    before = frozen.metric("lmgate_requests_total", status="ok")
    assert ask(front, "What does a dog say?")  # both idle: the first replica again
    assert frozen.metric("lmgate_requests_total", status="ok") - before == 1


def test_a_worker_down_when_the_gateway_starts_is_used_once_it_comes_up(tiny_chat_path, tmp_path, stopped):
    up = Process(worker_config(tmp_path, tiny_chat_path))
    stopped.append(up)
    wait_ready(up.url)
    late_port = free_port()
    targets = [f"127.0.0.1:{late_port}", up.target]  # the late one first: idle ties go to it
    front = Process(config(tmp_path, "front", [{"name": "chat", **FAST, "target": targets}]))
    stopped.append(front)
    wait_ready(front.url)  # ready with the one worker that is up
    assert front.metric("lmgate_replicas_usable", model="chat") == 1
    assert ask(front, "What does a cow say?")

    late = Process(worker_config(tmp_path, tiny_chat_path), grpc_port=late_port)
    stopped.append(late)
    wait_ready(late.url)
    poll(lambda: front.metric("lmgate_replicas_usable", model="chat") == 2, "the late worker loaded")
    assert ask(front, "What does a duck say?")
    assert late.metric("lmgate_requests_total", status="ok") == 1
