"""SIGTERM on a real process: in-flight streams finish, new work is refused cleanly, then it exits."""

import json
import signal
import threading
import time

import grpc
import httpx
from grpc_health.v1 import health_pb2, health_pb2_grpc

from server_helpers import Process, config, wait_ready


def test_sigterm_drains_in_flight_streams_and_refuses_new_requests(tmp_path):
    slow = {"name": "slow", "backend": "fake", "token_delay_s": 0.03}
    server = Process(config(tmp_path, "drain", [slow]))
    try:
        wait_ready(server.url)
        words = " ".join(f"w{i}" for i in range(60))
        body = {"model": "slow", "prompt": words, "max_tokens": 60, "stream": True}
        with httpx.stream("POST", f"{server.url}/v1/completions", json=body, timeout=60) as response:
            lines = response.iter_lines()
            assert next(lines).startswith("data: ")
            server.process.send_signal(signal.SIGTERM)
            for _ in range(200):
                ready = httpx.get(f"{server.url}/ready")
                if ready.status_code == 503:
                    break
                time.sleep(0.01)
            assert ready.status_code == 503 and ready.json()["draining"] is True
            refused = httpx.post(f"{server.url}/v1/completions", json={"model": "slow", "prompt": "x"})
            assert refused.status_code == 503 and "shutting down" in refused.json()["error"]["message"]
            with grpc.insecure_channel(server.target) as channel:
                health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""))
                assert health.status == health_pb2.HealthCheckResponse.NOT_SERVING
            rest = [line for line in lines if line]
        events = [json.loads(line[6:]) for line in rest if line.startswith("data: {")]
        assert rest[-1] == "data: [DONE]"
        assert events[-1]["choices"][0]["finish_reason"] == "length"  # the stream ran to its end
        text = "".join(e["choices"][0]["text"] for e in events if e["choices"])
        assert len(text.split()) == 59  # every word after the first event's
        assert server.process.wait(timeout=60) in (0, -signal.SIGTERM)
    finally:
        server.stop(signal.SIGKILL)


def test_a_drain_past_its_timeout_ends_streams_with_an_error_event_and_queued_requests_with_503(tmp_path):
    path = tmp_path / "cut.yaml"
    slow = {"name": "slow", "backend": "fake", "token_delay_s": 0.05, "max_running": 1, "max_waiting": 4}
    path.write_text(json.dumps({"server": {"drain_timeout_s": 0.5}, "models": [slow]}))
    server = Process(path)
    queued: list[httpx.Response] = []
    try:
        wait_ready(server.url)
        words = " ".join(f"w{i}" for i in range(400))  # 20 s of tokens: far past the drain timeout
        body = {"model": "slow", "prompt": words, "max_tokens": 400, "stream": True}
        with httpx.stream("POST", f"{server.url}/v1/completions", json=body, timeout=60) as response:
            lines = response.iter_lines()
            assert next(lines).startswith("data: ")
            waiter = threading.Thread(target=lambda: queued.append(
                httpx.post(f"{server.url}/v1/completions", json={"model": "slow", "prompt": "x"}, timeout=60)
            ))  # fmt: skip
            waiter.start()
            for _ in range(1000):
                if server.metric("lmgate_admission_waiting", model="slow") == 1:
                    break
                time.sleep(0.01)
            assert server.metric("lmgate_admission_waiting", model="slow") == 1
            server.process.send_signal(signal.SIGTERM)
            rest = [line for line in lines if line]
            waiter.join()
        assert rest[-1] == "data: [DONE]"
        error = json.loads(rest[-2].removeprefix("data: "))["error"]
        assert error["type"] == "service_unavailable" and "drain timeout" in error["message"]
        (refused,) = queued
        assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
        assert "drain timeout" in refused.json()["error"]["message"]
        assert server.process.wait(timeout=60) in (0, -signal.SIGTERM)
    finally:
        server.stop(signal.SIGKILL)


def test_requests_refused_while_draining_carry_retry_after(tmp_path):
    slow = {"name": "slow", "backend": "fake", "token_delay_s": 0.05}
    server = Process(config(tmp_path, "refuse", [slow]))
    try:
        wait_ready(server.url)
        body = {"model": "slow", "prompt": "a b c d e f g h", "max_tokens": 8, "stream": True}
        with httpx.stream("POST", f"{server.url}/v1/completions", json=body, timeout=60) as response:
            lines = response.iter_lines()
            assert next(lines).startswith("data: ")
            server.process.send_signal(signal.SIGTERM)
            for _ in range(1000):
                refused = httpx.post(f"{server.url}/v1/completions", json={"model": "slow", "prompt": "x"})
                if refused.status_code == 503:
                    break
                time.sleep(0.01)
            assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
            list(lines)
    finally:
        server.stop(signal.SIGKILL)
