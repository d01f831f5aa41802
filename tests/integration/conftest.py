from __future__ import annotations

import pytest

from lmgate.server.settings import validate_settings

from server_helpers import ServerThread

MODEL = "tiny-chat"


def tiny_chat_settings(path, **server):
    return validate_settings({
        "server": {"grpc_port": 0, **server},
        "models": [
            {"name": MODEL, "aliases": ["default"], "gguf": str(path), "max_seqs": 8, "n_ctx": 4096,
             "check_integrity": True}
        ],
    })  # fmt: skip


@pytest.fixture(scope="session")
def server(tiny_chat_path):
    with ServerThread(tiny_chat_settings(tiny_chat_path)) as server:
        yield server
