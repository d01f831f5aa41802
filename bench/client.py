"""``lmgate bench``: C concurrent streaming clients against any OpenAI-compatible server.

Each client sends streamed /v1/completions requests back to back (distinct prompts unless
told otherwise, fixed ``max_tokens``, ``ignore_eos`` so every request produces the same length) until the run's request
count is reached. Reported: aggregate output tokens/s over the wall time, time to first token,
inter-token latency and end-to-end latency percentiles. Output tokens come from the server's
usage when it sends it, otherwise from the number of content chunks. A warm-up request goes first:
when it fails (no server there, a wrong model name), the run stops with a BenchError saying why.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx


class BenchError(Exception):
    """The server cannot be benchmarked (unreachable, or it refuses the request); the message says why."""


@dataclass(frozen=True)
class BenchConfig:
    url: str
    model: str
    concurrency: int
    requests: int
    max_tokens: int = 64
    prompt: str = "Once upon a time, in a land far away, there lived"
    shared_prefix: str = ""
    """When set, request i sends ``shared_prefix + f"{prompt} ({i})"``: many users, one system prompt."""
    distinct: str | None = None
    """When set (and no ``shared_prefix``), request i sends ``f"{distinct} {i}. {prompt}"``: prompts that
    differ from their first tokens, and from another run's with another tag, so no prefix cache helps.
    When None, every request sends ``prompt`` as it is."""
    api_key: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    """More fields of every request's body (a constraint: ``{"structured_outputs": {...}}``)."""
    varied: bool = False
    """When set, request i asks for its own length, spread evenly over ``max_tokens // 8`` to
    ``2 * max_tokens`` by i (the same lengths on every server), so requests end at different steps."""

    def prompt_for(self, i: int) -> str:
        if self.shared_prefix:
            return f"{self.shared_prefix}{self.prompt} ({i})"
        return self.prompt if self.distinct is None else f"{self.distinct} {i}. {self.prompt}"

    def max_tokens_for(self, i: int) -> int:
        if not self.varied:
            return self.max_tokens
        low = max(1, self.max_tokens // 8)
        return low + (37 * i) % (2 * self.max_tokens - low + 1)


@dataclass
class RequestResult:
    ttft: float | None = None
    itls: list[float] = field(default_factory=list)
    e2e: float = 0.0
    output_tokens: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    error: str | None = None


@dataclass(frozen=True)
class BenchReport:
    concurrency: int
    requests: int
    errors: int
    wall_s: float
    output_tokens: int
    output_tokens_per_s: float
    ttft_ms: dict[str, float]
    itl_ms: dict[str, float]
    e2e_ms: dict[str, float]
    prefix_hit_rate: float | None
    """Cached prompt tokens / prompt tokens, from the usage the server reports (None if it does not)."""
    first_error: str | None = None


def percentiles(values: list[float]) -> dict[str, float]:
    """p50/p90/p99 in milliseconds (empty input gives zeros)."""
    if not values:
        return {"p50": 0.0, "p90": 0.0, "p99": 0.0}
    if len(values) == 1:
        return dict.fromkeys(("p50", "p90", "p99"), values[0] * 1000)
    q = statistics.quantiles(values, n=100, method="inclusive")
    return {"p50": q[49] * 1000, "p90": q[89] * 1000, "p99": q[98] * 1000}


async def one_request(client: httpx.AsyncClient, config: BenchConfig, i: int = 0) -> RequestResult:
    """One streamed completion (request ``i`` of a run), timed token by token; errors are in the result."""
    body = {
        "model": config.model,
        "prompt": config.prompt_for(i),
        "max_tokens": config.max_tokens_for(i),
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
        **config.extra,
    }
    result = RequestResult()
    start = last = time.perf_counter()
    chunks = 0
    try:
        async with client.stream("POST", "/v1/completions", json=body) as response:
            if response.status_code != 200:
                body = (await response.aread()).decode(errors="replace")
                result.error = f"HTTP {response.status_code}: {body[:300]}"
                return result
            async for line in response.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                event = json.loads(line[6:])
                if usage := event.get("usage"):
                    result.output_tokens = usage["completion_tokens"]
                    result.prompt_tokens = usage.get("prompt_tokens", 0)
                    result.cached_tokens = (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
                if any(choice.get("text") for choice in event.get("choices") or ()):
                    now = time.perf_counter()
                    if result.ttft is None:
                        result.ttft = now - start
                    else:
                        result.itls.append(now - last)
                    last = now
                    chunks += 1
    except httpx.HTTPError as exc:
        result.error = _describe(exc, config.url)
    result.e2e = time.perf_counter() - start
    result.output_tokens = result.output_tokens or chunks
    return result


async def run_bench(config: BenchConfig) -> BenchReport:
    headers = {"Authorization": f"Bearer {config.api_key}"} if config.api_key else {}
    # A fresh connection per request: servers close idle keep-alive connections at different
    # moments, and a request racing that close fails on the client, not on the server.
    limits = httpx.Limits(max_connections=config.concurrency, max_keepalive_connections=0)
    remaining = config.requests
    results: list[RequestResult] = []

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            results.append(await one_request(client, config, config.requests - remaining))

    async with httpx.AsyncClient(base_url=config.url, headers=headers, timeout=600, limits=limits) as client:
        warm_up = await one_request(client, config, 0)  # connections, caches, first-request costs
        if warm_up.error is not None:
            raise BenchError(f"cannot benchmark {config.url}: {warm_up.error}")
        started = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(config.concurrency)))
        wall = time.perf_counter() - started
    ok = [r for r in results if r.error is None]
    tokens = sum(r.output_tokens for r in ok)
    prompt_tokens = sum(r.prompt_tokens for r in ok)
    return BenchReport(
        concurrency=config.concurrency,
        requests=len(results),
        errors=len(results) - len(ok),
        wall_s=wall,
        output_tokens=tokens,
        output_tokens_per_s=tokens / wall if wall else 0.0,
        ttft_ms=percentiles([r.ttft for r in ok if r.ttft is not None]),
        itl_ms=percentiles([x for r in ok for x in r.itls]),
        e2e_ms=percentiles([r.e2e for r in ok]),
        prefix_hit_rate=sum(r.cached_tokens for r in ok) / prompt_tokens if prompt_tokens else None,
        first_error=next((r.error for r in results if r.error), None),
    )


def _describe(exc: httpx.HTTPError, url: str) -> str:
    if isinstance(exc, httpx.ConnectError):
        return f"nothing answers at {url} ({exc}): is the server running? (start one with `lmgate serve`)"
    if isinstance(exc, httpx.TimeoutException):
        return f"no answer from {url} in time ({type(exc).__name__})"
    return f"{type(exc).__name__}: {exc}"


def report_json(reports: list[BenchReport]) -> str:
    return json.dumps([asdict(r) for r in reports], indent=2)


def report_table(reports: list[BenchReport]) -> str:
    lines = ["| c | requests | errors | tok/s | TTFT p50 ms | TTFT p99 ms | ITL p50 ms | ITL p99 ms |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in reports:
        lines.append(
            f"| {r.concurrency} | {r.requests} | {r.errors} | {r.output_tokens_per_s:.1f} | {r.ttft_ms['p50']:.0f} "
            f"| {r.ttft_ms['p99']:.0f} | {r.itl_ms['p50']:.1f} | {r.itl_ms['p99']:.1f} |"
        )
    return "\n".join(lines)
