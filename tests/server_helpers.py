"""A real lmgate HTTP server on 127.0.0.1 in a background thread, for integration tests."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import openai
import uvicorn
from prometheus_client.parser import text_string_to_metric_families

from lmgate.backends.types import BackendStats
from lmgate.server.app import create_app
from lmgate.server.settings import Settings


class ServerThread:
    """``with ServerThread(settings) as server:`` serves on a free port until the block ends."""

    def __init__(self, settings: Settings, *, wait_ready: bool = True) -> None:
        self.app = create_app(settings)
        self._wait_ready = wait_ready
        config = uvicorn.Config(self.app, host="127.0.0.1", port=0, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="test-server", daemon=True)
        self.base_url = ""

    def __enter__(self) -> ServerThread:
        self.thread.start()
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError("the test server failed to start")
            time.sleep(0.01)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.base_url = f"http://127.0.0.1:{port}"
        if self._wait_ready:
            wait_ready(self.base_url)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=60)

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.app.state.grpc.port}"

    def stats(self, model: str) -> BackendStats:
        return self.app.state.models.pools[model].stats()

    def wait_idle(self, model: str) -> BackendStats:
        """Wait (bounded) until the engine holds no sequence, then return its stats."""
        for _ in range(1000):
            stats = self.stats(model)
            if stats.running == stats.waiting == 0:
                return stats
            time.sleep(0.01)
        return self.stats(model)


def wait_ready(base_url: str, attempts: int = 600) -> None:
    for _ in range(attempts):
        try:
            if httpx.get(f"{base_url}/ready").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{base_url} never became ready")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Process:
    """`lmgate serve` in a subprocess, on free HTTP and gRPC ports."""

    def __init__(
        self, config: Path, grpc_port: int | None = None, env: dict[str, str] | None = None, log: Path | None = None
    ) -> None:
        """``env``: variables added to this process's; ``log``: a file for its stderr, at INFO (else none)."""
        self.http, self.grpc = free_port(), grpc_port or free_port()
        level = "info" if log is not None else "warning"
        command = [sys.executable, "-m", "lmgate.server.cli", "serve", "--config", str(config),
                   "--port", str(self.http), "--grpc-port", str(self.grpc), "--log-level", level]  # fmt: skip
        with log.open("w") if log is not None else contextlib.nullcontext(subprocess.DEVNULL) as stderr:
            self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr,
                                            env={**os.environ, **env} if env else None)  # fmt: skip
        self.url = f"http://127.0.0.1:{self.http}"
        self.target = f"127.0.0.1:{self.grpc}"

    def metric(self, name: str, **labels: str) -> float:
        text = httpx.get(f"{self.url}/metrics").text
        return sum(
            s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
        )

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(timeout=60)


def config(tmp: Path, name: str, models: list[dict]) -> Path:
    path = tmp / f"{name}.yaml"
    path.write_text(json.dumps({"models": models}))  # JSON is YAML
    return path


def ask(client: openai.OpenAI, model: str, question: str, **params: object) -> str:
    """One chat question to ``model`` through the official SDK; greedy and 64 tokens unless ``params`` say."""
    params.setdefault("temperature", 0)
    params.setdefault("max_tokens", 64)
    reply = client.chat.completions.create(model=model, messages=[{"role": "user", "content": question}], **params)
    return reply.choices[0].message.content


def poll(condition: Callable[[], object], what: str, attempts: int = 1200) -> None:
    """Wait (50 ms a try) until ``condition()`` is true; AssertionError naming ``what`` if it never is."""
    for _ in range(attempts):
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"never happened: {what}")


def ask_front(front: Process, question: str) -> str:
    """One short greedy chat question (8 tokens) to the model ``chat`` of a front gateway."""
    client = openai.OpenAI(base_url=f"{front.url}/v1", api_key="unused", max_retries=0, timeout=120)
    return ask(client, "chat", question, max_tokens=8)
