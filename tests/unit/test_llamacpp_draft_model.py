"""Speculative decoding with a draft model (backends/llamacpp/draft_model.py) on the real engine.

tiny-chat drafting for itself agrees with nearly everything; a random-weight model with its
vocabulary (quantize/random_model.py --vocab-from) disagrees with nearly everything, so drafts are
rejected and rolled back in both caches step after step. Either way the output is the output
without speculation, and every cell comes back.
"""

import asyncio

import pytest

from lmgate.backends.engine.output_text import OutputText
from lmgate.backends.llamacpp.config import LlamaCppConfig
from lmgate.backends.llamacpp.draft_model import DraftModelDrafter
from lmgate.backends.llamacpp.llama_model import LlamaModel
from lmgate.backends.llamacpp.sequence import Sequence
from lmgate.backends.types import SamplingParams
from lmgate.quantize.random_model import PRESETS, build_random_model

from engine_helpers import assert_idle, collect, make_request, start_backend

PROMPTS = ["the cat sat on the mat. the cat sat on the mat.", "Once upon a time"]
CHATS = ["Hello", "What does a cow say?"]
SEEDED = {"temperature": 0.8, "seed": 11}


@pytest.fixture(scope="module")
def random_draft_path(tmp_path_factory, tiny_chat_path):
    return build_random_model(tmp_path_factory.mktemp("draft") / "draft.gguf", PRESETS["test-tiny"],
                              vocab_from=tiny_chat_path)  # fmt: skip


@pytest.fixture
async def plain(tiny_chat_path):
    """Fresh for each test, as the speculating backend is: the same requests in the same order land in
    the same cells, so float sums agree and a near-tie resolves the same way on both."""
    backend = await start_backend(tiny_chat_path, max_seqs=4, n_ctx=2048)
    yield backend
    await backend.shutdown()


async def draft_backend(target, draft, **speculative):
    speculative = {"method": "draft", "draft_model": draft, **speculative}
    return await start_backend(target, max_seqs=4, n_ctx=2048, speculative=speculative)


def counts(choice):
    usage = choice.deltas[-1].usage
    return usage.prompt_tokens, usage.completion_tokens


def assert_same_up_to_a_tie(a, b) -> None:
    """Equal tokens, or a first difference between two tokens the model all but ties on: sequences decoded
    together sit in other cells than alone, and attention sums the cells in another order. (With
    ``ignore_eos`` the best token may be the end one, which is skipped: three logprobs are needed.)"""
    i = next((i for i, (x, y) in enumerate(zip(a.token_ids, b.token_ids, strict=True)) if x != y), None)
    if i is not None:
        top = {t.token_id: t.logprob for t in [lp for d in b.deltas for lp in d.logprobs][i].top}
        assert a.token_ids[i] in top and abs(top[a.token_ids[i]] - top[b.token_ids[i]]) < 0.05, f"diverged at {i}"


async def outputs(backend, **sampling):
    requests = [make_request(p, max_tokens=48, ignore_eos=True, **sampling) for p in PROMPTS]
    requests += [make_request(chat=c, max_tokens=32, **sampling) for c in CHATS]
    return [[(c.token_ids, c.text, counts(c)) for c in await collect(backend, r)] for r in requests]


async def test_the_model_drafting_for_itself_is_accepted_and_changes_nothing(plain, tiny_chat_path):
    backend = await draft_backend(tiny_chat_path, tiny_chat_path)
    try:
        assert await outputs(backend) == await outputs(plain)
        stats = backend.stats()
        assert stats.spec_accepted_tokens > 0.6 * stats.spec_drafted_tokens > 0
        [choice] = await collect(backend, make_request(chat="Hello", max_tokens=32))
        assert max(len(d.token_ids) for d in choice.deltas) > 1
        await assert_idle(backend)
    finally:
        await backend.shutdown()


async def test_a_random_draft_is_rejected_and_rolled_back_and_the_output_is_unchanged(plain, tiny_chat_path,
                                                                                      random_draft_path):  # fmt: skip
    # draft_p_min 0: the random draft's flat distribution would end every draft after one token
    backend = await draft_backend(tiny_chat_path, random_draft_path, draft_p_min=0.0)
    try:
        assert await outputs(backend) == await outputs(plain)
        assert await outputs(backend, **SEEDED) == await outputs(plain, **SEEDED)
        together = await asyncio.gather(*(collect(backend, make_request(p, max_tokens=40, ignore_eos=True,
                                                                        logprobs=3)) for p in PROMPTS * 2))  # fmt: skip
        alone = [await collect(plain, make_request(p, max_tokens=40, ignore_eos=True, logprobs=3)) for p in PROMPTS * 2]
        for [a], [b] in zip(together, alone, strict=True):
            assert_same_up_to_a_tie(a, b)
        stats = backend.stats()
        assert stats.spec_drafted_tokens > 50  # each sequence drafted 4, 3, 2, 1 (and probes) before backing off
        assert stats.spec_accepted_tokens < 0.5 * stats.spec_drafted_tokens
        assert stats.spec_drafted_tokens < stats.steps  # backed off: a fixed 4 a step drafts several times that
        await assert_idle(backend)
    finally:
        await backend.shutdown()


async def test_a_draft_model_with_another_vocabulary_is_refused_at_load(tiny_chat_path, random_model_path):
    with pytest.raises(Exception, match="same vocabulary"):
        await draft_backend(tiny_chat_path, random_model_path)


@pytest.mark.parametrize(("p_min", "length"), [(0.0, 4), (0.999, 1)])
def test_a_draft_ends_after_a_token_the_draft_model_is_unsure_of(tiny_chat_path, random_draft_path, p_min, length):
    """A random draft's distribution is flat (its best token far below 0.999): with ``draft_p_min`` 0.999 every
    draft stops after its first token; with 0 it runs to the limit."""
    speculative = {"method": "draft", "draft_model": random_draft_path, "draft_p_min": p_min}
    config = LlamaCppConfig(gguf=tiny_chat_path, n_ctx=512, max_seqs=2, n_threads=1, speculative=speculative)
    model = LlamaModel(config)
    drafter = DraftModelDrafter(random_draft_path, model, config)
    try:
        ids = [model.tokenize(p, add_special=True, parse_special=False) for p in PROMPTS]
        seqs = [Sequence("r", i, t, SamplingParams(temperature=0.0), 32, i, OutputText()) for i, t in enumerate(ids)]
        assert [len(d) for d in drafter.propose(seqs, [4, 4])] == [length, length]
        seqs[0].token_ids.append(7)  # the next step: caught up from the new token, drafted again
        assert [len(d) for d in drafter.propose(seqs, [4, 2])] == [length, min(length, 2)]
    finally:
        drafter.close()
        model.close()
