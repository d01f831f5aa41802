"""400s from the real server name the field and a short value, never the conversation; a body not sent
as JSON gets a message that says so."""

from __future__ import annotations

import httpx
import pytest

SECRET = "my private diary entry"


def chat(server, body: dict, **headers: str) -> httpx.Response:
    return httpx.post(f"{server.base_url}/v1/chat/completions", json=body, headers=headers, timeout=60)


def body(**extra: object) -> dict:
    return {"model": "default", "messages": [{"role": "user", "content": SECRET}], "max_tokens": 4, **extra}


@pytest.mark.parametrize(
    ("extra", "param", "says"),
    [
        ({"tools": [{"type": "function", "function": {"name": "f g", "description": SECRET}}]}, "tools.0.function.name",
         "tools.0.function.name: a function name is 1 to 64 letters, digits, underscores or dashes, got 'f g'"),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {
            "type": "object", "description": SECRET, "properties": {"a": {"type": "strin"}}}}}}, "response_format",
         "response_format: Invalid type: strin"),
        ({"top_logprobs": 2}, None, "body: top_logprobs requires logprobs to be true"),
        ({"stream_options": {"include_usage": True}}, None, "body: stream_options is only allowed when stream is true"),
        ({"temperature": "x" * 10_000}, "temperature", "temperature: Input should be a valid number"),
    ],
)  # fmt: skip
def test_a_400_names_the_field_and_never_echoes_the_request(server, extra, param, says):
    response = chat(server, body(**extra))
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error"
    assert says in error["message"]
    assert SECRET not in response.text and "messages" not in error["message"]
    assert len(error["message"]) < 300


def test_a_long_value_is_quoted_short(server):
    message = chat(server, body(temperature="x" * 10_000)).json()["error"]["message"]
    assert message.endswith(f"(got '{'x' * 60}'... (10000 characters))")


def test_a_body_that_is_not_an_object_is_described_not_echoed(server):
    response = httpx.post(f"{server.base_url}/v1/chat/completions", json=[SECRET, SECRET], timeout=60)
    assert response.status_code == 400 and SECRET not in response.text
    assert response.json()["error"]["message"].startswith("body: Input should be a valid dictionary")
    assert "(got a list of 2 items)" in response.json()["error"]["message"]


@pytest.mark.parametrize("content_type", ["application/x-www-form-urlencoded", "text/plain", None])
def test_a_body_not_sent_as_json_is_told_the_header_to_add(server, content_type):
    # What `curl -d '{...}'` sends without -H: a form. vLLM refuses it too, and so does a missing header.
    headers = {"content-type": content_type} if content_type else {}
    request = httpx.Request("POST", f"{server.base_url}/v1/completions", headers=headers,
                            content=b'{"model": "default", "prompt": "Once upon a time", "max_tokens": 4}')  # fmt: skip
    assert ("content-type" in request.headers) == (content_type is not None)
    with httpx.Client(timeout=60) as client:
        response = client.send(request)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "unsupported_media_type"
    assert "the request body must be JSON, sent with `Content-Type: application/json`" in error["message"]
    assert f"(this request's is {content_type or 'missing'})" in error["message"]
    assert "with curl, add -H 'Content-Type: application/json'" in error["message"]


def test_json_with_a_charset_is_json(server):
    response = httpx.post(f"{server.base_url}/v1/completions", timeout=60,
                          content=b'{"model": "default", "prompt": "Once upon a time", "max_tokens": 4}',
                          headers={"content-type": "application/json; charset=utf-8"})  # fmt: skip
    assert response.status_code == 200, response.text
