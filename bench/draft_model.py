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

import subprocess
import sys
from pathlib import Path

from lmgate.bench import speculative
from lmgate.bench.client import BenchConfig
from lmgate.bench.servers import CACHE
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
    names = (PLAIN, DRAFT, ANCHOR, ANCHOR_DRAFT)
    ours = f"{{method: draft, draft_model: {draft.resolve()}}}"
    theirs = ("-md", str(draft), "--spec-type", "draft-simple")
    servers = speculative.four_servers(target, binary, threads, names, "draft", ours, theirs, port=8214)

    def load(url: str, r: int, c: int) -> BenchConfig:
        return BenchConfig(url, "default", c, 8 * c, distinct=f"Round {r + 1}, c={c}")

    return speculative.measure(servers, DRAFT, load, n_rounds, levels)


def render(result: SpeculativeRun) -> list[str]:
    """The scenario's section of docs/benchmarks.md."""
    return [
        "",
        "## Speculative decoding: a draft model",
        "",
        f"A target of bench-200m's shape and a draft of {BENCH_DRAFT.layers} layers {BENCH_DRAFT.hidden} wide "
        "(a tenth of its size) built to agree with it at ~81 % of positions (quantize/draft_pair.py); lmgate with "
        "`speculative: {method: draft}` and llama-server with `-md` and `--spec-type draft-simple`, each at its "
        "defaults and against itself without; distinct story prompts; output tokens/s.",
        "",
        *speculative.table(result, (PLAIN, DRAFT, ANCHOR, ANCHOR_DRAFT), "draft"),
    ]
