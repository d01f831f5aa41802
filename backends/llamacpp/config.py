"""Settings of the llama.cpp CPU engine, as a model entry of the YAML config spells them.

Pure pydantic, no llama_cpp import: the server validates a config file without loading an engine.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import ConfigDict, Field, PositiveInt, model_validator

from lmgate.backends.cpus import usable_cpus
from lmgate.backends.llamacpp.speculative_config import SpeculativeConfig
from lmgate.backends.lora import LoraAdapter, adapters_named
from lmgate.backends.tasks import TasksConfig
from lmgate.backends.tools.formats import ToolParser

STREAM_PAD = 256
"""llama.cpp rounds the cells of each sequence's KV stream (``n_ctx_seq``) up to a multiple of this."""
GGML_MAX_N_THREADS = 512
"""ggml's thread-pool limit: more aborts the engine."""


def default_threads() -> int:
    """Physical-ish cores: the CPUs this process may use, cut to a CPU quota's worth (backends/cpus.py)."""
    return usable_cpus()


class LlamaCppConfig(TasksConfig):
    """One GGUF model on the in-process continuous-batching engine."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    backend: Literal["llamacpp"] = "llamacpp"
    gguf: Path = Field(description="The GGUF file; a relative path is relative to the config file's directory.")
    n_ctx: PositiveInt | None = Field(
        default=None,
        description="KV-cache cells of all sequences together (see kv_unified). "
        "Default: the model's trained context, capped at 4096.",
    )
    kv_unified: bool | None = Field(
        default=None,
        description="true: one KV cache all sequences share, so one sequence may use any free cell up to n_ctx. "
        "false: a stream of n_ctx / max_seqs cells (rounded up to 256) per sequence, as llama-server's slots: each "
        "token attends over its own sequence's cells only, faster when many sequences run at once "
        "(docs/performance.md#per-sequence-kv-streams), but a sequence is at most that long and prefixes are copied "
        "between sequences instead of shared. Default: streams when max_model_len is set and fits in one (and "
        "the rounding adds no cells beyond n_ctx's own to 256), else unified; unified too for max_seqs 1 and for "
        "models whose cells cannot be copied (sliding-window or recurrent), where false is an error.",
    )
    max_model_len: PositiveInt | None = Field(
        default=None,
        description="Longest prompt + output of one sequence. Default: n_ctx, capped at the trained context "
        "(times rope_scale when RoPE scaling is set); beyond that only with rope_scaling.",
    )
    rope_scaling: Literal["linear", "yarn"] | None = Field(
        default=None, description="Extend the context beyond training: linear interpolation or YaRN."
    )
    rope_scale: float = Field(default=1.0, ge=1.0, le=64.0, description="Context extension factor.")
    rope_freq_base: float | None = Field(default=None, gt=0, description="Override the model's RoPE base.")
    yarn_orig_ctx: PositiveInt | None = Field(
        default=None, description="YaRN: the context the model was trained on (default: from the GGUF)."
    )
    tool_parser: ToolParser = Field(
        default="auto",
        description="How the model writes function calls: auto tells it from the chat template (hermes `<tool_call>`, "
        "llama3 JSON, mistral `[TOOL_CALLS]`); none serves no tools.",
    )
    max_seqs: PositiveInt = Field(default=8, le=128, description="Sequences decoded together at most.")
    prefix_cache: bool = Field(
        default=True, description="Share the KV of prompt prefixes already in the cache instead of recomputing."
    )
    cache_slots: int | None = Field(
        default=None,
        ge=0,
        le=128,
        description="Finished sequences kept as cached prefixes (LRU) besides the running ones; default max_seqs. "
        "Unified cache only: with per-sequence streams a finished sequence's stream holds its prefix until taken.",
    )
    cache_cells: int | None = Field(
        default=None,
        ge=0,
        description="KV cells that cached prefixes alone may hold (least recently used out beyond; the newest stays "
        "whatever its size). Default: an eighth of n_ctx. Every decode step attends over the cache's occupied span, "
        "so cold prefixes slow all streams down (docs/performance.md#cold-prefixes); n_ctx or more: no bound. "
        "Unified cache only.",
    )
    cache_idle_tokens: PositiveInt | None = Field(
        default=None,
        description="Tokens the engine computes (all sequences together) before a cached prefix nobody took over "
        "leaves the KV cache (the newest stays): to the host RAM tier (cache_ram_mib), or dropped without one. "
        "Default with the tier: 64, a few steps (a copy out and back costs far less than the prefix's share of "
        "every step's attention). Without it: about where that attention outweighs recomputing the prefix on a "
        "hit, n_params / (256 x heads x layers): ~4,000 for a 200M model, ~25,000 for a 7B one "
        "(docs/performance.md#cold-prefixes). An idle engine moves nothing. Unified cache only.",
    )
    cache_ram_mib: int = Field(
        default=1024,
        ge=0,
        description="Host RAM (MiB) for cached prefixes moved out of the KV cache (idle, evicted or beyond "
        "cache_cells), put back when a prompt continues one, as llama-server's --cache-ram; oldest out beyond. "
        "A prefix costs the KV cache's bytes per cell (n_ctx cells take what `lmgate plan` says for the KV "
        "cache); at most half the memory available when the model has loaded. 0: none, cold prefixes are dropped. "
        "Not for sliding-window or recurrent models.",
    )
    n_batch: PositiveInt = Field(default=512, ge=16, description="Token budget of one engine step.")
    n_ubatch: PositiveInt = Field(default=512, ge=16, description="Tokens per compute micro-batch.")
    prefill_chunk: PositiveInt | None = Field(
        default=64,
        description="Prompt tokens a step prefills at most while it also decodes running streams: a long prompt "
        "is prefilled in chunks of this size beside them, which bounds their inter-token latency (a smaller chunk: "
        "smoother streams, a slightly slower prefill); fewer where that fills whole 64-token tiles of flash "
        "attention with the decoding tokens. None: up to n_batch, as llama-server does.",
    )
    n_threads: PositiveInt = Field(
        default_factory=default_threads, le=GGML_MAX_N_THREADS, description="Threads for decoding."
    )
    n_threads_batch: PositiveInt | None = Field(
        default=None, le=GGML_MAX_N_THREADS, description="Threads for prompt processing (default: n_threads)."
    )
    flash_attn: Literal["auto", "on", "off"] = Field(
        default="auto", description="llama.cpp's flash attention: auto lets llama.cpp decide for this CPU and model."
    )

    @property
    def num_slots(self) -> int:
        """llama.cpp sequence ids of a unified cache: running sequences plus cached prefixes (per-sequence
        streams have max_seqs, cached prefixes waiting in the streams of finished sequences)."""
        cached = self.max_seqs if self.cache_slots is None else self.cache_slots
        return self.max_seqs + (cached if self.prefix_cache else 0)

    lora_adapters: list[LoraAdapter] = Field(
        default_factory=list,
        description="GGUF LoRA adapters over this model, each served as a model name of its own (one copy of the "
        "base weights; see docs/lora.md). A step decodes the sequences of one adapter (or of the base) at a time.",
    )
    embed_max_seqs: PositiveInt = Field(
        default=16,
        le=256,
        description="Embeddings: inputs decoded together in one batch at most (of max_model_len tokens in all).",
    )
    speculative: SpeculativeConfig = Field(
        default_factory=SpeculativeConfig,
        description="Speculative decoding (docs/speculative.md): draft tokens verified in the same batched decode; "
        "off by default. A request may turn it off with `speculative: false`.",
    )

    check_integrity: bool = Field(
        default=False, description="Check the KV book-keeping after every step (tests, debugging)."
    )

    def stream_cells(self, n_ctx: int) -> int | None:
        """Cells of each sequence's own KV stream over ``n_ctx`` cells (n_ctx / max_seqs, rounded up to 256 as
        llama.cpp does), or None for a unified cache: as ``kv_unified`` says, by default streams when
        ``max_model_len`` is set and fits in one and the streams do not outgrow n_ctx (rounded up to 256) by
        that rounding (one sequence at most: unified). Raises ``ValueError`` when ``kv_unified`` is false and
        ``max_model_len`` does not fit in a stream."""
        if self.kv_unified or (self.kv_unified is None and self.max_seqs == 1):
            return None
        cells = -(-max(n_ctx // self.max_seqs, 1) // STREAM_PAD) * STREAM_PAD
        fits = self.max_model_len is None or self.max_model_len <= cells
        if self.kv_unified is None and (
            self.max_model_len is None or not fits or cells * self.max_seqs > -(-n_ctx // STREAM_PAD) * STREAM_PAD
        ):
            return None
        if not fits:
            raise ValueError(
                f"max_model_len={self.max_model_len} does not fit in a KV stream of {cells} cells (n_ctx={n_ctx} / "
                f"max_seqs={self.max_seqs}, kv_unified false): raise n_ctx, lower max_seqs, or lower max_model_len"
            )
        return cells

    @model_validator(mode="after")
    def _fits_a_stream(self) -> LlamaCppConfig:
        """With ``kv_unified`` false and n_ctx set, ``max_model_len`` fits in a stream (else the model would not
        load: ``check-config`` says so first)."""
        if self.n_ctx is not None:
            self.stream_cells(self.n_ctx)
        return self

    @model_validator(mode="after")
    def _adapter_names(self) -> LlamaCppConfig:
        adapters_named(self.lora_adapters)
        return self

    @model_validator(mode="after")
    def _fits_llama_cpp(self) -> LlamaCppConfig:
        """Refuse what llama.cpp would abort on (``GGML_ASSERT(n_outputs_max <= ...)``): its context keeps
        one output row per sequence id, and has min(n_ctx, n_batch) of them."""
        slots = self.num_slots
        why = f"max_seqs {self.max_seqs}" + (f" + cache_slots {slots - self.max_seqs}" if slots > self.max_seqs else "")
        fewer = "lower max_seqs" + (" or cache_slots" if self.prefix_cache else "")
        if self.n_ctx is not None and self.n_ctx < slots:
            raise ValueError(f"n_ctx={self.n_ctx} is below the {slots} sequences it must hold ({why}): "
                             f"set n_ctx >= {slots}, or {fewer}")  # fmt: skip
        if self.n_batch < slots:
            raise ValueError(f"n_batch={self.n_batch} is below the {slots} sequences one step may carry ({why}): "
                             f"set n_batch >= {slots}, or {fewer}")  # fmt: skip
        return self
