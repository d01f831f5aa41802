"""Speculation policy (backends/llamacpp/speculator.py) and its KV book-keeping, on hand-made sequences:
which chunks get drafts, how many, in which cells; only accepted tokens are ever committed."""

import itertools
from dataclasses import replace

from lmgate.backends.engine.output_text import OutputText
from lmgate.backends.llamacpp.kv_cache import BLOCK_SIZE, KVCacheManager, RemoveOp
from lmgate.backends.llamacpp.scheduler import Scheduler, SchedulerConfig, SchedulerOutput
from lmgate.backends.llamacpp.sequence import Sequence
from lmgate.backends.llamacpp.speculative_config import SpeculativeConfig
from lmgate.backends.llamacpp.speculator import PROBE_STEPS, NgramDrafter, Speculator
from lmgate.backends.types import SamplingParams

_arrivals = itertools.count()


class FixedDrafter:
    """Proposes ``tokens`` (cut to each limit) for every sequence; remembers the limits asked."""

    def __init__(self, tokens: list[int]) -> None:
        self.tokens = tokens
        self.limits: list[int] = []
        self.released: list[Sequence] = []

    def propose(self, seqs: list[Sequence], limits: list[int]) -> list[list[int]]:
        self.limits += limits
        return [self.tokens[:limit] for limit in limits]

    def release(self, seq: Sequence) -> None:
        self.released.append(seq)

    def close(self) -> None:
        pass


def make_seq(prompt_len: int, max_tokens: int = 64, name: str = "r", **sampling) -> Sequence:
    params = SamplingParams(**sampling)
    return Sequence(name, 0, list(range(prompt_len)), params, max_tokens, next(_arrivals), OutputText())


def make(cells: int = 256, budget: int = 64, drafter=None, max_model_len: int = 10_000, **config):
    """A scheduler (its prefill budget 64) and a speculator filling steps up to ``budget`` tokens."""
    kv = KVCacheManager(cells, 4)
    sched = Scheduler(SchedulerConfig(max_seqs=4, token_budget=64), kv)
    spec = Speculator(SpeculativeConfig(method="ngram", **config), drafter or FixedDrafter([9] * 16), kv, budget,
                      max_model_len)  # fmt: skip
    return sched, spec


def decoding(sched: Scheduler, *seqs: Sequence) -> None:
    """Admit and prefill ``seqs`` and give each its first sampled token: they decode from now on."""
    for seq in seqs:
        sched.add(seq)
    out = sched.schedule()
    sched.update(out)
    for seq in seqs:
        seq.append(7)


def finish_step(sched: Scheduler, out: SchedulerOutput, accepted: dict[int, int]) -> None:
    """What the engine does: accepted drafts join the sequence, update, then the sampled token."""
    for chunk in out.chunks:
        chunk.seq.token_ids.extend(chunk.draft[: accepted.get(id(chunk.seq), 0)])
    sched.update(out)
    for chunk in out.chunks:
        chunk.seq.append(5)
    sched.check_integrity({s.slot: s.num_computed_tokens for s in sched.running if s.slot is not None})


def test_a_decoding_sequence_gets_num_draft_tokens_and_their_cells():
    sched, spec = make(num_draft=3)
    seq = make_seq(10)
    decoding(sched, seq)
    out = spec.extend(sched.schedule())
    [chunk] = out.chunks
    assert (chunk.length, chunk.draft) == (1, (9, 9, 9))
    assert out.num_tokens == 4
    assert sched.kv.cells_of(seq.slot) == 11 + 3
    assert spec.drafted == 3


def test_rejected_drafts_give_their_cells_back_and_llama_cpp_drops_their_positions():
    sched, spec = make(num_draft=4)
    seq = make_seq(10)
    decoding(sched, seq)
    sched.kv.take_ops()
    out = spec.extend(sched.schedule())
    finish_step(sched, out, {id(seq): 1})  # one draft taken, then the sampled token
    assert seq.num_computed_tokens == 12 and seq.num_tokens == 13
    assert sched.kv.cells_of(seq.slot) == 12
    assert RemoveOp(seq.slot, 12) in sched.kv.take_ops()


def test_all_drafts_accepted_keeps_every_cell():
    sched, spec = make(num_draft=4)
    seq = make_seq(10)
    decoding(sched, seq)
    sched.kv.take_ops()
    finish_step(sched, spec.extend(sched.schedule()), {id(seq): 4})
    assert seq.num_computed_tokens == 15 and seq.num_tokens == 16
    assert not sched.kv.take_ops()


def test_only_accepted_tokens_are_committed_as_prefix_blocks():
    sched, spec = make(num_draft=4)
    seq = make_seq(BLOCK_SIZE - 2)  # the drafts would complete the first block
    decoding(sched, seq)
    finish_step(sched, spec.extend(sched.schedule()), {id(seq): 0})
    assert seq.num_computed_tokens == BLOCK_SIZE - 1
    assert sched.kv.cells_of(seq.slot) == BLOCK_SIZE - 1
    finish_step(sched, spec.extend(sched.schedule()), {id(seq): 2})
    assert seq.num_computed_tokens == BLOCK_SIZE + 2
    # The committed block holds the sequence's real tokens, accepted drafts included.
    [block] = sched.kv._slots[seq.slot].blocks
    assert block.tokens == tuple(seq.token_ids[:BLOCK_SIZE])
    assert block.hash == seq.block_hashes()[0]


def test_drafts_stop_one_short_of_max_tokens_and_of_the_context():
    drafter = FixedDrafter([9] * 16)
    sched, spec = make(num_draft=8, drafter=drafter, max_model_len=14)
    short = make_seq(4, max_tokens=3, name="short")  # 1 output token so far: 2 more at most
    near_end = make_seq(10, name="long")  # 11 tokens of 14: 3 more at most
    decoding(sched, short, near_end)
    out = spec.extend(sched.schedule())
    assert [len(c.draft) for c in out.chunks] == [1, 2]
    assert drafter.limits == [1, 2]


def test_no_drafts_beyond_max_batch_decoding_sequences():
    sched, spec = make(max_batch=2)
    seqs = [make_seq(4, name=f"r{i}") for i in range(3)]
    decoding(sched, *seqs)
    out = sched.schedule()
    assert spec.extend(out) is out


def test_excluded_sequences_decode_without_drafts():
    sched, spec = make()
    off = make_seq(4, name="off", speculative=False)
    logprobs = make_seq(4, name="logprobs", logprobs=1)
    on = make_seq(4, name="on", speculative=True)
    decoding(sched, off, logprobs, on)
    out = spec.extend(sched.schedule())
    assert {c.seq.request_id: len(c.draft) for c in out.chunks} == {"off": 0, "logprobs": 0, "on": 4}


def test_drafts_fit_the_token_budget_and_free_cells_without_evicting_or_preempting():
    sched, spec = make(cells=24, budget=6, num_draft=8)
    a, b = make_seq(8, name="a"), make_seq(8, name="b")
    decoding(sched, a, b)  # 16 of 24 cells held
    out = spec.extend(sched.schedule())  # 2 decode tokens: 4 tokens of budget and 6 free cells left
    assert [len(c.draft) for c in out.chunks] == [4, 0]
    assert not out.preempted and sched.kv.free_cells == 2
    tight, spec2 = make(cells=21, budget=64, num_draft=8)
    c, d = make_seq(8, name="c"), make_seq(8, name="d")
    decoding(tight, c, d)
    out = spec2.extend(tight.schedule())  # 16 held + 2 decode tokens: 3 cells left
    assert [len(ch.draft) for ch in out.chunks] == [3, 0]
    assert not out.preempted and tight.kv.free_cells == 0


def test_a_prefill_chunk_gets_no_draft():
    sched, spec = make(budget=64)
    running = make_seq(4, name="running")
    decoding(sched, running)
    sched.add(make_seq(30, name="new"))
    out = spec.extend(sched.schedule())
    assert [(c.seq.request_id, len(c.draft)) for c in out.chunks] == [("running", 4), ("new", 0)]


def test_ngram_drafter_proposes_from_the_sequence_and_forgets_it_on_release():
    drafter = NgramDrafter(1, 3)
    seq = make_seq(0)
    seq.token_ids[:] = [1, 2, 3, 4, 1, 2]
    assert drafter.propose([seq], [3]) == [[3, 4, 1]]
    drafter.release(seq)
    assert not drafter._indexes


def test_update_without_drafts_is_unchanged():
    sched, _ = make()
    seq = make_seq(10)
    decoding(sched, seq)
    out = sched.schedule()
    assert replace(out.chunks[0]).draft == ()
    finish_step(sched, out, {})
    assert seq.num_computed_tokens == 11


def draft_lengths(outcomes: list[str], num_draft: int = 4) -> list[int]:
    """The draft length of each step of one sequence whose drafts are taken whole ("all") or not
    ("none"), or that drafts nothing ("-": the step's draft length is 0)."""
    sched, spec = make(num_draft=num_draft, cells=1024)
    seq = make_seq(10, max_tokens=500)
    decoding(sched, seq)
    lengths = []
    for outcome in outcomes:
        out = spec.extend(sched.schedule())
        [chunk] = out.chunks
        lengths.append(len(chunk.draft))
        assert outcome == "-" or chunk.draft, f"step {len(lengths)} drafted nothing"
        if chunk.draft:
            taken = len(chunk.draft) if outcome == "all" else 0
            spec.observe(seq, len(chunk.draft), taken)
            finish_step(sched, out, {id(seq): taken})
        else:
            finish_step(sched, out, {})
    return lengths


def test_rejected_drafts_shrink_the_next_ones_down_to_none_then_a_probe_of_one():
    lengths = draft_lengths(["none"] * 4 + ["-"] * PROBE_STEPS + ["none"])
    assert lengths[:4] == [4, 3, 2, 1]
    assert lengths[4 : 4 + PROBE_STEPS] == [0] * PROBE_STEPS  # nothing drafted, nothing wasted
    assert lengths[-1] == 1  # then one token tried again


def test_drafts_taken_whole_grow_back_to_num_draft():
    assert draft_lengths(["none", "none", "none", "all", "all", "all"]) == [4, 3, 2, 1, 3, 4]


def test_a_draft_stops_where_the_sequence_cannot_follow_it():
    eos = 9

    def draft_of(**sampling):
        sched, _ = make()
        kv = sched.kv
        spec = Speculator(SpeculativeConfig(method="ngram"), FixedDrafter([3, eos, 4, 5]), kv, 64, 10_000,
                          frozenset({eos}))  # fmt: skip
        seq = make_seq(10, **sampling)
        decoding(sched, seq)
        [chunk] = spec.extend(sched.schedule()).chunks
        return chunk.draft

    assert draft_of() == (3, eos)  # the end token may be sampled, then the sequence is done
    assert draft_of(ignore_eos=True) == (3,)  # its sampler never draws the end token
    assert draft_of(stop_token_ids=(3,)) == (3,)
