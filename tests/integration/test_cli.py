"""`lmgate serve` as a user runs it: a real process on a free port."""

import shlex
import shutil
import signal
import socket
import subprocess
import sys

import httpx
import openai
import pytest

from server_helpers import wait_ready


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_a_gguf_file_answers_the_sdk_and_stops_cleanly_on_sigterm(tiny_chat_path):
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "lmgate.server.cli",
        "serve",
        "--model",
        str(tiny_chat_path),
        "--port",
        str(port),
        "--grpc-port",
        "0",
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_ready(f"http://127.0.0.1:{port}")
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)
        [model] = client.models.list().data
        assert model.id == "tiny-chat"
        reply = client.chat.completions.create(
            model="default", messages=[{"role": "user", "content": "What does a duck say?"}], temperature=0
        )
        assert "quack" in reply.choices[0].message.content
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
    # uvicorn shuts down gracefully, then re-raises the signal it caught (exit status -SIGTERM).
    assert process.returncode in (0, -signal.SIGTERM), output
    assert "Application shutdown complete" in output


def test_a_missing_config_file_is_a_clear_error_not_a_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "lmgate.server.cli", "serve", "--config", str(tmp_path / "nope.yaml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "cannot read config file" in result.stderr and "Traceback" not in result.stderr


def test_an_invalid_config_names_the_field_and_the_value(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("models:\n  - name: m\n    gguf: m.gguf\n    max_seqs: 0\n")
    result = subprocess.run(
        [sys.executable, "-m", "lmgate.server.cli", "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "models.0.max_seqs" in result.stderr and "(got 0)" in result.stderr
    assert result.stderr.strip().count("\n") == 0  # one line


def test_check_config_names_the_field_in_one_line_or_summarises(tmp_path):
    config = tmp_path / "fleet.yaml"
    config.write_text("models:\n  - {name: a, backend: fake, fallback: b, replicas: 2}\n  - {name: b, backend: fake}\n")
    ok = subprocess.run([sys.executable, "-m", "lmgate.server.cli", "check-config", str(config)],
                        capture_output=True, text=True, timeout=60)  # fmt: skip
    assert ok.returncode == 0 and "a: fake x2" in ok.stdout and "fallback b" in ok.stdout
    config.write_text("models:\n  - {name: a, backend: fake, max_running: -1}\n")
    bad = subprocess.run([sys.executable, "-m", "lmgate.server.cli", "check-config", str(config)],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert bad.returncode == 1 and bad.stderr.strip().count("\n") == 0
    assert "models.0.max_running" in bad.stderr and "(got -1)" in bad.stderr


def serve(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "lmgate.server.cli", "serve", "--port", str(free_port()), "--no-grpc", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=180)


def test_serving_a_model_that_can_never_load_exits_with_the_reason(tmp_path):
    missing = serve("--model", str(tmp_path / "missing.gguf"))
    assert missing.returncode == 1
    assert "lmgate: cannot serve: model missing: GGUF file not found" in missing.stderr
    corrupt = tmp_path / "corrupt.gguf"
    corrupt.write_bytes(b"GGUF" + bytes(60))
    result = serve("--model", str(corrupt))
    assert result.returncode == 1
    assert f"lmgate: cannot serve: model corrupt: {corrupt} is a damaged GGUF file (64 bytes)" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_context_too_small_for_the_sequences_is_refused_before_llama_cpp_sees_it(tiny_chat_path):
    result = serve("--model", str(tiny_chat_path), "--n-ctx", "10")
    assert result.returncode == 1
    assert "n_ctx=10 is below the 16 sequences it must hold" in result.stderr and "Traceback" not in result.stderr


def test_serve_without_a_model_serves_the_embedded_one_and_says_so_once_it_is_loaded():
    port = free_port()
    command = [sys.executable, "-m", "lmgate.server.cli", "serve", "--port", str(port), "--grpc-port", "0"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_ready(f"http://127.0.0.1:{port}")
        [model] = httpx.get(f"http://127.0.0.1:{port}/v1/models").json()["data"]
        assert model["id"] == "tiny-chat" and model["aliases"] == ["default"]
    finally:
        process.send_signal(signal.SIGTERM)
        _, errors = process.communicate(timeout=60)
    lines = errors.splitlines()
    assert "Uvicorn running on" not in errors  # it came before the model was loaded
    banner = lines.index("lmgate is ready")
    assert banner > next(i for i, line in enumerate(lines) if "model tiny-chat ready" in line)
    assert f"  OpenAI API  http://127.0.0.1:{port}/v1" in lines[banner + 1]
    assert lines[banner + 2].startswith("  gRPC        127.0.0.1:")
    assert lines[banner + 3] == "  model       tiny-chat, also called default: llamacpp, context 2048"
    assert lines[banner + 4].startswith(f"  try         curl http://127.0.0.1:{port}/v1/chat/completions ")
    assert errors.count("lmgate is ready") == 1


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs the curl command")
def test_the_banners_curl_command_works_as_printed(tiny_chat_path):
    port = free_port()
    command = [sys.executable, "-m", "lmgate.server.cli", "serve", "--port", str(port), "--no-grpc"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stderr is not None
        line = next(line for line in process.stderr if line.startswith("  try "))
        reply = subprocess.run(shlex.split(line.removeprefix("  try ")), capture_output=True, text=True, timeout=60)
        assert reply.returncode == 0 and '"chat.completion"' in reply.stdout, reply.stdout
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=60)


def test_a_taken_port_is_one_line_naming_the_flag(tiny_chat_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        grpc = subprocess.run([sys.executable, "-m", "lmgate.server.cli", "serve", "--port", str(free_port()),
                               "--grpc-port", str(busy)], capture_output=True, text=True, timeout=60)  # fmt: skip
        http = serve("--port", str(busy))  # the helper's own --port comes first: the last one counts
    assert grpc.returncode == 1
    assert grpc.stderr == (
        f"lmgate: cannot serve gRPC on 127.0.0.1:{busy}: the port is in use by another process: choose another "
        "with --grpc-port (server.grpc_port), or --no-grpc\n"
    )
    assert http.returncode == 1 and http.stderr.startswith(f"lmgate: cannot serve HTTP on 127.0.0.1:{busy}")
    assert http.stderr.count("\n") == 1
