"""Speculative decoding on the real engine (models/tiny-chat.gguf): the same output as without it.

Every emitted token is sampled by the sequence's own chain from the model's distribution at its
position, so greedy and seeded outputs match the engine without speculation token for token, except
where the batched verification's float sums flip a near-tie of the model (as batching other sequences
does: test_llamacpp_engine.py). Each backend checks its KV book-keeping after every step.
"""

import asyncio

import pytest
from pydantic import ValidationError

from lmgate.backends.llamacpp.config import LlamaCppConfig
from lmgate.backends.types import FinishReason

from engine_helpers import Choice, assert_idle, collect, make_request, start_backend

REPETITIVE = [
    "A cow lives on a farm. A cow has four legs. A cow lives on a farm.",
    "A dog says woof. A cat says meow. A dog says woof. A cat says",
]
CHATS = ["Hello", "What does a cow say?", "Spell cat."]
SEEDED = {"temperature": 0.8, "seed": 7}


@pytest.fixture(scope="module")
async def plain(tiny_chat_path):
    backend = await start_backend(tiny_chat_path, max_seqs=4, n_ctx=2048)
    yield backend
    await backend.shutdown()


@pytest.fixture(scope="module")
async def ngram(tiny_chat_path):
    backend = await start_backend(tiny_chat_path, max_seqs=4, n_ctx=2048, speculative={"method": "ngram"})
    yield backend
    await backend.shutdown()


def first_divergence(a: list[int], b: list[int]) -> int | None:
    if a == b:
        return None
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


def assert_same_up_to_near_ties(reference: Choice, speculated: Choice) -> None:
    """Equal tokens, or a first difference where the reference (run with logprobs=2) had a near-tie."""
    i = first_divergence(reference.token_ids, speculated.token_ids)
    if i is not None:
        top = [lp for d in reference.deltas for lp in d.logprobs][i].top
        assert top[0].logprob - top[1].logprob < 0.05, f"diverged at token {i} on a clear winner"


def counts(choice: Choice) -> tuple[int, int, int]:
    usage = choice.deltas[-1].usage
    return usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens


async def drafted(backend) -> tuple[int, int]:
    stats = backend.stats()
    return stats.spec_drafted_tokens, stats.spec_accepted_tokens


async def test_greedy_output_is_the_output_without_speculation_and_drafts_are_accepted(plain, ngram):
    before = await drafted(ngram)
    for prompt in REPETITIVE:
        [reference] = await collect(plain, make_request(prompt, max_tokens=80, ignore_eos=True, logprobs=2))
        [speculated] = await collect(ngram, make_request(prompt, max_tokens=80, ignore_eos=True))
        assert_same_up_to_near_ties(reference, speculated)
    for chat in CHATS:
        [reference] = await collect(plain, make_request(chat=chat, max_tokens=60))
        [speculated] = await collect(ngram, make_request(chat=chat, max_tokens=60))
        assert (speculated.token_ids, speculated.text) == (reference.token_ids, reference.text)
        assert counts(speculated) == counts(reference)
    after = await drafted(ngram)
    assert after[1] - before[1] > 10  # the repetitive prompts' drafts hit
    assert after[0] - before[0] >= after[1] - before[1]


async def test_seeded_sampling_draws_the_same_tokens_with_and_without_speculation(plain, ngram):
    """One draw of the sequence's generator per emitted token, drafts or not: the same tokens. Logits
    computed in a verification batch differ from a lone decode's in the last bits, so a draw that
    lands within that of a boundary between two tokens may flip, rarely and anywhere; a generator
    out of step would diverge at the first rejected draft, within the first few tokens, every time."""
    pairs = []
    for prompt in REPETITIVE:
        [reference] = await collect(plain, make_request(prompt, max_tokens=60, ignore_eos=True, **SEEDED))
        [speculated] = await collect(ngram, make_request(prompt, max_tokens=60, ignore_eos=True, **SEEDED))
        pairs.append((speculated.token_ids, reference.token_ids))
    for chat in CHATS:
        reference = await collect(plain, make_request(chat=chat, max_tokens=40, n=2, **SEEDED))
        speculated = await collect(ngram, make_request(chat=chat, max_tokens=40, n=2, **SEEDED))
        pairs += [(s.token_ids, r.token_ids) for s, r in zip(speculated, reference, strict=True)]
    diverged = [i for a, b in pairs if (i := first_divergence(a, b)) is not None]
    assert len(diverged) <= 1 and all(i >= 30 for i in diverged), f"diverged at {diverged} of {len(pairs)} outputs"


async def test_a_step_emits_several_tokens_when_drafts_are_accepted(ngram):
    [choice] = await collect(ngram, make_request(REPETITIVE[0], max_tokens=60, ignore_eos=True))
    assert len(choice.token_ids) == 60
    assert max(len(d.token_ids) for d in choice.deltas) > 1
    assert len(choice.deltas) < 60


async def test_concurrent_requests_speculate_together_and_match(plain, ngram):
    prompts = REPETITIVE + REPETITIVE[::-1]
    references = [await collect(plain, make_request(p, max_tokens=50, ignore_eos=True, logprobs=2)) for p in prompts]
    together = await asyncio.gather(*(collect(ngram, make_request(p, max_tokens=50, ignore_eos=True)) for p in prompts))
    for [reference], [speculated] in zip(references, together, strict=True):
        assert_same_up_to_near_ties(reference, speculated)


async def test_max_tokens_cuts_exactly_where_it_would_without_speculation(plain, ngram):
    [full] = await collect(plain, make_request(REPETITIVE[0], max_tokens=40, ignore_eos=True))
    for max_tokens in (1, 3, 8, 21):
        [choice] = await collect(ngram, make_request(REPETITIVE[0], max_tokens=max_tokens, ignore_eos=True))
        assert choice.token_ids == full.token_ids[:max_tokens]
        assert choice.finish_reason == FinishReason.LENGTH
        assert choice.deltas[-1].usage.completion_tokens == max_tokens


def inside_a_multi_token_step(choice: Choice) -> list[tuple[int, int]]:
    """(position in the output, token) of the tokens that are not the first of their step's delta."""
    found, position = [], 0
    for delta in choice.deltas:
        for j, token in enumerate(delta.token_ids):
            if j > 0:
                found.append((position, token))
            position += 1
    return found


async def test_stop_tokens_and_stop_strings_cut_inside_a_step_exactly_as_without_speculation(plain, ngram):
    [free] = await collect(ngram, make_request(REPETITIVE[1], max_tokens=60, ignore_eos=True))
    await collect(plain, make_request(REPETITIVE[1], max_tokens=60, ignore_eos=True))  # both caches alike: same usage
    ids = free.token_ids
    # Tokens accepted inside a step, first seen there: a stop on them must cut that step's tail.
    fresh = [(i, t) for i, t in inside_a_multi_token_step(free) if t not in ids[:i]]
    assert fresh, "no step accepted a new token: the test proves nothing"
    position, token = fresh[0]
    request = {"max_tokens": 60, "ignore_eos": True, "stop_token_ids": (token,)}
    [reference] = await collect(plain, make_request(REPETITIVE[1], **request))
    before = ngram.stats().generated_tokens
    [speculated] = await collect(ngram, make_request(REPETITIVE[1], **request))
    assert speculated.token_ids == reference.token_ids == ids[: position + 1]
    for _ in range(200):  # the step's stats reach the gateway with its deltas, or just after
        if ngram.stats().generated_tokens != before:
            break
        await asyncio.sleep(0.01)
    assert ngram.stats().generated_tokens - before == len(speculated.token_ids)  # the cut tail is not counted
    assert speculated.text == reference.text
    assert counts(speculated) == counts(reference)
    assert speculated.finish_reason == FinishReason.STOP
    # A stop string: a word whose first appearance is in the text of a multi-token step.
    stop, before = None, ""
    for delta in free.deltas:
        if stop is None and len(delta.token_ids) > 1:
            stop = next((w for w in delta.text.split() if len(w) >= 3 and w not in before), None)
        before += delta.text
    assert stop is not None, "no multi-token step wrote a new word: the test proves nothing"
    [reference] = await collect(plain, make_request(REPETITIVE[1], max_tokens=60, ignore_eos=True, stop=(stop,)))
    [speculated] = await collect(ngram, make_request(REPETITIVE[1], max_tokens=60, ignore_eos=True, stop=(stop,)))
    assert (speculated.text, speculated.token_ids) == (reference.text, reference.token_ids)
    assert stop not in speculated.text and speculated.finish_reason == FinishReason.STOP
    assert counts(speculated) == counts(reference)


async def test_speculative_false_turns_it_off_for_that_request(ngram):
    before = await drafted(ngram)
    [choice] = await collect(ngram, make_request(REPETITIVE[0], max_tokens=30, ignore_eos=True, speculative=False))
    assert await drafted(ngram) == before
    assert all(len(d.token_ids) == 1 for d in choice.deltas)


async def test_logprobs_requests_decode_without_drafts(ngram):
    before = await drafted(ngram)
    [choice] = await collect(ngram, make_request(REPETITIVE[0], max_tokens=20, ignore_eos=True, logprobs=1))
    assert await drafted(ngram) == before
    assert len([lp for d in choice.deltas for lp in d.logprobs]) == 20


async def test_kv_cells_are_idle_after_speculative_requests(ngram):
    await asyncio.gather(*(collect(ngram, make_request(p, max_tokens=40, ignore_eos=True)) for p in REPETITIVE * 2))
    stream = ngram.generate(make_request(REPETITIVE[0], max_tokens=500, ignore_eos=True))
    await anext(stream)
    await anext(stream)
    await stream.aclose()  # aborted mid-generation
    await assert_idle(ngram)


def test_config_validation_names_the_fix(tiny_chat_path):
    with pytest.raises(ValidationError, match="ngram_min=4 is above ngram_max=3"):
        LlamaCppConfig(gguf=tiny_chat_path, speculative={"method": "ngram", "ngram_min": 4})
    with pytest.raises(ValidationError, match="method draft needs draft_model"):
        LlamaCppConfig(gguf=tiny_chat_path, speculative={"method": "draft"})
    with pytest.raises(ValidationError, match="draft_model is only used with method draft"):
        LlamaCppConfig(gguf=tiny_chat_path, speculative={"method": "ngram", "draft_model": tiny_chat_path})
    with pytest.raises(ValidationError, match="method"):
        LlamaCppConfig(gguf=tiny_chat_path, speculative={"method": "medusa"})
    with pytest.raises(ValidationError, match="num_draft"):
        LlamaCppConfig(gguf=tiny_chat_path, speculative={"method": "ngram", "num_draft": 0})
    with pytest.raises(ValidationError, match="draft_p_min is only used with method draft"):
        LlamaCppConfig(gguf=tiny_chat_path, speculative={"method": "ngram", "draft_p_min": 0.5})
    with pytest.raises(ValidationError, match="draft_p_min"):
        draft = {"method": "draft", "draft_model": tiny_chat_path, "draft_p_min": 1}
        LlamaCppConfig(gguf=tiny_chat_path, speculative=draft)
