"""The servers a benchmark runs: started as processes, ready once they answer a one-token completion."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

CACHE = Path(".cache/bench")
"""Built models, llama-server builds, logs and generated configs of the benchmarks."""


@dataclass(frozen=True)
class Server:
    name: str
    command: list[str]
    env: dict[str, str] | None = None


def lmgate_server(name: str, *args: str, python: str = sys.executable) -> Server:
    """``lmgate serve`` with ``args`` (HTTP only: several gateways run side by side), quiet logs."""
    command = [python, "-m", "lmgate.server.cli", "serve", "--no-grpc", "--log-level", "warning", *args]
    return Server(name, command)


def llama_server(binary: Path, name: str, *args: str) -> Server:
    """llama-server with ``args``; its directory is on the library path, for a build with shared libraries."""
    return Server(name, [str(binary), *args], env={"LD_LIBRARY_PATH": str(binary.parent)})


@contextlib.contextmanager
def serving(server: Server, port: int) -> Iterator[str]:
    """The server's URL once it answers a one-token completion; the server stops on exit."""
    with serving_process(server, port) as (url, _):
        yield url


@contextlib.contextmanager
def serving_all(servers: Mapping[str, tuple[Server, int]]) -> Iterator[dict[str, str]]:
    """Every server (name → (server, port)) up at once: name → URL; all stop on exit."""
    with contextlib.ExitStack() as stack:
        yield {name: stack.enter_context(serving(server, port)) for name, (server, port) in servers.items()}


@contextlib.contextmanager
def serving_process(server: Server, port: int) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """As ``serving``, with the server's process (its pid, for CPU accounting)."""
    url = f"http://127.0.0.1:{port}"
    log = (CACHE / f"{server.name}.log").open("w")
    env = {**os.environ, **(server.env or {})}
    process = subprocess.Popen(server.command, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        for _ in range(600):
            if process.poll() is not None:
                raise RuntimeError(f"{server.name} exited with {process.returncode}; see {log.name}")
            with contextlib.suppress(httpx.HTTPError):  # ready = answers a one-token completion
                body = {"model": "default", "prompt": "Hi", "max_tokens": 1}
                if httpx.post(f"{url}/v1/completions", json=body, timeout=30).status_code == 200:
                    break
            time.sleep(0.5)
        yield url, process
    finally:
        process.terminate()
        process.wait(timeout=60)
        log.close()


def scrape(url: str, name: str) -> list[tuple[dict[str, str], float]]:
    """The samples (labels, value) named ``name`` in the server's /metrics (a counter's ``_total``)."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return [(s.labels, s.value) for f in text_string_to_metric_families(text) for s in f.samples if s.name == name]
