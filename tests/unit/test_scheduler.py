"""Scheduler and KV book-keeping: pure policy on hand-made sequences."""

import itertools

import pytest

from lmgate.backends.engine.beam_search import BeamSearch
from lmgate.backends.engine.output_text import OutputText
from lmgate.backends.llamacpp.kv_cache import CopyOp, KVCacheManager, RemoveOp
from lmgate.backends.llamacpp.scheduler import (
    ATTENTION_TILE,
    Scheduler,
    SchedulerConfig,
    SchedulerOutput,
    aligned_prefill,
)
from lmgate.backends.llamacpp.sequence import Sequence, SequenceStatus
from lmgate.backends.llamacpp.stream_cache import StreamCacheManager
from lmgate.backends.types import SamplingParams

_arrivals = itertools.count()


def make_seq(prompt_len: int, max_tokens: int = 16, name: str = "r") -> Sequence:
    return Sequence(name, 0, list(range(prompt_len)), SamplingParams(), max_tokens, next(_arrivals), OutputText())


def make_scheduler(cells: int = 64, slots: int = 4, budget: int = 16, cache_slots: int = 0) -> Scheduler:
    kv = KVCacheManager(cells, slots + cache_slots, prefix_caching=cache_slots > 0)
    return Scheduler(SchedulerConfig(max_seqs=slots, token_budget=budget), kv)


def run_step(sched: Scheduler, sampled_token: int = 7) -> SchedulerOutput:
    """What the engine does around the runner: schedule, mark computed, append sampled tokens."""
    out = sched.schedule()
    sched.update(out)
    for chunk in out.chunks:
        if chunk.samples:
            chunk.seq.append(sampled_token)
    sched.check_integrity({s.slot: s.num_computed_tokens for s in sched.running if s.slot is not None})
    return out


def test_long_prompt_is_prefilled_in_chunks_under_the_budget():
    sched = make_scheduler(budget=16)
    seq = make_seq(40)
    sched.add(seq)
    lengths = [run_step(sched).chunks[0].length for _ in range(3)]
    assert lengths == [16, 16, 8]
    assert seq.num_output_tokens == 1  # sampled only once the whole prompt was computed


def test_decodes_are_scheduled_before_prefill_chunks():
    sched = make_scheduler(budget=16)
    first = make_seq(4)
    sched.add(first)
    run_step(sched)  # first is now decoding
    second = make_seq(30)
    sched.add(second)
    out = run_step(sched)
    assert [(c.seq, c.length) for c in out.chunks] == [(first, 1), (second, 15)]


def test_admission_is_fifo_and_bounded_by_slots():
    sched = make_scheduler(slots=2, budget=64)
    seqs = [make_seq(3, name=f"r{i}") for i in range(3)]
    for s in seqs:
        sched.add(s)
    out = run_step(sched)
    assert [c.seq for c in out.chunks] == seqs[:2]
    assert seqs[2].status is SequenceStatus.WAITING


def test_a_beam_search_waits_for_a_slot_per_beam_and_holds_them_until_it_ends():
    sched = make_scheduler(cells=256, slots=4, budget=64)
    plain = [make_seq(3, name=f"plain{i}") for i in range(2)]
    for seq in plain:
        sched.add(seq)
    run_step(sched)
    search = make_seq(3, name="search")
    search.beam = BeamSearch(width=3, n=1, max_tokens=8, end_tokens=frozenset())
    behind = make_seq(3, name="behind")
    sched.add(search)
    sched.add(behind)
    run_step(sched)
    assert search.status is behind.status is SequenceStatus.WAITING  # 2 running + 3 beams > 4 slots; FIFO
    sched.finish(plain[0])
    run_step(sched)
    assert search.status is SequenceStatus.RUNNING  # 1 running + 3 beams
    assert behind.status is SequenceStatus.WAITING  # the search's other two slots are held for its forks
    fork = sched.fork(search, 9)
    assert fork is not None and fork.beam is search.beam
    sched.finish(plain[1])
    run_step(sched)
    assert behind.status is SequenceStatus.RUNNING  # a slot freed: the search still holds one for its third beam
    late = make_seq(3, name="late")
    sched.add(late)
    run_step(sched)
    assert late.status is SequenceStatus.WAITING  # 3 running + the one slot held for the third beam
    assert sched.fork(search, 8) is not None


def test_what_arrives_after_a_waiting_beam_search_waits_behind_it_whatever_its_adapter():
    """Else a steady flow on the base model would take every slot that frees, one at a time, and a search on
    an adapter, which needs its width at once, would wait for ever."""
    sched = make_scheduler(cells=256, slots=2, budget=64)
    running = make_seq(3, name="running")
    sched.add(running)
    run_step(sched)
    search = make_seq(3, name="search")
    search.adapter, search.beam = "woof", BeamSearch(width=2, n=1, max_tokens=8, end_tokens=frozenset())
    later = make_seq(3, name="later")
    sched.add(search)
    sched.add(later)
    run_step(sched)
    assert search.status is later.status is SequenceStatus.WAITING  # one slot free: not enough, not taken
    sched.finish(running)
    run_step(sched)
    assert search.status is SequenceStatus.RUNNING and later.status is SequenceStatus.WAITING


def test_a_prompt_that_does_not_fit_in_free_cells_waits_at_the_head():
    sched = make_scheduler(cells=20, budget=64)
    big_running = make_seq(12)
    sched.add(big_running)
    run_step(sched)
    too_big, small = make_seq(10), make_seq(2)
    sched.add(too_big)
    sched.add(small)
    out = run_step(sched)
    assert [c.seq for c in out.chunks] == [big_running]
    assert list(sched.waiting) == [too_big, small]


def test_newest_sequence_is_preempted_when_cells_run_out_and_recomputed_later():
    sched = make_scheduler(cells=10, slots=2, budget=64)
    old, new = make_seq(4), make_seq(4)
    sched.add(old)
    sched.add(new)
    run_step(sched)  # 8 cells used; both have sampled one token
    run_step(sched)  # 10 cells used
    out = run_step(sched)  # both need one more cell: the newest goes
    assert out.preempted == (new,)
    assert [c.seq for c in out.chunks] == [old]
    assert new.status is SequenceStatus.WAITING and new.num_computed_tokens == 0
    assert new.num_tokens == 6  # its sampled tokens are kept, to be recomputed
    assert sched.waiting[0] is new
    assert sched.num_preemptions == 1
    assert RemoveOp(1, 0) in out.memory_ops  # too short for a full block: nothing kept cached


def test_finish_releases_slot_and_cells_and_reports_the_slot_to_clear():
    sched = make_scheduler()
    seq = make_seq(5)
    sched.add(seq)
    run_step(sched)
    slot = seq.slot
    assert slot is not None and sched.kv.used_cells == 5
    sched.finish(seq)
    assert seq.status is SequenceStatus.FINISHED
    assert sched.kv.used_cells == 0 and sched.kv.free_slots == 4
    assert sched.schedule().memory_ops == (RemoveOp(slot, 0),)
    assert not sched.has_work


def test_finishing_a_waiting_sequence_removes_it_from_the_queue():
    sched = make_scheduler()
    seq = make_seq(5)
    sched.add(seq)
    sched.finish(seq)
    assert not sched.has_work


def test_a_finished_prompt_is_found_again_and_only_the_rest_is_computed():
    sched = make_scheduler(cells=256, budget=256, cache_slots=2)
    first = make_seq(40, max_tokens=1, name="a")
    sched.add(first)
    run_step(sched)
    sched.finish(first)  # 40 prompt tokens + 1 sampled: two full blocks stay cached
    again = Sequence("b", 0, [*range(40), 99], SamplingParams(), 4, next(_arrivals), OutputText())
    sched.add(again)
    out = run_step(sched)
    assert [(c.start, c.length) for c in out.chunks] == [(32, 9)]
    assert again.num_cached_tokens == 32
    assert sched.kv.prefix_hits == 32


def make_fair_scheduler(prefill_chunk: int, budget: int = 64) -> Scheduler:
    kv = KVCacheManager(1024, 8, prefix_caching=False)
    return Scheduler(SchedulerConfig(max_seqs=8, token_budget=budget, prefill_chunk=prefill_chunk), kv)


def test_a_long_prompt_beside_decoding_streams_is_prefilled_in_prefill_chunks():
    sched = make_fair_scheduler(prefill_chunk=8)
    streaming = make_seq(4)
    sched.add(streaming)
    run_step(sched)  # now decoding
    long = make_seq(40)
    sched.add(long)
    steps = [run_step(sched) for _ in range(5)]
    assert [[(c.seq, c.length) for c in out.chunks] for out in steps] == [[(streaming, 1), (long, 8)]] * 5
    assert long.num_output_tokens == 1  # 5 × 8 = its whole prompt: sampled at the fifth step


@pytest.mark.parametrize(
    ("decodes", "budget", "expected"),
    [(8, 128, 120), (8, 64, 56), (64, 64, 64), (60, 3, 3), (100, 20, 20), (1, 8, 8)],
)
def test_a_prefill_chunk_is_cut_to_fill_whole_attention_tiles(decodes, budget, expected):
    assert aligned_prefill(decodes, budget) == expected
    assert expected == budget or (decodes + expected) % ATTENTION_TILE == 0


def test_beside_eight_streams_a_prompt_gets_the_chunk_that_fills_the_step_to_a_whole_tile():
    kv = KVCacheManager(4096, 9, prefix_caching=False)
    sched = Scheduler(SchedulerConfig(max_seqs=9, token_budget=512, prefill_chunk=128), kv)
    streams = [make_seq(4) for _ in range(8)]
    for seq in streams:
        sched.add(seq)
    run_step(sched)  # all eight are decoding now
    sched.add(make_seq(1000))
    out = run_step(sched)
    assert [c.length for c in out.chunks] == [1] * 8 + [120]
    assert out.num_tokens == 2 * ATTENTION_TILE


@pytest.mark.parametrize(("budget", "expected"), [(65, 65), (64, 64), (128, 65), (200, 193), (20, 20)])
def test_with_a_stream_per_sequence_the_chunk_after_its_first_token_fills_whole_tiles(budget, expected):
    assert aligned_prefill(8, budget, streams=True) == expected
    assert expected == budget or (expected - 1) % ATTENTION_TILE == 0


def test_with_a_stream_per_sequence_a_prompt_beside_streams_gets_one_token_more_than_the_chunk():
    kv = StreamCacheManager(1024, 9, prefix_caching=False)
    sched = Scheduler(SchedulerConfig(max_seqs=9, token_budget=512, prefill_chunk=64, streams=True), kv)
    for _ in range(8):
        sched.add(make_seq(4))
    run_step(sched)  # all eight are decoding now
    sched.add(make_seq(1000))
    out = run_step(sched)
    assert [c.length for c in out.chunks] == [1] * 8 + [ATTENTION_TILE + 1]  # its own micro-batch: one tile


def test_with_streams_a_gap_under_running_slots_is_closed_unless_a_newcomer_will_take_it():
    """llama.cpp cuts a multi-stream step at each gap in the sequence ids: the highest sequence moves down."""
    kv = StreamCacheManager(1024, 4, prefix_caching=False)
    sched = Scheduler(SchedulerConfig(max_seqs=4, token_budget=64, streams=True), kv)
    seqs = [make_seq(4, max_tokens=16) for _ in range(3)]
    for seq in seqs:
        sched.add(seq)
    run_step(sched)
    assert [seq.slot for seq in seqs] == [0, 1, 2]
    sched.finish(seqs[1])
    newcomer = make_seq(4)
    sched.add(newcomer)
    out = run_step(sched)  # the newcomer fills the gap: nothing copied
    assert newcomer.slot == 1 and not any(isinstance(op, CopyOp) for op in out.memory_ops)
    sched.finish(newcomer)
    out = run_step(sched)  # nothing waits: the sequence in slot 2 moves to 1, then decodes there
    assert [seqs[0].slot, seqs[2].slot] == [0, 1]
    assert CopyOp(2, 1, 5) in out.memory_ops and sorted(c.seq.slot for c in out.chunks) == [0, 1]


def test_with_streams_a_gap_left_by_an_admission_is_closed_too():
    """An idle engine hands a prompt the cached slot holding its prefix, however high; a newcomer then
    takes slot 0, and the gap between them is closed at the next step with nothing waiting."""
    kv = StreamCacheManager(1024, 4, prefix_caching=True)
    sched = Scheduler(SchedulerConfig(max_seqs=4, token_budget=64, streams=True), kv)
    fillers = [make_seq(4, max_tokens=1) for _ in range(3)]
    first = make_seq(40, max_tokens=1)
    for seq in [*fillers, first]:
        sched.add(seq)
    run_step(sched)
    assert first.slot == 3
    for seq in [*fillers, first]:
        sched.finish(seq)
    again = Sequence("again", 0, [*first.token_ids[:40], 99], SamplingParams(), 16, 1000, OutputText())
    sched.add(again)
    run_step(sched)
    assert again.slot == 3 and again.num_cached_tokens > 0  # its prefix's cached slot, taken over
    run_step(sched)  # alone: nothing to close
    newcomer = make_seq(4)
    sched.add(newcomer)
    run_step(sched)
    assert newcomer.slot == 0
    out = run_step(sched)
    assert again.slot == 1 and any(isinstance(op, CopyOp) for op in out.memory_ops)


def test_with_nothing_decoding_a_prompt_gets_the_whole_budget():
    sched = make_fair_scheduler(prefill_chunk=8, budget=64)
    long = make_seq(100)
    sched.add(long)
    assert [c.length for c in run_step(sched).chunks] == [64]


def test_a_short_prompt_behind_a_long_one_is_prefilled_first_and_the_long_one_still_moves():
    sched = make_fair_scheduler(prefill_chunk=16)
    streaming = make_seq(4)
    sched.add(streaming)
    run_step(sched)
    long = make_seq(200)
    sched.add(long)
    run_step(sched)  # the long prompt has started
    short = make_seq(6)
    sched.add(short)
    out = run_step(sched)
    lengths = {id(c.seq): c.length for c in out.chunks}
    assert lengths[id(short)] == 6  # whole prompt in one step: it samples now
    assert lengths[id(long)] == 16 - 6  # the rest, never under a quarter of the prefill budget
    assert short.num_output_tokens == 1


def test_a_flood_of_short_prompts_cannot_starve_the_oldest_prompt():
    sched = make_fair_scheduler(prefill_chunk=16, budget=64)
    streaming = make_seq(4)
    sched.add(streaming)
    run_step(sched)
    long = make_seq(100)
    sched.add(long)
    before = long.num_computed_tokens
    for _ in range(3):
        sched.add(make_seq(16))  # each would take the whole prefill budget, shortest first
        run_step(sched)
    assert long.num_computed_tokens - before >= 3 * 4  # a quarter of 16 every step at least


def test_a_prompt_admitted_with_all_but_its_last_token_cached_samples_in_its_first_step():
    sched = make_scheduler(cells=64, slots=2, budget=16, cache_slots=2)
    first = make_seq(9, max_tokens=1)
    sched.add(first)
    run_step(sched)
    sched.finish(first)  # its full blocks stay cached
    again = make_seq(9)
    sched.add(again)
    out = run_step(sched)
    assert [(c.seq, c.length) for c in out.chunks] == [(again, again.num_prompt_tokens - again.num_cached_tokens)]
    assert again.num_output_tokens == 1
