"""The LoRA adapters loaded over one model, and which of them the context applies.

llama.cpp applies adapters per context, not per sequence: every sequence of one ``llama_decode``
runs with the context's current set. The scheduler therefore puts the sequences of one adapter (or
of the base model) in each step (backends/llamacpp/scheduler.py), and the runner calls
``activate`` with that step's adapter before decoding. Changing the set makes llama.cpp rebuild its
compute graph at the next decode, a cost paid only when consecutive steps serve different adapters.

Each adapter is checked against the base model's GGUF before llama.cpp sees it
(backends/llamacpp/lora_file.py). Owned by the engine thread, like the context.
"""

from __future__ import annotations

import ctypes
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import llama_cpp

from lmgate.backends.errors import ModelLoadError
from lmgate.backends.llamacpp.lora_file import LoraFileError, check_lora_file
from lmgate.backends.lora import LoraAdapter

log = logging.getLogger(__name__)

_NONE = object()
"""``_active`` before the first ``activate``: neither the base model (None) nor any adapter."""


@dataclass(frozen=True, slots=True)
class _Loaded:
    handle: Any
    """llama.cpp's ``llama_adapter_lora *`` (the bindings' pointer type)."""
    scale: float


class LoraSet:
    """The adapters of one model, by name; ``close()`` frees them (before the model is freed)."""

    def __init__(self, model: Any, ctx: Any, base: Path, adapters: list[LoraAdapter]) -> None:
        """Check and load every adapter over ``model`` (a ``llama_model *``) for ``ctx``; ModelLoadError
        naming the adapter if one cannot be served (the ones loaded before it are freed)."""
        self._ctx = ctx
        self._loaded: dict[str, _Loaded] = {}
        self._active: object = _NONE
        try:
            for adapter in adapters:
                self._loaded[adapter.name] = self._load(model, base, adapter)
        except BaseException:
            self.close()
            raise

    @staticmethod
    def _load(model: Any, base: Path, adapter: LoraAdapter) -> _Loaded:
        try:
            info = check_lora_file(Path(adapter.path), base, name=adapter.name)
        except LoraFileError as exc:
            raise ModelLoadError(f"{exc} (the model's `lora_adapters` setting)") from exc
        handle = llama_cpp.llama_adapter_lora_init(model, str(adapter.path).encode())
        if not handle:
            raise ModelLoadError(f"llama.cpp could not load LoRA adapter {adapter.name!r} ({adapter.path}); "
                                 "run with log_level: debug for its reason")  # fmt: skip
        log.info("LoRA adapter %s: rank %d, alpha %g, scale %g, %d weights adapted", adapter.name, info.rank,
                 info.alpha, adapter.scale, len(info.adapted))  # fmt: skip
        return _Loaded(handle, adapter.scale)

    @property
    def names(self) -> frozenset[str]:
        return frozenset(self._loaded)

    def activate(self, name: str | None) -> None:
        """Make the next decodes run with adapter ``name`` (None: the base model alone). A no-op when it
        is active already. KeyError for a name not loaded (the host refuses those before they get here)."""
        if name == self._active:
            return
        if name is None:
            llama_cpp.llama_set_adapters_lora(self._ctx, None, 0, None)
        else:
            loaded = self._loaded[name]
            handles = (llama_cpp.llama_adapter_lora_p_ctypes * 1)(loaded.handle)
            scales = (ctypes.c_float * 1)(loaded.scale)
            llama_cpp.llama_set_adapters_lora(self._ctx, handles, 1, scales)
        self._active = name

    def close(self) -> None:
        """Detach every adapter from the context and free them; idempotent."""
        if self._loaded and self._active is not _NONE and self._active is not None:
            llama_cpp.llama_set_adapters_lora(self._ctx, None, 0, None)
        for loaded in self._loaded.values():
            llama_cpp.llama_adapter_lora_free(loaded.handle)
        self._loaded.clear()
        self._active = _NONE
