"""Driving a ``BeamSearch`` on the engine: forking beams' KV, retiring dead beams, final outputs.

A beam search starts as one sequence (the prompt). Each step every live beam is decoded in the
shared batch; the runner returns its best candidates instead of sampling; ``advance`` lets the
policy choose, then forks sequences for extra continuations (``Scheduler.fork`` shares the
parent's KV with ``llama_memory_seq_cp``), appends tokens to the continuing ones and retires the
beams that lost. Owned by the engine thread.
"""

from __future__ import annotations

from lmgate.backends.engine.beam_search import BeamSearch, final_deltas
from lmgate.backends.llamacpp.llama_model import LlamaModel
from lmgate.backends.llamacpp.runner import Runner, Sampled
from lmgate.backends.llamacpp.scheduler import Scheduler
from lmgate.backends.llamacpp.sequence import Sequence
from lmgate.backends.types import TokenDelta, Usage


def start_search(seq: Sequence, model: LlamaModel) -> BeamSearch[Sequence]:
    """Attach a beam search to ``seq`` (the prompt) and return it."""
    params = seq.sampling
    search = BeamSearch[Sequence](
        width=params.beam_width,
        n=params.n,
        max_tokens=seq.max_tokens,
        end_tokens=frozenset(params.stop_token_ids) | (frozenset() if params.ignore_eos else model.eog_ids),
        length_penalty=params.length_penalty,
    )
    search.live[0].key = search.root = seq
    seq.beam = search
    return search


def prompt_of(search: BeamSearch[Sequence]) -> Sequence:
    """The prompt's sequence: ``start_search`` makes it the search's root."""
    assert search.root is not None, "a search made by start_search has its prompt as root"
    return search.root


def advance(search: BeamSearch[Sequence], sampled: list[Sampled], scheduler: Scheduler, runner: Runner) -> bool:
    """Collect this step's candidates; once every live beam has some, take one search step.

    True when the search is over. A beam decoded before its siblings (the token budget cut the
    step short) waits with nothing to compute, so the scheduler passes it by.
    """
    by_seq = {id(s.seq): s.candidates for s in sampled}
    search.pending |= {id(beam): by_seq[id(beam.key)] for beam in search.live if id(beam.key) in by_seq}
    if len(search.pending) < len(search.live):
        return False
    old = _sequences(search)
    candidates, search.pending = search.pending, {}
    continuations = search.step(candidates)
    # The beams that lost go first: their slots are the ones the forks take (the scheduler holds no more
    # than the search's width). A parent keeps its sequence (its first continuation), so none of them forks.
    alive = {id(beam.key) for beam in search.live if beam.key is not None}
    for seq in old:
        if id(seq) not in alive:
            _retire(seq, scheduler, runner)
    # Forks copy their parent's tokens, so they go before the parents append theirs.
    pairs = list(zip(search.live, continuations, strict=True))
    for beam, c in pairs:
        if beam.key is None and c.parent.key is not None:  # a parent (a live beam) always has a sequence
            beam.key = scheduler.fork(c.parent.key, c.token)
    pairs = [(beam, c) for beam, c in pairs if beam.key is not None]  # no room for a fork: dropped
    search.live = [beam for beam, _ in pairs]
    for beam, c in pairs:
        if beam.key is not None and beam.key is c.parent.key:
            beam.key.append(c.token)
    return search.done


def close(search: BeamSearch[Sequence], scheduler: Scheduler, runner: Runner) -> None:
    """Retire every live beam; the search takes no more steps."""
    for seq in _sequences(search):
        _retire(seq, scheduler, runner)
    search.live, search.closed = [], True


def finish(search: BeamSearch[Sequence], model: LlamaModel, scheduler: Scheduler, runner: Runner) -> list[TokenDelta]:
    """End the search (whatever its state) and return the n best hypotheses as final deltas."""
    prompt = prompt_of(search)
    best = search.best()
    close(search, scheduler, runner)
    return final_deltas(
        best, lambda ids: b"".join(model.pieces[t] for t in ids), prompt.sampling.stop,
        lambda n: Usage(prompt.num_prompt_tokens, n, prompt.num_cached_tokens, prompt.queue_time),
    )  # fmt: skip


def _sequences(search: BeamSearch[Sequence]) -> list[Sequence]:
    """The live beams' sequences (between steps every live beam has one: forks without room are dropped)."""
    return [beam.key for beam in search.live if beam.key is not None]


def _retire(seq: Sequence, scheduler: Scheduler, runner: Runner) -> None:
    scheduler.finish(seq)
    runner.release(seq)
