"""Embeddings on the llama.cpp engine: pooled, normalised vectors from a context of their own.

NOTE: a second ``llama_context`` over the loaded ``llama_model`` (the weights are shared, not
copied: llama_model.py ``embedding_context``), so the embedding pass never touches generation's KV
cache, its slots or its prefix cache. It is made at the first embedding request: a model that is
never asked for embeddings pays nothing for it; one that cannot make it (out of memory) fails that
request with a 503 and keeps generating.

Each ``step()`` is one batch: the context's memory cleared, up to ``max_seqs`` inputs (of at most
``n_batch`` tokens in all, or one longer input of up to ``max_model_len``: one micro-batch either way)
put under sequence ids 0.., each from position 0,
one ``llama_decode``, then ``llama_get_embeddings_seq`` per id, L2-normalised. An input's vector
depends only on its own tokens (sequences never attend to each other), so a request gets the same
vectors alone or batched with others'. Inputs of several requests share a batch, in arrival order;
a request is answered when its last input is done. The engine runs one such batch between two
generation steps (engine.py), so long embedding requests do not stall running generations for
more than one batch at a time. Owned by the engine thread.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import llama_cpp
import numpy as np

from lmgate.backends.embedding import Embeddings, normalized
from lmgate.backends.errors import BackendUnavailable, ModelLoadError
from lmgate.backends.llamacpp.llama_model import LlamaModel

Reply = Callable[[Embeddings | BaseException], None]
"""Receives a request's embeddings, or the error that ended it (called on the engine thread)."""


@dataclass(eq=False)
class EmbedJob:
    """One request's inputs, as token ids already checked against the model (host.py)."""

    inputs: list[list[int]]
    reply: Reply
    vectors: list[tuple[float, ...]] = field(default_factory=list)

    @property
    def done(self) -> bool:
        return len(self.vectors) == len(self.inputs)


class Embedder:
    def __init__(self, model: LlamaModel, max_seqs: int) -> None:
        self._model = model
        self._max_seqs = min(max_seqs, model.max_model_len)
        self._capacity = model.max_model_len
        self._step_tokens = model.n_batch
        self._jobs: deque[EmbedJob] = deque()
        self._ctx: llama_cpp.llama_context_p | None = None
        self._batch: Any = None
        """A ``llama_batch`` of ``max_model_len`` tokens (the bindings' fields are untyped arrays)."""

    @property
    def pending(self) -> bool:
        return bool(self._jobs)

    def add(self, job: EmbedJob) -> None:
        self._jobs.append(job)

    def step(self) -> None:
        """Embed one batch of the queued inputs; answer the requests it completes."""
        try:
            ctx, batch = self._open()
        except ModelLoadError as exc:
            self._fail_all(BackendUnavailable(str(exc)))
            return
        picked = self._pick()
        self._fill(batch, picked)
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(ctx), True)
        rc = llama_cpp.llama_decode(ctx, batch)
        if rc != 0:
            failed = {id(job) for job, _ in picked}
            error = BackendUnavailable(f"llama_decode returned {rc} for an embedding batch")
            for job in [j for j in self._jobs if id(j) in failed]:
                self._jobs.remove(job)
                job.reply(error)
            return
        for seq_id, (job, _) in enumerate(picked):
            pooled = llama_cpp.llama_get_embeddings_seq(ctx, seq_id)
            job.vectors.append(normalized(np.ctypeslib.as_array(pooled, shape=(self._model.n_embd,))))
        while self._jobs and self._jobs[0].done:
            job = self._jobs.popleft()
            job.reply(Embeddings(tuple(job.vectors), sum(map(len, job.inputs))))

    def _open(self) -> tuple[llama_cpp.llama_context_p, Any]:
        if self._ctx is None or self._batch is None:
            pooling = self._model.pooling
            if pooling is None:
                raise ModelLoadError("this GGUF is a reranker (rank pooling): it gives scores, not embeddings")
            self._ctx = self._model.embedding_context(pooling, self._max_seqs)
            self._batch = llama_cpp.llama_batch_init(self._capacity, 0, 1)
        return self._ctx, self._batch

    def _pick(self) -> list[tuple[EmbedJob, int]]:
        """The next inputs in arrival order that fit one step's token budget (``n_batch``, as a generation
        step's), or the next input alone when it is longer (host.py checked it against ``max_model_len``,
        the context's size)."""
        picked: list[tuple[EmbedJob, int]] = []
        tokens = 0
        for job in self._jobs:
            for index in range(len(job.vectors), len(job.inputs)):
                size = len(job.inputs[index])
                if picked and (len(picked) == self._max_seqs or tokens + size > self._step_tokens):
                    return picked
                picked.append((job, index))
                tokens += size
        return picked

    @staticmethod
    def _fill(batch: Any, picked: list[tuple[EmbedJob, int]]) -> None:
        i = 0
        for seq_id, (job, index) in enumerate(picked):
            for pos, token in enumerate(job.inputs[index]):
                batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = token, pos, 1, True
                batch.seq_id[i][0] = seq_id
                i += 1
        batch.n_tokens = i

    def _fail_all(self, error: BaseException) -> None:
        jobs, self._jobs = self._jobs, deque()
        for job in jobs:
            job.reply(error)

    def close(self) -> None:
        """Answer what is queued with an error and free the context."""
        self._fail_all(BackendUnavailable("the engine is stopping"))
        if self._batch is not None:
            llama_cpp.llama_batch_free(self._batch)
            self._batch = None
        if self._ctx is not None:
            llama_cpp.llama_free(self._ctx)
            self._ctx = None
