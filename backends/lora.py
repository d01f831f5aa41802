"""LoRA adapters a model entry serves as model names of their own, over one copy of the base weights.

Pure pydantic, no engine import: the server validates a config file without loading anything. The
llama.cpp engine loads GGUF adapters (``llama_adapter_lora_init``, checked first by
backends/llamacpp/lora_file.py); vLLM loads PEFT directories (``LoRARequest``). A request names an
adapter by its ``model``; the gateway resolves the name to the base model's pool and sets
``GenerateRequest.adapter`` (server/placement/dispatch.py).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

ADAPTER_NAME = r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$"
"""The same rule as a model name (server/settings.py): an adapter is a model name to clients."""

MAX_SCALE = 4.0
"""Scales beyond this only amplify an adapter's noise (llama-server and PEFT users stay within 0..2)."""


class LoraAdapter(BaseModel):
    """One adapter: the model name that reaches it, its file and how strongly it applies."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=ADAPTER_NAME, description="The model name clients put in `model` to use the adapter.")
    path: Path = Field(
        description="llamacpp: the adapter's GGUF file (general.type = adapter, e.g. from llama.cpp's "
        "convert_lora_to_gguf.py); vllm: a PEFT adapter directory. Relative to the config file's directory."
    )
    scale: float = Field(
        default=1.0,
        gt=0.0,
        le=MAX_SCALE,
        description="llamacpp: the adapter's strength (llama-server's --lora-scaled), on top of its own "
        "alpha / rank; vllm applies adapters at their trained strength, so it must stay 1.0 there.",
    )


def adapters_named(adapters: list[LoraAdapter]) -> dict[str, LoraAdapter]:
    """The adapters by name; ValueError naming the first name given twice."""
    named: dict[str, LoraAdapter] = {}
    for adapter in adapters:
        if adapter.name in named:
            raise ValueError(f"lora_adapters: {adapter.name!r} is named twice: every adapter needs a name of its own")
        named[adapter.name] = adapter
    return named
