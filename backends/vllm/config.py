"""Settings of the ``vllm`` backend: an HF checkpoint on vLLM's in-process AsyncLLM engine."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt


class VllmConfig(BaseModel):
    """Maps onto vLLM's ``AsyncEngineArgs``; unset fields keep vLLM's defaults."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())

    backend: Literal["vllm"] = "vllm"
    model: str = Field(description="HF checkpoint directory (or name, where a hub is reachable).")
    tokenizer: str | None = Field(default=None, description="Tokenizer directory, when not the model's.")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    max_model_len: PositiveInt | None = Field(default=None, description="Longest prompt + output of one sequence.")
    gpu_memory_utilization: float | None = Field(default=None, gt=0, le=1)
    kv_cache_memory_bytes: PositiveInt | None = Field(
        default=None, description="KV-cache size in bytes (instead of gpu_memory_utilization; needed on CPU)."
    )
    quantization: str | None = Field(default=None, description="gptq, awq, compressed-tensors, fp8...")
    tensor_parallel_size: PositiveInt = 1
    enable_prefix_caching: bool = True
    kv_cache_dtype: str = "auto"
    max_num_seqs: PositiveInt | None = None
    enforce_eager: bool = Field(default=False, description="No CUDA graphs / compilation (faster start, slower run).")
    load_format: str = Field(default="auto", description="`dummy` gives random weights (benchmarks).")
    seed: int | None = None
    hf_overrides: dict[str, Any] | None = Field(
        default=None, description="Overrides of the HF config, e.g. rope_scaling for a longer context."
    )
