"""Each model's engine runs in a process of its own: when one dies (SIGKILL, SIGSEGV) its requests end
with a clean error at once, the gateway restarts it, and the other model streams on untouched."""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import grpc
import httpx
import openai
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from lmgate.server.settings import validate_settings
from lmgate.v1 import inference_pb2 as pb
from lmgate.v1 import inference_pb2_grpc as pb_grpc

from server_helpers import ServerThread, ask

LONG = {"max_tokens": 2000, "temperature": 0, "extra_body": {"ignore_eos": True}}
"""A stream still running long after its first chunk (tiny-chat takes seconds for 2,000 tokens)."""


def engine_settings(gguf: Path) -> dict:
    return {"gguf": str(gguf), "max_seqs": 4, "n_ctx": 4096, "n_threads": 1, "check_integrity": True}


@pytest.fixture(scope="module")
def fragile_gguf(tiny_chat_path, tmp_path_factory) -> Path:
    """A copy of tiny-chat that a test may take away, so that a restart cannot load for a while."""
    path = tmp_path_factory.mktemp("fragile") / "fragile.gguf"
    shutil.copy(tiny_chat_path, path)
    return path


@pytest.fixture(scope="module")
def gateway(tiny_chat_path, fragile_gguf):
    settings = validate_settings({
        "server": {"grpc_port": 0},
        "models": [{"name": "fragile", **engine_settings(fragile_gguf)},
                   {"name": "steady", **engine_settings(tiny_chat_path)}],
    })  # fmt: skip
    with ServerThread(settings) as server:
        yield server


@pytest.fixture
def client(gateway):
    return openai.OpenAI(base_url=f"{gateway.base_url}/v1", api_key="unused", max_retries=0)


def engine_pid(gateway, model: str) -> int | None:
    return gateway.app.state.models.pools[model].replicas[0].pid


def restarts(gateway, model: str) -> int:
    return gateway.stats(model).engine_restarts


def wait_for(condition, what: str, timeout_s: float = 120.0) -> None:
    """Poll ``condition`` until true; fail naming ``what`` after a generous bound (not a timing claim)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def wait_running(gateway, model: str) -> None:
    wait_for(lambda: gateway.stats(model).running >= 1, f"{model} to run a request")


def test_each_engine_is_a_process_of_its_own_named_for_its_model(gateway):
    pids = {model: engine_pid(gateway, model) for model in ("fragile", "steady")}
    assert None not in pids.values() and len(set(pids.values()) | {os.getpid()}) == 3
    for model, pid in pids.items():
        command_line = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        assert b"lmgate.backends.engine.host" in command_line
        assert command_line[command_line.index(b"--model") + 1] == model.encode()


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGSEGV], ids=["SIGKILL", "SIGSEGV"])
def test_a_dead_engine_ends_its_streams_and_restarts_while_the_other_model_streams_on(gateway, client, sig, caplog):
    before = restarts(gateway, "fragile")
    old_pid = engine_pid(gateway, "fragile")
    killed = threading.Event()
    steady: dict[str, object] = {}

    def stream_steady() -> None:
        chunks = client.chat.completions.create(
            model="steady", messages=[{"role": "user", "content": "Tell me a story."}], stream=True, **LONG
        )
        text, finish = "", None
        for i, chunk in enumerate(chunks):
            if i == 1:
                killed.wait(60)  # hold the stream open across the other engine's death
            text += chunk.choices[0].delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
        steady.update(text=text, finish=finish, alive_at_kill=killed.is_set())

    reader = threading.Thread(target=stream_steady)
    reader.start()
    fragile = client.chat.completions.create(
        model="fragile", messages=[{"role": "user", "content": "Tell me a story."}], stream=True, **LONG
    )
    received = ""
    with pytest.raises(openai.APIError) as error:
        for chunk in fragile:
            received += chunk.choices[0].delta.content or ""
            if received and not killed.is_set():
                os.kill(old_pid, sig)
                killed.set()
    assert received, "the stream had started before the engine died"
    assert sig.name in str(error.value.message), error.value.message

    reader.join(timeout=120)
    assert steady["finish"] == "length" and steady["alive_at_kill"], steady
    assert len(steady["text"]) > 1000  # the whole 2,000-token story arrived

    wait_for(lambda: restarts(gateway, "fragile") == before + 1 and gateway.app.state.models.pools["fragile"].healthy(),
             "the fragile engine to restart")  # fmt: skip
    assert engine_pid(gateway, "fragile") not in (None, old_pid)
    [exit_line] = [
        json.loads(r.getMessage())
        for r in caplog.records
        if r.name == "lmgate.engine" and "engine_exit" in r.getMessage()
    ]
    assert (exit_line["model"], exit_line["pid"], exit_line["signal"]) == ("fragile", old_pid, sig.name)
    assert exit_line["requests_failed"] == 1
    assert ask(client, "fragile", "What is the capital of France?") == "The capital of France is Paris."
    metrics = httpx.get(f"{gateway.base_url}/metrics").text
    assert f'lmgate_engine_restarts_total{{backend="llamacpp",model="fragile"}} {before + 1}.0' in metrics
    assert 'lmgate_engine_restarts_total{backend="llamacpp",model="steady"} 0.0' in metrics


def test_a_request_without_streaming_gets_503_when_its_engine_dies(gateway, client):
    outcome: dict[str, object] = {}

    def complete() -> None:
        try:
            client.completions.create(model="fragile", prompt="Once upon a time", **LONG)
        except openai.APIStatusError as exc:
            outcome["status"], outcome["message"] = exc.status_code, exc.message

    caller = threading.Thread(target=complete)
    caller.start()
    wait_running(gateway, "fragile")
    os.kill(engine_pid(gateway, "fragile"), signal.SIGKILL)
    caller.join(timeout=120)
    assert outcome["status"] == 503 and "SIGKILL" in outcome["message"], outcome
    wait_for(lambda: gateway.app.state.models.pools["fragile"].healthy(), "the fragile engine to restart")


def test_a_grpc_stream_gets_unavailable_when_its_engine_dies(gateway):
    with grpc.insecure_channel(gateway.grpc_target) as channel:
        stub = pb_grpc.InferenceStub(channel)
        sampling = pb.SamplingParams(temperature=0, max_tokens=2000, ignore_eos=True)
        request = pb.CompleteRequest(model="fragile", text="Once upon a time", sampling=sampling)
        responses = stub.Complete(request)
        next(responses)
        os.kill(engine_pid(gateway, "fragile"), signal.SIGKILL)
        with pytest.raises(grpc.RpcError) as error:
            for _ in responses:
                pass
        assert error.value.code() == grpc.StatusCode.UNAVAILABLE
    wait_for(lambda: gateway.app.state.models.pools["fragile"].healthy(), "the fragile engine to restart")


def test_while_an_engine_cannot_come_back_only_its_model_is_not_serving(gateway, client, fragile_gguf, tmp_path):
    """The restarted engine cannot load while its GGUF is gone: the model is NOT_SERVING (HTTP /ready,
    gRPC health), requests to it get 503, the other model serves; it returns once the file does."""
    hidden = tmp_path / "hidden.gguf"
    fragile_gguf.rename(hidden)
    try:
        os.kill(engine_pid(gateway, "fragile"), signal.SIGKILL)
        wait_for(lambda: not gateway.app.state.models.pools["fragile"].healthy(), "the engine's death to be seen")
        ready = httpx.get(f"{gateway.base_url}/ready")
        assert ready.status_code == 503
        assert ready.json()["models"] == {"fragile": "restarting", "steady": "ready"}
        with grpc.insecure_channel(gateway.grpc_target) as channel:
            health = health_pb2_grpc.HealthStub(channel)

            def status(service: str) -> int:
                return health.Check(health_pb2.HealthCheckRequest(service=service)).status

            wait_for(lambda: status("fragile") == health_pb2.HealthCheckResponse.NOT_SERVING, "gRPC health to follow")
            assert status("steady") == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(openai.APIStatusError) as error:
            ask(client, "fragile", "What is the capital of France?")
        assert error.value.status_code == 503
        assert ask(client, "steady", "What is the capital of France?") == "The capital of France is Paris."
    finally:
        hidden.rename(fragile_gguf)
    wait_for(lambda: gateway.app.state.models.pools["fragile"].healthy(), "the engine to load again", timeout_s=180)
    assert httpx.get(f"{gateway.base_url}/ready").status_code == 200
    assert ask(client, "fragile", "What is the capital of France?") == "The capital of France is Paris."


def test_a_model_that_failed_to_load_is_tried_again_until_it_loads(tiny_chat_path, tmp_path):
    late = tmp_path / "late.gguf"
    settings = validate_settings({
        "server": {"grpc_port": None},
        "models": [{"name": "late", **engine_settings(late)}, {"name": "steady", **engine_settings(tiny_chat_path)}],
    })  # fmt: skip
    with ServerThread(settings, wait_ready=False) as server:
        pools = server.app.state.models.pools
        wait_for(lambda: pools["steady"].healthy() and pools["late"].load_errors, "the first loads")
        assert httpx.get(f"{server.base_url}/ready").json()["models"] == {"late": "failed", "steady": "ready"}
        client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0)
        with pytest.raises(openai.APIStatusError) as error:
            ask(client, "late", "What is the capital of France?")
        assert error.value.status_code == 503
        shutil.copy(tiny_chat_path, late)
        wait_for(lambda: pools["late"].healthy(), "the model to load on a later try")
        assert httpx.get(f"{server.base_url}/ready").status_code == 200
        assert ask(client, "late", "What is the capital of France?") == "The capital of France is Paris."
