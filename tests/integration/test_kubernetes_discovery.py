"""A gateway that finds its workers in a Service's EndpointSlices: real worker processes, a real gateway
process, and a fake Kubernetes API server that speaks the list and watch protocol (tests/kube_helpers.py).

Each worker is one slice of the Service ``workers`` (all on 127.0.0.1, so each slice carries its
worker's gRPC port, as a Service with several slices does). Everything waits by polling, bounded.
"""

import json

import httpx
import pytest

from kube_helpers import FakeKubeApi, endpoint_slice
from server_helpers import Process, config, poll, wait_ready
from server_helpers import ask_front as ask

FAST = {"backend": "grpc", "remote_model": "tiny-chat", "routing": "round_robin", "connect_timeout_s": 5,
        "health_interval_s": 0.2, "health_timeout_s": 1, "keepalive_s": 1, "keepalive_timeout_s": 1}  # fmt: skip


def served(worker: Process) -> float:
    return worker.metric("lmgate_requests_total", status="ok")


def slice_of(name: str, worker: Process, ready: bool = True) -> dict:
    return endpoint_slice(name, "workers", worker.grpc, {"127.0.0.1": ready})


@pytest.fixture
def fleet(tiny_chat_path, tmp_path):
    worker_config = config(tmp_path, "worker", [{"name": "tiny-chat", "gguf": str(tiny_chat_path)}])
    workers = [Process(worker_config) for _ in range(2)]
    api = FakeKubeApi().start()
    started = list(workers)
    try:
        for w in workers:
            wait_ready(w.url)
        api.put(slice_of("workers-a", workers[0]))
        entry = {"name": "chat", **FAST, "discovery": {"kubernetes": {"service": "workers", "resync_s": 600}}}
        log = tmp_path / "gateway.log"
        front = Process(config(tmp_path, "front", [entry]), env={"KUBECONFIG": str(api.kubeconfig(tmp_path))}, log=log)
        started.append(front)
        wait_ready(front.url)
        yield front, workers, api, log
    finally:
        for p in started:
            p.stop()
        api.stop()


def test_replicas_follow_the_ready_endpoints_and_none_of_the_requests_fails(fleet):
    front, (w1, w2), api, log = fleet
    assert front.metric("lmgate_discovered_replicas", model="chat") == 1
    assert ask(front, "What does a cow say?")
    assert served(w1) == 1 and served(w2) == 0

    # A second ready endpoint appears: it becomes a replica and gets traffic.
    api.put(slice_of("workers-b", w2))
    poll(lambda: front.metric("lmgate_replicas_usable", model="chat") == 2, "the new endpoint usable")
    assert front.metric("lmgate_discovered_replicas", model="chat") == 2
    for _ in range(10):
        assert ask(front, "What does a duck say?")
        if served(w2):
            break
    assert served(w2) >= 1

    # The worker serving a long stream turns not ready (MODIFIED): no new request goes there, and the
    # stream it serves finishes, untouched.
    body = {"model": "chat", "prompt": "Once upon a time", "max_tokens": 2000, "ignore_eos": True, "stream": True}
    with httpx.stream("POST", f"{front.url}/v1/completions", json=body, timeout=120) as response:
        lines = response.iter_lines()
        assert next(lines).startswith("data: ")
        busy, idle = (w1, w2) if w1.metric("lmgate_requests_running") else (w2, w1)
        busy_slice = "workers-a" if busy is w1 else "workers-b"
        api.put(slice_of(busy_slice, busy, ready=False))
        poll(lambda: front.metric("lmgate_replicas", model="chat") == 1, "the not-ready endpoint removed")
        rest = list(lines)
    events = [json.loads(line.removeprefix("data: ")) for line in rest if line.startswith("data: {")]
    assert rest[-1] == "data: [DONE]" or rest[-2] == "data: [DONE]"
    assert not any("error" in e for e in events)
    assert [c.get("finish_reason") for e in events for c in e["choices"] if c.get("finish_reason")] == ["length"]

    before = served(idle)
    for question in ("What does a cat say?", "What does a dog say?", "Where do fish live?"):
        assert ask(front, question)
    assert served(idle) == before + 3  # every new request to the replica that stayed

    # Its slice is deleted, then comes back ready: the same address is a fresh replica again.
    api.delete(busy_slice)
    api.put(slice_of(busy_slice, busy))
    poll(lambda: front.metric("lmgate_replicas_usable", model="chat") == 2, "the endpoint back")

    events_logged = [json.loads(line) for line in log.read_text().splitlines() if line.startswith('{"event"')]
    target = f"127.0.0.1:{busy.grpc}"
    assert [(e["event"], e["target"]) for e in events_logged if e["target"] == target][-2:] == [
        ("replica_removed", target), ("replica_added", target)
    ]  # fmt: skip


def test_a_gone_watch_relists_and_an_unreachable_api_server_keeps_the_replicas(fleet):
    front, (w1, w2), api, log = fleet
    api.put(slice_of("workers-b", w2))
    poll(lambda: front.metric("lmgate_replicas_usable", model="chat") == 2, "both endpoints usable")

    # 410 Gone: the watch's history expired; the gateway lists again and still has both.
    lists = api.lists
    api.expire()
    poll(lambda: api.lists > lists and api.watches > 0, "a re-list after 410 Gone")
    assert front.metric("lmgate_discovered_replicas", model="chat") == 2

    # The API server goes away: the replicas stay and serve.
    api.stop()
    poll(lambda: "keeping 2 known replica(s)" in log.read_text(), "the gateway finding the API server gone")
    for question in ("What does a cow say?", "What does a duck say?", "What does a hen say?", "What does a pig say?"):
        assert ask(front, question)
    assert front.metric("lmgate_replicas_usable", model="chat") == 2
    assert served(w1) >= 1 and served(w2) >= 1

    # While it was away, one worker's slice was deleted: once it is back, the re-list finds that.
    api.delete("workers-a")
    api.start()
    poll(lambda: front.metric("lmgate_replicas", model="chat") == 1, "the deletion seen after the outage")
    assert front.metric("lmgate_discovered_replicas", model="chat") == 1
    before = served(w1)
    assert ask(front, "What does a cat say?")
    assert served(w1) == before
