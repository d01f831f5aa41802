from __future__ import annotations

import pytest

from lmgate.server.settings import validate_settings

from server_helpers import ServerThread

MODEL = "tiny-chat"


@pytest.fixture(scope="session")
def server(tiny_chat_path):
    settings = validate_settings(
        {
            "models": [
                {
                    "name": MODEL,
                    "aliases": ["default"],
                    "gguf": str(tiny_chat_path),
                    "max_seqs": 8,
                    "n_ctx": 4096,
                    "check_integrity": True,
                }
            ]
        }
    )
    with ServerThread(settings) as server:
        yield server
