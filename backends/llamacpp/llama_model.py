"""A loaded GGUF model and its llama.cpp context: tokenizer, vocabulary facts, lifetime, LoRA adapters.

Together with runner.py, sampler.py, lora.py, embedder.py and draft_model.py, the only modules that
import ``llama_cpp``. The context's KV cache is either unified (``kv_unified``), ``n_ctx`` cells shared by
``config.num_slots`` sequence ids (kv_cache.py), or one stream of ``stream_cells`` cells per sequence id,
``max_seqs`` of them (stream_cache.py): ``config.kv_unified`` decides, by default streams when
``max_model_len`` is set and fits in one. ``tokenize`` and ``piece`` read only the immutable vocabulary
and may be called from any thread; everything touching the context belongs to the engine thread.
"""

from __future__ import annotations

import ctypes
import logging
from pathlib import Path

import gguf
import llama_cpp

from lmgate.backends.errors import ModelLoadError
from lmgate.backends.llamacpp import memory_plan
from lmgate.backends.llamacpp.config import LlamaCppConfig
from lmgate.backends.llamacpp.gguf_file import GGUFFileError
from lmgate.backends.llamacpp.lora import LoraSet
from lmgate.backends.llamacpp.model_shape import read_shape

log = logging.getLogger("lmgate.llama_cpp")

# ggml_log_level: 1 debug, 2 info, 3 warn, 4 error, 5 continuation. llama.cpp is chatty at info
# (every tensor and buffer on load): that goes to DEBUG here.
_LOG_LEVELS = {1: logging.DEBUG, 2: logging.DEBUG, 3: logging.WARNING, 4: logging.ERROR}


@llama_cpp.llama_log_callback  # type: ignore[untyped-decorator]  # llama_cpp's CFUNCTYPE is untyped
def _log_callback(level: int, text: bytes, _user_data: ctypes.c_void_p) -> None:
    message = text.decode("utf-8", errors="replace").rstrip()
    if message:
        log.log(_LOG_LEVELS.get(level, logging.DEBUG), "%s", message)


_FLASH_ATTN = {
    "auto": llama_cpp.LLAMA_FLASH_ATTN_TYPE_AUTO,
    "on": llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED,
    "off": llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED,
}
_ROPE_SCALING = {
    "linear": llama_cpp.LLAMA_ROPE_SCALING_TYPE_LINEAR,
    "yarn": llama_cpp.LLAMA_ROPE_SCALING_TYPE_YARN,
}
_DEFAULT_MAX_CTX = 4096


def _max_model_len(config: LlamaCppConfig, n_ctx: int, trained: int) -> int:
    """The longest sequence served: n_ctx, within what the model (with its RoPE scaling) handles."""
    reach = int(trained * (config.rope_scale if config.rope_scaling else 1.0)) if trained else n_ctx
    wanted = config.max_model_len or min(n_ctx, reach)
    if wanted > reach:
        how = "raise rope_scale" if config.rope_scaling else "set rope_scaling (linear or yarn) and rope_scale"
        raise ModelLoadError(
            f"max_model_len={wanted} is beyond what {Path(config.gguf).name} handles ({reach} tokens, trained "
            f"on {trained}): {how}, or lower max_model_len"
        )
    if wanted > n_ctx:
        raise ModelLoadError(f"max_model_len={wanted} does not fit in n_ctx={n_ctx} KV cells: raise n_ctx")
    return wanted


class LlamaModel:
    """Owns the ``llama_model`` and ``llama_context`` handles; ``close()`` frees them."""

    def __init__(self, config: LlamaCppConfig) -> None:
        self._config = config
        path = Path(config.gguf)
        if not path.is_file():
            raise ModelLoadError(f"GGUF file not found: {path} (check the model's `gguf` setting)")
        try:
            shape = read_shape(path)
        except GGUFFileError as exc:
            raise ModelLoadError(f"{exc} (the model's `gguf` setting)") from exc
        self.requested_ctx = config.n_ctx or min(shape.context_train or _DEFAULT_MAX_CTX, _DEFAULT_MAX_CTX)
        self._yarn_orig_ctx = config.yarn_orig_ctx or shape.context_train
        try:
            stream_cells = config.stream_cells(self.requested_ctx)
        except ValueError as exc:
            raise ModelLoadError(str(exc)) from exc
        self.stream_cells = stream_cells
        """Cells of each sequence's KV stream; None: one unified cache."""
        self.max_model_len = _max_model_len(config, self.stream_cells or self.requested_ctx, shape.context_train)
        cells = self.requested_ctx if self.stream_cells is None else self.stream_cells * config.max_seqs
        memory = memory_plan.plan(path, cells, self.num_slots, config.n_ubatch)
        try:
            memory_plan.check_fits(memory, memory_plan.available_bytes(), name=path.name)
        except MemoryError as exc:
            raise ModelLoadError(str(exc)) from exc
        llama_cpp.llama_log_set(_log_callback, ctypes.c_void_p(0))
        llama_cpp.llama_backend_init()
        model_params = llama_cpp.llama_model_default_params()
        self.model = llama_cpp.llama_model_load_from_file(str(path).encode(), model_params)
        if not self.model:
            raise ModelLoadError(f"llama.cpp could not load {path}: not a GGUF model it supports")
        self.vocab = llama_cpp.llama_model_get_vocab(self.model)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self.vocab)
        self.n_params: int = llama_cpp.llama_model_n_params(self.model)
        self.attention_rows: int = llama_cpp.llama_model_n_head(self.model) * llama_cpp.llama_model_n_layer(self.model)
        """Query heads × layers: how many times attention scans each KV cell for each token computed."""
        self.kv_cell_bytes = max(1, memory.kv_bytes // memory.cells)
        """Bytes of one KV cell (K and V of every layer): what a host copy of it takes."""
        self.restorable = not (
            llama_cpp.llama_model_n_swa(self.model)
            or llama_cpp.llama_model_is_recurrent(self.model)
            or llama_cpp.llama_model_is_hybrid(self.model)
        )
        """Whether a sequence's cells can be copied out and put back whole (not a sliding window, whose
        saved state leaves the masked cells out, nor recurrent state)."""
        if self.stream_cells is not None and not self.restorable:
            if config.kv_unified is False:
                llama_cpp.llama_model_free(self.model)
                raise ModelLoadError(
                    f"kv_unified false: {path.name} is a sliding-window or recurrent model, whose cells cannot be "
                    "copied between streams; leave kv_unified unset or true"
                )
            self.stream_cells = None
            self.max_model_len = _max_model_len(config, self.requested_ctx, shape.context_train)
        self.ctx = llama_cpp.llama_init_from_model(self.model, self._context_params(config))
        if not self.ctx:
            llama_cpp.llama_model_free(self.model)
            raise ModelLoadError(f"llama.cpp could not create a context for {path} (out of memory?)")
        try:
            self.loras = LoraSet(self.model, self.ctx, path, config.lora_adapters)
        except BaseException:
            self.close()
            raise
        self.memory = llama_cpp.llama_get_memory(self.ctx)
        self.n_ctx = llama_cpp.llama_n_ctx(self.ctx)
        if self.stream_cells is not None and llama_cpp.llama_n_ctx_seq(self.ctx) != self.stream_cells:
            made = llama_cpp.llama_n_ctx_seq(self.ctx)
            self.close()
            raise ModelLoadError(f"llama.cpp made KV streams of {made} cells where lmgate planned {self.stream_cells}")
        self.n_batch = llama_cpp.llama_n_batch(self.ctx)
        self.pieces = [self._token_to_piece(t) for t in range(self.n_vocab)]
        self.eog_ids = frozenset(t for t in range(self.n_vocab) if llama_cpp.llama_vocab_is_eog(self.vocab, t))
        # What llama.cpp's special parsing matches: control, user-defined and unknown tokens.
        parsed_attrs = llama_cpp.LLAMA_TOKEN_ATTR_CONTROL | llama_cpp.LLAMA_TOKEN_ATTR_USER_DEFINED
        parsed_attrs |= llama_cpp.LLAMA_TOKEN_ATTR_UNKNOWN
        self.special_texts = {
            self.token_text(t): t
            for t in range(self.n_vocab)
            if llama_cpp.llama_vocab_get_attr(self.vocab, t) & parsed_attrs
        }
        self.add_bos = bool(llama_cpp.llama_vocab_get_add_bos(self.vocab))
        self.max_token_bytes = self._max_token_bytes()
        self.n_embd: int = llama_cpp.llama_model_n_embd_out(self.model)

    def _max_token_bytes(self) -> int | None:
        """The longest text one token covers (special tokens as raw prompts spell them), for the
        tokenizers that never shrink text: byte-level BPE and SentencePiece; None for the others."""
        never_shrink = (llama_cpp.LLAMA_VOCAB_TYPE_BPE, llama_cpp.LLAMA_VOCAB_TYPE_SPM)
        if llama_cpp.llama_vocab_type(self.vocab) not in never_shrink:
            return None
        longest_special = max((len(text.encode()) for text in self.special_texts), default=0)
        return max(max(map(len, self.pieces), default=1), longest_special, 1)

    def _context_params(self, config: LlamaCppConfig) -> llama_cpp.llama_context_params:
        # llama_cpp's ctypes bindings return Any: the annotations here say what the C functions return.
        params: llama_cpp.llama_context_params = llama_cpp.llama_context_default_params()
        params.n_ctx = self.requested_ctx if self.stream_cells is None else self.stream_cells * self.num_slots
        params.n_batch = config.n_batch
        params.n_ubatch = min(config.n_ubatch, config.n_batch)
        params.n_seq_max = self.num_slots
        params.n_threads = config.n_threads
        params.n_threads_batch = config.n_threads_batch or config.n_threads
        params.flash_attn_type = _FLASH_ATTN[config.flash_attn]
        if config.rope_freq_base is not None:
            params.rope_freq_base = config.rope_freq_base
        if config.rope_scaling is not None:
            params.rope_scaling_type = _ROPE_SCALING[config.rope_scaling]
            params.rope_freq_scale = 1.0 / config.rope_scale
            params.yarn_orig_ctx = self._yarn_orig_ctx
        params.kv_unified = self.stream_cells is None
        params.no_perf = True
        return params

    @property
    def num_slots(self) -> int:
        """llama.cpp sequence ids: running and cached (``config.num_slots``) in a unified cache, one per sequence
        decoded together with streams."""
        return self._config.num_slots if self.stream_cells is None else self._config.max_seqs

    @property
    def pooling(self) -> int | None:
        """The pooling of its embeddings: what the GGUF declares (``<arch>.pooling_type``: mean, cls or
        last), mean for a model that declares none (a generative model: the mean of its last hidden
        states); None for a reranker (rank pooling), whose outputs are scores, not embeddings."""
        declared = self.meta(f"{self.meta('general.architecture')}.pooling_type")
        pooling = int(declared) if declared is not None and declared.lstrip("-").isdigit() else 0
        if pooling == llama_cpp.LLAMA_POOLING_TYPE_RANK:
            return None
        if pooling in (llama_cpp.LLAMA_POOLING_TYPE_CLS, llama_cpp.LLAMA_POOLING_TYPE_LAST):
            return pooling
        return llama_cpp.LLAMA_POOLING_TYPE_MEAN

    def embedding_context(self, pooling: int, n_seq_max: int) -> llama_cpp.llama_context_p:
        """A second context over the same weights (nothing is copied), for embeddings: its own KV cache
        of ``max_model_len`` cells, ``pooling``, and one micro-batch as large as the whole batch (llama.cpp
        pools per micro-batch: a sequence split over two would be pooled over its last part only), and
        no flash attention (see below).
        Raises ``ModelLoadError`` when llama.cpp cannot make it (out of memory). Freed by the caller.
        Its cache is unified whatever the generation context's layout: its inputs share ``max_model_len``
        cells, one of them up to all of them (streams would give each ``max_model_len / n_seq_max``)."""
        params = self._context_params(self._config)
        params.n_ctx = params.n_batch = params.n_ubatch = self.max_model_len
        params.n_seq_max = min(n_seq_max, self.max_model_len)
        params.kv_unified = True
        params.embeddings = True
        params.pooling_type = pooling
        # NOTE: no flash attention here. llama.cpp's CPU flash-attention kernel changes path once a batch
        # has a few dozen query rows, and an input's vector then moves by ~4e-4 with what it is batched
        # with (measured on tiny-chat); plain attention gives the same vector alone or batched (3e-8),
        # at the cost of a KQ buffer of max_model_len² floats per head.
        params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
        ctx: llama_cpp.llama_context_p = llama_cpp.llama_init_from_model(self.model, params)  # the bindings return Any
        if not ctx:
            raise ModelLoadError(
                f"llama.cpp could not create the embedding context ({self.max_model_len} cells; out of memory?)"
            )
        return ctx

    def close(self) -> None:
        loras: LoraSet | None = getattr(self, "loras", None)  # absent when the adapters failed to load
        if loras is not None:
            loras.close()
        if self.ctx:
            llama_cpp.llama_free(self.ctx)
            self.ctx = None
        if self.model:
            llama_cpp.llama_model_free(self.model)
            self.model = None

    # --- vocabulary (thread-safe: read-only) ---

    def tokenize(self, text: str, *, add_special: bool, parse_special: bool) -> list[int]:
        data = text.encode("utf-8")
        capacity = len(data) + 8
        buf = (llama_cpp.llama_token * capacity)()
        n = llama_cpp.llama_tokenize(self.vocab, data, len(data), buf, capacity, add_special, parse_special)
        if n < 0:  # more tokens than bytes can only happen with many added specials
            capacity = -n
            buf = (llama_cpp.llama_token * capacity)()
            n = llama_cpp.llama_tokenize(self.vocab, data, len(data), buf, capacity, add_special, parse_special)
        return list(buf[:n])

    def _token_to_piece(self, token_id: int) -> bytes:
        buf = ctypes.create_string_buffer(64)
        n = llama_cpp.llama_token_to_piece(self.vocab, token_id, buf, len(buf), 0, False)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = llama_cpp.llama_token_to_piece(self.vocab, token_id, buf, len(buf), 0, False)
        return buf.raw[:n]

    def detokenize(self, token_ids: list[int]) -> str:
        """Text of the tokens, special tokens rendered as nothing (as in generated output)."""
        return b"".join(self.pieces[t] for t in token_ids).decode("utf-8", errors="replace")

    def token_text(self, token_id: int) -> str:
        """The vocabulary's own text of a token, special tokens included (for logprobs)."""
        text: bytes = llama_cpp.llama_vocab_get_text(self.vocab, token_id)
        return text.decode("utf-8", errors="replace")

    def meta(self, key: str) -> str | None:
        buf = ctypes.create_string_buffer(1 << 16)
        n = llama_cpp.llama_model_meta_val_str(self.model, key.encode(), buf, len(buf))
        if n < 0:
            return None
        if n >= len(buf):
            buf = ctypes.create_string_buffer(n + 1)
            llama_cpp.llama_model_meta_val_str(self.model, key.encode(), buf, len(buf))
        return buf.value.decode("utf-8", errors="replace")

    @property
    def chat_template(self) -> str | None:
        return self.meta("tokenizer.chat_template")

    @property
    def bos_text(self) -> str:
        return self.token_text(llama_cpp.llama_vocab_bos(self.vocab))

    @property
    def eos_text(self) -> str:
        return self.token_text(llama_cpp.llama_vocab_eos(self.vocab))

    @property
    def quantization(self) -> str | None:
        try:
            name = gguf.LlamaFileType(llama_cpp.llama_model_ftype(self.model)).name
        except ValueError:
            return None
        return name.removeprefix("MOSTLY_").removeprefix("ALL_")
