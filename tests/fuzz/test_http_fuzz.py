"""Property-based fuzzing of the HTTP API from its own OpenAPI schema (schemathesis, as vLLM does):
whatever the schema lets through, and what it does not, the server answers without a 5xx, every
error is an OpenAI-shaped body, and the engine is idle afterwards."""

from __future__ import annotations

import json

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from conftest import MODELS, assert_idle

REQUEST_SCHEMAS = ("ChatCompletionRequest", "CompletionRequest", "ResponsesRequest", "TokenizeBody", "DetokenizeBody",
                   "EmbeddingsBody")  # fmt: skip


@pytest.fixture(scope="session")
def api_schema(fuzz_server):
    """The server's /openapi.json, with ``model`` drawn from the served names (plus unknown ones)."""
    document = httpx.get(f"{fuzz_server.base_url}/openapi.json").json()
    for name in REQUEST_SCHEMAS:
        document["components"]["schemas"][name]["properties"]["model"] = {"enum": [*MODELS, "nope"]}
    document["paths"]["/v1/models/{model}"]["get"]["parameters"][0]["schema"] = {"enum": [*MODELS, "nope"]}
    return schemathesis.openapi.from_dict(document)


OPERATIONS = ("POST /v1/chat/completions", "POST /v1/completions", "POST /v1/responses", "GET /v1/models",
              "GET /v1/models/{model}", "POST /tokenize", "POST /detokenize", "GET /v1/responses/{response_id}",
              "GET /health", "GET /ready", "GET /metrics", "POST /v1/embeddings")  # fmt: skip
EXAMPLES = {"POST /v1/chat/completions": 300, "POST /v1/completions": 300, "POST /v1/responses": 200,
            "POST /tokenize": 100, "POST /detokenize": 100, "POST /v1/embeddings": 100}  # fmt: skip
RESPONSE_ENDS = ("response.completed", "response.incomplete", "response.failed")


@pytest.mark.parametrize("label", OPERATIONS)
def test_no_request_gets_a_server_error(api_schema, fuzz_server, label):
    operation = api_schema.find_operation_by_label(label)

    # derandomize: the same examples on every run, so that CI is reproducible.
    @settings(max_examples=EXAMPLES.get(label, 25), deadline=None, derandomize=True,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(case=operation.as_strategy())
    def served_without_a_server_error(case):
        response = case.call(base_url=fuzz_server.base_url, timeout=120)
        assert response.status_code < 500, (case.body, response.text[:500])
        if response.status_code >= 400:
            error = response.json()["error"]
            assert isinstance(error["message"], str) and error["type"], response.text[:500]
        elif "text/event-stream" in response.headers.get("content-type", ""):
            assert_stream_ended_cleanly(response.text, typed=label == "POST /v1/responses")

    served_without_a_server_error()
    assert_idle(fuzz_server)  # after each operation: a leaked stream or slot is pinned to the one that leaked it


def assert_stream_ended_cleanly(text: str, *, typed: bool) -> None:
    """Chat and completions end with ``[DONE]``, the Responses API with a final lifecycle event; neither
    carries an internal error."""
    events = [line[6:] for line in text.splitlines() if line.startswith("data: ")]
    if typed:
        assert json.loads(events[-1])["type"] in RESPONSE_ENDS, events[-1]
        assert all(json.loads(e).get("code") != "internal_error" for e in events), text[-500:]
        return
    assert events[-1] == "[DONE]"
    for event in events[:-1]:
        assert "internal_error" not in json.loads(event).get("error", {}).get("type", ""), event


def test_the_server_is_idle_after_the_fuzzing(fuzz_server):
    assert_idle(fuzz_server)
