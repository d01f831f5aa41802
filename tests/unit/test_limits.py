"""backends/engine/limits.py: a request against a model's limits, with hand-made requests."""

import pytest

from lmgate.backends.engine.limits import check_prompt_size
from lmgate.backends.errors import InvalidRequest
from lmgate.backends.types import ChatMessage, GenerateRequest, Role, SamplingParams


def request(**prompt) -> GenerateRequest:
    return GenerateRequest(request_id="r", model="m", sampling=SamplingParams(), **prompt)


def test_a_text_that_cannot_fit_even_at_the_longest_token_is_refused_before_tokenizing():
    with pytest.raises(InvalidRequest) as err:
        check_prompt_size(request(prompt="x" * 4001), max_model_len=1000, max_token_bytes=4)
    assert err.value.code == "context_length_exceeded" and err.value.param == "prompt"
    assert "at least 1001 tokens (4001 characters" in str(err.value)


def test_a_text_that_might_fit_is_left_to_the_engine_to_count():
    check_prompt_size(request(prompt="x" * 3996), max_model_len=1000, max_token_bytes=4)  # ≥ 999 tokens + 1


def test_chat_messages_count_together_and_unknown_token_sizes_bound_nothing():
    messages = tuple(ChatMessage(Role.USER, "x" * 300) for _ in range(10))
    with pytest.raises(InvalidRequest) as err:
        check_prompt_size(request(messages=messages), max_model_len=100, max_token_bytes=16)
    assert err.value.param == "messages" and "the messages alone have at least 188 tokens" in str(err.value)
    check_prompt_size(request(messages=messages), max_model_len=100, max_token_bytes=None)


def test_token_ids_are_counted_exactly():
    with pytest.raises(InvalidRequest) as err:
        check_prompt_size(request(prompt_token_ids=(1,) * 100), max_model_len=100, max_token_bytes=None)
    assert "the prompt alone has 100 tokens." in str(err.value)
    check_prompt_size(request(prompt_token_ids=(1,) * 99), max_model_len=100, max_token_bytes=None)
