"""The gateway's CPU per streamed token: what lmgate's own process spends around the engine.

Serves a model with ``lmgate serve`` (its llama.cpp engine runs in a child process), streams C
concurrent ``/v1/completions`` requests at it, and reads the CPU time (user + system, from
``/proc/<pid>/stat``) of the gateway process and of its engine process over the run. The gateway's
CPU milliseconds per streamed token is the figure issue 22 is about: on a 2-core machine each of
them is taken from llama.cpp's compute threads. A small, fast model (the embedded tiny-chat) puts
the most tokens per second through the gateway, so the gateway's cost is seen best.

    python -m lmgate.bench.gateway_cost --model models/tiny-chat.gguf --concurrency 16
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from lmgate.bench.client import BenchConfig, BenchReport, run_bench
from lmgate.bench.servers import Server, serving_process

_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far (its own, not its children's)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime: fields 14 and 15 of stat


def children(pid: int) -> list[int]:
    """The direct children of ``pid`` (the engine host processes of a serving lmgate)."""
    tasks = Path(f"/proc/{pid}/task")
    found: list[int] = []
    for task in tasks.iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


@dataclass(frozen=True)
class Cost:
    report: BenchReport
    gateway_cpu_s: float
    engine_cpu_s: float

    @property
    def tokens(self) -> int:
        return self.report.output_tokens

    def per_token_ms(self, seconds: float) -> float:
        return 1000 * seconds / max(self.tokens, 1)


async def measure(url: str, pid: int, config: BenchConfig) -> Cost:
    engines = children(pid)
    g0, e0 = cpu_seconds(pid), sum(cpu_seconds(e) for e in engines)
    report = await run_bench(config)
    g1, e1 = cpu_seconds(pid), sum(cpu_seconds(e) for e in engines)
    return Cost(report, g1 - g0, e1 - e0)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path("models/tiny-chat.gguf"))
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--port", type=int, default=8211)
    args = parser.parse_args(argv)
    command = [sys.executable, "-m", "lmgate.server.cli", "serve", "--model", str(args.model), "--no-grpc"]
    command += ["--threads", str(args.threads), "--max-seqs", str(max(args.concurrency)), "--log-level", "warning"]
    with serving_process(Server("lmgate-cost", [*command, "--port", str(args.port)]), args.port) as (url, process):
        pid = process.pid
        print("| c | tok/s | gateway CPU ms / token | engine CPU ms / token | gateway share of CPU |")
        print("|---|---|---|---|---|")
        for c in args.concurrency:
            config = BenchConfig(url, "default", c, max(args.requests, 4 * c), max_tokens=args.max_tokens)
            cost = asyncio.run(measure(url, pid, config))
            share = cost.gateway_cpu_s / max(cost.gateway_cpu_s + cost.engine_cpu_s, 1e-9)
            print(
                f"| {c} | {cost.report.output_tokens_per_s:.0f} | {cost.per_token_ms(cost.gateway_cpu_s):.3f} "
                f"| {cost.per_token_ms(cost.engine_cpu_s):.3f} | {share:.0%} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
