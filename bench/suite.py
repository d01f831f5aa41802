"""The benchmark of record: lmgate and its anchors on the same GGUF, in one run (``make bench``).

Servers, one at a time on this machine, each with the same threads, context and parallel slots:
- ``lmgate`` (this checkout), and once more with its prefix cache off for the shared-prefix scenario;
- ``llama-server`` built from the llama.cpp sources vendored in the llama-cpp-python sdist of the
  installed version (the same llama.cpp as our bindings), with the same instruction sets as our
  build and never AMX (backends/llamacpp/cpu_build.py), cached under ``.cache/bench``;
- llama-cpp-python's own server, in a venv of its own with our build of llama-cpp-python
  (``interrupt_requests`` off, so a new request does not cut the stream in progress);
- with ``--baseline DIR``, an earlier lmgate checkout with its own ``DIR/.venv``, for before/after.

Scenarios: distinct short prompts over a concurrency sweep; shared-prefix (16 users, one
~512-token system prompt, a unique question each); structured outputs (lmgate, c=8, free against
constrained); mixed (bench/mixed.py: 8 streams while long prompts arrive); speculative
(bench/speculative.py: prompt lookup on a repeating text, lmgate and llama-server each with and
without); draft model (bench/draft_model.py: a target built to contain a small draft, the same four
servers). The servers of a scenario are up at once and run it in interleaved rounds (three by
default; bench/rounds.py; a sweep level by level, every server in turn at each level): medians and
min–max ranges. Writes docs/benchmarks.md, a JSON file of
the sweeps and a plot.
Nothing here is downloaded but PyPI packages; the model is the random-weight ``bench-200m``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import platform
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from dataclasses import asdict
from importlib.metadata import version
from pathlib import Path

from lmgate.backends.llamacpp import cpu_build
from lmgate.bench import draft_model, mixed, rounds, speculative
from lmgate.bench.client import BenchConfig, BenchReport, run_bench
from lmgate.bench.plot import plot_sweeps
from lmgate.bench.servers import CACHE, Server, llama_server, lmgate_server, serving, serving_all

SYSTEM_WORDS = "You are a careful assistant of a travel company. Answer briefly, politely and in English. "
SYSTEM_PROMPT = SYSTEM_WORDS * 6  # 527 tokens with bench-200m's vocabulary
UNIFIED = "lmgate (unified)"
"""lmgate with one KV cache any request may fill (no --max-model-len), beside the per-slot-stream one."""


def _run(command: list[str], **kwargs: object) -> None:
    print("+", " ".join(command), flush=True)
    subprocess.run(command, check=True, **kwargs)


def build_model(path: Path) -> Path:
    if not path.exists():
        _run([sys.executable, "-m", "lmgate.quantize.random_model", "--preset", "bench-200m", "--out", str(path)])
    return path


def build_llama_server() -> Path:
    """llama-server from the sdist of the installed llama-cpp-python (same llama.cpp as our bindings),
    built with the instruction sets ours has (never AMX); a build per set of flags."""
    v = version("llama-cpp-python")
    flags = cpu_build.cmake_args("host")
    root = CACHE / f"llama-cpp-python-{v}"
    build = root / f"vendor/llama.cpp/build-{hashlib.sha256(' '.join(flags).encode()).hexdigest()[:12]}"
    binary = build / "bin/llama-server"
    if binary.exists():
        return binary
    CACHE.mkdir(parents=True, exist_ok=True)
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--no-binary",
            ":all:",
            f"llama-cpp-python=={v}",
            "-d",
            str(CACHE),
        ]
    )
    if not root.exists():
        with tarfile.open(CACHE / f"llama_cpp_python-{v}.tar.gz") as sdist:
            sdist.extractall(CACHE, filter="data")
        (CACHE / f"llama_cpp_python-{v}").rename(root)
    source = root / "vendor/llama.cpp"
    _run(
        [
            "cmake",
            "-S",
            str(source),
            "-B",
            str(build),
            "-DCMAKE_BUILD_TYPE=Release",
            "-DLLAMA_CURL=OFF",
            "-DBUILD_SHARED_LIBS=OFF",
            "-DLLAMA_OPENSSL=OFF",
            "-DLLAMA_BUILD_TESTS=OFF",
            *flags,
        ]
    )
    _run(["cmake", "--build", str(build), "--target", "llama-server", "-j", str(os.cpu_count() or 2)])
    return binary


def llama_cpp_python_server() -> Path:
    """A venv with llama-cpp-python[server] of the installed version, on lmgate's (AMX-free) build of it."""
    venv = CACHE / "llama-cpp-python-server"
    python = venv / "bin/python"
    if not python.exists():
        _run([sys.executable, "-m", "venv", str(venv)])
    _run([str(python), cpu_build.__file__, "install", "--target", "host"])  # cheap once built
    _run([str(python), "-m", "pip", "install", "--quiet", f"llama-cpp-python[server]=={version('llama-cpp-python')}"])
    return python


#: The constrained scenario's output: a JSON object whose one string is longer than max_tokens can
#: write, so every token of every request is masked by its grammar (the cost measured) and no request
#: ends early (the grammar, not ``ignore_eos``, which a constraint refuses, keeps EOS out).
STRUCTURED = {"ignore_eos": False, "structured_outputs": {"json": {
    "type": "object", "properties": {"story": {"type": "string", "minLength": 4000}}, "required": ["story"],
    "additionalProperties": False,
}}}  # fmt: skip


def sweep(
    url: str,
    model: str,
    levels: list[int],
    max_tokens: int,
    shared_prefix: str = "",
    extra: dict | None = None,
    *,
    waves: int = 4,
    distinct: str | None = None,
    varied: bool = False,
) -> list[BenchReport]:
    """One run per concurrency in ``levels``, each of ``max(16, waves * c)`` requests. With ``distinct`` (a
    tag no other run of the server uses) and no ``shared_prefix``, every request's prompt is its own; with
    ``varied``, its output length too (bench/client.py)."""
    reports = []
    for c in levels:
        config = BenchConfig(
            url,
            model,
            c,
            max(16, waves * c),
            max_tokens=max_tokens,
            shared_prefix=shared_prefix,
            distinct=None if distinct is None else f"{distinct}, c={c}, request",
            extra=extra or {},
            varied=varied,
        )
        reports.append(asyncio.run(run_bench(config)))
        r = reports[-1]
        print(f"    c={c}: {r.output_tokens_per_s:.1f} tok/s, TTFT p50 {r.ttft_ms['p50']:.0f} ms, errors {r.errors}")
        if r.first_error:
            print(f"    first error: {r.first_error}")
    return reports


Runs = dict[str, dict[str, list[list[BenchReport]]]]
"""Server name → scenario → rounds → one report per concurrency level."""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--slots", type=int, default=16, help="parallel sequences of every server")
    parser.add_argument("--ctx", type=int, default=16384)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of every scenario")
    parser.add_argument("--waves", type=int, default=4, help="requests per client at each concurrency level")
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks.md"))
    parser.add_argument("--baseline", type=Path, help="an earlier lmgate checkout with its own .venv, run as well")
    args = parser.parse_args(argv)

    model = build_model(CACHE / "bench-200m.q8_0.gguf")
    binary = build_llama_server()
    lcp_python = llama_cpp_python_server()
    t, c, np_ = str(args.threads), str(args.ctx), str(args.slots)
    sizes = ("--model", str(model), "--threads", t, "--n-ctx", c, "--max-seqs", np_)
    # llama-server gives each of its -np slots a KV stream of -c / -np cells, the longest request it takes;
    # lmgate with the same limit makes the same layout. "lmgate (unified)" lets a request use every cell.
    per_slot = ("--max-model-len", str(args.ctx // args.slots))
    servers = {  # run in interleaved rounds, all up at once
        "lmgate": (lmgate_server("lmgate", *sizes, *per_slot, "--port", "8201"), 8201),
        "llama-server": (llama_server(binary, "llama-server", "-m", str(model), "-t", t, "-c", c, "-np", np_,
                                      "--port", "8202"), 8202),
        UNIFIED: (lmgate_server("lmgate-unified", *sizes, "--port", "8213"), 8213),
    }  # fmt: skip
    if args.baseline is not None:
        python = str(args.baseline.resolve() / ".venv/bin/python")
        baseline = lmgate_server("lmgate-baseline", *sizes, *per_slot, "--port", "8204", python=python)
        servers["lmgate (baseline)"] = (baseline, 8204)
    results: Runs = {name: {} for name in servers}
    names = list(servers)
    with serving_all(servers) as urls:
        for name in names:
            results[name]["sweep"] = [[] for _ in range(args.rounds)]
        for r, level, name in rounds.interleave_levels(args.rounds, names, args.levels):
            print(f"round {r + 1}, {name}:", flush=True)
            tag = f"Round {r + 1}"  # distinct prompts, no prefix of another run's
            results[name]["sweep"][r] += sweep(
                urls[name], "default", [level], args.max_tokens, waves=args.waves, distinct=tag
            )
        for r, name in rounds.interleave(args.rounds, names):  # requests that end at different steps
            print(f"round {r + 1}, {name}, varied lengths:", flush=True)
            varied = sweep(urls[name], "default", [8], args.max_tokens, waves=args.waves,
                           distinct=f"Round {r + 1}, varied", varied=True)  # fmt: skip
            results[name].setdefault("varied", []).append(varied)
        for r, name in rounds.interleave(args.rounds, names):
            print(f"round {r + 1}, {name}:", flush=True)
            url, runs = urls[name], results[name]
            tag = f"Round {r + 1}"
            # A system prompt of this round's own: every round starts cold on every server, as a new
            # prompt does (a server up since the last round would find its prompts cached).
            system = f"Round {r + 1}. {SYSTEM_PROMPT}"
            shared = sweep(url, "default", [16], args.max_tokens, system, waves=args.waves)
            runs.setdefault("shared", []).append(shared)
            if name == "lmgate":  # the cost of constrained decoding: the same requests at c=8, constrained
                free = sweep(url, "default", [8], args.max_tokens, waves=args.waves, distinct=f"{tag}, free")
                runs.setdefault("free", []).append(free)
                constrained = sweep(
                    url, "default", [8], args.max_tokens, extra=STRUCTURED, waves=args.waves, distinct=f"{tag}, JSON"
                )
                runs.setdefault("structured", []).append(constrained)

    # One round each: llama-cpp-python's server serialises requests (minutes per sweep), and the
    # prefix cache off is there to show the order of magnitude the cache is worth.
    lcp = Server("llama-cpp-python", [str(lcp_python), "-m", "llama_cpp.server", "--model", str(model),
                                      "--n_threads", t, "--n_ctx", c, "--interrupt_requests", "False",
                                      "--port", "8203"])  # fmt: skip
    print("llama-cpp-python (one round):", flush=True)
    with serving(lcp, 8203) as url:
        lcp_sweep = sweep(url, "default", args.levels, args.max_tokens, waves=args.waves, distinct="Round 1")
        results["llama-cpp-python"] = {"sweep": [lcp_sweep]}
    print("lmgate, prefix cache off (one round):", flush=True)
    no_cache = lmgate_server("lmgate-no-prefix-cache", *sizes, *per_slot, "--no-prefix-cache", "--port", "8205")
    with serving(no_cache, 8205) as url:
        shared = sweep(url, "default", [16], args.max_tokens, SYSTEM_PROMPT, waves=2)
        results["lmgate (prefix cache off)"] = {"shared": [shared]}

    print("mixed:", flush=True)
    mixed_reports = mixed.run_servers(model, binary, args.threads, args.rounds)
    print("speculative:", flush=True)
    speculative_run = speculative.run(model, binary, args.threads, args.rounds)
    print("draft model:", flush=True)
    draft_run = draft_model.run(binary, args.threads, args.rounds)

    machine = f"{platform.machine()}, {os.cpu_count()} CPUs, {args.threads} threads"
    args.out.write_text(render(results, args, machine, mixed_reports, speculative_run, draft_run))
    medians = {name: [median_report(level) for level in rounds.by_level(runs["sweep"])]
               for name, runs in results.items() if "sweep" in runs}  # fmt: skip
    plot_sweeps(medians, args.out.with_suffix(".png"), title=f"bench-200m Q8_0, {machine} (medians of the rounds)")
    as_json = {k: {s: [[asdict(r) for r in run] for run in v] for s, v in d.items()} for k, d in results.items()}
    args.out.with_suffix(".json").write_text(json.dumps(as_json, indent=2))
    print(f"wrote {args.out}")


def median_report(level: list[BenchReport]) -> BenchReport:
    """The round whose tokens/s is the median (the lower middle of an even count)."""
    return sorted(level, key=lambda r: r.output_tokens_per_s)[(len(level) - 1) // 2]


def render(
    results: Runs,
    args: argparse.Namespace,
    machine: str,
    mixed_reports: dict[str, list[mixed.MixedReport]] | None = None,
    speculative_run: speculative.SpeculativeRun | None = None,
    draft_run: speculative.SpeculativeRun | None = None,
) -> str:
    def tps(name: str, scenario: str = "sweep") -> list[list[float]]:
        """levels × rounds of the server's tokens/s."""
        return [[r.output_tokens_per_s for r in level] for level in rounds.by_level(results[name][scenario])]

    def median(name: str, figure: Callable[[BenchReport], float], scenario: str = "sweep") -> list[float]:
        """Per level, the median over the rounds of ``figure``."""
        return [rounds.spread(figure(r) for r in level).median for level in rounds.by_level(results[name][scenario])]

    ttft, itl = (lambda r: r.ttft_ms["p50"]), (lambda r: r.itl_ms["p50"])
    ours, anchor, lcp = tps("lmgate"), tps("llama-server"), tps("llama-cpp-python")
    n = len(results["lmgate"]["sweep"])
    lines = [
        "# Benchmarks",
        "",
        f"Written by `make bench` (`bench/suite.py`) on {time.strftime('%Y-%m-%d')}: {machine}. Model: the "
        f"random-weight `bench-200m` (hidden 1024, 12 layers, GQA 16/4, ffn 2816, vocab 32000), Q8_0, 214 MB. "
        f"Every server: {args.threads} threads, {args.ctx} context cells, {args.slots} parallel sequences, so "
        f"{args.ctx // args.slots} cells a request at most (llama-server's slots; lmgate: `--max-model-len`, which "
        'gives each sequence a KV stream of its own as llama-server does; "lmgate (unified)" is lmgate with one '
        "KV cache any request may fill); "
        f"streamed `/v1/completions`, {args.max_tokens} output tokens per request (`ignore_eos`), a short "
        'prompt of its own for every request ("Round r, c=C, request i. Once upon a time…": no prefix '
        "cache helps). Ratios are what we compare; absolute numbers move with the machine. "
        "Profiles and the targets: [performance.md](performance.md).",
        "",
        f"The servers of a scenario are up at once and run it in {n} interleaved rounds (bench/rounds.py; the "
        "concurrency sweeps level by level, every server in turn at each level, so a ratio compares runs seconds "
        "apart). A figure is the median of the rounds, with their min–max range in brackets; a ratio is the median of "
        "the per-round ratios. llama-cpp-python's server, which serialises requests, and lmgate with its "
        "prefix cache off run one round.",
        "",
        "## Aggregate output tokens/s by concurrency",
        "",
        "| c | lmgate | llama-server | llama-cpp-python server | lmgate / llama-server | lmgate / llama-cpp-python "
        "| TTFT p50 ms lmgate / llama-server | ITL p50 ms lmgate / llama-server |",
        "|---|---|---|---|---|---|---|---|",
    ]
    ours_ttft, anchor_ttft = median("lmgate", ttft), median("llama-server", ttft)
    ours_itl, anchor_itl = median("lmgate", itl), median("llama-server", itl)
    for i, level in enumerate(args.levels):
        a, b, p = rounds.spread(ours[i]), rounds.spread(anchor[i]), rounds.spread(lcp[i])
        lines.append(
            f"| {level} | {a.show()} | {b.show()} | {p.show()} | {rounds.ratios(ours[i], anchor[i]).show('.2f', '×')} "
            f"| {a.median / p.median:.2f}× | {ours_ttft[i]:.0f} / {anchor_ttft[i]:.0f} "
            f"| {ours_itl[i]:.1f} / {anchor_itl[i]:.1f} |"
        )
    if UNIFIED in results:
        unified, unified_ttft = tps(UNIFIED), median(UNIFIED, ttft)
        lines += [
            "",
            "## lmgate's two KV layouts: a stream per sequence (lmgate) and one unified cache",
            "",
            "| c | unified tok/s | unified / llama-server | streams / unified | TTFT p50 ms unified |",
            "|---|---|---|---|---|",
        ]
        for i, level in enumerate(args.levels):
            lines.append(
                f"| {level} | {rounds.spread(unified[i]).show()} "
                f"| {rounds.ratios(unified[i], anchor[i]).show('.2f', '×')} "
                f"| {rounds.ratios(ours[i], unified[i]).show('.2f', '×')} | {unified_ttft[i]:.0f} |"
            )
    if "varied" in results["lmgate"]:
        varied = {name: [run[0].output_tokens_per_s for run in results[name]["varied"]] for name in results
                  if "varied" in results[name]}  # fmt: skip
        lo = max(1, args.max_tokens // 8)
        cells = [rounds.spread(v).show() for v in varied.values()]
        cells.append(rounds.ratios(varied["lmgate"], varied["llama-server"]).show(".2f", "×"))
        lines += [
            "",
            "## Output lengths of their own (c=8)",
            "",
            f"Distinct prompts as above, each request asking for its own length ({lo} to {2 * args.max_tokens} tokens, "
            "the same lengths on every server), so requests end at different steps and slots fall idle between "
            "running ones. With a KV stream per sequence llama.cpp evaluates the model once per run of consecutive "
            "sequence ids; lmgate moves a sequence down into such a gap (docs/architecture.md, `pack`). Tokens/s:",
            "",
            "| " + " | ".join([*varied, "lmgate / llama-server"]) + " |",
            "|" + "---|" * (len(varied) + 1),
            "| " + " | ".join(cells) + " |",
        ]
    if "lmgate (baseline)" in results:
        base = tps("lmgate (baseline)")
        base_ttft, base_itl = median("lmgate (baseline)", ttft), median("lmgate (baseline)", itl)
        lines += [
            "",
            "## This checkout against the baseline (`--baseline`)",
            "",
            "| c | baseline tok/s | lmgate tok/s | lmgate / baseline | TTFT p50 ms baseline / lmgate "
            "| ITL p50 ms baseline / lmgate |",
            "|---|---|---|---|---|---|",
        ]
        for i, level in enumerate(args.levels):
            lines.append(
                f"| {level} | {rounds.spread(base[i]).show()} | {rounds.spread(ours[i]).show()} "
                f"| {rounds.ratios(ours[i], base[i]).show('.2f', '×')} | {base_ttft[i]:.0f} / {ours_ttft[i]:.0f} "
                f"| {base_itl[i]:.1f} / {ours_itl[i]:.1f} |"
            )
    lines += [
        "",
        "## Shared prefix: 16 users, one ~512-token system prompt, a unique question each",
        "",
        "| server | tok/s | TTFT p50 ms | TTFT p99 ms | prefix hit rate | errors |",
        "|---|---|---|---|---|---|",
    ]
    for name, runs in results.items():
        if "shared" not in runs:
            continue
        [level] = rounds.by_level(runs["shared"])
        hits = [r.prefix_hit_rate for r in level if r.prefix_hit_rate is not None]
        lines.append(
            f"| {name} | {rounds.spread(r.output_tokens_per_s for r in level).show()} "
            f"| {rounds.spread(r.ttft_ms['p50'] for r in level).show('.0f')} "
            f"| {rounds.spread(r.ttft_ms['p99'] for r in level).show('.0f')} "
            f"| {f'{rounds.spread(hits).median:.0%}' if hits else 'n/a'} | {sum(r.errors for r in level)} |"
        )
    [shared_ours], [shared_anchor] = tps("lmgate", "shared"), tps("llama-server", "shared")
    lines += ["", f"lmgate / llama-server: {rounds.ratios(shared_ours, shared_anchor).show('.2f', '×')}."]
    if "structured" in results["lmgate"]:
        [free], [constrained] = tps("lmgate", "free"), tps("lmgate", "structured")
        [free_itl], [constrained_itl] = median("lmgate", itl, "free"), median("lmgate", itl, "structured")
        lines += [
            "",
            "## Structured outputs: the same requests at c=8, free and under a JSON Schema (lmgate)",
            "",
            "| | tok/s | ITL p50 ms |",
            "|---|---|---|",
            f"| free | {rounds.spread(free).show()} | {free_itl:.1f} |",
            f"| constrained | {rounds.spread(constrained).show()} | {constrained_itl:.1f} |",
            "",
            f"Constrained / free: {rounds.ratios(constrained, free).show('.2f', '×')} (the target: at least 0.90×).",
        ]
    if mixed_reports:
        lines += mixed.render(mixed_reports)
    if speculative_run:
        lines += speculative.render(speculative_run)
    if draft_run:
        lines += draft_model.render(draft_run)
    errors = {name: sum(r.errors for rs in runs.values() for run in rs for r in run) for name, runs in results.items()}
    lines += ["", f"Failed requests per server over the whole run: {errors}.", "", "![sweep](benchmarks.png)", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
