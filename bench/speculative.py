"""The "speculative" scenario: lmgate with prompt-lookup (n-gram) speculation against itself without.

The same streamed requests at low concurrency (where speculation applies: ``max_batch``) go to two
lmgate servers on the same GGUF, one with ``speculative: {method: ngram}``. The workload is one that
prompt lookup is made for: the request asks to continue a text that repeats itself (code, a
document being edited, a list), so the model's next tokens are often already in its context. The
acceptance rate (accepted / drafted tokens) is read from the speculating server's /metrics.
Greedy output is the same with and without speculation (tests/unit/test_llamacpp_speculative.py),
so the tokens per second compare the same work.
"""

from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass
from pathlib import Path

from lmgate.bench.client import BenchConfig, BenchReport, run_bench
from lmgate.bench.servers import CACHE, Server, scrape, serving

REPEATING = "for item in items:\n    total += item.price * item.count\n    print(item.name, total)\n" * 12


@dataclass(frozen=True)
class SpeculativeReport:
    concurrency: int
    plain: BenchReport
    speculative: BenchReport
    drafted: float
    accepted: float

    @property
    def speedup(self) -> float:
        return self.speculative.output_tokens_per_s / self.plain.output_tokens_per_s

    @property
    def acceptance(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0


def run(model: Path, threads: int, levels: tuple[int, ...] = (1, 4), max_tokens: int = 64) -> list[SpeculativeReport]:
    """Both servers, one after the other, at each concurrency in ``levels``."""
    config = CACHE / "speculative.yaml"
    config.write_text(
        f"models:\n  - name: default\n    gguf: {model.resolve()}\n    n_threads: {threads}\n"
        "    speculative: {method: ngram}\n"
    )
    lmgate = [sys.executable, "-m", "lmgate.server.cli", "serve", "--no-grpc", "--log-level", "warning"]
    plain = Server("lmgate-plain", [*lmgate, "--model", str(model), "--threads", str(threads), "--port", "8209"])
    spec = Server("lmgate-speculative", [*lmgate, "--config", str(config), "--port", "8210"])
    results: dict[str, list[BenchReport]] = {}
    counts = (0.0, 0.0)
    for port, server in ((8209, plain), (8210, spec)):
        print(f"{server.name}:", flush=True)
        with serving(server, port) as url:
            results[server.name] = [
                asyncio.run(run_bench(BenchConfig(url, "default", c, 8 * c, max_tokens=max_tokens, prompt=REPEATING)))
                for c in levels
            ]
            if server is spec:
                counts = (
                    sum(v for _, v in scrape(url, "lmgate_spec_decode_draft_tokens_total")),
                    sum(v for _, v in scrape(url, "lmgate_spec_decode_accepted_tokens_total")),
                )
    return [
        SpeculativeReport(c, p, s, *counts)
        for c, p, s in zip(levels, results["lmgate-plain"], results["lmgate-speculative"], strict=True)
    ]


def render(reports: list[SpeculativeReport]) -> list[str]:
    """The scenario's section of docs/benchmarks.md."""
    lines = [
        "",
        "## Speculative decoding: prompt lookup on a repeating text (lmgate with and without)",
        "",
        "| c | tok/s without | tok/s with ngram | with / without | chunk interval p50 ms without / with "
        "(a chunk carries a step's tokens) |",
        "|---|---|---|---|---|",
    ]
    for r in reports:
        lines.append(
            f"| {r.concurrency} | {r.plain.output_tokens_per_s:.1f} | {r.speculative.output_tokens_per_s:.1f} "
            f"| {r.speedup:.2f}× | {r.plain.itl_ms['p50']:.1f} / {r.speculative.itl_ms['p50']:.1f} |"
        )
    if reports:
        r = reports[0]
        lines += ["", f"Drafted {r.drafted:.0f} tokens, accepted {r.accepted:.0f} ({r.acceptance:.0%}) over the run."]
    return lines
