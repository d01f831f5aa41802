"""LoRA adapters in the scheduler and the prefix cache: one adapter per step, turns, no shared KV."""

import itertools

from lmgate.backends.engine.output_text import OutputText
from lmgate.backends.llamacpp.kv_cache import BLOCK_SIZE, KVCacheManager
from lmgate.backends.llamacpp.scheduler import Scheduler, SchedulerConfig, SchedulerOutput
from lmgate.backends.llamacpp.sequence import Sequence
from lmgate.backends.types import SamplingParams

_arrivals = itertools.count()


def make_seq(prompt_len: int, adapter: str | None = None, *, salt: bytes = b"", tokens: list[int] | None = None,
             name: str = "r") -> Sequence:  # fmt: skip
    ids = list(tokens) if tokens is not None else list(range(prompt_len))
    return Sequence(name, 0, ids, SamplingParams(), 16, next(_arrivals), OutputText(), cache_salt=salt, adapter=adapter)


def make_scheduler(cells: int = 256, slots: int = 4, budget: int = 64, cache_slots: int = 4) -> Scheduler:
    kv = KVCacheManager(cells, slots + cache_slots, prefix_caching=cache_slots > 0)
    return Scheduler(SchedulerConfig(max_seqs=slots, token_budget=budget), kv)


def run_step(sched: Scheduler, *, check: bool = True) -> SchedulerOutput:
    """Schedule, mark computed, append a sampled token; check the accounts (with no cached slots)."""
    out = sched.schedule()
    sched.update(out)
    for chunk in out.chunks:
        if chunk.samples:
            chunk.seq.append(7)
    if check:
        sched.check_integrity({s.slot: s.num_computed_tokens for s in sched.running if s.slot is not None})
    return out


def test_a_step_decodes_the_sequences_of_one_adapter_only():
    sched = make_scheduler()
    seqs = [make_seq(5), make_seq(5, "a"), make_seq(5), make_seq(5, "b")]
    for seq in seqs:
        sched.add(seq)
    for _ in range(9):
        out = run_step(sched)
        assert out.chunks
        assert {c.seq.adapter for c in out.chunks} == {out.adapter}


def test_base_and_adapters_take_turns_so_every_one_makes_progress():
    sched = make_scheduler()
    base, pirate, woof = make_seq(5), make_seq(5, "pirate"), make_seq(5, "woof")
    for seq in (base, pirate, woof):
        sched.add(seq)
    served = [run_step(sched).adapter for _ in range(9)]
    assert served == [None, "pirate", "woof"] * 3  # oldest first, then least recently served
    assert base.num_output_tokens == pirate.num_output_tokens == woof.num_output_tokens == 3


def test_without_adapters_every_step_is_the_base_models_as_before():
    sched = make_scheduler()
    seqs = [make_seq(5), make_seq(9)]
    for seq in seqs:
        sched.add(seq)
    out = run_step(sched)
    assert out.adapter is None and [c.seq for c in out.chunks] == seqs


def test_an_adapter_that_cannot_run_now_gives_its_turn_to_the_next():
    # 48 cells: the base sequence's 40 leave too few for the adapter's 20-token prompt, but the base decodes on.
    sched = make_scheduler(cells=48, cache_slots=0)
    base = make_seq(40)
    sched.add(base)
    run_step(sched)
    waiting = make_seq(20, "a")
    sched.add(waiting)
    for _ in range(3):
        out = run_step(sched)
        assert out.adapter is None and [c.seq for c in out.chunks] == [base]
    assert waiting in sched.waiting


def test_an_adapter_never_hits_the_base_models_cached_prefix_nor_another_adapters():
    sched = make_scheduler()
    prompt = list(range(100, 100 + 3 * BLOCK_SIZE))
    first = make_seq(0, tokens=prompt, name="base")
    sched.add(first)
    run_step(sched)
    sched.finish(first)
    for adapter in ("a", "b"):
        seq = make_seq(0, adapter, tokens=prompt, name=adapter)
        sched.add(seq)
        run_step(sched, check=False)  # cached slots hold cells no running sequence accounts for
        assert seq.num_cached_tokens == 0
        sched.finish(seq)
    again = make_seq(0, "a", tokens=prompt, name="a-again")
    sched.add(again)
    run_step(sched, check=False)
    assert again.num_cached_tokens >= 2 * BLOCK_SIZE  # the same adapter's prefix is shared


def test_block_hashes_depend_on_the_adapter_and_stay_as_before_without_one():
    tokens = list(range(2 * BLOCK_SIZE))
    base, lora = make_seq(0, tokens=tokens), make_seq(0, "a", tokens=tokens)
    assert not set(base.block_hashes()) & set(lora.block_hashes())
    assert make_seq(0, "a", tokens=tokens).block_hashes() == lora.block_hashes()
    assert make_seq(0, "b", tokens=tokens).block_hashes() != lora.block_hashes()
    salted = make_seq(0, "a", salt=b"tenant", tokens=tokens)
    assert salted.block_hashes() != lora.block_hashes()
    assert salted.block_hashes() != make_seq(0, salt=b"tenant", tokens=tokens).block_hashes()


def test_a_beam_fork_keeps_its_adapter():
    parent = make_seq(4, "a")
    assert parent.fork(9, slot=3).adapter == "a"
