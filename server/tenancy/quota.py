"""One API key's budget: requests per minute, tokens per minute, requests in flight.

Tokens are charged at admission from an estimate (the prompt's bytes / 4, plus ``max_tokens`` or
256 per choice, as the router counts them) and corrected when the request ends with what it
really used (``usage``: prompt + completion tokens); a stream cut off before its usage arrived is
charged the prompt estimate plus the tokens it sent. An estimate above the whole per-minute budget
is charged as the whole budget (it waits for a full bucket rather than never fitting). Owned by
the event loop; the clock is passed in.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Callable

from lmgate.backends.types import GenerateRequest, TokenDelta
from lmgate.server.closing_stream import Closable, ClosingStream
from lmgate.server.errors import QuotaExceededError
from lmgate.server.tenancy.keys import KeyRecord
from lmgate.server.tenancy.token_bucket import TokenBucket, retry_after

DEFAULT_MAX_TOKENS = 256


def prompt_estimate(request: GenerateRequest) -> int:
    """A request's prompt tokens before tokenizing: its token ids, or its text's bytes / 4."""
    if request.prompt_token_ids is not None:
        return len(request.prompt_token_ids)
    text = request.prompt if request.prompt is not None else "".join(m.content for m in request.messages or ())
    return len(text.encode()) // 4 + 1


def token_estimate(requests: list[GenerateRequest]) -> int:
    """Prompt and completion tokens the requests may use: prompt estimate + max_tokens per choice."""
    total = 0
    for request in requests:
        rows = request.sampling.beam_width if request.sampling.use_beam_search else request.sampling.n
        total += prompt_estimate(request) + rows * (request.sampling.max_tokens or DEFAULT_MAX_TOKENS)
    return total


class TenantQuota:
    """The buckets and the in-flight count of one key; limits follow the key's record on reload."""

    def __init__(self, record: KeyRecord, now: float, clock: Callable[[], float] = time.monotonic) -> None:
        """``clock`` dates the corrections made when a request ends (the same clock as ``now``)."""
        self.clock = clock
        self.running = 0
        self.requests: TokenBucket | None = None
        self.tokens: TokenBucket | None = None
        self.update(record, now)

    def update(self, record: KeyRecord, now: float) -> None:
        self.record = record
        self.requests = _bucket(self.requests, record.requests_per_minute, now)
        self.tokens = _bucket(self.tokens, record.tokens_per_minute, now)

    def admit(self, requests: list[GenerateRequest], now: float) -> Lease:
        """Charge one request and its token estimate, or raise QuotaExceededError naming the limit
        that is spent and when it will have room; nothing is charged then."""
        return self.charge(token_estimate(requests), now, streams=len(requests))

    def charge(self, estimate: int, now: float, *, streams: int = 1) -> Lease:
        """``admit`` for a request whose token estimate is known (an embedding request's inputs);
        ``streams``: how many streams settle the lease (an embedding request settles it itself)."""
        name, record = self.record.name, self.record
        if record.max_concurrent is not None and self.running >= record.max_concurrent:
            raise QuotaExceededError(
                f"API key `{name}` has {self.running} requests in flight, its max_concurrent; retry when one ends",
                limit="max_concurrent", retry_after_s=1,
            )  # fmt: skip
        waits = {
            "requests_per_minute": self.requests.wait_for(1, now) if self.requests else 0.0,
            "tokens_per_minute": self.tokens.wait_for(estimate, now) if self.tokens else 0.0,
        }
        limit, wait = max(waits.items(), key=lambda item: item[1])
        if wait > 0:
            per_minute = getattr(record, limit)
            raise QuotaExceededError(
                f"API key `{name}` is over its {limit} ({per_minute}); this request needs "
                f"{1 if limit == 'requests_per_minute' else estimate}, retry in {retry_after(wait)} s",
                limit=limit, retry_after_s=retry_after(wait),
            )  # fmt: skip
        if self.requests is not None:
            self.requests.take(1, now)
        if self.tokens is not None:
            estimate = min(estimate, self.tokens.capacity)
            self.tokens.take(estimate, now)
        self.running += 1
        return Lease(self, estimate, streams=streams)


class Lease:
    """A request's charge, settled when its last stream ends: the in-flight slot is given back and
    the token estimate corrected with the usage its streams reported."""

    def __init__(self, quota: TenantQuota, estimate: int, streams: int) -> None:
        self._quota = quota
        self._estimate = estimate
        self._open = streams
        self.used = 0
        self._settled = False

    def watch(self, stream: Closable[TokenDelta], request: GenerateRequest) -> Closable[TokenDelta]:
        """``stream`` (of ``request``), its usage counted; the lease settles after the last one closes."""
        meter = _Meter(prompt_estimate(request))

        async def counted() -> AsyncGenerator[TokenDelta, None]:
            async for delta in stream:
                meter.add(delta)
                yield delta

        async def closed() -> None:
            try:
                await stream.aclose()
            finally:
                self.used += meter.total()
                self._open -= 1
                if self._open == 0:
                    self.settle()

        return ClosingStream(counted(), closed)

    def cancel(self) -> None:
        """The request never started (refused after its charge: the model's capacity, a timeout in
        the queue, no replica): give back everything, its request-per-minute token included."""
        if not self._settled and self._quota.requests is not None:
            self._quota.requests.give_back(1, self._quota.clock())
        self.settle()

    def settle(self) -> None:
        """Give back the in-flight slot and the unused estimate (once); also when nothing was opened."""
        if self._settled:
            return
        self._settled = True
        self._quota.running -= 1
        if self._quota.tokens is not None:
            self._quota.tokens.give_back(self._estimate - self.used, self._quota.clock())


class _Meter:
    """Tokens one stream used: its usage, or the prompt estimate and the tokens it sent."""

    def __init__(self, prompt_estimate: int) -> None:
        self.prompt_estimate = prompt_estimate
        self.prompt: int | None = None
        self.completion: dict[int, int] = {}

    def add(self, delta: TokenDelta) -> None:
        if delta.usage is not None:
            self.prompt = delta.usage.prompt_tokens
            self.completion[delta.index] = delta.usage.completion_tokens
        elif delta.token_ids or delta.text:
            self.completion[delta.index] = self.completion.get(delta.index, 0) + (len(delta.token_ids) or 1)

    def total(self) -> int:
        return (self.prompt if self.prompt is not None else self.prompt_estimate) + sum(self.completion.values())


def _bucket(bucket: TokenBucket | None, per_minute: int | None, now: float) -> TokenBucket | None:
    if per_minute is None:
        return None
    if bucket is None:
        return TokenBucket(per_minute, now)
    bucket.resize(per_minute, now)
    return bucket
