"""The per-sequence-stream KV manager's accounts and prefix reuse, on plain data (no llama.cpp)."""

import random

import pytest

from lmgate.backends.llamacpp.kv_cache import (
    CopyOp,
    ForgetOp,
    KVIntegrityError,
    RemoveOp,
    RestoreOp,
    SpillOp,
)
from lmgate.backends.llamacpp.stream_cache import MOVE_CELLS_MAX, StreamCacheManager

from kv_helpers import B, FakeLlama, chain_of, fill, hashes, tokens_of


def held(kv: StreamCacheManager) -> dict[int, int]:
    return {slot: kv.cells_of(slot) for slot in range(kv.num_slots)}


def test_a_cached_slot_holding_the_prefix_is_taken_over_and_cut_to_it():
    kv = StreamCacheManager(stream_cells=8 * B, num_slots=3)
    slot = fill(kv, hashes("a", "b", "c"), 3 * B + 5)
    kv.cache(slot)
    kv.take_ops()
    admission = kv.admit(hashes("a", "b", "x"), 3 * B + 1)
    assert admission is not None and (admission.slot, admission.cached_tokens) == (slot, 2 * B)
    assert kv.take_ops() == (RemoveOp(slot, 2 * B),)  # nothing copied: the cells were in its stream already
    assert kv.prefix_hits == 2 * B
    kv.check_integrity(held(kv))


def test_a_repeated_prompt_leaves_exactly_one_token_to_compute():
    kv = StreamCacheManager(stream_cells=8 * B, num_slots=2)
    ids = tokens_of(1, 2, 3)
    kv.cache(fill(kv, hashes("a", "b", "c"), 3 * B, ids))
    admission = kv.admit(hashes("a", "b", "c"), 3 * B, ids)
    assert admission is not None and admission.cached_tokens == 3 * B - 1


def test_a_running_holder_is_copied_into_the_lowest_idle_slot():
    kv = StreamCacheManager(stream_cells=8 * B, num_slots=3)
    running = fill(kv, hashes("s", "y", "s"), 3 * B + 4)
    kv.take_ops()
    admission = kv.admit(hashes("s", "y", "s", "q"), 4 * B + 2)
    assert admission is not None and (admission.slot, admission.cached_tokens) == (1, 3 * B)
    assert kv.take_ops() == (CopyOp(running, 1, 3 * B),)
    assert kv.cells_of(1) == 3 * B and kv.cells_of(running) == 3 * B + 4  # copied, not shared
    kv.check_integrity(held(kv))


def test_a_copy_from_a_running_slot_takes_the_matching_head_of_its_next_block():
    kv = StreamCacheManager(stream_cells=8 * B, num_slots=2)
    ids = tokens_of(1, 2, 3)
    running = fill(kv, hashes("a", "b", "c"), 3 * B, ids)
    kv.take_ops()
    prompt = tokens_of(1, 2, tail=(3,) * 5 + (9,))  # two whole blocks, then 5 tokens of the third
    admission = kv.admit(hashes("a", "b"), len(prompt), prompt)
    assert admission is not None and admission.cached_tokens == 2 * B + 5
    assert kv.take_ops() == (CopyOp(running, 1, 2 * B + 5),)
    kv.allocate(1, 1)
    kv.check_integrity({running: 3 * B, 1: 2 * B + 6})


def test_shrink_gives_back_rejected_draft_cells_and_drops_those_positions():
    kv = StreamCacheManager(stream_cells=8 * B, num_slots=1)
    slot = fill(kv, hashes("a"), B + 2)
    kv.take_ops()
    kv.allocate(slot, 5)
    kv.shrink(slot, 3)
    assert kv.cells_of(slot) == B + 4 and kv.take_ops() == (RemoveOp(slot, B + 4),)
    with pytest.raises(KVIntegrityError):
        kv.shrink(slot, 5)  # its tail holds 4


def test_a_cached_slot_above_where_a_new_sequence_goes_is_copied_from_not_taken_over():
    """Slots 0-3 hold one system prompt, 0 runs: a new request takes slot 1 over (the lowest holder), and
    when only slot 3 holds the prefix, its cells are copied into slot 1, leaving the running ids packed."""
    kv = StreamCacheManager(stream_cells=8 * B, num_slots=4, host_cells_max=16 * B)
    slots = [fill(kv, hashes("s", "s"), 2 * B + 1) for _ in range(4)]
    for slot in slots[1:]:
        kv.cache(slot)
    kv.take_ops()
    admission = kv.admit(hashes("s", "s", "q"), 3 * B)
    assert admission is not None and (admission.slot, admission.cached_tokens) == (1, 2 * B)
    assert kv.take_ops() == (RemoveOp(1, 2 * B),)
    kv.cache(fill(kv, hashes("z"), B + 1, None))  # slot 2 now holds "z"
    kv.cache(1)
    kv.take_ops()
    assert kv.cells_of(3) == 2 * B and kv.cells_of(2) == B
    admission = kv.admit(hashes("s", "s", "r"), 3 * B)
    assert admission is not None and (admission.slot, admission.cached_tokens) == (1, 2 * B)  # slot 1 still has it
    kv.release(1)
    kv.take_ops()
    admission = kv.admit(hashes("s", "s", "t"), 3 * B)
    assert admission is not None and (admission.slot, admission.cached_tokens) == (1, 2 * B)
    assert kv.take_ops() == (CopyOp(3, 1, 2 * B),)  # slot 1 was free; 3 holds the prefix further up
    kv.check_integrity(held(kv))


def test_a_fork_into_a_cached_slot_sends_its_prefix_to_the_host_tier_first():
    kv = StreamCacheManager(stream_cells=8 * B, num_slots=2, host_cells_max=8 * B)
    parent = fill(kv, hashes("p"), B + 1)
    kv.cache(fill(kv, hashes("c", "c"), 2 * B))  # slot 1, cached
    kv.take_ops()
    child = kv.fork(parent)
    assert child == 1 and kv.take_ops() == (SpillOp(1, 0), RemoveOp(1, 0), CopyOp(parent, 1, B + 1))
    kv.check_integrity(held(kv))
    kv.cache(parent)
    with pytest.raises(KVIntegrityError):
        kv.fork(parent)  # only a running slot forks


def test_new_sequences_pack_the_lowest_ids_and_the_cached_content_there_goes_to_the_host_tier():
    kv = StreamCacheManager(stream_cells=8 * B, num_slots=3, host_cells_max=4 * B)
    first, second = fill(kv, hashes("a", "a"), 2 * B), fill(kv, hashes("b"), B + 1)
    assert (first, second) == (0, 1)
    kv.cache(first)
    kv.take_ops()
    admission = kv.admit(hashes("c"), B + 1)  # no prefix anywhere: slot 0 (cached) before slot 2 (free)
    assert admission is not None and admission.slot == 0 and admission.cached_tokens == 0
    assert kv.take_ops() == (SpillOp(0, 0), RemoveOp(0, 0))
    assert kv.evictions == 1 and kv.host is not None and kv.host.match(hashes("a", "a")) == (0, 2)
    kv.check_integrity(held(kv))


def test_without_a_host_tier_a_free_slot_goes_before_a_cached_one():
    kv = StreamCacheManager(stream_cells=8 * B, num_slots=3)
    kv.cache(fill(kv, hashes("a", "a"), 2 * B))
    admission = kv.admit(hashes("c"), B + 1)
    assert admission is not None and admission.slot == 1 and kv.cells_of(0) == 2 * B  # the prefix stays


def test_a_host_copy_holding_more_of_the_prefix_beats_a_shorter_cached_slot():
    kv = StreamCacheManager(stream_cells=8 * B, num_slots=2, host_cells_max=8 * B)
    first = fill(kv, hashes("a", "b", "c"), 3 * B)
    kv.cache(fill(kv, hashes("a"), B + 2))  # slot 1, "a" copied from slot 0
    kv.cache(first)
    kv.admit(hashes("z"), 2)  # takes slot 0: "a b c" goes to the host
    kv.take_ops()
    admission = kv.admit(hashes("a", "b", "d"), 3 * B + 1)
    assert admission is not None and admission.cached_tokens == 2 * B and admission.slot == 1
    assert kv.take_ops() == (SpillOp(1, 1), RemoveOp(1, 0), RestoreOp(0, 1), RemoveOp(1, 2 * B))
    assert kv.host is not None and kv.host.keys() == {1}  # the copy came back; slot 1's "a" went out
    kv.check_integrity(held(kv))


def test_the_host_tier_drops_its_oldest_copies_beyond_its_cells():
    kv = StreamCacheManager(stream_cells=8 * B, num_slots=1, host_cells_max=3 * B)
    for name in "pqr":  # one slot: admitting the next spills the cached one
        kv.cache(fill(kv, hashes(name, name), 2 * B))
    ops = kv.take_ops()
    assert SpillOp(0, 0) in ops and SpillOp(0, 1) in ops and ForgetOp(0) in ops
    assert kv.host is not None and kv.host.match(hashes("q", "q")) == (1, 2)


def test_nothing_is_admitted_while_every_slot_runs_or_beyond_a_stream():
    kv = StreamCacheManager(stream_cells=4 * B, num_slots=2)
    assert kv.admit([], 4 * B + 1) is None
    fill(kv, [], 3)
    fill(kv, [], 3)
    assert kv.admit([], 3) is None and kv.take_ops() == ()


def test_a_stream_is_the_sequences_own_and_growing_beyond_it_is_a_bug():
    kv = StreamCacheManager(stream_cells=4 * B, num_slots=2)
    slot = fill(kv, hashes("a", "b", "c"), 3 * B)
    fill(kv, hashes("x", "y", "z", "w"), 4 * B)  # the other stream full does not matter
    assert kv.room(slot) == B and kv.allocate(slot, B)
    with pytest.raises(KVIntegrityError):
        kv.allocate(slot, 1)


def test_a_fork_copies_every_position():
    kv = StreamCacheManager(stream_cells=8 * B, num_slots=2)
    parent = fill(kv, hashes("a"), B + 3)
    kv.take_ops()
    child = kv.fork(parent)
    assert child == 1 and kv.take_ops() == (CopyOp(parent, child, B + 3),) and kv.cells_of(child) == B + 3
    assert kv.fork(parent) is None  # every slot runs
    kv.check_integrity(held(kv))


def test_without_prefix_caching_nothing_is_matched_or_kept():
    kv = StreamCacheManager(stream_cells=8 * B, num_slots=2, prefix_caching=False, host_cells_max=8 * B)
    slot = fill(kv, hashes("a", "b"), 2 * B + 1)
    kv.cache(slot)
    assert kv.cells_of(slot) == 0 and kv.host is None
    admission = kv.admit(hashes("a", "b"), 2 * B + 1)
    assert admission is not None and admission.cached_tokens == 0 and kv.prefix_queries == 0


def test_pack_moves_the_highest_running_sequence_into_a_gap_between_running_slots():
    kv = StreamCacheManager(stream_cells=8 * B, num_slots=5)
    llama = FakeLlama()
    slots = [fill(kv, hashes(name), B + 3) for name in "abcd"]
    llama.held = dict.fromkeys(slots, B + 3)
    kv.release(slots[1])  # a gap at 1, between 0 and 2, 3
    llama.apply(kv.take_ops())
    assert kv.pack() == [(3, 1)]
    assert kv.take_ops() == (CopyOp(3, 1, B + 3), RemoveOp(3, 0))
    assert (kv.cells_of(1), kv.cells_of(3)) == (B + 3, 0)
    assert kv.pack() == []  # 0, 1, 2: packed
    kv.check_integrity(held(kv))
    kv.release(0)
    assert kv.pack() == []  # 1, 2: a free slot below the running ones is no gap


def test_pack_sends_a_gaps_cached_prefix_to_the_host_tier_and_never_drops_one():
    for host_cells, moves in ((8 * B, [(2, 1)]), (0, [])):
        kv = StreamCacheManager(stream_cells=8 * B, num_slots=3, host_cells_max=host_cells)
        _, middle, _ = (fill(kv, hashes(name), B + 1) for name in "abc")
        kv.cache(middle)  # a finished sequence's prefix stays in the gap
        kv.take_ops()
        assert kv.pack() == moves
        if moves:
            assert kv.take_ops() == (SpillOp(1, 0), RemoveOp(1, 0), CopyOp(2, 1, B + 1), RemoveOp(2, 0))
            assert kv.host is not None and kv.host.match(hashes("b")) == (0, 1)
        else:
            assert kv.take_ops() == () and kv.cells_of(middle) == B  # no host tier: the prefix stays


def test_pack_leaves_a_sequence_longer_than_the_move_bound_where_it_is():
    kv = StreamCacheManager(stream_cells=2 * MOVE_CELLS_MAX, num_slots=3)
    long_chain = hashes(*"c" * (MOVE_CELLS_MAX // B))
    _, middle, long = fill(kv, hashes("a"), B), fill(kv, hashes("b"), B), fill(kv, long_chain, MOVE_CELLS_MAX + 1)
    kv.release(middle)
    kv.take_ops()
    assert kv.pack() == [] and kv.cells_of(long) == MOVE_CELLS_MAX + 1


def test_integrity_check_catches_a_mismatch_with_llama_cpp():
    kv = StreamCacheManager(stream_cells=8 * B, num_slots=2)
    slot = fill(kv, hashes("a"), B + 2)
    with pytest.raises(KVIntegrityError):
        kv.check_integrity({slot: B + 1})


@pytest.mark.parametrize("seed", range(30))
def test_random_traffic_keeps_the_accounts_equal_to_what_llama_cpp_holds(seed):
    """Admissions (with token ids: partial-block matches and heads shorter than a block, two tenants), growth,
    drafts partly rejected, forks, endings."""
    rng = random.Random(seed)
    kv = StreamCacheManager(stream_cells=8 * B, num_slots=5, host_cells_max=10 * B)
    llama = FakeLlama()

    def ids(names: list[str], tokens: int) -> list[int]:
        """Block i is a head every block has, then ``names[i]``'s letter repeated; a prompt's partial last block too."""
        return [t for name in names for t in [1, 2, 3, 4] + [ord(name)] * (B - 4)][:tokens]

    def more(names: list[str], tokens: int) -> list[str]:
        return names + rng.choices("ab", k=max(0, -(-tokens // B) - len(names)))

    running: dict[int, tuple[list[str], int, bytes]] = {}  # slot → block names (the last maybe partial), tokens, tenant
    heads = 0  # admissions that kept less than a block
    for _ in range(300):
        action = rng.random()
        if action < 0.3:
            names = rng.choices("ab", k=rng.randint(1, 6))  # two letters: prefixes shared all the time
            tokens = rng.randint(1, B * len(names))
            tenant = rng.choice([b"", b"t"])
            prompt = ids(names, tokens)
            admission = kv.admit(chain_of(prompt, tenant), tokens, prompt, tenant)
            if admission is not None:
                assert admission.slot not in running
                heads += 0 < admission.cached_tokens < B
                kv.allocate(admission.slot, tokens - admission.cached_tokens)
                llama.apply(kv.take_ops())  # copies and restores come before the decode
                assert llama.held.get(admission.slot, 0) == admission.cached_tokens
                llama.held[admission.slot] = tokens
                kv.commit(admission.slot, chain_of(prompt, tenant), prompt)
                running[admission.slot] = (names, tokens, tenant)
            else:
                assert len(running) == kv.num_slots
        elif action < 0.7 and running:
            slot = rng.choice(list(running))
            names, tokens, tenant = running[slot]
            drafted = min(rng.randint(1, B), kv.room(slot))
            if drafted:
                kv.allocate(slot, drafted)
                llama.apply(kv.take_ops())
                llama.held[slot] = tokens + drafted  # decoded, then some rejected: their cells go
                kept = rng.randint(1, drafted) if rng.random() < 0.5 else drafted
                kv.shrink(slot, drafted - kept)
                tokens += kept
                names = more(names, tokens)
                kv.commit(slot, chain_of(ids(names, tokens), tenant), ids(names, tokens))
                running[slot] = (names, tokens, tenant)
        elif action < 0.75 and running:
            parent = rng.choice(list(running))
            child = kv.fork(parent)
            if child is not None:
                running[child] = running[parent]
                llama.apply(kv.take_ops())
                assert llama.held[child] == llama.held[parent]
            else:
                assert len(running) == kv.num_slots
        elif action < 0.8:
            for src, dst in kv.pack():
                running[dst] = running.pop(src)
            ids_running = sorted(running)
            gaps = set(range(ids_running[0], ids_running[-1] + 1)) - set(running) if running else set()
            assert all(kv.cells_of(gap) > 0 for gap in gaps)  # only a prefix too big for the host tier stays
        elif running:
            slot = rng.choice(list(running))
            del running[slot]
            kv.cache(slot) if rng.random() < 0.8 else kv.release(slot)
        llama.apply(kv.take_ops())
        kv.check_integrity({slot: llama.held.get(slot, 0) for slot in range(kv.num_slots)})
        assert kv.host is not None and set(llama.copies) == kv.host.keys()
        assert kv.host.cells <= kv.host.max_cells
    assert kv.host.stored > 0 and kv.host.restored > 0 and kv.prefix_hits > 0 and heads > 0


def test_a_prompt_sharing_less_than_a_block_keeps_that_head_of_the_slot_it_goes_to():
    kv = StreamCacheManager(stream_cells=8 * B, num_slots=2, host_cells_max=8 * B)
    before = tokens_of(7, 8, tail=(9,) * 3)
    kv.cache(fill(kv, chain_of(before), 2 * B + 3, before))
    kv.take_ops()
    prompt = [7] * 5 + [1] * (B + 4)  # the first 5 tokens of the cached slot's first block, then others
    admission = kv.admit(chain_of(prompt), len(prompt), prompt, seed=b"")
    assert admission is not None and (admission.slot, admission.cached_tokens) == (0, 5)
    spill, *rest = kv.take_ops()
    assert isinstance(spill, SpillOp) and rest == [RemoveOp(0, 5)]  # what it held waits in the host tier
    assert kv.cells_of(0) == 5 and kv.prefix_hits == 5
    assert kv.host is not None and kv.host.match(chain_of(before))[1] == 2  # and comes back whole
    kv.check_integrity(held(kv))


@pytest.mark.parametrize("seed", [None, b"another tenant"])
def test_a_head_shorter_than_a_block_is_kept_only_for_the_same_tenant(seed):
    kv = StreamCacheManager(stream_cells=8 * B, num_slots=2, host_cells_max=8 * B)
    before = tokens_of(7, 8)
    kv.cache(fill(kv, chain_of(before), 2 * B, before))
    kv.take_ops()
    prompt = [7] * 5 + [1] * B
    admission = kv.admit(chain_of(prompt, seed or b""), len(prompt), prompt, seed=seed)
    assert admission is not None and (admission.slot, admission.cached_tokens) == (0, 0)
    assert kv.take_ops()[-1] == RemoveOp(0, 0)
