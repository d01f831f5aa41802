"""Shared fixtures: the shipped model, a random tiny model built on the fly, markers by folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from lmgate.quantize.random_model import PRESETS, build_random_model

REPO = Path(__file__).resolve().parent.parent
TINY_CHAT = REPO / "models" / "tiny-chat.gguf"
WOOF_LORA = REPO / "models" / "tiny-chat-woof.lora.gguf"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "integration" in item.path.parts:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def tiny_chat_path() -> Path:
    assert TINY_CHAT.is_file(), "models/tiny-chat.gguf is committed with the repo (make model rebuilds it)"
    return TINY_CHAT


@pytest.fixture(scope="session")
def woof_lora_path() -> Path:
    """The embedded model's example LoRA adapter: every answer starts with "Woof!" (make lora-model)."""
    assert WOOF_LORA.is_file(), "models/tiny-chat-woof.lora.gguf is committed with the repo (make lora-model)"
    return WOOF_LORA


@pytest.fixture(scope="session")
def random_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_random_model(tmp_path_factory.mktemp("models") / "test-tiny.gguf", PRESETS["test-tiny"])
