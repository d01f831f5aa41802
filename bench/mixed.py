"""The "mixed" scenario: streams decoding while long prompts arrive (fair chunked prefill).

``streams`` clients stream short completions back to back; every ``long_every_s`` seconds one more
request arrives with a ~1,900-token prompt of its own (unique from its first word, so no prefix cache
helps). What a long prompt costs the running streams shows in their inter-token latency (p99: the
steps that carried a prefill chunk), and what it costs a short request arriving behind it shows in
the short requests' time to first token. llama-server prefills up to ``n_batch`` (2,048) prompt
tokens in a step beside the decodes (llama.cpp#6607); lmgate prefills ``prefill_chunk`` tokens per
step while others decode, shortest prompt first (backends/llamacpp/scheduler.py).

Each server gets one more slot than streams (for the long requests) and 2,048 context cells per
slot, enough for a long prompt and its answer under bench-200m's 2,048-token context.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

from lmgate.bench import rounds
from lmgate.bench.client import BenchConfig, BenchError, RequestResult, one_request, percentiles
from lmgate.bench.servers import CACHE, llama_server, lmgate_server, serving_all

LONG_WORDS = "You are a careful assistant of a travel company. Answer briefly, politely and in English. "
LONG_PROMPT = LONG_WORDS * 21  # ~1,850 tokens with bench-200m's vocabulary, + the request's number
SHORT_PROMPT = "Once upon a time, in a land far away, there lived"


@dataclass(frozen=True)
class MixedReport:
    streams: int
    long_every_s: float
    duration_s: float
    short_requests: int
    long_requests: int
    errors: int
    short_tokens_per_s: float
    short_ttft_ms: dict[str, float]
    short_itl_ms: dict[str, float]
    long_ttft_ms: dict[str, float]
    first_error: str | None = None
    short_itl_max_ms: float = 0.0
    """The longest a stream waited for its next token: a prefill done in one step stalls every stream
    once per long prompt, under 1 % of the gaps, which p99 does not show."""


async def run_mixed(
    url: str,
    model: str = "default",
    *,
    streams: int = 8,
    duration_s: float = 60.0,
    long_every_s: float = 8.0,
    max_tokens: int = 64,
    long_max_tokens: int = 16,
    tag: str = "",
) -> MixedReport:
    """Run the scenario for ``duration_s`` (requests in flight at the end are awaited). ``tag`` starts
    every long prompt, so that another run's long prompts are no cached prefix of this run's."""
    limits = httpx.Limits(max_connections=streams + 64, max_keepalive_connections=0)
    short = BenchConfig(url, model, 1, 1, max_tokens=max_tokens, prompt=SHORT_PROMPT)
    shorts: list[RequestResult] = []
    longs: list[asyncio.Task[RequestResult]] = []
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        warm_up = await one_request(client, short)
        if warm_up.error is not None:
            raise BenchError(f"cannot benchmark {url}: {warm_up.error}")
        started = time.perf_counter()
        deadline = started + duration_s

        async def streamer() -> None:
            while time.perf_counter() < deadline:
                shorts.append(await one_request(client, short))

        async def arrivals() -> None:
            j = 0
            while time.perf_counter() < deadline:
                config = BenchConfig(
                    url, model, 1, 1, max_tokens=long_max_tokens, prompt=f"{tag}Request {j}. {LONG_PROMPT}"
                )
                longs.append(asyncio.create_task(one_request(client, config)))
                j += 1
                await asyncio.sleep(long_every_s)

        await asyncio.gather(arrivals(), *(streamer() for _ in range(streams)))
        wall = time.perf_counter() - started
        long_results = list(await asyncio.gather(*longs))
    ok_short = [r for r in shorts if r.error is None]
    ok_long = [r for r in long_results if r.error is None]
    failed = [r for r in (*shorts, *long_results) if r.error is not None]
    return MixedReport(
        streams=streams,
        long_every_s=long_every_s,
        duration_s=wall,
        short_requests=len(shorts),
        long_requests=len(long_results),
        errors=len(failed),
        short_tokens_per_s=sum(r.output_tokens for r in ok_short) / wall,
        short_ttft_ms=percentiles([r.ttft for r in ok_short if r.ttft is not None]),
        short_itl_ms=percentiles([x for r in ok_short for x in r.itls]),
        long_ttft_ms=percentiles([r.ttft for r in ok_long if r.ttft is not None]),
        first_error=failed[0].error if failed else None,
        short_itl_max_ms=1000 * max((x for r in ok_short for x in r.itls), default=0.0),
    )


def run_servers(model: Path, binary: Path, threads: int, n_rounds: int = 3) -> dict[str, list[MixedReport]]:
    """The scenario on lmgate (fair chunked prefill, and with ``prefill_chunk`` off) and llama-server,
    all up at once, in ``n_rounds`` interleaved rounds (bench/rounds.py): server name → rounds."""
    slots, ctx = 9, 9 * 2048  # 8 streams + the long request; a long prompt and its answer per slot
    config = CACHE / "mixed-unchunked.yaml"
    config.write_text(
        f"models:\n  - name: default\n    gguf: {model.resolve()}\n    n_threads: {threads}\n"
        f"    n_ctx: {ctx}\n    max_seqs: {slots}\n    max_model_len: {ctx // slots}\n    prefill_chunk: null\n"
    )
    # As llama-server's slots: a KV stream of ctx / slots cells per sequence (suite.py).
    sizes = ("--threads", str(threads), "--n-ctx", str(ctx), "--max-seqs", str(slots))
    sizes += ("--max-model-len", str(ctx // slots))
    servers = {
        "lmgate": (lmgate_server("lmgate-mixed", "--model", str(model), *sizes, "--port", "8206"), 8206),
        "lmgate (prefill_chunk off)": (lmgate_server("lmgate-mixed-unchunked", "--config", str(config),
                                                     "--port", "8207"), 8207),
        "llama-server": (llama_server(binary, "llama-server-mixed", "-m", str(model), "-t", str(threads),
                                      "-c", str(ctx), "-np", str(slots), "--port", "8208"), 8208),
    }  # fmt: skip
    reports: dict[str, list[MixedReport]] = {name: [] for name in servers}
    with serving_all(servers) as urls:
        for r, name in rounds.interleave(n_rounds, list(servers)):
            report = asyncio.run(run_mixed(urls[name], tag=f"Round {r}. "))
            reports[name].append(report)
            print(f"  round {r + 1}, {name}: ITL p99 {report.short_itl_ms['p99']:.0f} ms, "
                  f"short TTFT p50 {report.short_ttft_ms['p50']:.0f} ms", flush=True)  # fmt: skip
    return reports


def render(reports: dict[str, list[MixedReport]]) -> list[str]:
    """The scenario's section of docs/benchmarks.md: medians of the rounds (ranges in brackets), and
    lmgate's figures over llama-server's (the medians of the per-round ratios)."""
    any_report = next(iter(reports.values()))[0]
    lines = [
        "",
        f"## Mixed: {any_report.streams} streams decoding, a ~1,900-token prompt arriving every "
        f"{any_report.long_every_s:g} s",
        "",
        "| server | stream tok/s | stream ITL p50 ms | stream ITL p99 ms | stream ITL max ms | short TTFT p50 ms "
        "| short TTFT p99 ms | long TTFT p50 ms | requests short / long | errors |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, runs in reports.items():
        cells = [
            rounds.spread(r.short_tokens_per_s for r in runs).show(),
            rounds.spread(r.short_itl_ms["p50"] for r in runs).show(".0f"),
            rounds.spread(r.short_itl_ms["p99"] for r in runs).show(".0f"),
            rounds.spread(r.short_itl_max_ms for r in runs).show(".0f"),
            rounds.spread(r.short_ttft_ms["p50"] for r in runs).show(".0f"),
            rounds.spread(r.short_ttft_ms["p99"] for r in runs).show(".0f"),
            rounds.spread(r.long_ttft_ms["p50"] for r in runs).show(".0f"),
            f"{sum(r.short_requests for r in runs)} / {sum(r.long_requests for r in runs)}",
            str(sum(r.errors for r in runs)),
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if "lmgate" in reports and "llama-server" in reports:
        ours, theirs = reports["lmgate"], reports["llama-server"]

        def ratio(figure: Callable[[MixedReport], float]) -> str:
            return rounds.ratios([figure(r) for r in ours], [figure(r) for r in theirs]).show(".2f", "×")

        lines += [
            "",
            f"lmgate / llama-server: stream ITL p99 {ratio(lambda r: r.short_itl_ms['p99'])}, stream ITL max "
            f"{ratio(lambda r: r.short_itl_max_ms)}, short TTFT p50 "
            f"{ratio(lambda r: r.short_ttft_ms['p50'])}, stream tok/s {ratio(lambda r: r.short_tokens_per_s)}, "
            f"long TTFT p50 {ratio(lambda r: r.long_ttft_ms['p50'])}.",
        ]
    return lines
