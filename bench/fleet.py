"""The fleet benchmark (``make bench-fleet``): a front gateway over worker gateways, routing policies
side by side on a workload of tenants with long system prompts.

Workers are ``lmgate serve`` processes on this machine, each an engine with its own prefix cache;
the front is an lmgate whose one model is a ``grpc`` backend over all of them. Each tenant has its
own ~1,000-token system prompt and many users, each asking something different after it. For each
policy — lmgate's ``prefix_affinity``, ``round_robin`` (what a Kubernetes Service gives) and
``least_outstanding`` — the same requests run at the same concurrency, and the report gives the
prefix-cache hit rate (cached prompt tokens / prompt tokens, from each response's usage) and TTFT,
next to one worker alone (the hit rate a single replica reaches on this workload).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from lmgate.bench.client import BenchConfig, RequestResult, one_request, percentiles
from lmgate.bench.servers import scrape

POLICIES = ("prefix_affinity", "round_robin", "least_outstanding")
WORDS = (
    "river", "mountain", "policy", "invoice", "garden", "engine", "ledger", "harbor", "signal", "meadow",
    "contract", "lantern", "orchard", "circuit", "voyage", "archive", "summit", "canvas", "beacon", "quarry",
)  # fmt: skip


def system_prompt(tenant: int, words: int) -> str:
    """A tenant's own instructions: distinct from the first word on, about ``words`` words long."""
    rng = random.Random(tenant)
    body = " ".join(rng.choice(WORDS) for _ in range(words))
    return f"You are the assistant of tenant {tenant}. Follow these notes: {body}.\n"


@contextlib.contextmanager
def process(args: list[str], url: str, log: Path) -> Iterator[None]:
    """``args`` serving at ``url`` until the block ends; refuses a URL another server already answers (a
    stray worker of an interrupted run would take the fresh one's place, warm cache and all)."""
    with contextlib.suppress(httpx.HTTPError):
        httpx.get(f"{url}/ready", timeout=1)
        raise RuntimeError(f"{url} is already served by another process: stop it first")
    with log.open("w") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
        try:
            for _ in range(600):
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"{url}/ready", timeout=1).status_code == 200:
                        break
                if proc.poll() is not None:
                    raise RuntimeError(f"{args[:6]} exited: see {log}")
                time.sleep(0.5)
            else:
                raise RuntimeError(f"{url} was not ready after 5 minutes: see {log}")
            yield
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def front_config(path: Path, targets: list[str], policy: str) -> Path:
    listed = ", ".join(f'"{t}"' for t in targets)
    path.write_text(
        f"models:\n  - name: fleet\n    backend: grpc\n    remote_model: default\n"
        f"    routing: {policy}\n    target: [{listed}]\n"
    )
    return path


async def workload(url: str, args: argparse.Namespace) -> list[RequestResult]:
    """Every tenant's users, interleaved, ``args.concurrency`` at a time."""
    prompts = [system_prompt(t, args.prompt_words) for t in range(args.tenants)]
    jobs = [(t, u) for u in range(args.users) for t in range(args.tenants)]
    semaphore = asyncio.Semaphore(args.concurrency)
    limits = httpx.Limits(max_connections=args.concurrency, max_keepalive_connections=0)

    async def one(client: httpx.AsyncClient, tenant: int, user: int) -> RequestResult:
        config = BenchConfig(url, "fleet", 1, 1, max_tokens=args.max_tokens, shared_prefix=prompts[tenant],
                             prompt=f"User {user} asks question {user * 7 + tenant}")  # fmt: skip
        async with semaphore:
            return await one_request(client, config, user)

    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        return await asyncio.gather(*(one(client, t, u) for t, u in jobs))


def summary(results: list[RequestResult]) -> dict[str, float]:
    ok = [r for r in results if r.error is None]
    prompt = sum(r.prompt_tokens for r in ok)
    ttft = percentiles([r.ttft for r in ok if r.ttft is not None])
    failed = [r.error for r in results if r.error is not None]
    if failed:
        print(f"  {len(failed)} requests failed; the first: {failed[0]}", flush=True)
    return {"hit_rate": sum(r.cached_tokens for r in ok) / prompt if prompt else 0.0, "ttft_p50": ttft["p50"],
            "ttft_p99": ttft["p99"], "errors": len(failed)}  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path("models/tiny-chat.gguf"))
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--tenants", type=int, default=8)
    parser.add_argument("--users", type=int, default=12, help="requests per tenant")
    parser.add_argument("--prompt-words", type=int, default=230, help="system prompt length (~1,000 tiny-chat tokens)")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--worker-ctx", type=int, default=4096,
                        help="KV cells of each worker: fewer than every tenant's prompt needs (one worker alone gets "
                        "the fleet's total)")  # fmt: skip
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--out", type=Path, default=Path("docs/fleet-bench.md"))
    args = parser.parse_args(argv)
    logs = Path(".cache/bench-fleet")
    logs.mkdir(parents=True, exist_ok=True)
    serve = [sys.executable, "-m", "lmgate.server.cli", "serve", "--model", str(args.model), "--threads", "1",
             "--max-seqs", "8", "--log-level", "warning"]  # fmt: skip
    rows: dict[str, dict[str, float]] = {}
    for run in ("one worker", *POLICIES):
        count = 1 if run == "one worker" else args.workers
        cells = args.worker_ctx * (args.workers if run == "one worker" else 1)  # the fleet's KV memory in one
        with contextlib.ExitStack() as stack:
            targets = []
            for w in range(count):  # fresh workers per run: every policy starts from cold caches
                port, grpc_port = 8301 + w, 50301 + w
                worker = [*serve, "--n-ctx", str(cells), "--port", str(port), "--grpc-port", str(grpc_port)]
                stack.enter_context(process(worker, f"http://127.0.0.1:{port}", logs / f"worker-{w}.log"))
                targets.append(f"127.0.0.1:{grpc_port}")
            policy = "prefix_affinity" if run == "one worker" else run
            config = front_config(logs / "front.yaml", targets, policy)
            front = [sys.executable, "-m", "lmgate.server.cli", "serve", "--config", str(config), "--port", "8300",
                     "--no-grpc", "--log-level", "warning"]  # fmt: skip
            stack.enter_context(process(front, "http://127.0.0.1:8300", logs / "front.log"))
            rows[run] = summary(asyncio.run(workload("http://127.0.0.1:8300", args)))
            rows[run].update(decisions("http://127.0.0.1:8300"))
            print(f"{run}: {rows[run]}", flush=True)
    args.out.write_text(render(rows, args))
    print(f"wrote {args.out}")


def decisions(url: str) -> dict[str, float]:
    """The front's routing decisions by reason (``lmgate_router_decisions_total``), from its /metrics."""
    return {f"routed_{labels['reason']}": v for labels, v in scrape(url, "lmgate_router_decisions_total")}


def render(rows: dict[str, dict[str, float]], args: argparse.Namespace) -> str:
    alone, ours, rr = rows["one worker"], rows["prefix_affinity"], rows["round_robin"]
    lines = [
        "# Fleet benchmark",
        "",
        f"Written by `make bench-fleet` (`bench/fleet.py`) on {time.strftime('%Y-%m-%d')}: a front lmgate over "
        f"{args.workers} worker lmgates (`{args.model.name}`, 1 thread, 8 sequences, {args.worker_ctx} KV cells each: "
        f"room for a few tenants' prompts, not all) on this machine; one worker alone gets the fleet's "
        f"{args.workers * args.worker_ctx} cells; "
        f"{args.tenants} tenants, each with its own ~{args.prompt_words}-word system prompt, {args.users} users each "
        f"(a different question after it), {args.concurrency} requests at a time, {args.max_tokens} output tokens. "
        "Fresh workers per row.",
        "",
        "| routing | prefix hit rate | TTFT p50 ms | TTFT p99 ms | errors | routed by (reason: requests) |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in rows.items():
        routed = ", ".join(f"{k.removeprefix('routed_')}: {v:.0f}" for k, v in row.items() if k.startswith("routed_"))
        lines.append(f"| {name} | {row['hit_rate']:.0%} | {row['ttft_p50']:.0f} | {row['ttft_p99']:.0f} | "
                     f"{row['errors']:.0f} | {routed} |")  # fmt: skip
    lines += [
        "",
        f"prefix_affinity: hit rate {ours['hit_rate'] / alone['hit_rate'] if alone['hit_rate'] else 0:.2f}× one "
        f"worker's (target ≥ 0.90×); TTFT p50 {ours['ttft_p50'] / rr['ttft_p50'] if rr['ttft_p50'] else 0:.2f}× "
        "round-robin's (target ≤ 0.5×).",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
