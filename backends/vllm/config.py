"""Settings of the ``vllm`` backend: an HF checkpoint on vLLM's in-process AsyncLLM engine."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import ConfigDict, Field, PositiveInt

from lmgate.backends.tasks import Task, TasksConfig
from lmgate.backends.tools.formats import ToolParser


class VllmConfig(TasksConfig):
    """Maps onto vLLM's ``AsyncEngineArgs``; unset fields keep vLLM's defaults."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())

    backend: Literal["vllm"] = "vllm"
    tasks: tuple[Task, ...] = Field(
        default=(Task.GENERATE,),
        min_length=1,
        max_length=1,
        description="`generate` (vLLM's generate runner) or `embed` (its pooling runner), not both: one vLLM engine "
        "runs one runner; configure two entries over the same checkpoint for both.",
    )
    model: str = Field(description="HF checkpoint directory (or name, where a hub is reachable).")
    tokenizer: str | None = Field(default=None, description="Tokenizer directory, when not the model's.")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        default="auto", description="Weights and activations; auto: the checkpoint's own."
    )
    tool_parser: ToolParser = Field(
        default="auto",
        description="How the model writes function calls: auto tells it from the chat template (hermes `<tool_call>`, "
        "llama3 JSON, mistral `[TOOL_CALLS]`); none serves no tools.",
    )
    max_model_len: PositiveInt | None = Field(default=None, description="Longest prompt + output of one sequence.")
    gpu_memory_utilization: float | None = Field(
        default=None, gt=0, le=1, description="Share of GPU memory vLLM may take (default: vLLM's, 0.9)."
    )
    kv_cache_memory_bytes: PositiveInt | None = Field(
        default=None, description="KV-cache size in bytes (instead of gpu_memory_utilization; needed on CPU)."
    )
    quantization: str | None = Field(default=None, description="gptq, awq, compressed-tensors, fp8...")
    tensor_parallel_size: PositiveInt = Field(default=1, description="GPUs one replica spans.")
    enable_prefix_caching: bool = Field(default=True, description="vLLM's automatic prefix caching.")
    kv_cache_dtype: str = Field(default="auto", description="KV-cache element type: auto, fp8, fp8_e4m3...")
    max_num_seqs: PositiveInt | None = Field(default=None, description="Sequences batched together (default: vLLM's).")
    enforce_eager: bool = Field(default=False, description="No CUDA graphs / compilation (faster start, slower run).")
    load_format: str = Field(default="auto", description="`dummy` gives random weights (benchmarks).")
    seed: int | None = Field(default=None, description="vLLM's global seed (requests may carry their own).")
    hf_overrides: dict[str, Any] | None = Field(
        default=None, description="Overrides of the HF config, e.g. rope_scaling for a longer context."
    )
