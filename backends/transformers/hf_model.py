"""A Hugging Face causal LM and its tokenizer, loaded for CPU serving.

transformers picks the quantizer from the checkpoint's ``quantization_config``: GPTQ and AWQ
checkpoints get GPTQModel's CPU kernels, FP16/BF16/FP32 ones load as they are. Imported only when
a ``transformers`` model is configured (torch is an optional dependency).
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from lmgate.backends.errors import ModelLoadError
from lmgate.backends.transformers.config import TransformersConfig

log = logging.getLogger(__name__)

_LOADING = threading.Lock()
"""transformers sets torch's process-wide default dtype while it builds a model: two loads at once
(an AWQ model in bf16 beside an FP32 one) would give one of them the other's dtype. One at a time."""

_DTYPES: dict[str, Any] = {
    "auto": "auto", "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
}  # fmt: skip


class HfModel:
    """The loaded model (eval mode, on CPU), its tokenizer and the facts the engine needs."""

    def __init__(self, config: TransformersConfig) -> None:
        torch.set_num_threads(config.threads)
        path = str(config.model)
        try:
            with _LOADING:
                self.tokenizer = AutoTokenizer.from_pretrained(path)
                self.model = AutoModelForCausalLM.from_pretrained(path, dtype=_DTYPES[config.dtype], device_map="cpu")
        except (OSError, ValueError, ImportError) as exc:
            raise ModelLoadError(f"transformers could not load {path}: {exc}") from exc
        self.model.eval()
        hf = self.model.config
        quant = getattr(hf, "quantization_config", None)
        self.quantization: str | None = _quant_method(quant)
        trained = getattr(hf, "max_position_embeddings", None) or 2048
        self.max_model_len = config.max_model_len or trained
        self.n_vocab = len(self.tokenizer)
        """Ids the tokenizer knows; the logits may be wider (padded embeddings) and are cut to this."""
        self.eos_ids = frozenset(_eos_ids(self.tokenizer, path))
        log.info("loaded %s (%s, %s) on %d threads", path, self.model.dtype, self.quantization or "unquantized",
                 torch.get_num_threads())  # fmt: skip


def _quant_method(quant: Any) -> str | None:
    if quant is None:
        return None
    method = quant.get("quant_method") if isinstance(quant, dict) else getattr(quant, "quant_method", None)
    return str(getattr(method, "value", method)) if method is not None else None


def _eos_ids(tokenizer: Any, path: str) -> set[int]:
    """End-of-generation ids: the tokenizer's EOS and every id of the generation config's list."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    try:
        eos = GenerationConfig.from_pretrained(path).eos_token_id
    except OSError:  # no generation_config.json
        eos = None
    if isinstance(eos, int):
        ids.add(eos)
    elif eos:
        ids.update(eos)
    return ids
