"""The benchmark of record: lmgate and its anchors on the same GGUF, in one run (``make bench``).

Servers, one at a time on this machine, each with the same threads, context and parallel slots:
- ``lmgate`` (this checkout), and once more with its prefix cache off for the shared-prefix scenario;
- ``llama-server`` built from the llama.cpp sources vendored in the llama-cpp-python sdist of the
  installed version (the same llama.cpp as our bindings), with the same instruction sets as our
  build and never AMX (backends/llamacpp/cpu_build.py), cached under ``.cache/bench``;
- llama-cpp-python's own server, in a venv of its own with our build of llama-cpp-python
  (``interrupt_requests`` off, so a new request does not cut the stream in progress);
- with ``--baseline DIR``, an earlier lmgate checkout with its own ``DIR/.venv``, for before/after.

Scenarios: identical short prompts over a concurrency sweep; shared-prefix (16 users, one
~512-token system prompt, a unique question each); structured outputs (lmgate, c=8, free against
constrained); mixed (bench/mixed.py: 8 streams while long prompts arrive); speculative
(bench/speculative.py: lmgate with and without prompt lookup on a repeating text). Writes
docs/benchmarks.md and a JSON file.
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
from dataclasses import asdict
from importlib.metadata import version
from pathlib import Path

from lmgate.backends.llamacpp import cpu_build
from lmgate.bench import mixed, speculative
from lmgate.bench.client import BenchConfig, BenchReport, run_bench
from lmgate.bench.plot import plot_sweeps
from lmgate.bench.servers import CACHE, Server, serving

SYSTEM_WORDS = "You are a careful assistant of a travel company. Answer briefly, politely and in English. "
SYSTEM_PROMPT = SYSTEM_WORDS * 6  # 527 tokens with bench-200m's vocabulary


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
    url: str, model: str, levels: list[int], max_tokens: int, shared_prefix: str = "", extra: dict | None = None
) -> list[BenchReport]:
    reports = []
    for c in levels:
        requests = max(32, 8 * c)
        config = BenchConfig(
            url, model, c, requests, max_tokens=max_tokens, shared_prefix=shared_prefix, extra=extra or {}
        )
        reports.append(asyncio.run(run_bench(config)))
        r = reports[-1]
        print(f"  c={c}: {r.output_tokens_per_s:.1f} tok/s, TTFT p50 {r.ttft_ms['p50']:.0f} ms, errors {r.errors}")
        if r.first_error:
            print(f"    first error: {r.first_error}")
    return reports


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--slots", type=int, default=16, help="parallel sequences of every server")
    parser.add_argument("--ctx", type=int, default=16384)
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks.md"))
    parser.add_argument("--baseline", type=Path, help="an earlier lmgate checkout with its own .venv, run as well")
    args = parser.parse_args(argv)

    model = build_model(CACHE / "bench-200m.q8_0.gguf")
    llama_server = build_llama_server()
    lcp_python = llama_cpp_python_server()
    t, c, np_ = str(args.threads), str(args.ctx), str(args.slots)
    serve = [
        "-m",
        "lmgate.server.cli",
        "serve",
        "--model",
        str(model),
        "--threads",
        t,
        "--n-ctx",
        c,
        "--max-seqs",
        np_,
        "--log-level",
        "warning",
    ]
    lmgate = [sys.executable, *serve]
    servers = {
        "lmgate": Server("lmgate", [*lmgate, "--port", "8201"]),
        "llama-server": Server(
            "llama-server",
            [str(llama_server), "-m", str(model), "-t", t, "-c", c, "-np", np_, "--port", "8202"],
            env={"LD_LIBRARY_PATH": str(llama_server.parent)},  # for a build with shared libraries
        ),
        "llama-cpp-python": Server(
            "llama-cpp-python",
            [
                str(lcp_python),
                "-m",
                "llama_cpp.server",
                "--model",
                str(model),
                "--n_threads",
                t,
                "--n_ctx",
                c,
                "--interrupt_requests",
                "False",
                "--port",
                "8203",
            ],
        ),
    }
    if args.baseline is not None:
        baseline = [str(args.baseline.resolve() / ".venv/bin/python"), *serve, "--port", "8204"]
        servers["lmgate (baseline)"] = Server("lmgate-baseline", baseline)
    results: dict[str, dict[str, list[BenchReport]]] = {}
    for port, (name, server) in enumerate(servers.items(), start=8201):
        print(f"{name}:", flush=True)
        with serving(server, port) as url:
            results[name] = {"sweep": sweep(url, "default", args.levels, args.max_tokens)}
            if name != "llama-cpp-python":  # it serialises requests: the scenario says nothing new
                results[name]["shared"] = sweep(url, "default", [16], args.max_tokens, SYSTEM_PROMPT)
            if name == "lmgate":  # the cost of constrained decoding: the same requests at c=8, constrained
                results[name]["free"] = sweep(url, "default", [8], args.max_tokens)
                results[name]["structured"] = sweep(url, "default", [8], args.max_tokens, extra=STRUCTURED)
    no_cache = Server("lmgate-no-prefix-cache", [*lmgate, "--no-prefix-cache", "--port", "8205"])
    print("lmgate, prefix cache off:", flush=True)
    with serving(no_cache, 8205) as url:
        results["lmgate (prefix cache off)"] = {"shared": sweep(url, "default", [16], args.max_tokens, SYSTEM_PROMPT)}

    mixed_reports = run_mixed_servers(model, llama_server, args)
    speculative_reports = speculative.run(model, args.threads)

    machine = f"{platform.machine()}, {os.cpu_count()} CPUs, {args.threads} threads"
    args.out.write_text(render(results, args, machine, mixed_reports, speculative_reports))
    sweeps = {name: runs["sweep"] for name, runs in results.items() if "sweep" in runs}
    plot_sweeps(sweeps, args.out.with_suffix(".png"), title=f"bench-200m Q8_0, {machine}")
    args.out.with_suffix(".json").write_text(
        json.dumps({k: {s: [asdict(r) for r in v] for s, v in d.items()} for k, d in results.items()}, indent=2)
    )
    print(f"wrote {args.out}")


def run_mixed_servers(model: Path, llama_server: Path, args: argparse.Namespace) -> dict[str, mixed.MixedReport]:
    """The mixed scenario on lmgate (fair chunked prefill, and with ``prefill_chunk`` off) and llama-server."""
    slots, ctx = 9, 9 * 2048  # 8 streams + the long request; a long prompt and its answer per slot
    config = CACHE / "mixed-unchunked.yaml"
    config.write_text(
        f"models:\n  - name: default\n    gguf: {model.resolve()}\n    n_threads: {args.threads}\n"
        f"    n_ctx: {ctx}\n    max_seqs: {slots}\n    prefill_chunk: null\n"
    )
    lmgate = [sys.executable, "-m", "lmgate.server.cli", "serve", "--no-grpc", "--log-level", "warning"]
    servers = {
        "lmgate": Server("lmgate-mixed", [*lmgate, "--model", str(model), "--threads", str(args.threads),
                                          "--n-ctx", str(ctx), "--max-seqs", str(slots), "--port", "8206"]),
        "lmgate (prefill_chunk off)": Server("lmgate-mixed-unchunked", [*lmgate, "--config", str(config),
                                                                        "--port", "8207"]),
        "llama-server": Server("llama-server-mixed", [str(llama_server), "-m", str(model), "-t", str(args.threads),
                                                      "-c", str(ctx), "-np", str(slots), "--port", "8208"],
                               env={"LD_LIBRARY_PATH": str(llama_server.parent)}),
    }  # fmt: skip
    reports = {}
    for port, (name, server) in enumerate(servers.items(), start=8206):
        print(f"{name}, mixed:", flush=True)
        with serving(server, port) as url:
            r = reports[name] = asyncio.run(mixed.run_mixed(url))
            print(f"  ITL p99 {r.short_itl_ms['p99']:.0f} ms, short TTFT p99 {r.short_ttft_ms['p99']:.0f} ms")
    return reports


def render(
    results: dict[str, dict[str, list[BenchReport]]],
    args: argparse.Namespace,
    machine: str,
    mixed_reports: dict[str, mixed.MixedReport] | None = None,
    speculative_reports: list[speculative.SpeculativeReport] | None = None,
) -> str:
    ours, anchor = results["lmgate"]["sweep"], results["llama-server"]["sweep"]
    lcp = results["llama-cpp-python"]["sweep"]
    lines = [
        "# Benchmarks",
        "",
        f"Written by `make bench` (`bench/suite.py`) on {time.strftime('%Y-%m-%d')}: {machine}. Model: the "
        f"random-weight `bench-200m` (hidden 1024, 12 layers, GQA 16/4, ffn 2816, vocab 32000), Q8_0, 214 MB. "
        f"Every server: {args.threads} threads, {args.ctx} context cells, {args.slots} parallel sequences; "
        f"streamed `/v1/completions`, {args.max_tokens} output tokens per request (`ignore_eos`), the same "
        "short prompt for every request. Ratios are what we compare; absolute numbers move with the machine. "
        "Profiles and the targets: [performance.md](performance.md).",
        "",
        "## Aggregate output tokens/s by concurrency",
        "",
        "| c | lmgate | llama-server | llama-cpp-python server | lmgate / llama-server | lmgate / llama-cpp-python "
        "| TTFT p50 ms lmgate / llama-server | ITL p50 ms lmgate / llama-server |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for a, b, p in zip(ours, anchor, lcp, strict=True):
        lines.append(
            f"| {a.concurrency} | {a.output_tokens_per_s:.1f} | {b.output_tokens_per_s:.1f} | "
            f"{p.output_tokens_per_s:.1f} | {a.output_tokens_per_s / b.output_tokens_per_s:.2f}× | "
            f"{a.output_tokens_per_s / p.output_tokens_per_s:.2f}× | {a.ttft_ms['p50']:.0f} / {b.ttft_ms['p50']:.0f} "
            f"| {a.itl_ms['p50']:.1f} / {b.itl_ms['p50']:.1f} |"
        )
    if "lmgate (baseline)" in results:
        lines += [
            "",
            "## This checkout against the baseline (`--baseline`)",
            "",
            "| c | baseline tok/s | lmgate tok/s | lmgate / baseline | TTFT p50 ms baseline / lmgate "
            "| ITL p50 ms baseline / lmgate |",
            "|---|---|---|---|---|---|",
        ]
        for a, b in zip(results["lmgate (baseline)"]["sweep"], ours, strict=True):
            lines.append(
                f"| {a.concurrency} | {a.output_tokens_per_s:.1f} | {b.output_tokens_per_s:.1f} | "
                f"{b.output_tokens_per_s / a.output_tokens_per_s:.2f}× | "
                f"{a.ttft_ms['p50']:.0f} / {b.ttft_ms['p50']:.0f} | {a.itl_ms['p50']:.1f} / {b.itl_ms['p50']:.1f} |"
            )
    lines += [
        "",
        "## Shared prefix: 16 users, one ~512-token system prompt, a unique question each",
        "",
        "| server | tok/s | TTFT p50 ms | TTFT p99 ms | prefix hit rate | errors |",
        "|---|---|---|---|---|---|",
    ]
    for name, runs in results.items():
        for r in runs.get("shared", []):
            rate = "n/a" if r.prefix_hit_rate is None else f"{r.prefix_hit_rate:.0%}"
            lines.append(
                f"| {name} | {r.output_tokens_per_s:.1f} | {r.ttft_ms['p50']:.0f} | {r.ttft_ms['p99']:.0f} "
                f"| {rate} | {r.errors} |"
            )
    if "structured" in results["lmgate"]:
        [free], [constrained] = results["lmgate"]["free"], results["lmgate"]["structured"]
        lines += [
            "",
            "## Structured outputs: the same requests at c=8, free and under a JSON Schema (lmgate)",
            "",
            "| | tok/s | TTFT p50 ms | ITL p50 ms |",
            "|---|---|---|---|",
            f"| free | {free.output_tokens_per_s:.1f} | {free.ttft_ms['p50']:.0f} | {free.itl_ms['p50']:.1f} |",
            f"| constrained | {constrained.output_tokens_per_s:.1f} | {constrained.ttft_ms['p50']:.0f} "
            f"| {constrained.itl_ms['p50']:.1f} |",
            "",
            f"Constrained / free: {constrained.output_tokens_per_s / free.output_tokens_per_s:.2f}× "
            "(the target: at least 0.90×).",
        ]
    if mixed_reports:
        lines += mixed.render(mixed_reports)
    if speculative_reports:
        lines += speculative.render(speculative_reports)
    errors = {name: sum(r.errors for rs in runs.values() for r in rs) for name, runs in results.items()}
    lines += ["", f"Failed requests per server over the whole run: {errors}.", "", "![sweep](benchmarks.png)", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
