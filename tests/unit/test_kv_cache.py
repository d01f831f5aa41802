"""The KV manager's accounts and prefix cache, on plain data (no llama.cpp)."""

import pytest

from lmgate.backends.llamacpp.kv_cache import (
    BLOCK_SIZE,
    ForgetOp,
    KVCacheManager,
    KVIntegrityError,
    RemoveOp,
    RestoreOp,
    ShareOp,
    SpillOp,
    default_idle_tokens,
)

from kv_helpers import B, FakeLlama, chain_of, fill, hashes, tokens_of


def held(kv: KVCacheManager) -> dict[int, int]:
    return {slot: kv.cells_of(slot) for slot in kv._slots}


def test_allocate_refuses_what_does_not_fit_without_side_effects():
    kv = KVCacheManager(total_cells=8, num_slots=2)
    admission = kv.admit([], 4)
    assert admission is not None and kv.allocate(admission.slot, 6)
    assert not kv.allocate(admission.slot, 3)
    assert kv.used_cells == 6


def test_full_blocks_of_a_cached_slot_are_taken_over_by_a_matching_prompt():
    kv = KVCacheManager(total_cells=10 * B, num_slots=2)
    slot = fill(kv, hashes("a", "b", "c"), 3 * B + 5)
    kv.cache(slot)
    assert kv.take_ops()[-1] == RemoveOp(slot, 3 * B)  # the partial tail is dropped
    assert kv.used_cells == 3 * B and kv.reclaimable_cells == 3 * B
    admission = kv.admit(hashes("a", "b", "x"), 3 * B + 1)
    assert admission is not None and (admission.slot, admission.cached_tokens) == (slot, 2 * B)
    assert kv.take_ops() == (RemoveOp(slot, 2 * B),)  # block "c" did not match: gone
    assert kv.used_cells == 2 * B and kv.reclaimable_cells == 0
    kv.check_integrity(held(kv))


def test_a_running_holder_shares_its_blocks_into_a_new_slot():
    kv = KVCacheManager(total_cells=10 * B, num_slots=2)
    running = fill(kv, hashes("a", "b"), 2 * B)
    admission = kv.admit(hashes("a", "b", "c"), 3 * B)
    assert admission is not None and admission.slot != running and admission.cached_tokens == 2 * B
    assert kv.take_ops() == (ShareOp(running, admission.slot, 2 * B),)
    assert kv.used_cells == 2 * B  # shared, not copied
    kv.allocate(admission.slot, B)
    kv.commit(admission.slot, hashes("a", "b", "c"))
    assert kv.used_cells == 3 * B
    kv.release(running)
    assert kv.used_cells == 3 * B  # the shared blocks live on in the other slot
    kv.check_integrity(held(kv))


def test_at_least_one_token_is_left_to_compute():
    kv = KVCacheManager(total_cells=10 * B, num_slots=2)
    kv.cache(fill(kv, hashes("a", "b"), 2 * B))
    admission = kv.admit(hashes("a", "b"), 2 * B)
    assert admission is not None and admission.cached_tokens == B


def test_least_recently_used_cached_slot_is_evicted_first():
    kv = KVCacheManager(total_cells=4 * B, num_slots=3)
    old = fill(kv, hashes("o", "p"), 2 * B)
    kv.cache(old)
    new = fill(kv, hashes("n", "m"), 2 * B)
    kv.cache(new)
    assert kv.free_cells == 0
    slot = fill(kv, hashes("x"), B)  # needs one block: the oldest cached slot goes
    assert kv.take_ops()[-1] == RemoveOp(old, 0)
    assert kv.admit(hashes("n", "m", "z"), 3 * B) is not None  # the newer one is still a hit
    kv.release(slot)


def test_admit_refuses_a_prompt_that_cannot_fit_even_after_evicting_everything():
    kv = KVCacheManager(total_cells=4 * B, num_slots=3)
    fill(kv, hashes("r", "s"), 2 * B)  # running: not evictable
    kv.cache(fill(kv, hashes("c"), B))
    assert kv.admit([], 2 * B + 1) is None  # 1 free block + 1 reclaimable block < 2 blocks + 1
    assert kv.admit([], 2 * B) is not None


def test_blocks_shared_with_a_running_sequence_are_not_reclaimable():
    kv = KVCacheManager(total_cells=10 * B, num_slots=2)
    first = fill(kv, hashes("a"), B + 1)
    second = fill(kv, hashes("a", "b"), 2 * B)
    kv.cache(first)
    assert kv.reclaimable_cells == 0  # block "a" is also held by the running second slot
    kv.release(second)
    assert kv.reclaimable_cells == B


def test_without_prefix_caching_nothing_is_matched_or_kept():
    kv = KVCacheManager(total_cells=10 * B, num_slots=2, prefix_caching=False)
    slot = fill(kv, hashes("a", "b"), 2 * B + 1)
    kv.cache(slot)
    assert kv.used_cells == 0
    assert kv.admit(hashes("a", "b"), 3 * B).cached_tokens == 0


def test_integrity_check_catches_a_mismatch_with_llama_cpp():
    kv = KVCacheManager(total_cells=10 * B, num_slots=2)
    slot = fill(kv, hashes("a"), B + 3)
    kv.check_integrity({slot: B + 3})
    with pytest.raises(KVIntegrityError):
        kv.check_integrity({slot: B + 2})


def test_a_cached_block_after_the_chain_gives_its_matching_head():
    kv = KVCacheManager(total_cells=10 * B, num_slots=2)
    old = tokens_of(1, 2, tail=(7,) * B)  # three full blocks, the third all 7s
    admission = kv.admit(hashes("a", "b", "c"), len(old), old)
    assert kv.allocate(admission.slot, len(old))
    kv.commit(admission.slot, hashes("a", "b", "c"), old)
    kv.cache(admission.slot)
    kv.take_ops()
    new = tokens_of(1, 2, tail=(7, 7, 7, 9))  # the same two blocks, then three of the third's tokens
    admission = kv.admit(hashes("a", "b"), len(new), new)
    assert admission is not None and admission.cached_tokens == 2 * B + 3
    assert kv.take_ops() == (RemoveOp(admission.slot, 2 * B + 3),)  # the rest of block "c" goes
    assert kv.used_cells == 2 * B + 3
    kv.check_integrity({admission.slot: 2 * B + 3})


def test_a_repeated_prompt_leaves_exactly_one_token_to_compute():
    kv = KVCacheManager(total_cells=10 * B, num_slots=3)
    prompt = tokens_of(1, 2, 3)
    running = kv.admit(hashes("a", "b", "c"), len(prompt), prompt)
    assert kv.allocate(running.slot, len(prompt))
    kv.commit(running.slot, hashes("a", "b", "c"), prompt)
    again = kv.admit(hashes("a", "b", "c"), len(prompt), prompt)  # shared from the running holder
    assert again is not None and again.cached_tokens == len(prompt) - 1
    assert kv.take_ops()[-1] == ShareOp(running.slot, again.slot, len(prompt) - 1)
    # The copied head of block "c" is counted for both slots: over, never under.
    assert kv.used_cells == 3 * B + (B - 1)
    kv.check_integrity({running.slot: 3 * B, again.slot: len(prompt) - 1})


def test_without_token_ids_only_whole_blocks_are_shared():
    kv = KVCacheManager(total_cells=10 * B, num_slots=2)
    kv.cache(fill(kv, hashes("a", "b"), 2 * B))
    admission = kv.admit(hashes("a"), B + 5)
    assert admission is not None and admission.cached_tokens == B


def test_an_idle_cache_admits_a_prompt_that_shares_a_short_prefix_with_a_cached_slot_filling_it():
    """The cached slot holding the shared block cannot be evicted, but taking it over frees the rest:
    the prompt must be admitted (refusing it for ever left the engine spinning with it waiting)."""
    kv = KVCacheManager(total_cells=4 * B, num_slots=2)
    kv.cache(fill(kv, hashes("a", "b", "c", "d"), 4 * B))
    admission = kv.admit(hashes("a", "x", "y"), 4 * B)
    assert admission is not None and admission.cached_tokens == B
    assert kv.allocate(admission.slot, 3 * B)
    kv.check_integrity(held(kv))


def test_an_idle_cache_admits_what_fits_even_when_two_cached_slots_hold_the_shared_prefix():
    kv = KVCacheManager(total_cells=6 * B, num_slots=3)
    first = fill(kv, hashes("a", "b"), 2 * B)
    second = kv.admit(hashes("a", "c"), 2 * B + 1)  # shares "a" with the first while it runs
    assert second is not None and kv.allocate(second.slot, B + 1)
    kv.commit(second.slot, hashes("a", "c"))
    kv.cache(first)
    kv.cache(second.slot)
    assert kv.free_cells == 3 * B
    admission = kv.admit(hashes("a", "x", "y", "z", "w"), 6 * B)  # sharing "a" leaves 4 B: not enough
    assert admission is not None
    assert kv.allocate(admission.slot, 6 * B - admission.cached_tokens)
    kv.check_integrity(held(kv))


def test_cached_slots_beyond_the_cold_cell_bound_go_least_recently_used_first():
    kv = KVCacheManager(total_cells=20 * B, num_slots=4, cached_cells_max=3 * B)
    older = fill(kv, hashes("a", "b"), 2 * B)
    kv.cache(older)
    newer = fill(kv, hashes("x", "y"), 2 * B)
    kv.cache(newer)
    assert kv.evictions == 1 and kv.reclaimable_cells == 2 * B
    assert kv.admit(hashes("a", "b"), 2 * B).cached_tokens == 0  # the older prompt is gone
    assert kv.admit(hashes("x", "y"), 2 * B).cached_tokens == B  # the newer one hits (its last block is recomputed)
    kv.check_integrity(held(kv))


def test_the_newest_cached_slot_stays_whatever_its_size():
    kv = KVCacheManager(total_cells=20 * B, num_slots=4, cached_cells_max=B)
    big = fill(kv, hashes("a", "b", "c"), 3 * B)
    kv.cache(big)
    assert kv.evictions == 0 and kv.reclaimable_cells == 3 * B
    kv.cache(fill(kv, hashes("x"), B))
    assert kv.evictions == 1 and kv.reclaimable_cells == B


def test_cells_a_running_sequence_shares_are_not_cold_until_it_lets_go():
    kv = KVCacheManager(total_cells=20 * B, num_slots=4, cached_cells_max=2 * B)
    first = fill(kv, hashes("a", "b"), 2 * B)
    sharer = fill(kv, hashes("a", "b", "c"), 3 * B)  # shares "a", "b" with the running first
    kv.cache(first)
    assert kv.reclaimable_cells == 0  # the sharer still runs on them
    kv.cache(fill(kv, hashes("x"), B))
    assert kv.evictions == 0 and kv.reclaimable_cells == B
    kv.release(sharer)  # aborted: "a", "b" are cold now, 3 blocks beyond the bound of 2
    assert kv.evictions == 1 and kv.reclaimable_cells == B  # the older cached slot went
    kv.check_integrity(held(kv))


def test_a_prompt_takes_over_the_cached_holder_with_the_least_past_its_prefix_even_beside_a_running_one():
    """Sharing from the running holder instead would leave the cached copies (and the cells past the
    shared prefix) in the cache's span, where every step's attention scans them."""
    kv = KVCacheManager(total_cells=20 * B, num_slots=4)
    longer = fill(kv, hashes("a", "b", "c", "d"), 4 * B)
    shorter = kv.admit(hashes("a", "b", "e"), 3 * B)
    assert shorter is not None and kv.allocate(shorter.slot, B)
    kv.commit(shorter.slot, hashes("a", "b", "e"))
    kv.cache(shorter.slot)
    kv.cache(longer)
    running = kv.admit(hashes("a", "b", "f"), 3 * B)  # `shorter` loses one block, `longer` would lose two
    assert running is not None and (running.slot, running.cached_tokens) == (shorter.slot, 2 * B)
    assert kv.take_ops()[-1] == RemoveOp(shorter.slot, 2 * B)  # its block "e" goes
    assert kv.allocate(running.slot, B)
    kv.commit(running.slot, hashes("a", "b", "f"))
    again = kv.admit(hashes("a", "b", "g"), 3 * B)  # a running holder and a cached one: the cached
    assert again is not None and again.slot == longer
    assert kv.reclaimable_cells == 0
    kv.check_integrity(held(kv))


def test_between_cached_holders_alike_the_most_recently_cached_is_taken_over():
    """The older ones are left to expire (``cached_idle_tokens``); taking over the oldest each time
    would keep every one of them alive under a stream of prompts with the same prefix."""
    kv = KVCacheManager(total_cells=20 * B, num_slots=4)
    first = fill(kv, hashes("a", "b", "c"), 3 * B)
    second = kv.admit(hashes("a", "b", "d"), 3 * B)
    assert second is not None and kv.allocate(second.slot, B)
    kv.commit(second.slot, hashes("a", "b", "d"))
    kv.cache(first)
    kv.cache(second.slot)
    admission = kv.admit(hashes("a", "b", "e"), 3 * B)
    assert admission is not None and admission.slot == second.slot
    kv.check_integrity(held(kv))


def test_cached_slots_go_once_the_engine_computed_their_idle_tokens_and_the_newest_stays():
    kv = KVCacheManager(total_cells=20 * B, num_slots=4, cached_idle_tokens=100)
    older = fill(kv, hashes("a", "b"), 2 * B)
    kv.cache(older)
    kv.advance(60)
    newer = fill(kv, hashes("x", "y"), 2 * B)
    kv.cache(newer)
    kv.advance(39)
    assert kv.evictions == 0 and kv.reclaimable_cells == 4 * B  # `older` has waited 99 tokens
    kv.advance(1)
    assert kv.evictions == 1 and kv.reclaimable_cells == 2 * B
    assert kv.take_ops()[-1] == RemoveOp(older, 0)
    kv.advance(1000)  # the newest stays however long it waits
    assert kv.evictions == 1 and kv.admit(hashes("x", "y"), 2 * B).cached_tokens == B
    kv.check_integrity(held(kv))


def test_without_an_idle_limit_cached_slots_wait_for_ever():
    kv = KVCacheManager(total_cells=20 * B, num_slots=4)
    for chain in (hashes("a", "b"), hashes("x", "y")):
        kv.cache(fill(kv, chain, 2 * B))
    kv.advance(10**9)
    assert kv.evictions == 0 and kv.reclaimable_cells == 4 * B


@pytest.mark.parametrize(
    ("n_params", "heads", "layers", "expected"),
    [
        (200_827_904, 16, 12, 4_085),  # bench-200m: the model the break-even was measured on
        (6_738_415_616, 32, 32, 25_705),  # a Llama-2-7B: 25x the weights, 5x the scans per cell
        (10_000, 4, 2, BLOCK_SIZE),  # a toy model keeps prefixes at least a block's worth
    ],
)
def test_the_default_idle_limit_weighs_a_tokens_flops_against_the_scans_of_a_cell(n_params, heads, layers, expected):
    assert default_idle_tokens(n_params, heads * layers) == expected
    assert default_idle_tokens(n_params, heads * layers, host_tier=True) == 64  # out of the span in a few steps


def test_an_evicted_cached_slot_goes_to_the_host_tier_and_comes_back_for_a_longer_prefix():
    kv = KVCacheManager(total_cells=10 * B, num_slots=2, cached_idle_tokens=B, host_cells_max=8 * B)
    first = fill(kv, hashes("a", "b", "c"), 3 * B)
    kv.cache(first)
    kv.cache(fill(kv, hashes("x"), B + 3))  # the newest cached slot stays in the KV cache
    kv.take_ops()
    kv.advance(B)
    assert kv.take_ops() == (SpillOp(first, 0), RemoveOp(first, 0))  # copied out, then its cells go
    assert kv.used_cells == B and len(kv.host) == 1
    admission = kv.admit(hashes("a", "b", "d"), 3 * B + 1)  # "a", "b" of the copy; not its "c"
    assert admission is not None and admission.cached_tokens == 2 * B
    assert kv.take_ops() == (RestoreOp(0, admission.slot), RemoveOp(admission.slot, 2 * B))
    assert kv.used_cells == 3 * B and len(kv.host) == 0 and kv.prefix_hits == 2 * B
    kv.check_integrity(held(kv))


def test_a_host_copy_comes_back_only_when_it_holds_more_of_the_prefix_than_the_kv_cache():
    kv = KVCacheManager(total_cells=10 * B, num_slots=3, host_cells_max=8 * B)
    running = fill(kv, hashes("a", "b"), 2 * B + 4)
    kv.cache(fill(kv, hashes("a", "b", "c"), 3 * B))  # shares "a", "b"; "c" is its own
    kv._evict_one()
    kv.take_ops()
    assert len(kv.host) == 1  # a copy of all three blocks
    same = kv.admit(hashes("a", "b", "d"), 3 * B + 1)
    assert same is not None and same.cached_tokens == 2 * B
    assert kv.take_ops() == (ShareOp(running, same.slot, 2 * B),) and len(kv.host) == 1
    kv.release(same.slot)
    kv.take_ops()
    longer = kv.admit(hashes("a", "b", "c", "e"), 4 * B)
    assert longer is not None and longer.cached_tokens == 3 * B
    assert kv.take_ops() == (RestoreOp(0, longer.slot),) and len(kv.host) == 0
    assert kv.used_cells == 2 * B + 4 + 3 * B  # the copy's "a", "b" are cells of their own again
    kv.check_integrity(held(kv))


def test_only_cells_of_its_own_are_worth_a_host_copy():
    kv = KVCacheManager(total_cells=10 * B, num_slots=3, host_cells_max=8 * B)
    running = fill(kv, hashes("a", "b"), 2 * B + 4)
    cached = fill(kv, hashes("a", "b"), 2 * B + 1)  # shares both blocks of the running one
    kv.cache(cached)
    kv.take_ops()
    kv._evict_one()
    assert kv.take_ops() == (RemoveOp(cached, 0),)  # its cells stay with the running slot: no copy
    assert len(kv.host) == 0 and kv.cells_of(running) == 2 * B + 4


def test_the_host_tier_drops_its_oldest_copies_beyond_its_cells():
    kv = KVCacheManager(total_cells=10 * B, num_slots=1, host_cells_max=3 * B)
    for name in "pqr":  # one slot: admitting the next evicts the cached one into the tier
        kv.cache(fill(kv, hashes(name, name), 2 * B))
    ops = kv.take_ops()
    assert SpillOp(0, 0) in ops and SpillOp(0, 1) in ops and ForgetOp(0) in ops
    assert kv.host is not None and kv.host.cells == 2 * B and kv.host.match(hashes("q", "q")) == (1, 2)
    assert kv.host.match(hashes("p", "p")) == (None, 0)


def test_no_host_tier_without_prefix_caching():
    assert KVCacheManager(total_cells=B, num_slots=1, prefix_caching=False, host_cells_max=B).host is None


@pytest.mark.parametrize("seed", range(40))
def test_random_traffic_keeps_the_accounts_equal_to_what_llama_cpp_holds(seed):
    import random

    rng = random.Random(seed)
    kv = KVCacheManager(
        total_cells=24 * B, num_slots=6, cached_cells_max=6 * B, cached_idle_tokens=2 * B, host_cells_max=12 * B
    )
    llama = FakeLlama()
    running: dict[int, tuple[list[str], int, bytes]] = {}  # slot → block names, tokens computed, tenant
    heads = 0  # admissions that shared less than a block

    def ids(names: list[str], tokens: int) -> list[int]:
        """Block i is a head every block has, then ``names[i]``'s letter repeated."""
        return [t for name in names for t in [1, 2, 3, 4] + [ord(name)] * (B - 4)][:tokens]

    for _ in range(300):
        action = rng.random()
        if action < 0.35 and len(running) < 4:
            names = rng.choices("ab", k=rng.randint(1, 5))  # two letters: prefixes shared all the time
            tokens = B * len(names) + rng.randint(0, B - 1)
            tenant = rng.choice([b"", b"t"])
            prompt = ids(names, tokens)
            admission = kv.admit(chain_of(prompt, tenant), tokens, prompt, tenant)
            if admission is not None:
                heads += 0 < admission.cached_tokens < B
                if kv.allocate(admission.slot, tokens - admission.cached_tokens):
                    llama.apply(kv.take_ops())  # shares, copies put back and evictions come before the decode
                    assert llama.held.get(admission.slot, 0) == admission.cached_tokens
                    llama.held[admission.slot] = tokens
                    kv.commit(admission.slot, chain_of(prompt, tenant), prompt)
                    running[admission.slot] = (names, tokens, tenant)
                else:
                    kv.release(admission.slot)
        elif action < 0.75 and running:
            slot = rng.choice(list(running))
            names, tokens, tenant = running[slot]
            grow = rng.randint(1, B)
            if kv.allocate(slot, grow):
                tokens += grow
                llama.apply(kv.take_ops())
                llama.held[slot] = tokens
                names = names + rng.choices("ab", k=max(0, tokens // B - len(names)))
                kv.commit(slot, chain_of(ids(names, tokens), tenant), ids(names, tokens))
                running[slot] = (names, tokens, tenant)
        elif running:
            slot = rng.choice(list(running))
            del running[slot]
            kv.cache(slot) if rng.random() < 0.8 else kv.release(slot)
        kv.advance(rng.randint(1, B))
        llama.apply(kv.take_ops())
        kv.check_integrity({slot: llama.held.get(slot, 0) for slot in range(kv.num_slots)})
        assert kv.host is not None and set(llama.copies) == kv.host.keys()
        assert kv.host.cells == sum(c.cells for c in kv.host._copies.values()) <= kv.host.max_cells
    assert kv.host.stored > 0 and kv.host.restored > 0  # the traffic did go out and come back
    assert heads > 0


def test_a_host_copy_stays_in_the_tier_while_no_slot_can_be_had():
    kv = KVCacheManager(total_cells=10 * B, num_slots=2, host_cells_max=8 * B)
    kv.cache(fill(kv, hashes("a", "b"), 2 * B))
    kv._evict_one()
    busy = [fill(kv, hashes("x"), B), fill(kv, hashes("y"), B)]  # both slots running
    kv.take_ops()
    assert kv.admit(hashes("a", "b"), 2 * B + 1) is None
    assert kv.take_ops() == () and len(kv.host) == 1
    kv.release(busy[0])
    admission = kv.admit(hashes("a", "b"), 2 * B + 1)
    assert admission is not None and admission.cached_tokens == 2 * B and len(kv.host) == 0


def test_a_prompt_sharing_less_than_a_block_shares_that_head_and_the_cached_slot_stays():
    kv = KVCacheManager(total_cells=10 * B, num_slots=3)
    before = tokens_of(7, 8)
    source = fill(kv, chain_of(before), 2 * B, before)
    kv.cache(source)
    kv.take_ops()
    prompt = [7] * 5 + [1] * (B + 4)  # the first 5 tokens of the cached slot's first block, then others
    admission = kv.admit(chain_of(prompt), len(prompt), prompt, seed=b"")
    assert admission is not None and admission.slot != source and admission.cached_tokens == 5
    assert kv.take_ops() == (ShareOp(source, admission.slot, 5),)
    assert kv.cells_of(source) == 2 * B and kv.reclaimable_cells == 2 * B  # still cached, whole
    kv.check_integrity(held(kv))


@pytest.mark.parametrize("host", [False, True])
def test_the_cached_slot_about_to_be_evicted_is_taken_over_down_to_the_head_a_prompt_shares(host):
    kv = KVCacheManager(total_cells=10 * B, num_slots=1, host_cells_max=8 * B if host else 0)
    before = tokens_of(7, 8)
    source = fill(kv, chain_of(before), 2 * B, before)
    kv.cache(source)
    kv.take_ops()
    prompt = [7] * 5 + [1] * (B + 4)
    admission = kv.admit(chain_of(prompt), len(prompt), prompt, seed=b"")
    assert admission is not None and (admission.slot, admission.cached_tokens) == (source, 5)
    ops = kv.take_ops()
    assert ops[-1] == RemoveOp(source, 5) and kv.evictions == 1
    assert [type(op) for op in ops[:-1]] == ([SpillOp] if host else [])  # as evicting it would have
    kv.check_integrity(held(kv))


@pytest.mark.parametrize("seed", [None, b"another tenant"])
def test_a_head_shorter_than_a_block_is_shared_only_within_a_tenant(seed):
    kv = KVCacheManager(total_cells=10 * B, num_slots=3)
    before = tokens_of(7, 8)
    kv.cache(fill(kv, chain_of(before), 2 * B, before))
    kv.take_ops()
    prompt = [7] * 5 + [1] * B
    admission = kv.admit(chain_of(prompt, seed or b""), len(prompt), prompt, seed=seed)
    assert admission is not None and admission.cached_tokens == 0
    assert kv.take_ops() == ()


def test_a_head_shared_from_a_cached_slot_leaves_it_where_it_was_in_the_eviction_order():
    kv = KVCacheManager(total_cells=32 * B, num_slots=4, cached_idle_tokens=4 * B)
    older, newer = tokens_of(7, 8, 9), tokens_of(5, 6)
    kv.cache(old := fill(kv, chain_of(older), 3 * B, older))
    kv.advance(B)
    kv.cache(new := fill(kv, chain_of(newer), 2 * B, newer))
    kv.advance(B)
    prompt = [7] * 5 + [1] * (B + 4)  # a head of the older slot's first block
    admission = kv.admit(chain_of(prompt), len(prompt), prompt, seed=b"")
    assert admission is not None and admission.cached_tokens == 5
    kv.release(admission.slot)
    kv.advance(4 * B)  # the idle limit: every cached slot but the newest goes
    kv.take_ops()
    assert kv.cells_of(new) == 2 * B and old not in kv._slots
