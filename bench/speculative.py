"""The "speculative" scenario: prompt-lookup (n-gram) speculation, lmgate and llama-server, each with and without.

The same streamed requests go to four servers on the same GGUF, all up at once and run in
interleaved rounds (bench/rounds.py): lmgate, lmgate with ``speculative: {method: ngram}``,
llama-server, and llama-server with its own n-gram speculation (``--spec-type ngram-simple`` at its
defaults: of llama-server's n-gram types, the fastest on this workload when they were tried on
2026-12-07). The workload is one that prompt lookup is made for: the request asks to continue a text
that repeats itself (code, a document being edited, a list), so the model's next tokens are often
already in its context. Concurrency 1 is where speculation pays; at 8, lmgate's ``max_batch`` (4)
turns it off and the figure checks that it costs nothing there. The acceptance rate (accepted /
drafted tokens) is read from the speculating lmgate's /metrics. Greedy output is the same with and
without speculation (tests/unit/test_llamacpp_speculative.py), so the tokens per second compare the
same work.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

from lmgate.bench import rounds
from lmgate.bench.client import BenchConfig, BenchReport, run_bench
from lmgate.bench.servers import CACHE, llama_server, lmgate_server, scrape, serving_all

REPEATING = "for item in items:\n    total += item.price * item.count\n    print(item.name, total)\n" * 12


PLAIN, NGRAM, ANCHOR, ANCHOR_NGRAM = "lmgate", "lmgate, ngram", "llama-server", "llama-server, ngram-simple"


@dataclass(frozen=True)
class SpeculativeRun:
    levels: tuple[int, ...]
    reports: dict[str, list[list[BenchReport]]]
    """Server name → rounds → one report per level."""
    drafted: float
    accepted: float

    @property
    def acceptance(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0

    def tokens_per_s(self, name: str, level: int) -> list[float]:
        """The server's tokens/s at ``levels[level]``, one per round."""
        return [run[level].output_tokens_per_s for run in self.reports[name]]


def run(
    model: Path,
    binary: Path,
    threads: int,
    n_rounds: int = 3,
    levels: tuple[int, ...] = (1, 8),
    max_tokens: int = 64,
) -> SpeculativeRun:
    """The four servers up at once (8 slots, 16,384 cells each), ``n_rounds`` interleaved rounds."""
    slots, ctx = 8, 16384
    config = CACHE / "speculative.yaml"
    config.write_text(
        f"models:\n  - name: default\n    gguf: {model.resolve()}\n    n_threads: {threads}\n"
        f"    n_ctx: {ctx}\n    max_seqs: {slots}\n    max_model_len: {ctx // slots}\n"
        "    speculative: {method: ngram}\n"
    )
    # As llama-server's slots: a KV stream of ctx / slots cells per sequence (suite.py).
    sizes = ("--threads", str(threads), "--n-ctx", str(ctx), "--max-seqs", str(slots))
    sizes += ("--max-model-len", str(ctx // slots))
    anchor = ("-m", str(model), "-t", str(threads), "-c", str(ctx), "-np", str(slots))
    servers = {
        PLAIN: (lmgate_server("lmgate-plain", "--model", str(model), *sizes, "--port", "8209"), 8209),
        NGRAM: (lmgate_server("lmgate-speculative", "--config", str(config), "--port", "8210"), 8210),
        ANCHOR: (llama_server(binary, "llama-server-plain", *anchor, "--port", "8211"), 8211),
        ANCHOR_NGRAM: (
            llama_server(binary, "llama-server-ngram", *anchor, "--spec-type", "ngram-simple", "--port", "8212"),
            8212,
        ),
    }
    reports: dict[str, list[list[BenchReport]]] = {name: [[] for _ in range(n_rounds)] for name in servers}
    with serving_all(servers) as urls:
        for r, c, name in rounds.interleave_levels(n_rounds, list(servers), levels):
            config = BenchConfig(urls[name], "default", c, 8 * c, max_tokens=max_tokens, prompt=REPEATING)
            report = asyncio.run(run_bench(config))
            reports[name][r].append(report)
            print(f"  round {r + 1}, {name}: c={c} {report.output_tokens_per_s:.1f} tok/s", flush=True)
        drafted = sum(v for _, v in scrape(urls[NGRAM], "lmgate_spec_decode_draft_tokens_total"))
        accepted = sum(v for _, v in scrape(urls[NGRAM], "lmgate_spec_decode_accepted_tokens_total"))
    return SpeculativeRun(levels, reports, drafted, accepted)


def render(result: SpeculativeRun) -> list[str]:
    """The scenario's section of docs/benchmarks.md."""
    lines = [
        "",
        "## Speculative decoding: prompt lookup on a repeating text",
        "",
        "lmgate with `speculative: {method: ngram}` and llama-server with `--spec-type ngram-simple`, each "
        "against itself without; output tokens/s.",
        "",
        f"| c | {PLAIN} | {NGRAM} | {ANCHOR} | {ANCHOR_NGRAM} | lmgate ngram / lmgate "
        "| lmgate ngram / llama-server | lmgate ngram / llama-server ngram |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for i, c in enumerate(result.levels):
        tps = {name: result.tokens_per_s(name, i) for name in (PLAIN, NGRAM, ANCHOR, ANCHOR_NGRAM)}
        cells = [rounds.spread(v).show() for v in tps.values()]
        cells += [rounds.ratios(tps[NGRAM], tps[other]).show(".2f", "×") for other in (PLAIN, ANCHOR, ANCHOR_NGRAM)]
        lines.append(f"| {c} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"lmgate drafted {result.drafted:.0f} tokens and accepted {result.accepted:.0f} ({result.acceptance:.0%}) "
        "over the run.",
    ]
    return lines
