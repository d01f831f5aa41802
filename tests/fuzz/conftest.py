"""The fuzz tier (make test-fuzz): a real server on loopback, fed what its own schemas allow.

The server runs the shipped model with a small context (every generation the fuzzer can ask for
ends within 256 tokens) next to a fake model, so thousands of requests finish in minutes.
"""

from __future__ import annotations

import pytest

from lmgate.server.settings import validate_settings

from server_helpers import ServerThread

MODELS = ("tiny-chat", "default", "echo")
"""Names the fuzzer sends: the real engine (by name and alias) and the fake one; it also sends
names no model has."""


@pytest.fixture(scope="session")
def fuzz_server(tiny_chat_path):
    settings = validate_settings({
        "server": {"grpc_port": 0},
        "models": [
            {"name": "tiny-chat", "aliases": ["default"], "gguf": str(tiny_chat_path), "n_ctx": 256, "max_seqs": 4,
             "check_integrity": True},
            {"name": "echo", "backend": "fake", "context_length": 256},
        ],
    })  # fmt: skip
    with ServerThread(settings) as server:
        yield server


def assert_idle(server: ServerThread) -> None:
    """Every model back to rest: no slot held, no sequence or KV cell left in the engine."""
    for name in ("tiny-chat", "echo"):
        stats = server.wait_idle(name)
        assert (stats.running, stats.waiting, stats.kv_cells_used) == (0, 0, 0), name
        assert server.app.state.models.pools[name].gate.running == 0, name
