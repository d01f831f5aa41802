"""RoPE scaling: a model serves beyond its trained context only when configured to."""

import pytest

from lmgate.backends.errors import BackendUnavailable, InvalidRequest

from engine_helpers import collect, make_request, start_backend

LONG_STORY = "Once upon a time, there was a child named Tom. " * 260  # about 3000 tokens


async def test_without_scaling_a_sequence_stops_at_the_trained_context(tiny_chat_path):
    backend = await start_backend(tiny_chat_path, n_ctx=8192)
    try:
        assert backend.info.context_length == 2048  # the KV pool is bigger, one sequence is not
        assert len(await backend.tokenize(LONG_STORY)) > 2048
        with pytest.raises(InvalidRequest) as err:
            await collect(backend, make_request(LONG_STORY, max_tokens=8))
        assert err.value.code == "context_length_exceeded"
    finally:
        await backend.shutdown()


async def test_asking_for_more_than_the_trained_context_without_scaling_is_refused(tiny_chat_path):
    with pytest.raises(BackendUnavailable, match="set rope_scaling"):
        await start_backend(tiny_chat_path, n_ctx=8192, max_model_len=8192)


@pytest.mark.parametrize("kind", ["yarn", "linear"])
async def test_with_rope_scaling_a_prompt_beyond_the_trained_context_is_served(tiny_chat_path, kind):
    backend = await start_backend(tiny_chat_path, n_ctx=8192, rope_scaling=kind, rope_scale=4.0)
    try:
        assert backend.info.context_length == 8192
        [choice] = await collect(backend, make_request(LONG_STORY, max_tokens=16, ignore_eos=True))
        assert len(choice.token_ids) == 16
        assert choice.deltas[-1].usage.prompt_tokens > 2048
    finally:
        await backend.shutdown()


async def test_yarn_keeps_short_answers_intact(tiny_chat_path):
    backend = await start_backend(tiny_chat_path, n_ctx=8192, rope_scaling="yarn", rope_scale=4.0)
    try:
        [choice] = await collect(backend, make_request(chat="What does a cow say?", max_tokens=16))
    finally:
        await backend.shutdown()
    assert "moo" in choice.text
