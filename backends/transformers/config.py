"""Settings of the ``transformers`` backend: an HF checkpoint (FP32/FP16/BF16, GPTQ, AWQ) on CPU.

Pure pydantic, no torch import: the server validates a config file without loading an engine.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import ConfigDict, Field, PositiveInt

from lmgate.backends.llamacpp.config import default_threads
from lmgate.backends.tasks import Task, TasksConfig
from lmgate.backends.tools.formats import ToolParser


class TransformersConfig(TasksConfig):
    """One HF checkpoint directory on lmgate's batching loop over ``transformers`` models.

    GPTQ and AWQ checkpoints (GPTQModel's, AutoGPTQ's and AutoAWQ's formats) load through
    transformers' quantizers with GPTQModel's CPU kernels; no setting is needed for them.
    Embeddings are not served here (``tasks`` is ``[generate]``): a clear refusal beats a pooling
    over a causal LM's hidden states that no one tests.
    """

    SERVABLE = frozenset({Task.GENERATE})
    WHY_NOT = ": its engine generates only (serve embeddings from a GGUF on llamacpp, or on vllm)"

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())

    backend: Literal["transformers"] = "transformers"
    tasks: tuple[Task, ...] = Field(default=(Task.GENERATE,), min_length=1, description="Only `generate`.")
    model: Path = Field(
        description="HF checkpoint directory (config.json, safetensors, tokenizer); relative to the config file's."
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="auto", description="Weights and activations; auto: the checkpoint's own."
    )
    max_model_len: PositiveInt | None = Field(
        default=None, description="Longest prompt + output of one sequence (default: the model's trained context)."
    )
    tool_parser: ToolParser = Field(
        default="auto",
        description="How the model writes function calls: auto tells it from the chat template (hermes `<tool_call>`, "
        "llama3 JSON, mistral `[TOOL_CALLS]`); none serves no tools.",
    )
    max_seqs: PositiveInt = Field(default=8, le=64, description="Sequences decoded together at most.")
    threads: PositiveInt = Field(default_factory=default_threads, description="torch intra-op threads.")
