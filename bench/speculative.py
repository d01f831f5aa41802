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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lmgate.bench import rounds
from lmgate.bench.client import BenchConfig, BenchReport, run_bench
from lmgate.bench.servers import CACHE, Server, llama_server, lmgate_server, scrape, serving_all

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
    names = (PLAIN, NGRAM, ANCHOR, ANCHOR_NGRAM)
    theirs = ("--spec-type", "ngram-simple")
    servers = four_servers(model, binary, threads, names, "ngram", "{method: ngram}", theirs, port=8209)

    def load(url: str, r: int, c: int) -> BenchConfig:
        return BenchConfig(url, "default", c, 8 * c, max_tokens=max_tokens, prompt=REPEATING)

    return measure(servers, NGRAM, load, n_rounds, levels)


def four_servers(
    model: Path,
    binary: Path,
    threads: int,
    names: tuple[str, str, str, str],
    tag: str,
    ours: str,
    theirs: tuple[str, ...],
    port: int,
) -> dict[str, tuple[Server, int]]:
    """lmgate and llama-server on ``model``, each without and with speculation (lmgate's model entry with
    ``speculative: <ours>``, llama-server with the flags ``theirs``), under ``names``, on ``port`` and the
    three after it; logs and config named after ``tag``. Eight slots of 2,048 cells each: as llama-server's
    slots, a KV stream per sequence."""
    slots, ctx = 8, 16384
    config = CACHE / f"{tag}.yaml"
    config.write_text(
        f"models:\n  - name: default\n    gguf: {model.resolve()}\n    n_threads: {threads}\n"
        f"    n_ctx: {ctx}\n    max_seqs: {slots}\n    max_model_len: {ctx // slots}\n    speculative: {ours}\n"
    )
    sizes = ("--threads", str(threads), "--n-ctx", str(ctx), "--max-seqs", str(slots))
    sizes += ("--max-model-len", str(ctx // slots))
    anchor = ("-m", str(model), "-t", str(threads), "-c", str(ctx), "-np", str(slots))
    ports = [str(port + i) for i in range(4)]
    commands = [
        lmgate_server(f"lmgate-{tag}-plain", "--model", str(model), *sizes, "--port", ports[0]),
        lmgate_server(f"lmgate-{tag}", "--config", str(config), "--port", ports[1]),
        llama_server(binary, f"llama-server-{tag}-plain", *anchor, "--port", ports[2]),
        llama_server(binary, f"llama-server-{tag}", *anchor, *theirs, "--port", ports[3]),
    ]
    return {name: (server, port + i) for i, (name, server) in enumerate(zip(names, commands, strict=True))}


def measure(
    servers: dict[str, tuple[Server, int]],
    speculating: str,
    load: Callable[[str, int, int], BenchConfig],
    n_rounds: int,
    levels: tuple[int, ...],
) -> SpeculativeRun:
    """``servers`` up at once, in ``n_rounds`` interleaved rounds of ``load(url, round, c)`` at each level;
    what the ``speculating`` lmgate drafted and accepted, from its /metrics."""
    reports: dict[str, list[list[BenchReport]]] = {name: [[] for _ in range(n_rounds)] for name in servers}
    with serving_all(servers) as urls:
        for r, c, name in rounds.interleave_levels(n_rounds, list(servers), levels):
            report = asyncio.run(run_bench(load(urls[name], r, c)))
            reports[name][r].append(report)
            print(f"  round {r + 1}, {name}: c={c} {report.output_tokens_per_s:.1f} tok/s", flush=True)
        drafted = sum(v for _, v in scrape(urls[speculating], "lmgate_spec_decode_draft_tokens_total"))
        accepted = sum(v for _, v in scrape(urls[speculating], "lmgate_spec_decode_accepted_tokens_total"))
    return SpeculativeRun(levels, reports, drafted, accepted)


def render(result: SpeculativeRun) -> list[str]:
    """The scenario's section of docs/benchmarks.md."""
    return [
        "",
        "## Speculative decoding: prompt lookup on a repeating text",
        "",
        "lmgate with `speculative: {method: ngram}` and llama-server with `--spec-type ngram-simple`, each "
        "against itself without; output tokens/s.",
        "",
        *table(result, (PLAIN, NGRAM, ANCHOR, ANCHOR_NGRAM), "ngram"),
    ]


def table(result: SpeculativeRun, names: tuple[str, str, str, str], method: str) -> list[str]:
    """Tokens/s of the four ``names`` (lmgate, lmgate speculating, llama-server, llama-server speculating)
    level by level, the speculating lmgate over each of the others, and its acceptance."""
    plain, ours, anchor, theirs = names
    lines = [
        f"| c | {plain} | {ours} | {anchor} | {theirs} | lmgate {method} / lmgate "
        f"| lmgate {method} / llama-server | lmgate {method} / llama-server {method} |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for i, c in enumerate(result.levels):
        tps = {name: result.tokens_per_s(name, i) for name in names}
        cells = [rounds.spread(v).show() for v in tps.values()]
        cells += [rounds.ratios(tps[ours], tps[other]).show(".2f", "×") for other in (plain, anchor, theirs)]
        lines.append(f"| {c} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"lmgate drafted {result.drafted:.0f} tokens and accepted {result.accepted:.0f} ({result.acceptance:.0%}) "
        "over the run.",
    ]
    return lines
