"""LoRA adapters on the real llama.cpp engine: a random adapter over a random model, built at test time."""

import asyncio
import dataclasses

import pytest

from lmgate.backends.errors import BackendUnavailable, InvalidRequest
from lmgate.backends.lora import LoraAdapter
from lmgate.quantize.gguf_lora import build_random_lora
from lmgate.quantize.random_model import PRESETS

from engine_helpers import collect, make_request, start_backend

PROMPTS = ["Hello world", "The quick brown fox jumps over the lazy dog", "One two three four five six seven"]


@pytest.fixture(scope="module")
def adapter_path(tmp_path_factory):
    return build_random_lora(tmp_path_factory.mktemp("lora") / "noise.lora.gguf", PRESETS["test-tiny"], rank=4)


@pytest.fixture(scope="module")
async def backend(random_model_path, adapter_path):
    backend = await start_backend(random_model_path, max_seqs=8, n_ctx=1024,
                                  lora_adapters=[LoraAdapter(name="noise", path=adapter_path)])  # fmt: skip
    yield backend
    await backend.shutdown()


def with_adapter(prompt: str, adapter: str | None, **sampling):
    sampling = {"max_tokens": 16, "logprobs": 2, **sampling}
    return dataclasses.replace(make_request(prompt, **sampling), adapter=adapter)


def assert_same_up_to_ties(a, b) -> None:
    """Equal token ids, or a first difference on a near-tie of either run (a random model's near-ties may flip
    when a batch sums in another order; a mix-up of adapters diverges on a clear winner)."""
    i = next((i for i, (x, y) in enumerate(zip(a.token_ids, b.token_ids, strict=False)) if x != y), None)
    if i is not None:
        margins = [[lp for d in c.deltas for lp in d.logprobs][i].top for c in (a, b)]
        assert min(t[0].logprob - t[1].logprob for t in margins) < 0.1, f"diverged at {i} on a clear winner"


async def test_the_adapter_changes_only_the_requests_that_name_it(random_model_path, backend):
    plain = await start_backend(random_model_path, max_seqs=8, n_ctx=1024)
    try:
        for prompt in PROMPTS:
            without = (await collect(plain, with_adapter(prompt, None)))[0]
            base = (await collect(backend, with_adapter(prompt, None)))[0]
            adapted = (await collect(backend, with_adapter(prompt, "noise")))[0]
            assert base.token_ids == without.token_ids  # loading an adapter leaves the base model alone
            assert adapted.token_ids != base.token_ids
    finally:
        await plain.shutdown()


async def test_base_and_adapter_requests_run_together_and_each_gets_what_it_gets_alone(backend):
    requests = [(p, a) for p in PROMPTS for a in (None, "noise")]
    alone = [(await collect(backend, with_adapter(p, a)))[0] for p, a in requests]
    together = await asyncio.gather(*(collect(backend, with_adapter(p, a)) for p, a in requests))
    for solo, mixed in zip(alone, together, strict=True):
        assert_same_up_to_ties(solo, mixed[0])
    stats = backend.stats()
    assert stats.running == stats.waiting == 0


async def test_beam_search_runs_with_the_adapter(backend):
    base = await collect(backend, with_adapter("Hello world", None, use_beam_search=True, n=2, logprobs=None))
    adapted = await collect(backend, with_adapter("Hello world", "noise", use_beam_search=True, n=2, logprobs=None))
    assert [c.token_ids for c in base] != [c.token_ids for c in adapted]


async def test_an_adapter_the_model_does_not_have_is_a_clean_client_error(backend):
    with pytest.raises(InvalidRequest, match="has no LoRA adapter 'other'") as caught:
        await collect(backend, with_adapter("Hello", "other"))
    assert caught.value.param == "model"


async def test_an_adapter_for_another_model_fails_the_load_with_the_reason(tiny_chat_path, adapter_path):
    with pytest.raises(BackendUnavailable, match=r"LoRA adapter 'noise' .* do not fit the base weight"):
        await start_backend(tiny_chat_path, lora_adapters=[LoraAdapter(name="noise", path=adapter_path)])
