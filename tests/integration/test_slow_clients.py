"""Clients that send too slowly or too much, against a real `lmgate serve` on loopback."""

import json
import socket

import httpx
import pytest

from server_helpers import Process, wait_ready


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    path = tmp_path_factory.mktemp("slow") / "slow.yaml"
    limits = {"header_timeout_s": 0.5, "body_timeout_s": 0.5, "max_body_bytes": 4096}
    path.write_text(json.dumps({"server": limits, "models": [{"name": "echo", "backend": "fake"}]}))
    process = Process(path)
    wait_ready(process.url)
    yield process
    process.stop()


def exchange(server: Process, data: bytes) -> bytes:
    """Send ``data`` and read until the server closes the connection (the socket timeout is only a
    guard against a test that would otherwise hang)."""
    with socket.create_connection(("127.0.0.1", server.http), timeout=60) as sock:
        sock.sendall(data)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
        return received


def test_a_connection_that_never_finishes_its_headers_gets_408_and_is_closed(server):
    reply = exchange(server, b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: appl")
    assert reply.startswith(b"HTTP/1.1 408")


def test_a_connection_that_sends_nothing_is_closed(server):
    assert exchange(server, b"").startswith(b"HTTP/1.1 408")


def test_a_body_that_does_not_arrive_gets_an_openai_shaped_408(server):
    head = b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
    reply = exchange(server, head + b'{"model": ')
    status, _, body = reply.partition(b"\r\n\r\n")
    assert status.startswith(b"HTTP/1.1 408")
    assert "body_timeout_s" in json.loads(body)["error"]["message"]


def test_a_chunked_body_over_the_cap_is_413(server):
    def chunks():
        yield b'{"model": "echo", "prompt": "'
        for _ in range(10):
            yield b"x" * 1000
        yield b'"}'

    headers = {"content-type": "application/json"}
    response = httpx.post(f"{server.url}/v1/completions", content=chunks(), headers=headers)
    assert response.status_code == 413
    assert "4096 bytes" in response.json()["error"]["message"]


def test_a_request_sent_in_pieces_within_the_deadlines_is_served(server):
    body = json.dumps({"model": "echo", "prompt": "one two"}).encode()
    head = (b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nConnection: close\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body))  # fmt: skip
    with socket.create_connection(("127.0.0.1", server.http), timeout=60) as sock:
        for piece in (head[:20], head[20:], body[:5], body[5:]):
            sock.sendall(piece)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    assert received.startswith(b"HTTP/1.1 200")
    assert json.loads(received.partition(b"\r\n\r\n")[2])["choices"][0]["text"] == "one two"
