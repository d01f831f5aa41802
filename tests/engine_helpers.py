"""Factories for driving a real llama.cpp backend (in its engine process) in tests."""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass, field
from pathlib import Path

from lmgate.backends.engine.process_backend import ProcessBackend
from lmgate.backends.llamacpp.config import LlamaCppConfig
from lmgate.backends.types import ChatMessage, GenerateRequest, Role, SamplingParams, TokenDelta

_ids = itertools.count()


async def start_backend(path: Path, **settings) -> ProcessBackend:
    settings.setdefault("check_integrity", True)
    settings.setdefault("n_threads", 2)
    backend = ProcessBackend("test", LlamaCppConfig(gguf=path, **settings))
    await backend.start()
    return backend


def make_request(prompt: str | None = None, *, chat: str | None = None, **sampling) -> GenerateRequest:
    sampling.setdefault("temperature", 0.0)
    params = SamplingParams(**sampling)
    rid = f"req-{next(_ids)}"
    if chat is not None:
        return GenerateRequest(rid, "test", params, messages=(ChatMessage(Role.USER, chat),))
    return GenerateRequest(rid, "test", params, prompt=prompt)


@dataclass
class Choice:
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    deltas: list[TokenDelta] = field(default_factory=list)

    @property
    def finish_reason(self) -> str | None:
        return self.deltas[-1].finish_reason if self.deltas else None


async def collect(backend: ProcessBackend, request: GenerateRequest) -> list[Choice]:
    choices = [Choice() for _ in range(request.sampling.n)]
    async for delta in backend.generate(request):
        c = choices[delta.index]
        c.text += delta.text
        c.token_ids += delta.token_ids
        c.deltas.append(delta)
    return choices


async def assert_idle(backend: ProcessBackend) -> None:
    """Once its running sequences have ended (polled), the backend holds no sequence and no KV cell."""
    for _ in range(200):
        if backend.stats().running == 0:
            break
        await asyncio.sleep(0.01)
    stats = backend.stats()
    assert (stats.running, stats.waiting, stats.kv_cells_used) == (0, 0, 0)


def first_divergence(a: list[int], b: list[int]) -> int | None:
    """The first position where two token lists differ (a common prefix of unequal length is no difference)."""
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), None)


def top2_margin(choice: Choice, position: int) -> float:
    top = [lp for d in choice.deltas for lp in d.logprobs][position].top
    return top[0].logprob - top[1].logprob


def assert_same_up_to_ties(a: Choice, b: Choice) -> None:
    """Equal token ids, or a first difference on a near-tie of either run (both need logprobs=2)."""
    i = first_divergence(a.token_ids, b.token_ids)
    if i is not None:
        assert min(top2_margin(a, i), top2_margin(b, i)) < 0.1, f"diverged at {i} on a clear winner"
