"""The "draft model" scenario: speculation with a smaller model, lmgate and llama-server, each with and without.

A random draft agrees with a random model at almost no position, so the pair is built for it
(quantize/draft_pair.py): a target of bench-200m's shape that contains a ~20 MB draft, its greedy token
the draft's at ~81 % of positions, as a trained draft's would be. Four servers on the target, all up at
once in interleaved rounds (bench/rounds.py): lmgate, lmgate with ``speculative: {method: draft}`` at its
defaults, llama-server, and llama-server with the same draft (``-md``, ``--spec-type draft-simple`` at
its defaults). Prompts are distinct stories (no n-gram of the prompt helps): what the draft proposes
is all there is. Greedy output is the same with and without speculation
(tests/unit/test_llamacpp_draft_model.py), so the tokens per second compare the same work.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

from lmgate.bench import rounds
from lmgate.bench.client import BenchConfig, BenchReport, run_bench
from lmgate.bench.servers import CACHE, llama_server, lmgate_server, scrape, serving_all
from lmgate.bench.speculative import SpeculativeRun
from lmgate.quantize import draft_pair
from lmgate.quantize.draft_pair import BENCH_DRAFT

PLAIN, DRAFT, ANCHOR, ANCHOR_DRAFT = "lmgate", "lmgate, draft", "llama-server", "llama-server, draft-simple"
_PAIR = f"leak{draft_pair.LEAK:g}-scale{draft_pair.LOGIT_SCALE:g}-v{draft_pair.VERSION}"
TARGET = CACHE / f"bench-200m-target-{_PAIR}.q8_0.gguf"
DRAFT_MODEL = CACHE / f"bench-200m-draft-{_PAIR}.q8_0.gguf"


def build_pair() -> tuple[Path, Path]:
    """The target and its draft (built once, then reused from the cache: their names say how they were built)."""
    if not (TARGET.exists() and DRAFT_MODEL.exists()):
        command = [sys.executable, "-m", "lmgate.quantize.draft_pair", "--target", str(TARGET),
                   "--draft", str(DRAFT_MODEL)]  # fmt: skip
        print("+", " ".join(command), flush=True)
        subprocess.run(command, check=True)
    return TARGET, DRAFT_MODEL


def run(binary: Path, threads: int, n_rounds: int = 3, levels: tuple[int, ...] = (1, 8)) -> SpeculativeRun:
    """The four servers up at once (8 slots, 16,384 cells each), ``n_rounds`` interleaved rounds."""
    target, draft = build_pair()
    slots, ctx = 8, 16384
    config = CACHE / "draft-model.yaml"
    config.write_text(
        f"models:\n  - name: default\n    gguf: {target.resolve()}\n    n_threads: {threads}\n"
        f"    n_ctx: {ctx}\n    max_seqs: {slots}\n    max_model_len: {ctx // slots}\n"
        f"    speculative: {{method: draft, draft_model: {draft.resolve()}}}\n"
    )
    sizes = ("--threads", str(threads), "--n-ctx", str(ctx), "--max-seqs", str(slots))
    sizes += ("--max-model-len", str(ctx // slots))
    anchor = ("-m", str(target), "-t", str(threads), "-c", str(ctx), "-np", str(slots))
    servers = {
        PLAIN: (lmgate_server("lmgate-draft-plain", "--model", str(target), *sizes, "--port", "8214"), 8214),
        DRAFT: (lmgate_server("lmgate-draft", "--config", str(config), "--port", "8215"), 8215),
        ANCHOR: (llama_server(binary, "llama-server-draft-plain", *anchor, "--port", "8216"), 8216),
        ANCHOR_DRAFT: (llama_server(binary, "llama-server-draft", *anchor, "-md", str(draft),
                                    "--spec-type", "draft-simple", "--port", "8217"), 8217),
    }  # fmt: skip
    reports: dict[str, list[list[BenchReport]]] = {name: [[] for _ in range(n_rounds)] for name in servers}
    with serving_all(servers) as urls:
        for r, c, name in rounds.interleave_levels(n_rounds, list(servers), levels):
            bench = BenchConfig(urls[name], "default", c, 8 * c, distinct=f"Round {r + 1}, c={c}")
            report = asyncio.run(run_bench(bench))
            reports[name][r].append(report)
            print(f"  round {r + 1}, {name}: c={c} {report.output_tokens_per_s:.1f} tok/s", flush=True)
        drafted = sum(v for _, v in scrape(urls[DRAFT], "lmgate_spec_decode_draft_tokens_total"))
        accepted = sum(v for _, v in scrape(urls[DRAFT], "lmgate_spec_decode_accepted_tokens_total"))
    return SpeculativeRun(levels, reports, drafted, accepted)


def render(result: SpeculativeRun) -> list[str]:
    """The scenario's section of docs/benchmarks.md."""
    lines = [
        "",
        "## Speculative decoding: a draft model",
        "",
        f"A target of bench-200m's shape and a draft of {BENCH_DRAFT.layers} layers {BENCH_DRAFT.hidden} wide "
        "(a tenth of its size) built to agree with it at ~81 % of positions (quantize/draft_pair.py); lmgate with "
        "`speculative: {method: draft}` and llama-server with `-md` and `--spec-type draft-simple`, each at its "
        "defaults and against itself without; distinct story prompts; output tokens/s.",
        "",
        f"| c | {PLAIN} | {DRAFT} | {ANCHOR} | {ANCHOR_DRAFT} | lmgate draft / lmgate "
        "| lmgate draft / llama-server | lmgate draft / llama-server draft |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for i, c in enumerate(result.levels):
        tps = {name: result.tokens_per_s(name, i) for name in (PLAIN, DRAFT, ANCHOR, ANCHOR_DRAFT)}
        cells = [rounds.spread(v).show() for v in tps.values()]
        cells += [rounds.ratios(tps[DRAFT], tps[other]).show(".2f", "×") for other in (PLAIN, ANCHOR, ANCHOR_DRAFT)]
        lines.append(f"| {c} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"lmgate drafted {result.drafted:.0f} tokens and accepted {result.accepted:.0f} ({result.acceptance:.0%}) "
        "over the run.",
    ]
    return lines
