"""The Responses API's gateway logic on the fake backend (which echoes its conversation): how the
conversation is assembled, the stored responses' bounds, the raw event stream, refusals, auth and
metrics. The official SDK against the real engine: tests/integration/test_responses_sdk.py."""

import json
import logging

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from lmgate.server.app import create_app
from lmgate.server.http.responses_objects import ResponseObject
from lmgate.server.http.responses_store import ResponseStore
from lmgate.server.settings import validate_settings

RESPONSES = "/v1/responses"


def settings(*, models=None, **server):
    models = models or [{"name": "echo", "backend": "fake"}]
    return validate_settings({"server": {"grpc_port": 0, **server}, "models": models})


@pytest.fixture(scope="module")
def client():
    with TestClient(create_app(settings())) as client:
        yield client


def create(client, **body):
    response = client.post(RESPONSES, json={"model": "echo"} | body)
    assert response.status_code == 200, response.text
    return response.json()


def text_of(response: dict) -> str:
    return "".join(part["text"] for item in response["output"] for part in item["content"])


def events(response) -> list[tuple[str, dict]]:
    """(event name, data) of each SSE frame."""
    frames = []
    for frame in response.text.split("\n\n"):
        if frame:
            event, data = frame.split("\n")
            frames.append((event.removeprefix("event: "), json.loads(data.removeprefix("data: "))))
    return frames


def test_the_conversation_is_instructions_then_earlier_turns_then_the_input(client):
    first = create(client, instructions="zero", input="one two")
    assert text_of(first) == "zero one two" and first["status"] == "completed"
    second = create(client, instructions="four", input=[{"role": "user", "content": "three"}],
                    previous_response_id=first["id"])  # fmt: skip
    # The first turn's instructions are not carried over (OpenAI's rule); its input and output are.
    assert text_of(second) == "four one two zero one two three"
    assert second["previous_response_id"] == first["id"]


def test_a_response_has_openais_fields(client):
    body = create(client, input="one two", metadata={"k": "v"}, max_output_tokens=8, temperature=0.5)
    assert body["object"] == "response" and body["id"].startswith("resp_") and body["model"] == "echo"
    assert body["usage"] == {"input_tokens": 2, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": 2,
                             "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 4}  # fmt: skip
    assert body["metadata"] == {"k": "v"} and body["max_output_tokens"] == 8 and body["temperature"] == 0.5
    assert body["error"] is None and body["incomplete_details"] is None and body["tools"] == []
    [message] = body["output"]
    assert message["type"] == "message" and message["role"] == "assistant" and message["id"].startswith("msg_")


def test_the_event_stream_is_typed_numbered_and_has_no_done_marker(client):
    response = client.post(RESPONSES, json={"model": "echo", "input": "one two three", "stream": True})
    assert response.headers["content-type"].startswith("text/event-stream")
    frames = events(response)
    assert all(name == data["type"] for name, data in frames)
    assert [data["sequence_number"] for _, data in frames] == list(range(len(frames)))
    assert "".join(d["delta"] for name, d in frames if name == "response.output_text.delta") == "one two three"
    assert frames[0][1]["response"]["status"] == "in_progress" and frames[-1][0] == "response.completed"
    assert "[DONE]" not in response.text


def test_a_stream_cut_by_max_output_tokens_ends_incomplete(client):
    response = client.post(RESPONSES, json={"model": "echo", "input": "one two three", "stream": True,
                                            "max_output_tokens": 2})  # fmt: skip
    name, last = events(response)[-1]
    assert name == "response.incomplete" and last["response"]["incomplete_details"] == {"reason": "max_output_tokens"}
    assert last["response"]["output"][0]["status"] == "incomplete"


def test_an_error_mid_stream_is_an_error_event_then_response_failed():
    models = [{"name": "hung", "backend": "fake", "stall_after": 1, "request_timeout_s": 1}]
    with TestClient(create_app(settings(models=models))) as client:
        response = client.post(RESPONSES, json={"model": "hung", "input": "one two three", "stream": True})
        names = [name for name, _ in events(response)]
        assert names[-2:] == ["error", "response.failed"]
        failed = events(response)[-1][1]["response"]
        assert failed["status"] == "failed" and failed["error"]["code"] and text_of(failed) == "one"
        assert client.get(f"{RESPONSES}/{failed['id']}").status_code == 404  # a failed response is not kept


@pytest.mark.parametrize(
    ("extra", "param", "says"),
    [
        ({"tools": [{"type": "function", "name": "f"}]}, "tools", "does not call tools"),  # the fake model
        ({"tool_choice": "required"}, "tool_choice", "needs tools"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "u"}]}]},
            "input.0.message.content.0",
            "text only",
        ),
        ({"text": {"format": {"type": "json_schema", "schema": {}}}}, "text.format", "has a name"),
        ({"text": {"format": {"type": "json_schema", "name": "x", "schema": {"type": "strin"}}}}, "text", "strin"),
        ({"input": []}, "input", "empty"),
        ({"n": 2}, "n", "one output"),
        ({"background": True}, "background", "background"),
        ({"truncation": "auto"}, "truncation", "disabled"),
        ({"max_output_tokens": 0}, "max_output_tokens", "greater than"),
        ({"previous_response_id": "resp_gone"}, "previous_response_id", "not found"),
    ],
)
def test_what_lmgate_does_not_do_is_refused_naming_the_field(client, extra, param, says):
    response = client.post(RESPONSES, json={"model": "echo", "input": "hi"} | extra)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and says in error["message"] and error["type"] == "invalid_request_error"


def test_an_unknown_previous_response_id_is_openais_400(client):
    error = client.post(RESPONSES, json={"model": "echo", "input": "hi", "previous_response_id": "resp_x"}).json()
    assert error["error"]["code"] == "previous_response_not_found"
    assert client.get(f"{RESPONSES}/resp_x").status_code == 404
    assert client.delete(f"{RESPONSES}/resp_x").status_code == 404


def test_store_false_keeps_nothing(client):
    store = client.app.state.responses
    before = len(store)
    body = create(client, input="one", store=False)
    assert len(store) == before and body["store"] is False
    assert client.get(f"{RESPONSES}/{body['id']}").status_code == 404


def stored(i: int) -> ResponseObject:
    return ResponseObject(id=f"resp_{i}", created_at=0, status="completed", model="m")


def test_the_store_keeps_at_most_max_entries_least_recently_used_out_first():
    store = ResponseStore(max_entries=2, ttl_s=60)
    store.put(stored(1), ())
    store.put(stored(2), ())
    assert store.get("resp_1") is not None  # now the most recently used
    store.put(stored(3), ())
    assert len(store) == 2 and store.get("resp_2") is None and store.get("resp_1") is not None


def test_a_stored_response_lives_ttl_s_and_none_with_max_entries_zero():
    now = [0.0]
    store = ResponseStore(max_entries=10, ttl_s=5, clock=lambda: now[0])
    store.put(stored(1), ())
    now[0] = 4.9
    assert store.get("resp_1") is not None
    now[0] = 5.0
    assert store.get("resp_1") is None and len(store) == 0
    empty = ResponseStore(max_entries=0, ttl_s=5)
    empty.put(stored(1), ())
    assert len(empty) == 0


def test_the_new_endpoints_need_the_api_key(monkeypatch):
    monkeypatch.setenv("TEST_LMGATE_KEYS", "k-one")
    with TestClient(create_app(settings(api_keys_env="TEST_LMGATE_KEYS"))) as client:
        for path, body in [(RESPONSES, {"model": "echo", "input": "hi"}), ("/tokenize", {"prompt": "hi"}),
                           ("/detokenize", {"tokens": [0]})]:  # fmt: skip
            assert client.post(path, json=body).status_code == 401
        assert client.get(f"{RESPONSES}/resp_x").status_code == 401
        ok = client.post(RESPONSES, json={"model": "echo", "input": "hi"}, headers={"Authorization": "Bearer k-one"})
        assert ok.status_code == 200


def requests_total(client, **labels) -> float:
    return sum(
        s.value
        for family in text_string_to_metric_families(client.get("/metrics").text)
        for s in family.samples
        if s.name == "lmgate_requests_total" and all(s.labels.get(k) == v for k, v in labels.items())
    )


def test_metrics_and_the_request_log_name_the_endpoint(client, caplog):
    before = {e: requests_total(client, endpoint=e, status="ok") for e in (RESPONSES, "/tokenize", "/detokenize")}
    with caplog.at_level(logging.INFO, logger="lmgate.access"):
        create(client, input="one two")
        ids = client.post("/tokenize", json={"prompt": "one two"}).json()["tokens"]
        assert client.post("/detokenize", json={"tokens": ids}).json() == {"prompt": "one two"}
    for endpoint, count in before.items():
        assert requests_total(client, endpoint=endpoint, status="ok", model="echo") == count + 1
    logged = [json.loads(r.getMessage()) for r in caplog.records if r.name == "lmgate.access"]
    assert [line["endpoint"] for line in logged] == [RESPONSES, "/tokenize", "/detokenize"]
    assert logged[0]["completion_tokens"] == 2 and logged[0]["status"] == "ok"


def test_a_path_a_client_made_up_is_counted_as_other_endpoint(monkeypatch):
    monkeypatch.setenv("TEST_LMGATE_KEYS", "k-one")
    with TestClient(create_app(settings(api_keys_env="TEST_LMGATE_KEYS"))) as client:
        client.post("/v1/made-up-path-123", json={})
        assert requests_total(client, endpoint="other", status="unauthenticated") == 1
        assert requests_total(client, endpoint="/v1/made-up-path-123") == 0


def test_tokenize_on_a_backend_without_a_template_refuses_messages_by_name(client):
    response = client.post("/tokenize", json={"messages": [{"role": "user", "content": "hi"}]})
    assert response.status_code == 400 and response.json()["error"]["param"] == "messages"
    several = settings(models=[{"name": "a", "backend": "fake"}, {"name": "b", "backend": "fake"}])
    with TestClient(create_app(several)) as two:
        refused = two.post("/tokenize", json={"prompt": "hi"})
        assert refused.status_code == 400 and refused.json()["error"]["param"] == "model"
