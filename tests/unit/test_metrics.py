"""Metrics move exactly as the stream events say (fake backend over real HTTP, parsed /metrics)."""

import asyncio
import json
import logging
import time

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from lmgate.server.app import create_app
from lmgate.server.metrics import TokenRate
from lmgate.server.settings import validate_settings

from server_helpers import ServerThread

PROMPT = "one two three four five"  # the fake backend echoes it: five tokens, one per delta


def settings(**server):
    return validate_settings({"server": {"grpc_port": 0, **server}, "models": [{"name": "echo", "backend": "fake"}]})


def samples(client) -> dict[tuple[str, frozenset], float]:
    text = client.get("/metrics").text
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(snapshot, name, **labels) -> float:
    """The sum over the series of ``name`` that have these labels (and any others)."""
    wanted = frozenset(labels.items())
    return sum(v for (n, series), v in snapshot.items() if n == name and wanted <= series)


@pytest.fixture
def client():
    with TestClient(create_app(settings())) as client:
        yield client


HTTP = {"model": "echo", "backend": "fake", "transport": "http"}


def test_one_request_of_n_tokens_moves_every_metric_by_exactly_that(client):
    before = samples(client)
    body = client.post("/v1/completions", json={"model": "echo", "prompt": PROMPT, "max_tokens": 16}).json()
    after = samples(client)
    assert body["usage"]["completion_tokens"] == 5

    def delta(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("lmgate_requests_total", status="ok", **HTTP) == 1
    assert delta("lmgate_generation_tokens_total", model="echo", backend="fake") == 5
    assert delta("lmgate_prompt_tokens_total", model="echo", backend="fake") == 5
    assert delta("lmgate_time_to_first_token_seconds_count", **HTTP) == 1
    assert delta("lmgate_inter_token_latency_seconds_count", **HTTP) == 4  # between five tokens
    assert delta("lmgate_e2e_request_latency_seconds_count", **HTTP) == 1


def test_n_choices_count_the_prompt_once_and_every_choice_s_tokens(client):
    before = samples(client)
    client.post(
        "/v1/chat/completions", json={"model": "echo", "n": 3, "messages": [{"role": "user", "content": PROMPT}]}
    )
    after = samples(client)
    labels = {"model": "echo", "backend": "fake"}
    assert (
        value(after, "lmgate_prompt_tokens_total", **labels) - value(before, "lmgate_prompt_tokens_total", **labels)
        == 5
    )
    assert (
        value(after, "lmgate_generation_tokens_total", **labels)
        - value(before, "lmgate_generation_tokens_total", **labels)
        == 15
    )


def test_refused_requests_are_counted_by_their_error_under_the_model_they_named(client):
    before = samples(client)
    client.post("/v1/completions", json={"model": "echo", "prompt": "x", "temperature": 9})  # a bad value
    client.post("/v1/completions", json={"model": "nope", "prompt": "x"})
    client.post("/v1/completions", json={"model": "echo", "prompt": "x", "max_tokens": 5000})  # too long for it
    client.post("/v1/completions", json={"prompt": "x"})  # no model at all
    client.post("/v1/completions", json={"model": "made-up-" * 3, "prompt": "x", "temperature": 9})
    after = samples(client)

    def moved(**labels):
        return value(after, "lmgate_requests_total", **labels) - value(before, "lmgate_requests_total", **labels)

    # A name nobody serves is not a label (clients must not grow the label sets): ``unknown``.
    unknown = {"model": "unknown", "backend": "unknown", "transport": "http"}
    assert moved(**unknown, status="invalid_request_error") == 2
    assert moved(**unknown, status="model_not_found") == 1  # a 404 is told apart from a 400
    assert moved(**HTTP, status="invalid_request_error") == 2


def test_a_client_that_leaves_mid_stream_is_counted_as_aborted():
    with ServerThread(validate_settings({
        "server": {"grpc_port": 0},
        "models": [{"name": "echo", "backend": "fake", "token_delay_s": 0.05}],
    })) as server:  # fmt: skip
        body = {"model": "echo", "prompt": " ".join(["word"] * 40), "max_tokens": 40, "stream": True}
        with httpx.stream("POST", f"{server.base_url}/v1/completions", json=body) as response:
            events = (line for line in response.iter_lines() if line.startswith("data: "))
            received = [next(events) for _ in range(3)]
        aborted = {**HTTP, "status": "aborted"}
        for _ in range(300):
            snapshot = samples(httpx.Client(base_url=server.base_url))
            if value(snapshot, "lmgate_requests_total", **aborted) == 1:
                break
            time.sleep(0.01)
        assert value(snapshot, "lmgate_requests_total", **aborted) == 1
        assert value(snapshot, "lmgate_requests_total", **HTTP, status="ok") == 0
        # What it streamed before leaving was generated: counted, though no final usage came.
        assert value(snapshot, "lmgate_generation_tokens_total", model="echo", backend="fake") >= len(received)


async def test_a_client_that_leaves_before_a_non_streamed_answer_is_counted_as_aborted_not_as_an_error():
    with ServerThread(validate_settings({
        "server": {"grpc_port": 0},
        "models": [{"name": "echo", "backend": "fake", "stall_after": 0}],  # not even a first token
    })) as server:  # fmt: skip
        async with httpx.AsyncClient(base_url=server.base_url) as http:
            request = asyncio.create_task(http.post("/v1/completions", json={"model": "echo", "prompt": "a b"}))
            pool = server.app.state.models.pools["echo"]
            for _ in range(1000):
                if pool.gate.running:
                    break
                await asyncio.sleep(0.01)
            request.cancel()
            await asyncio.gather(request, return_exceptions=True)
            for _ in range(1000):
                snapshot = samples(httpx.Client(base_url=server.base_url))
                if value(snapshot, "lmgate_requests_total", **HTTP, status="aborted") == 1:
                    break
                await asyncio.sleep(0.01)
        assert value(snapshot, "lmgate_requests_total", **HTTP, status="aborted") == 1
        assert value(snapshot, "lmgate_requests_total", **HTTP, status="internal_error") == 0


def test_one_json_log_line_per_request_without_the_prompt(client, caplog):
    with caplog.at_level(logging.INFO, logger="lmgate.access"):
        client.post("/v1/completions", json={"model": "echo", "prompt": PROMPT}, headers={"X-Request-Id": "r-1"})
    [record] = [r for r in caplog.records if r.name == "lmgate.access"]
    line = json.loads(record.getMessage())
    assert line["request_id"] == "r-1" and line["status"] == "ok" and line["completion_tokens"] == 5
    assert line["transport"] == "http" and line["ttft_s"] >= 0 and "prompt" not in line
    assert line["endpoint"] == "/v1/completions" and line["code"] == 200 and line["finish_reasons"] == ["stop"]
    assert line["ts"].endswith("+00:00") and "error" not in line
    assert "three" not in record.getMessage()


def test_refused_requests_get_a_log_line_with_their_status_code_and_error(client, caplog):
    with caplog.at_level(logging.INFO, logger="lmgate.access"):
        client.post("/v1/completions", json={"model": "echo", "prompt": "x", "temperature": 9})
        client.post("/v1/completions", json={"model": "n" * 100_000, "prompt": "x"})
        client.post("/v1/chat/completions", content=b"x" * 10_000_000)
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "lmgate.access"]
    assert [(line["status"], line["code"]) for line in lines] == [
        ("invalid_request_error", 400),
        ("model_not_found", 404),
        ("payload_too_large", 413),
    ]
    assert "temperature" in lines[0]["error"] and lines[0]["endpoint"] == "/v1/completions"
    assert len(lines[1]["error"]) <= 300  # the 100 KB name is not copied into the log
    assert lines[2]["endpoint"] == "/v1/chat/completions"


def test_prompts_are_logged_only_when_asked(caplog):
    with TestClient(create_app(settings(log_prompts=True))) as client, caplog.at_level(logging.INFO, "lmgate.access"):
        client.post("/v1/completions", json={"model": "echo", "prompt": PROMPT})
    [record] = [r for r in caplog.records if r.name == "lmgate.access"]
    assert json.loads(record.getMessage())["prompt"] == json.dumps(PROMPT)


def test_token_rate_is_the_sum_of_the_last_whole_seconds_over_the_window():
    now = [100.2]
    rate = TokenRate(window=10, clock=lambda: now[0])
    rate.add(30)
    now[0] = 101.5
    rate.add(20)
    assert rate.rate() == 3.0  # second 100 is complete; second 101 is still counting
    now[0] = 102.0
    assert rate.rate() == 5.0
    now[0] = 200.0
    assert rate.rate() == 0.0


def test_the_endpoint_label_knows_every_served_route(client):
    """FastAPI lists an included router as one entry without its paths: the label's set must still
    hold every route (else each would be counted as ``other``)."""
    endpoints = client.app.state.metrics.endpoints
    assert {"/v1/chat/completions", "/v1/completions", "/v1/models", "/v1/responses", "/tokenize"} <= endpoints
    assert "/lmgate.v1.Inference/Chat" in endpoints
