"""The one-shot ``lmgate`` commands: check-config, plan, bench, quantize, eval. Each returns its exit
status; what cannot be done is raised and reported as one line by cli_errors.py. Engine and tool
libraries are imported inside the commands that need them.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import sys
from typing import TYPE_CHECKING

from lmgate.server.cli_errors import CliError

if TYPE_CHECKING:
    from lmgate.server.settings import ModelSettings


def run_check_config(args: argparse.Namespace) -> int:
    """0 and a summary when ``serve`` could start with the file here; 1 and one line naming every problem."""
    from lmgate.server.config_check import serving_problems
    from lmgate.server.settings import load_settings

    settings = load_settings(args.file)
    problems = [] if args.settings_only else serving_problems(settings)
    if problems:
        raise CliError(f"{args.file}: valid settings, but `lmgate serve` would fail: {'; '.join(problems)}")
    s = settings.server
    grpc = "off" if s.grpc_port is None else s.grpc_port
    print(f"{args.file}: valid. HTTP {s.host}:{s.http_port}, gRPC {grpc}, auth {'on' if s.auth_enabled else 'off'}")
    for m in settings.models:
        extra = [f"aliases {', '.join(m.aliases)}"] if m.aliases else []
        extra += [f"fallback {m.fallback}"] if m.fallback else []
        extra += ["lazy"] if m.lazy else []
        print(f"  {m.name}: {m.backend} {_replicas(m)}, {m.routing.value}, max_running {m.max_running}"
              + "".join(f", {e}" for e in extra))  # fmt: skip
    return 0


def _replicas(model: ModelSettings) -> str:
    """How many replicas a model has, as check-config says it: a count, or where they are discovered."""
    discovery = getattr(model, "discovery", None)
    if discovery is not None:
        where = discovery.kubernetes
        namespace = f"{where.namespace}/" if where.namespace else ""
        return f"(one replica per ready pod of Service {namespace}{where.service})"
    targets = getattr(model, "target", None)
    return f"x{len(targets)}" if isinstance(targets, list) else f"x{model.replicas}"


def run_plan(args: argparse.Namespace) -> int:
    """Print the estimate; exit status 1 when it does not fit in the memory available now."""
    from lmgate.backends.llamacpp import memory_plan, model_shape

    if args.model is not None:
        shape, name = args.model, args.model.name
    elif args.hf_config is not None:
        try:
            shape = model_shape.shape_from_hf_config(args.hf_config, args.quant)
        except ValueError as exc:
            raise CliError(f"--hf-config: {exc}") from exc
        name = args.hf_config.parent.name or str(args.hf_config)
    else:
        shape, name = model_shape.assumed_shape(args.params, args.quant), f"{args.params / 1e9:g}B {args.quant}"
    estimate = memory_plan.plan(shape, args.ctx, args.seqs)
    print(estimate.describe())
    available = memory_plan.available_bytes()
    try:
        memory_plan.check_fits(estimate, available, name=name)
    except MemoryError as exc:
        print(f"does not fit: {exc}")
        return 1
    print(f"fits: {available / 2**30:.1f} GiB available")
    print("plus, as cold prefixes leave the KV cache, up to cache_ram_mib of host RAM (default 1 GiB, at most half "
          "of what is available then)")  # fmt: skip
    return 0


def run_bench(args: argparse.Namespace) -> int:
    """The table, one row per concurrency level; exit status 1 when requests failed (the first reason)."""
    from lmgate.bench.client import BenchConfig, report_json, report_table, run_bench

    reports = []
    run = secrets.token_hex(2)  # distinct prompts: no run's prompt is a prefix of another run's on the server
    for c in args.concurrency:
        requests = args.requests or max(8, 4 * c)
        distinct = None if args.same_prompt else f"Run {run}, c={c}, request"
        config = BenchConfig(
            args.url, args.model, c, requests, max_tokens=args.max_tokens, distinct=distinct, varied=args.varied_lengths
        )
        reports.append(asyncio.run(run_bench(config)))
        print(report_table(reports[-1:]).splitlines()[-1] if len(reports) > 1 else report_table(reports), flush=True)
    if args.json:
        args.json.write_text(report_json(reports))
    if args.plot:
        from lmgate.bench.plot import plot_sweeps

        plot_sweeps({args.url: reports}, args.plot)
    failed = sum(r.errors for r in reports)
    if failed:
        first = next(r.first_error for r in reports if r.first_error)
        raise CliError(f"{failed} of {sum(r.requests for r in reports)} requests failed; the first: {first}")
    return 0


def run_quantize(args: argparse.Namespace) -> int:
    if args.format != "gguf":
        return _quantize_weights(args)
    from lmgate.quantize.hf_to_gguf import QuantType, convert

    out = convert(args.source, args.out, QuantType(args.type), progress=True)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB, {args.type})")
    return 0


def _quantize_weights(args: argparse.Namespace) -> int:
    """``quantize gptq|awq``: the tool's reason (QuantizeError), or what to install, when it cannot."""
    from lmgate.quantize.calibration import load_calibration
    from lmgate.quantize.weight_only import Method, Tool, quantize_weights

    calibration = load_calibration(args.calib, max_samples=args.max_samples)
    out = quantize_weights(args.source, args.out, method=Method(args.format), bits=args.bits,
                           group_size=args.group_size, calibration=calibration, tool=Tool(args.tool))  # fmt: skip
    size = sum(p.stat().st_size for p in out.glob("*.safetensors"))
    print(f"wrote {out} ({size / 1e6:.1f} MB of weights, {args.format} {args.bits}-bit, group {args.group_size})")
    return 0


def run_eval(args: argparse.Namespace) -> int:
    """The table; exit status 1 when --max-ppl-increase is given and a model goes over it."""
    from lmgate.quantize.evaluate import evaluate, gate, markdown, plot

    reports = evaluate(args.model, args.text.read_text(), max_tokens=args.max_tokens)
    table = markdown(reports)
    print(table)
    if args.markdown:
        args.markdown.write_text(table + "\n")
    if args.plot:
        plot(reports, args.plot)
    if args.max_ppl_increase is None:
        return 0
    failures = gate(reports, args.max_ppl_increase)
    for failure in failures:
        print(f"FAIL {failure}", file=sys.stderr)
    return 1 if failures else 0
