"""Backend kinds and how to build them, with lazy imports.

A kind's module is imported only when a model of that kind is configured, so a CPU deployment
never imports vLLM. Each kind pairs a pydantic config class (pure, importable anywhere: the
server validates YAML with it) with the backend class that takes it.
"""

from __future__ import annotations

import enum
import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lmgate.backends.base import Backend


class BackendKind(enum.StrEnum):
    LLAMACPP = "llamacpp"
    GRPC = "grpc"
    OPENAI = "openai"
    VLLM = "vllm"
    TRANSFORMERS = "transformers"
    FAKE = "fake"


_BACKENDS: dict[BackendKind, str] = {
    # The in-process engines run in a supervised engine process each (backends/engine/process_backend.py).
    BackendKind.LLAMACPP: "lmgate.backends.engine.process_backend:ProcessBackend",
    BackendKind.GRPC: "lmgate.backends.grpc.backend:GrpcBackend",
    BackendKind.OPENAI: "lmgate.backends.openai.backend:OpenAIBackend",
    BackendKind.VLLM: "lmgate.backends.vllm.backend:VllmBackend",
    BackendKind.TRANSFORMERS: "lmgate.backends.engine.process_backend:ProcessBackend",
    BackendKind.FAKE: "lmgate.backends.fake.backend:FakeBackend",
}


def create_backend(name: str, config: Any) -> Backend:
    """Build (not start) the backend for ``config``, whose ``backend`` field names its kind."""
    try:
        kind = BackendKind(config.backend)
    except ValueError:
        known = ", ".join(k.value for k in BackendKind)
        raise ValueError(f"unknown backend kind {config.backend!r}; known kinds: {known}") from None
    module_name, _, class_name = _BACKENDS[kind].partition(":")
    backend_class: Callable[[str, Any], Backend] = getattr(importlib.import_module(module_name), class_name)
    return backend_class(name, config)
