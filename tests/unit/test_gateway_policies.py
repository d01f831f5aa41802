"""Admission, fallback, auth, the capability contract, limits and model lifecycle, over real HTTP
and gRPC on the fake backend."""

import asyncio
import json
import time

import grpc
import httpx
import openai
import pytest
from fastapi.testclient import TestClient
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from lmgate.server.app import create_app
from lmgate.server.settings import validate_settings
from lmgate.v1 import inference_pb2 as pb
from lmgate.v1 import inference_pb2_grpc as pb_grpc

from server_helpers import ServerThread

WORDS = " ".join(f"w{i}" for i in range(40))


def fake(name: str, **extra) -> dict:
    return {"name": name, "backend": "fake", **extra}


def settings(*models, **server):
    return validate_settings({"server": {"grpc_port": 0, **server}, "models": list(models)})


async def open_stream(client: httpx.AsyncClient, model: str):
    """Start a slow streamed completion and read its first event; it holds its slot while the returned
    line iterator lives (dropping it would close the connection)."""
    body = {"model": model, "prompt": WORDS, "max_tokens": 40, "stream": True}
    response = await client.send(client.build_request("POST", "/v1/completions", json=body), stream=True)
    lines = aiter(response.aiter_lines())
    first = await anext(lines) if response.status_code == 200 else ""
    return response, lines, first


async def test_a_saturated_pool_falls_back_then_both_full_is_429_with_retry_after():
    slow = {"stall_after": 1, "max_running": 1, "max_waiting": 0}  # each stream holds its slot until closed
    with ServerThread(settings(fake("small", fallback="spare", **slow), fake("spare", **slow))) as server:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as client:
            opened = [await open_stream(client, "small") for _ in range(3)]
            (first, *_), (second, _, second_event), (third, *_) = opened
            try:
                assert first.status_code == second.status_code == 200
                assert '"model":"spare"' in second_event
                assert third.status_code == 429
                assert third.headers["retry-after"] == "1"
                error = (await third.aread()).decode()
                assert "rate_limit_exceeded" in error and "capacity" in error
                with grpc.insecure_channel(server.grpc_target) as channel:
                    request = pb.CompleteRequest(model="small", text="x")
                    with pytest.raises(grpc.RpcError) as err:
                        list(pb_grpc.InferenceStub(channel).Complete(request))
                    assert err.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
            finally:
                for response in (first, second, third):
                    await response.aclose()


async def test_a_request_served_by_the_fallback_pool_is_counted_under_that_pool():
    held = {"stall_after": 1, "max_running": 1, "max_waiting": 0}  # the one stream below holds the one slot
    with ServerThread(settings(fake("small", fallback="spare", **held), fake("spare"))) as server:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as client:
            holder, *_ = await open_stream(client, "small")
            try:
                body = {"model": "small", "prompt": "a b c", "max_tokens": 3}
                answer = (await client.post("/v1/completions", json=body)).json()
                metrics = (await client.get("/metrics")).text
            finally:
                await holder.aclose()
    assert answer["model"] == "spare"
    counted = {
        (s.labels["model"], s.labels["status"]): s.value
        for family in text_string_to_metric_families(metrics)
        for s in family.samples
        if s.name == "lmgate_requests_total" and s.labels["transport"] == "http"
    }
    assert counted.get(("spare", "ok")) == 1
    assert counted.get(("small", "ok"), 0) == 0


async def test_a_full_running_limit_queues_until_a_slot_frees():
    with ServerThread(settings(fake("one", token_delay_s=0.02, max_running=1, max_waiting=4))) as server:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as client:
            body = {"model": "one", "prompt": "a b c d e", "max_tokens": 5}
            responses = await asyncio.gather(*(client.post("/v1/completions", json=body) for _ in range(4)))
    assert [r.status_code for r in responses] == [200] * 4


def test_api_keys_guard_http_and_grpc_but_not_the_probes(monkeypatch):
    monkeypatch.setenv("TEST_LMGATE_KEYS", "k-one, k-two")
    with ServerThread(settings(fake("echo"), api_keys_env="TEST_LMGATE_KEYS")) as server:
        body = {"model": "echo", "prompt": "a b"}
        url = f"{server.base_url}/v1/completions"
        for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "k-one"},
                        {"Authorization": "Bearer  k-one"}):  # fmt: skip
            response = httpx.post(url, json=body, headers=headers)
            assert response.status_code == 401
            assert response.json()["error"]["code"] == "invalid_api_key"
        for scheme in ("Bearer", "bearer", "BEARER"):  # the scheme is case-insensitive (RFC 9110)
            assert httpx.post(url, json=body, headers={"Authorization": f"{scheme} k-two"}).status_code == 200
        for path in ("/health", "/ready", "/metrics"):
            assert httpx.get(f"{server.base_url}{path}").status_code == 200
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="wrong", max_retries=0).models.list()
        with grpc.insecure_channel(server.grpc_target) as channel:
            stub = pb_grpc.InferenceStub(channel)
            with pytest.raises(grpc.RpcError) as err:
                stub.ListModels(pb.ListModelsRequest())
            assert err.value.code() is grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(grpc.RpcError) as err:
                list(
                    stub.Complete(pb.CompleteRequest(model="echo", text="a"), metadata=(("authorization", "Bearer x"),))
                )
            assert err.value.code() is grpc.StatusCode.UNAUTHENTICATED
            ok = list(stub.Complete(pb.CompleteRequest(model="echo", text="a b"),
                                    metadata=(("authorization", "Bearer k-one"),)))  # fmt: skip
            assert "".join(r.text for r in ok) == "a b"
            health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""))
            assert health.status == health_pb2.HealthCheckResponse.SERVING


def test_a_gateway_sends_its_worker_the_key_from_api_key_env(monkeypatch):
    monkeypatch.setenv("TEST_WORKER_KEYS", "w-key")
    monkeypatch.setenv("TEST_WORKER_KEY", "w-key")
    with ServerThread(settings(fake("echo"), api_keys_env="TEST_WORKER_KEYS")) as worker:
        to_worker = {"name": "echo", "backend": "grpc", "target": worker.grpc_target, "connect_timeout_s": 2}
        with ServerThread(settings({**to_worker, "api_key_env": "TEST_WORKER_KEY"})) as gateway:
            reply = httpx.post(f"{gateway.base_url}/v1/completions", json={"model": "echo", "prompt": "a b"})
            assert reply.status_code == 200 and reply.json()["choices"][0]["text"] == "a b"
        with ServerThread(settings(to_worker), wait_ready=False) as keyless:  # the worker refuses it
            refused = httpx.post(f"{keyless.base_url}/v1/completions", json={"model": "echo", "prompt": "a b"})
            assert refused.status_code == 503


def test_metrics_can_require_the_key_too(monkeypatch):
    monkeypatch.setenv("TEST_LMGATE_KEYS", "k")
    with TestClient(create_app(settings(fake("echo"), api_keys_env="TEST_LMGATE_KEYS", metrics_auth=True))) as c:
        assert c.get("/metrics").status_code == 401
        assert c.get("/metrics", headers={"Authorization": "Bearer k"}).status_code == 200


def test_capabilities_strict_refuses_lenient_serves_and_reports():
    with TestClient(create_app(settings(fake("strict", params="strict"), fake("lenient")))) as client:
        body = {"prompt": "a b", "top_k": 5, "min_p": 0.1}
        refused = client.post("/v1/completions", json={"model": "strict", **body})
        assert refused.status_code == 400 and refused.json()["error"]["param"] == "top_k"
        served = client.post("/v1/completions", json={"model": "lenient", **body})
        assert served.status_code == 200
        assert served.headers["x-lmgate-ignored-params"] == "top_k,min_p"
        assert (
            "x-lmgate-ignored-params"
            not in client.post("/v1/completions", json={"model": "lenient", "prompt": "a"}).headers
        )
        [card] = [m for m in client.get("/v1/models").json()["data"] if m["id"] == "strict"]
        assert "temperature" in card["supported_params"] and "top_k" not in card["supported_params"]
        assert "structured_output" not in card["supported_params"]  # the fake backend cannot constrain
        chat = {"messages": [{"role": "user", "content": "a b"}], "response_format": {"type": "json_object"}}
        refused = client.post("/v1/chat/completions", json={"model": "strict", **chat})
        assert refused.status_code == 400 and refused.json()["error"]["param"] == "structured_output"
        served = client.post("/v1/chat/completions", json={"model": "lenient", **chat})
        assert served.headers["x-lmgate-ignored-params"] == "structured_output"


def test_limits_max_tokens_cap_body_size_and_request_timeout():
    # "hung" sends one token, then nothing: its request timeout fires mid-stream on any machine.
    models = [fake("capped", max_tokens_cap=8, max_request_tokens=64), fake("hung", stall_after=1, request_timeout_s=1)]
    with TestClient(create_app(settings(*models, max_body_bytes=2048))) as client:
        over = client.post("/v1/completions", json={"model": "capped", "prompt": "a", "max_tokens": 9})
        assert over.status_code == 400 and over.json()["error"]["param"] == "max_tokens"
        many = client.post("/v1/completions", json={"model": "capped", "prompt": ["a", "b"], "n": 5, "max_tokens": 8})
        assert many.status_code == 400 and "max_request_tokens = 64" in many.json()["error"]["message"]
        assert "2 prompt(s) x 5 choices x 8" in many.json()["error"]["message"] and many.json()["error"]["param"] == "n"
        chat = {"model": "capped", "messages": [{"role": "user", "content": "a"}]}  # max_tokens unset: 2048
        unset = client.post("/v1/chat/completions", json=chat)
        assert unset.status_code == 400 and unset.json()["error"]["param"] == "max_tokens"
        assert "(max_tokens unset: the context length)" in unset.json()["error"]["message"]
        fits = client.post("/v1/completions", json={"model": "capped", "prompt": ["a", "b"], "n": 4, "max_tokens": 8})
        assert fits.status_code == 200
        big = client.post("/v1/completions", json={"model": "capped", "prompt": "x" * 4096})
        assert big.status_code == 413 and big.json()["error"]["message"].startswith("the request body is larger")
        timed_out = client.post("/v1/completions", json={"model": "hung", "prompt": WORDS, "max_tokens": 40})
        assert timed_out.status_code == 504 and "request_timeout_s" in timed_out.json()["error"]["message"]
        streamed = client.post(
            "/v1/completions", json={"model": "hung", "prompt": WORDS, "max_tokens": 40, "stream": True}
        )
        assert '"type": "timeout"' in streamed.text and streamed.text.rstrip().endswith("data: [DONE]")


def test_a_lazy_model_loads_at_its_first_request_and_unloads_when_idle():
    lazy = fake("lazy", lazy=True, idle_unload_s=0.5, stall_after=1)  # its stream stays open until closed
    with ServerThread(settings(fake("eager"), lazy)) as server:
        ready = httpx.get(f"{server.base_url}/ready")
        assert ready.status_code == 200 and ready.json()["models"]["lazy"] == "unloaded"
        listed = {m["id"]: m["ready"] for m in httpx.get(f"{server.base_url}/v1/models").json()["data"]}
        assert listed == {"eager": True, "lazy": False}
        body = {"model": "lazy", "prompt": "hello there", "stream": True}
        with httpx.stream("POST", f"{server.base_url}/v1/completions", json=body, timeout=60) as reply:
            first = json.loads(next(reply.iter_lines()).removeprefix("data: "))
            assert first["choices"][0]["text"] == "hello"
            assert httpx.get(f"{server.base_url}/ready").json()["models"]["lazy"] == "ready"  # busy: kept
        for _ in range(600):  # the idle reaper looks every second
            if httpx.get(f"{server.base_url}/ready").json()["models"]["lazy"] == "unloaded":
                break
            time.sleep(0.1)
        assert httpx.get(f"{server.base_url}/ready").json()["models"]["lazy"] == "unloaded"


def test_a_replica_that_cannot_start_is_skipped_and_the_other_serves(tiny_chat_path):
    worker = validate_settings({"server": {"grpc_port": 0}, "models": [{"name": "tiny", "gguf": str(tiny_chat_path)}]})
    with ServerThread(worker) as w:
        dead = "127.0.0.1:1"  # nothing listens there
        front = settings({"name": "chat", "backend": "grpc", "target": [dead, w.grpc_target], "remote_model": "tiny",
                          "connect_timeout_s": 2})  # fmt: skip
        with ServerThread(front) as gateway:
            client = openai.OpenAI(base_url=f"{gateway.base_url}/v1", api_key="x", max_retries=0)
            for _ in range(3):
                reply = client.chat.completions.create(
                    model="chat", messages=[{"role": "user", "content": "What does a cow say?"}], temperature=0
                )
                assert "moo" in reply.choices[0].message.content
            [card] = client.models.list().data
            assert card.replicas == 2 and card.ready


def test_when_no_replica_can_serve_the_log_says_what_the_last_one_said_and_the_client_gets_a_503(caplog):
    with ServerThread(settings(fake("tiny"))) as worker:
        target = worker.grpc_target
        front = settings({"name": "chat", "backend": "grpc", "target": [target], "remote_model": "tiny",
                          "health_interval_s": 60})  # fmt: skip  # no health check marks it gone first
        gateway = ServerThread(front)
        gateway.__enter__()
    try:  # the front's one replica loaded; now its worker is gone
        body = {"model": "chat", "messages": [{"role": "user", "content": "Hi"}]}
        reply = httpx.post(f"{gateway.base_url}/v1/chat/completions", json=body, timeout=30)
    finally:
        gateway.__exit__()
    assert reply.status_code == 503
    assert reply.json()["error"]["message"] == "no replica of model `chat` could serve the request"  # no address
    said = [r.getMessage() for r in caplog.records if r.name == "lmgate.server.placement.dispatch"]
    assert any("model chat: no replica could serve a request; the last one tried said: " in m and target in m
               for m in said)  # fmt: skip


def test_the_openai_backend_streams_an_upstream_through(tiny_chat_path):
    upstream = validate_settings(
        {"server": {"grpc_port": 0}, "models": [{"name": "tiny", "gguf": str(tiny_chat_path)}]}
    )
    with ServerThread(upstream) as up:
        front = settings({
            "name": "remote", "backend": "openai", "base_url": f"{up.base_url}/v1", "remote_model": "tiny",
            "supported_params": ["temperature", "max_tokens", "top_k"],
        })  # fmt: skip
        with ServerThread(front) as gateway:
            direct = openai.OpenAI(base_url=f"{up.base_url}/v1", api_key="x", max_retries=0)
            via = openai.OpenAI(base_url=f"{gateway.base_url}/v1", api_key="x", max_retries=0)
            question = [{"role": "user", "content": "Tell me a story about Leo."}]
            expected = direct.chat.completions.create(model="tiny", messages=question, temperature=0, max_tokens=40)
            stream = via.chat.completions.create(model="remote", messages=question, temperature=0, max_tokens=40,
                                                 stream=True, stream_options={"include_usage": True})  # fmt: skip
            chunks = list(stream)
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            assert text == expected.choices[0].message.content
            assert chunks[-1].usage.completion_tokens == expected.usage.completion_tokens
            [card] = via.models.list().data
            assert card.context_length == 2048  # lmgate's /v1/models says


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # uvicorn exits its thread
def test_a_second_server_on_a_taken_grpc_port_fails_to_start_instead_of_sharing_it():
    with ServerThread(settings(fake("echo"))) as first:
        port = first.app.state.grpc.port
        with pytest.raises(RuntimeError, match="failed to start"), ServerThread(settings(fake("echo"), grpc_port=port)):
            pass
