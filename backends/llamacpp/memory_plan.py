"""How much memory a GGUF model needs for a context and a number of sequences, before loading it.

    weights  = the tensor data of the file (llama.cpp maps it)
    kv cache = layers × kv heads × head dim × cells × 2 bytes (f16) × 2 (K and V)
    compute  = logits of one micro-batch + activations of one micro-batch (an estimate)

The cells are the context rounded up to llama.cpp's padding of 256; with the unified cache they
are shared by all sequences, so sequences add only their outputs, not KV. ``check_fits`` refuses
a configuration that does not fit in the memory available now, saying how much is needed and
what to lower. The shape comes from the GGUF header (``gguf.GGUFReader`` maps the file, nothing is
loaded), or for ``lmgate plan --params/--hf-config`` from model_shape.py.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from lmgate.backends.llamacpp.model_shape import ModelShape, read_shape

_KV_BYTES = 2  # f16 K and V, llama.cpp's default cache type
_PAD = 256
_HEADROOM = 1.10  # allocator slack, thread buffers, the Python process itself


@dataclass(frozen=True)
class MemoryPlan:
    shape: ModelShape
    cells: int
    seqs: int
    kv_bytes: int
    compute_bytes: int

    @property
    def weights_bytes(self) -> int:
        return self.shape.weights_bytes

    @property
    def total_bytes(self) -> int:
        return int((self.weights_bytes + self.kv_bytes + self.compute_bytes) * _HEADROOM)

    def describe(self) -> str:
        s = self.shape
        return "\n".join([
            f"model: {s.layers} layers, {s.heads}/{s.kv_heads} heads of {s.head_dim}, vocab {s.vocab}, "
            f"trained context {s.context_train}",
            f"shape:     {s.shape_origin}",
            f"weights:   {_gib(self.weights_bytes)}  ({s.weights_origin})",
            f"KV cache:  {_gib(self.kv_bytes)}  ({self.cells} cells shared by {self.seqs} sequences, f16)",
            f"compute:   {_gib(self.compute_bytes)}  (estimate)",
            f"total:     {_gib(self.total_bytes)}  (with {_HEADROOM - 1:.0%} headroom)",
        ])  # fmt: skip


def plan(model: Path | ModelShape, n_ctx: int, seqs: int, n_ubatch: int = 512) -> MemoryPlan:
    """The estimate for a GGUF file (or a shape) serving ``n_ctx`` cells to ``seqs`` sequences at once."""
    if n_ctx < 1 or seqs < 1:
        raise ValueError(f"n_ctx ({n_ctx}) and seqs ({seqs}) must be at least 1")
    shape = read_shape(model) if isinstance(model, Path) else model
    cells = -(-n_ctx // _PAD) * _PAD
    kv = shape.layers * shape.kv_heads * shape.head_dim * cells * _KV_BYTES * 2
    ubatch = min(n_ubatch, cells)
    logits = shape.vocab * 4 * max(seqs, 1)
    activations = ubatch * 4 * (2 * shape.ffn + 3 * shape.embedding + shape.vocab)
    return MemoryPlan(shape, cells, seqs, kv, logits + activations)


def available_bytes() -> int:
    """Memory the kernel says can be had now without swapping (MemAvailable), else physical RAM."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def host_tier_cells(cache_ram_mib: int, cell_bytes: int, available: int) -> int:
    """KV cells the host tier may hold: ``cache_ram_mib``, but at most half of ``available`` (the memory
    available once the model is loaded), so that a tier filling up over hours cannot get the engine
    process killed for memory."""
    return min(cache_ram_mib * 2**20, available // 2) // cell_bytes


def check_fits(memory: MemoryPlan, available: int, *, name: str) -> None:
    """Raise MemoryError with what is needed and what to lower when ``memory`` exceeds ``available``."""
    if memory.total_bytes <= available:
        return
    fitting_cells = max(0, (available / _HEADROOM - memory.weights_bytes - memory.compute_bytes)) / (
        memory.kv_bytes / memory.cells
    )
    fix = (
        f"lower n_ctx to at most {int(fitting_cells) // _PAD * _PAD}"
        if fitting_cells >= _PAD
        else "use a smaller or more quantized model (the weights alone do not leave room for a KV cache)"
    )
    raise MemoryError(
        f"model {name!r} needs about {_gib(memory.total_bytes)} (weights {_gib(memory.weights_bytes)}, KV cache "
        f"{_gib(memory.kv_bytes)} for n_ctx={memory.cells}) but {_gib(available)} is available: {fix}."
    )


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"
