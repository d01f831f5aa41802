"""The KV cache of the running sequences: one ``DynamicCache``, rows left-padded to one length.

transformers attends over a batch whose rows have different lengths when they are padded on the
left and masked; positions come from each row's own count of real tokens. Rows join (their prompt
prefilled apart, then padded to the common length and concatenated) and leave (rows selected, then
the leading columns no row uses any more cut off) between steps: continuous batching over a
stock transformers model. Only full-attention layers can be padded and cut like this; a model with
sliding-window or linear-attention layers is refused at load.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer


def new_cache(model_config: Any) -> DynamicCache:
    """An empty cache for ``model_config``; raises ``ValueError`` when a layer cannot be batched here."""
    cache = DynamicCache(config=model_config)
    odd = {type(layer).__name__ for layer in cache.layers if type(layer) is not DynamicLayer}
    if odd:
        raise ValueError(f"the transformers backend batches full-attention layers only; this model has {odd}")
    return cache


class BatchCache:
    """Rows of KV (keys/values ``[rows, heads, length, dim]`` per layer) and their ``[rows, length]`` mask."""

    def __init__(self) -> None:
        self.cache: DynamicCache | None = None
        self.mask = torch.zeros((0, 0), dtype=torch.long)

    @property
    def rows(self) -> int:
        return int(self.mask.shape[0])  # torch is untyped here (not in the test venv)

    @property
    def length(self) -> int:
        """Columns, padding included (the longest row)."""
        return int(self.mask.shape[1])

    def real_tokens(self) -> torch.Tensor:
        """Each row's count of real (unpadded) cached tokens: the position of its next token."""
        return self.mask.sum(dim=1)

    def extend(self, cache: DynamicCache, mask: torch.Tensor, index: list[int]) -> None:
        """Append rows ``index`` (repeats allowed: n choices of one prompt) of a prefilled ``cache``."""
        picked = torch.tensor(index, dtype=torch.long)
        cache.batch_select_indices(picked)
        mask = mask[picked]
        if self.cache is None or self.rows == 0:
            self.cache, self.mask = cache, mask
            return
        width = max(self.length, mask.shape[1])
        for old, new in zip(self.cache.layers, cache.layers, strict=True):
            old.keys = torch.cat([_pad_left(old.keys, width), _pad_left(new.keys, width)])
            old.values = torch.cat([_pad_left(old.values, width), _pad_left(new.values, width)])
        self.mask = torch.cat([F.pad(self.mask, (width - self.length, 0)), F.pad(mask, (width - mask.shape[1], 0))])

    def keep(self, rows: list[int]) -> None:
        """Keep only ``rows`` (in this order); drop the leading columns no kept row uses."""
        if self.cache is None:
            return
        if not rows:
            self.cache, self.mask = None, torch.zeros((0, 0), dtype=torch.long)
            return
        picked = torch.tensor(rows, dtype=torch.long)
        self.mask = self.mask[picked]
        used = self.mask.any(dim=0).nonzero()
        start = int(used[0]) if len(used) else self.length
        self.mask = self.mask[:, start:]
        for layer in self.cache.layers:
            layer.keys = layer.keys[picked, :, start:]
            layer.values = layer.values[picked, :, start:]

    def grow(self) -> None:
        """One more real column for every row: the token the next forward pass feeds."""
        self.mask = F.pad(self.mask, (0, 1), value=1)


def _pad_left(t: torch.Tensor, width: int) -> torch.Tensor:
    return F.pad(t, (0, 0, width - t.shape[-2], 0))
