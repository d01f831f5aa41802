"""The continuous-batching engine on real llama.cpp, with a random tiny model.

Every backend here checks its KV book-keeping against llama.cpp after every step
(``check_integrity=True``), so each test also proves no cell or slot is lost.
"""

import asyncio

import pytest

from lmgate.backends.errors import BackendUnavailable, InvalidRequest
from lmgate.backends.llamacpp import memory_plan
from lmgate.backends.llamacpp.kv_cache import BLOCK_SIZE
from lmgate.backends.types import FinishReason

from engine_helpers import assert_idle, assert_same_up_to_ties, collect, first_divergence, make_request, start_backend

PROMPTS = [
    "Hello world",
    "The quick brown fox jumps over the lazy dog",
    "a",
    "One two three four five six seven eight nine ten eleven twelve",
    "Zebra",
    "lmgate serves many requests at once",
    "!?",
    "The end",
]


@pytest.fixture(scope="module")
async def backend(random_model_path):
    backend = await start_backend(random_model_path, max_seqs=8, n_ctx=1024)
    yield backend
    await backend.shutdown()


async def test_concurrent_greedy_requests_match_one_at_a_time_up_to_float_ties(backend):
    """Batched decoding sums in another order, so a random model's near-ties may flip.

    Any divergence must sit on a near-tie (top-2 log-probabilities within 0.1); a batching bug
    (wrong positions, attention across sequences) diverges on a clear winner. The exact-equality
    proof runs on the trained model in the integration tests.
    """
    alone = [await collect(backend, make_request(p, max_tokens=24, logprobs=2)) for p in PROMPTS]
    together = await asyncio.gather(*(collect(backend, make_request(p, max_tokens=24, logprobs=2)) for p in PROMPTS))
    for solo, batched in zip(alone, together, strict=True):
        assert_same_up_to_ties(solo[0], batched[0])
    assert (
        sum(first_divergence(a[0].token_ids, b[0].token_ids) is None for a, b in zip(alone, together, strict=True)) >= 4
    )


async def test_chunked_prefill_gives_the_same_tokens_as_one_big_prefill(random_model_path, backend):
    prompt = " ".join(PROMPTS * 4)
    small_budget = await start_backend(random_model_path, n_batch=16, n_ubatch=16, max_seqs=2)
    try:
        chunked = await collect(small_budget, make_request(prompt, max_tokens=16, logprobs=2))
    finally:
        await small_budget.shutdown()
    whole = await collect(backend, make_request(prompt, max_tokens=16, logprobs=2))
    assert len(await backend.tokenize(prompt)) > 16 * 4
    assert_same_up_to_ties(chunked[0], whole[0])


async def test_preemption_by_recompute_keeps_greedy_output_identical(random_model_path, backend):
    """256 cells, four sequences wanting 8 + 100 each: some must be preempted and recomputed."""
    tight = await start_backend(random_model_path, n_ctx=256, max_seqs=4, n_batch=64, n_ubatch=64)
    try:
        requests = [make_request(p, max_tokens=100, ignore_eos=True, logprobs=2) for p in PROMPTS[:4]]
        results = await asyncio.gather(*(collect(tight, r) for r in requests))
        assert tight.stats().preemptions > 0
        assert tight.stats().kv_cells_used == 0
    finally:
        await tight.shutdown()
    for request, result in zip(requests, results, strict=True):
        assert len(result[0].token_ids) == 100
        [alone] = await collect(backend, make_request(request.prompt, max_tokens=100, ignore_eos=True, logprobs=2))
        assert_same_up_to_ties(result[0], alone)


async def test_seed_makes_sampling_reproducible_and_different_seeds_differ(random_model_path):
    """A cold cache each time: where a sequence's cells land changes the last bits of the logits,
    and a random model's near-uniform distribution turns that into another sample."""

    async def sample(seed: int) -> list[int]:
        backend = await start_backend(random_model_path, prefix_cache=False)
        try:
            [choice] = await collect(backend, make_request("Hello", temperature=1.0, max_tokens=24, seed=seed))
        finally:
            await backend.shutdown()
        return choice.token_ids

    first, again, other = [await sample(s) for s in (7, 7, 8)]
    assert first == again
    assert first != other


async def test_n_choices_are_independent_sequences_with_their_own_usage(backend):
    choices = await collect(backend, make_request("Hello", temperature=1.0, max_tokens=12, n=3, seed=1))
    assert len({tuple(c.token_ids) for c in choices}) == 3
    for c in choices:
        usage = c.deltas[-1].usage
        assert usage is not None and usage.completion_tokens == len(c.token_ids)


async def test_max_tokens_ends_with_length(backend):
    [choice] = await collect(backend, make_request("Hello", max_tokens=5, ignore_eos=True))
    assert len(choice.token_ids) == 5
    assert choice.finish_reason is FinishReason.LENGTH


async def test_stop_token_id_ends_the_choice_without_its_text(backend):
    [free] = await collect(backend, make_request("Hello", max_tokens=10, ignore_eos=True))
    stop_at = free.token_ids[3]
    [stopped] = await collect(backend, make_request("Hello", max_tokens=10, ignore_eos=True, stop_token_ids=(stop_at,)))
    first = free.token_ids.index(stop_at)
    assert stopped.token_ids == free.token_ids[: first + 1]
    assert stopped.finish_reason is FinishReason.STOP


async def test_stop_string_is_never_streamed(backend):
    [free] = await collect(backend, make_request("Hello", max_tokens=20, ignore_eos=True))
    stop = free.text[5:8]
    [stopped] = await collect(backend, make_request("Hello", max_tokens=20, ignore_eos=True, stop=(stop,)))
    assert stopped.text == free.text[: free.text.index(stop)]
    assert stopped.finish_reason is FinishReason.STOP


async def test_logprobs_are_sorted_normalised_and_include_the_greedy_choice(backend):
    [choice] = await collect(backend, make_request("Hello", max_tokens=6, logprobs=5))
    entries = [lp for d in choice.deltas for lp in d.logprobs]
    assert len(entries) == len(choice.token_ids)
    for lp, token_id in zip(entries, choice.token_ids, strict=True):
        assert lp.token_id == token_id
        tops = [t.logprob for t in lp.top]
        assert len(tops) == 5 and tops == sorted(tops, reverse=True)
        assert lp.top[0].token_id == token_id  # greedy picks the most likely token
        assert lp.logprob == pytest.approx(tops[0]) and lp.logprob <= 0


async def test_prompt_plus_max_tokens_over_the_context_is_refused_naming_the_field(backend):
    with pytest.raises(InvalidRequest) as err:
        await collect(backend, make_request("Hello", max_tokens=5000))
    assert err.value.param == "max_tokens" and err.value.code == "context_length_exceeded"


async def test_out_of_vocabulary_logit_bias_is_refused(backend):
    with pytest.raises(InvalidRequest) as err:
        await collect(backend, make_request("Hello", max_tokens=2, logit_bias=((10**6, 1.0),)))
    assert err.value.param == "logit_bias"


async def test_logit_bias_forces_a_token(backend):
    [choice] = await collect(backend, make_request("Hello", max_tokens=4, ignore_eos=True, logit_bias=((300, 100.0),)))
    assert choice.token_ids == [300] * 4


async def test_closing_the_stream_early_aborts_and_frees_the_kv(backend):
    stream = backend.generate(make_request("Hello", max_tokens=500, ignore_eos=True))
    await anext(stream)
    await anext(stream)
    assert backend.stats().running == 1
    await stream.aclose()
    await assert_idle(backend)


LONG = " ".join(PROMPTS * 3)


def usage(choice):
    return choice.deltas[-1].usage


async def test_a_repeated_prompt_is_served_from_the_prefix_cache(backend):
    before = backend.stats()
    long = f"Repeated. {LONG}"  # earlier tests used other prompts (their prefixes may wait in host RAM)
    [cold] = await collect(backend, make_request(long + " first", max_tokens=8, logprobs=2))
    [warm] = await collect(backend, make_request(long + " second", max_tokens=8, logprobs=2))
    prompt_len = len(await backend.tokenize(long))
    assert usage(cold).cached_tokens < prompt_len // 2
    # Whole blocks and then the matching head of the next one: exactly the prompts' common prefix.
    first, second = await backend.tokenize(long + " first"), await backend.tokenize(long + " second")
    common = next(i for i, (a, b) in enumerate(zip(first, second, strict=False)) if a != b)
    assert common >= prompt_len - 1
    assert usage(warm).cached_tokens == common
    assert backend.stats().prefix_hits - before.prefix_hits >= usage(warm).cached_tokens
    [again] = await collect(backend, make_request(long + " first", max_tokens=8, logprobs=2))
    assert_same_up_to_ties(again, cold)


async def test_a_prefix_is_shared_from_a_sequence_still_running(random_model_path):
    shared = await start_backend(random_model_path, max_seqs=4)
    cold = await start_backend(random_model_path, max_seqs=4, prefix_cache=False)
    try:
        runner = shared.generate(make_request(LONG + " A", max_tokens=300, ignore_eos=True))
        await anext(runner)  # its prompt is computed and its blocks are in the cache
        [b] = await collect(shared, make_request(LONG + " B", max_tokens=12, logprobs=2))
        assert shared.stats().running == 1
        await runner.aclose()
        [reference] = await collect(cold, make_request(LONG + " B", max_tokens=12, logprobs=2))
    finally:
        await shared.shutdown()
        await cold.shutdown()
    assert usage(b).cached_tokens >= 48
    assert usage(reference).cached_tokens == 0
    assert_same_up_to_ties(b, reference)


async def test_cached_prefixes_are_evicted_under_pressure_and_everything_still_completes(random_model_path):
    tight = await start_backend(random_model_path, n_ctx=256, max_seqs=4, cache_slots=4, n_batch=64, n_ubatch=64)
    try:
        prompts = [f"{i} {LONG[: 40 + 7 * i]}" for i in range(12)]
        for prompt in prompts[:4]:
            await collect(tight, make_request(prompt, max_tokens=8))
        results = await asyncio.gather(*(collect(tight, make_request(p, max_tokens=24)) for p in prompts))
        stats = tight.stats()
    finally:
        await tight.shutdown()
    assert all(len(r[0].token_ids) == 24 or r[0].finish_reason == FinishReason.STOP for r in results)
    assert stats.prefix_evictions > 0
    assert stats.kv_cells_used == 0 and stats.kv_cells_cached > 0
    assert stats.kv_cells_cached <= stats.kv_cells_total


async def serve_prompts_then_repeat(backend, count: int):
    """Serve ``count`` distinct ~300-token prompts one after another, then the last and the first
    again; shut the backend down. (stats after the first pass, the last one's repeat, the first's)"""
    try:
        for i in range(count):
            await collect(backend, make_request(f"{i} {LONG[:300]}", max_tokens=4))
        stats = backend.stats()
        [newest] = await collect(backend, make_request(f"{count - 1} {LONG[:300]}", max_tokens=4, logprobs=2))
        [oldest] = await collect(backend, make_request(f"0 {LONG[:300]}", max_tokens=4, logprobs=2))
    finally:
        await backend.shutdown()
    return stats, newest, oldest


async def test_cold_prefixes_beyond_cache_cells_go_and_the_newest_stays(random_model_path):
    # Room and slots for all four prompts: only the cold-cell bound evicts (and no host tier keeps them).
    backend = await start_backend(
        random_model_path, n_ctx=2048, max_seqs=2, cache_slots=8, cache_cells=32, cache_ram_mib=0
    )
    stats, newest, oldest = await serve_prompts_then_repeat(backend, 4)
    assert stats.prefix_evictions == 3  # each prompt cached put the one before it out
    assert 32 < stats.kv_cells_cached < 2 * 300  # the newest prompt, beyond the bound
    assert usage(oldest).cached_tokens < BLOCK_SIZE  # its prefix went: only the head it shares with the newest
    assert usage(newest).cached_tokens > 32


async def test_cached_prefixes_go_after_cache_idle_tokens_and_the_newest_stays(random_model_path):
    # Room, slots and no cold-cell bound for all three prompts: only the idle limit evicts. Each
    # request computes ~300 tokens: the first has waited ~600 when the third is cached, the second ~300.
    backend = await start_backend(
        random_model_path,
        n_ctx=4096,
        max_seqs=2,
        cache_slots=8,
        cache_cells=4096,
        cache_idle_tokens=500,
        cache_ram_mib=0,
    )
    stats, newest, oldest = await serve_prompts_then_repeat(backend, 3)
    assert stats.prefix_evictions == 1
    assert usage(oldest).cached_tokens < BLOCK_SIZE  # its prefix went: only the head it shares with the newest
    assert usage(newest).cached_tokens > 32


async def test_cold_prefixes_wait_in_host_ram_and_come_back_with_the_same_output(random_model_path):
    # As above, but the prefixes the bound puts out of the KV cache go to host RAM, and back on a hit.
    backend = await start_backend(random_model_path, n_ctx=2048, max_seqs=2, cache_slots=8, cache_cells=32)
    cold = await start_backend(random_model_path, n_ctx=2048, max_seqs=2, prefix_cache=False)
    try:
        [reference] = await collect(cold, make_request(f"0 {LONG[:300]}", max_tokens=4, logprobs=2))
    finally:
        await cold.shutdown()
    stats, newest, oldest = await serve_prompts_then_repeat(backend, 4)
    assert stats.prefix_evictions == 3
    assert 32 < stats.kv_cells_cached < 2 * 300  # only the newest in the KV cache
    plan = memory_plan.plan(random_model_path, 2048, 10)
    assert stats.prefix_host_bytes >= 3 * 288 * plan.kv_bytes // plan.cells  # the other three, in host RAM
    prompt = usage(oldest).prompt_tokens
    assert usage(oldest).cached_tokens == (prompt - 1) // 16 * 16  # every whole block, from host RAM
    assert usage(newest).cached_tokens > 32
    assert_same_up_to_ties(oldest, reference)


async def test_beam_search_returns_the_n_best_distinct_beams(tiny_chat_path):
    backend = await start_backend(tiny_chat_path, max_seqs=4)
    try:
        request = make_request(chat="What does a cow say?", max_tokens=24, n=2, best_of=4, use_beam_search=True)
        choices = await collect(backend, request)
        stats = backend.stats()
    finally:
        await backend.shutdown()
    assert [len(c.deltas) for c in choices] == [1, 1]  # a beam search answers at the end
    assert "moo" in choices[0].text
    assert choices[0].token_ids != choices[1].token_ids
    assert all(c.finish_reason in (FinishReason.STOP, FinishReason.LENGTH) for c in choices)
    assert (stats.running, stats.kv_cells_used) == (0, 0)


async def test_beam_search_wider_than_the_batch_is_refused(backend):
    with pytest.raises(InvalidRequest) as err:
        await collect(backend, make_request("Hello", n=1, best_of=64, use_beam_search=True))
    assert err.value.param == "best_of"


async def test_beam_search_forks_under_load_and_abort_frees_every_beam(random_model_path):
    backend = await start_backend(random_model_path, max_seqs=8)
    try:
        others = [asyncio.create_task(collect(backend, make_request(p, max_tokens=40))) for p in PROMPTS[:3]]
        stream = backend.generate(make_request(LONG, max_tokens=200, best_of=4, use_beam_search=True, ignore_eos=True))
        task = asyncio.ensure_future(anext(stream))
        for _ in range(500):
            if backend.stats().running >= 4 or task.done():
                break
            await asyncio.sleep(0.01)
        assert backend.stats().running >= 4  # the beams were forked
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await stream.aclose()
        await asyncio.gather(*others)
        for _ in range(200):
            if backend.stats().running == 0:
                break
            await asyncio.sleep(0.01)
        assert (backend.stats().running, backend.stats().kv_cells_used) == (0, 0)
    finally:
        await backend.shutdown()


async def test_a_request_that_breaks_the_tokenizer_costs_that_request_not_the_engine_process(backend):
    """The edges refuse lone surrogates; should one reach the engine process, it answers an error and lives on."""
    pid = backend.pid
    with pytest.raises(BackendUnavailable, match=r"UnicodeEncodeError|surrogate"):
        await collect(backend, make_request("bad \ud800 text", max_tokens=4))
    [choice] = await collect(backend, make_request("The end", max_tokens=4))
    assert len(choice.token_ids) == 4 and backend.pid == pid
