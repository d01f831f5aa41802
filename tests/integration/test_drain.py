"""SIGTERM on a real process: in-flight streams finish, new work is refused cleanly, then it exits."""

import json
import signal
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
