"""Per-choice usage from an upstream that reports usage once per request."""

from lmgate.backends.types import FinishReason, TokenDelta
from lmgate.backends.upstream_usage import UsageSplitter


def test_last_deltas_wait_for_the_request_usage_and_get_their_share():
    split = UsageSplitter(n=2)
    assert split.add(TokenDelta(0, "a", (1,)), 1) is not None
    assert split.add(TokenDelta(1, "b", (2,)), 1) is not None
    assert split.add(TokenDelta(0, "", (3,), finish_reason=FinishReason.STOP), 1) is None
    assert split.add(TokenDelta(1, "", (), finish_reason=FinishReason.LENGTH), 0) is None
    first, second = split.release(prompt_tokens=7, completion_tokens=3, cached_tokens=4)
    assert (first.index, first.usage.prompt_tokens, first.usage.completion_tokens, first.usage.cached_tokens) == (
        0, 7, 2, 4,
    )  # fmt: skip
    assert (second.index, second.usage.completion_tokens) == (1, 1)  # counted: 3 is the two choices' total


def test_a_single_choice_takes_the_upstream_count_and_a_missing_usage_still_ends_it():
    split = UsageSplitter(n=1)
    split.add(TokenDelta(0, "ab", ()), 1)
    split.add(TokenDelta(0, "", finish_reason=FinishReason.STOP), 0)
    [last] = split.release(prompt_tokens=5, completion_tokens=2)
    assert last.usage.completion_tokens == 2
    split.add(TokenDelta(0, "", finish_reason=FinishReason.STOP), 0)
    [ended] = split.release()
    assert ended.finish_reason is FinishReason.STOP and ended.usage.prompt_tokens == 0
