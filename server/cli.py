"""The ``lmgate`` command.

    lmgate serve --model models/tiny-chat.gguf            # one GGUF, no config file
    lmgate serve --config lmgate.yaml [--host H] [--port P] [--grpc-port G | --no-grpc]
    lmgate check-config lmgate.yaml                           # validate a config file
    lmgate plan --model FILE.gguf --ctx 8192 --seqs 8         # memory estimate before serving
    lmgate bench --url http://127.0.0.1:8000 -c 1 4 8         # concurrent streaming benchmark
    lmgate quantize gguf --from HF_DIR --type q4_k_m --out m.gguf
    lmgate quantize gptq --from HF_DIR --bits 4 --group-size 128 --calib builtin --out m-gptq/
    lmgate eval --model m-f16.gguf --model m-q4_k_m.gguf --text held-out.txt --max-ppl-increase 5%

Flags override the config file's ``server`` section; ``--model`` builds a one-model config whose
name is taken from the file (and which answers to ``default`` as well).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import socket
import sys
from pathlib import Path
from types import FrameType

import uvicorn

from lmgate.server.drain import Drain
from lmgate.server.http_protocol import http_protocol
from lmgate.server.settings import (
    ConfigError,
    Settings,
    load_settings,
    model_name_from_path,
    read_config_file,
    validate_settings,
)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="lmgate", description="LLM serving gateway")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve models over the OpenAI HTTP API")
    source = serve.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", type=Path, help="YAML config file (see docs/configuration.md)")
    source.add_argument("--model", type=Path, help="serve one GGUF file with default settings")
    serve.add_argument("--host", help="bind address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="HTTP port (default 8000)")
    grpc_flags = serve.add_mutually_exclusive_group()
    grpc_flags.add_argument("--grpc-port", type=int, help="gRPC port (default 50051; 0: any free port)")
    grpc_flags.add_argument("--no-grpc", action="store_true", help="do not serve gRPC")
    serve.add_argument("--threads", type=int, help="with --model: llama.cpp threads")
    serve.add_argument("--n-ctx", type=int, help="with --model: KV-cache cells / context length")
    serve.add_argument("--max-seqs", type=int, help="with --model: sequences decoded together")
    serve.add_argument("--no-prefix-cache", action="store_true", help="with --model: recompute every prompt")
    serve.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    quantize = commands.add_parser("quantize", help="convert and quantize models")
    formats = quantize.add_subparsers(dest="format", required=True)
    to_gguf = formats.add_parser("gguf", help="an HF checkpoint (Llama, Mistral) to a GGUF file")
    to_gguf.add_argument("--from", dest="source", type=Path, required=True, help="HF checkpoint directory")
    to_gguf.add_argument("--type", default="q8_0", choices=["f32", "f16", "q8_0", "q6_k", "q5_k_m", "q4_k_m"])
    to_gguf.add_argument("--out", type=Path, required=True)
    for method in ("gptq", "awq"):
        weights = formats.add_parser(method, help=f"an HF checkpoint to a {method.upper()} checkpoint directory")
        weights.add_argument("--from", dest="source", type=Path, required=True, help="HF checkpoint directory")
        weights.add_argument("--bits", type=int, default=4, choices=[4, 8])
        weights.add_argument("--group-size", type=int, default=128)
        weights.add_argument("--calib", default="builtin", help="text file (a sample per line, or .jsonl with "
                             "`text`) or `builtin` (lmgate's generated English corpus)")  # fmt: skip
        weights.add_argument("--max-samples", type=int, help="use at most this many calibration samples")
        weights.add_argument("--tool", default="gptqmodel", choices=["gptqmodel", "llm-compressor"],
                             help="gptqmodel: GPTQ/AWQ formats; llm-compressor: compressed-tensors")  # fmt: skip
        weights.add_argument("--out", type=Path, required=True, help="output directory")
    evaluate = commands.add_parser(
        "eval", help="perplexity, KL, top-1 agreement, size and speed of GGUF files and HF checkpoints"
    )
    evaluate.add_argument(
        "--model", type=Path, action="append", required=True, help="repeat; the first is the reference"
    )
    evaluate.add_argument("--text", type=Path, required=True, help="held-out text to measure on")
    evaluate.add_argument("--max-tokens", type=int, default=4096)
    evaluate.add_argument("--max-ppl-increase", help="fail when a model's perplexity is more than this over the "
                          "reference's, e.g. 5%%")  # fmt: skip
    evaluate.add_argument("--markdown", type=Path, help="also write the table here")
    evaluate.add_argument("--plot", type=Path, help="also write a PNG (needs the bench extra: matplotlib)")
    check = commands.add_parser("check-config", help="validate a YAML config file and summarise it")
    check.add_argument("file", type=Path)
    plan = commands.add_parser("plan", help="estimate the memory a GGUF model needs before serving it")
    plan.add_argument("--model", type=Path, required=True, help="GGUF file")
    plan.add_argument("--ctx", type=int, default=4096, help="KV-cache cells (context)")
    plan.add_argument("--seqs", type=int, default=8, help="sequences decoded together")
    bench = commands.add_parser("bench", help="measure an OpenAI-compatible server with concurrent streams")
    bench.add_argument("--url", default="http://127.0.0.1:8000", help="server base URL (without /v1)")
    bench.add_argument("--model", default="default")
    bench.add_argument("-c", "--concurrency", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    bench.add_argument("--requests", type=int, default=0, help="per concurrency level (default 4 x c, at least 8)")
    bench.add_argument("--max-tokens", type=int, default=64)
    bench.add_argument("--json", type=Path, help="also write the reports as JSON")
    bench.add_argument("--plot", type=Path, help="also write a PNG plot (needs the `bench` extra: matplotlib)")
    args = parser.parse_args(argv)
    if args.command == "bench":
        run_bench_command(args)
        return
    if args.command == "plan":
        sys.exit(run_plan_command(args))
    if args.command == "check-config":
        sys.exit(run_check_config(args.file))
    if args.command == "quantize":
        sys.exit(run_quantize(args))
    if args.command == "eval":
        sys.exit(run_eval(args))

    try:
        serve_forever(settings_from_args(args))
    except ConfigError as exc:
        sys.exit(f"lmgate: {exc}")


def settings_from_args(args: argparse.Namespace) -> Settings:
    if args.config is not None:
        raw = read_config_file(args.config)
    else:
        model: dict[str, object] = {
            "name": model_name_from_path(args.model),
            "aliases": ["default"],
            "backend": "llamacpp",
            "gguf": str(args.model),
        }
        for flag, key in (("threads", "n_threads"), ("n_ctx", "n_ctx"), ("max_seqs", "max_seqs")):
            if getattr(args, flag) is not None:
                model[key] = getattr(args, flag)
        if args.no_prefix_cache:
            model["prefix_cache"] = False
        raw = {"models": [model]}
    server = raw.setdefault("server", {})
    for flag, key in (("host", "host"), ("port", "http_port"), ("grpc_port", "grpc_port"), ("log_level", "log_level")):
        if getattr(args, flag) is not None:
            server[key] = getattr(args, flag)
    if args.no_grpc:
        server["grpc_port"] = None
    return validate_settings(raw, source=str(args.config or "command line"))


def run_quantize(args: argparse.Namespace) -> int:
    if args.format != "gguf":
        return run_quantize_weights(args)
    from lmgate.quantize.hf_to_gguf import QuantType, UnsupportedModel, convert

    try:
        out = convert(args.source, args.out, QuantType(args.type), progress=True)
    except (UnsupportedModel, FileNotFoundError) as exc:
        print(f"lmgate: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB, {args.type})")
    return 0


def run_quantize_weights(args: argparse.Namespace) -> int:
    """``quantize gptq|awq``: exit status 1 with the tool's reason when it cannot."""
    try:
        from lmgate.quantize.calibration import load_calibration
        from lmgate.quantize.weight_only import Method, QuantizeError, Tool, quantize_weights
    except ImportError as exc:
        print(f"lmgate: {exc.name} is missing: pip install 'lmgate[quantize]'", file=sys.stderr)
        return 1
    try:
        calibration = load_calibration(args.calib, max_samples=args.max_samples)
        out = quantize_weights(args.source, args.out, method=Method(args.format), bits=args.bits,
                               group_size=args.group_size, calibration=calibration, tool=Tool(args.tool))  # fmt: skip
    except (ValueError, FileNotFoundError, QuantizeError, ImportError) as exc:
        print(f"lmgate: {exc}", file=sys.stderr)
        return 1
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
    failures = gate(reports, float(args.max_ppl_increase.rstrip("%")) / 100)
    for failure in failures:
        print(f"FAIL {failure}", file=sys.stderr)
    return 1 if failures else 0


def run_check_config(path: Path) -> int:
    """Exit status 0 and a summary for a valid file; 1 and a one-line error naming the field otherwise."""
    try:
        settings = load_settings(path)
    except ConfigError as exc:
        print(f"lmgate: {exc}", file=sys.stderr)
        return 1
    s = settings.server
    grpc = "off" if s.grpc_port is None else s.grpc_port
    print(f"{path}: valid. HTTP {s.host}:{s.http_port}, gRPC {grpc}, auth {'on' if s.auth_enabled else 'off'}")
    for m in settings.models:
        extra = [f"aliases {', '.join(m.aliases)}"] if m.aliases else []
        extra += [f"fallback {m.fallback}"] if m.fallback else []
        extra += ["lazy"] if m.lazy else []
        print(f"  {m.name}: {m.backend} x{m.replicas}, {m.routing.value}, max_running {m.max_running}"
              + "".join(f", {e}" for e in extra))  # fmt: skip
    return 0


def run_plan_command(args: argparse.Namespace) -> int:
    """Print the estimate; exit status 1 when it does not fit in the memory available now."""
    from lmgate.backends.llamacpp import memory_plan

    try:
        estimate = memory_plan.plan(args.model, args.ctx, args.seqs)
    except (OSError, ValueError) as exc:
        print(f"lmgate: cannot read {args.model}: {exc}", file=sys.stderr)
        return 2
    print(estimate.describe())
    available = memory_plan.available_bytes()
    try:
        memory_plan.check_fits(estimate, available, name=args.model.name)
    except MemoryError as exc:
        print(f"does not fit: {exc}")
        return 1
    print(f"fits: {available / 2**30:.1f} GiB available")
    return 0


def run_bench_command(args: argparse.Namespace) -> None:
    import asyncio

    from lmgate.server.bench import BenchConfig, report_json, report_table, run_bench

    reports = []
    for c in args.concurrency:
        requests = args.requests or max(8, 4 * c)
        config = BenchConfig(args.url, args.model, c, requests, max_tokens=args.max_tokens)
        reports.append(asyncio.run(run_bench(config)))
        print(report_table(reports[-1:]).splitlines()[-1] if len(reports) > 1 else report_table(reports), flush=True)
    if args.json:
        args.json.write_text(report_json(reports))
    if args.plot:
        from lmgate.server.bench_plot import plot_sweeps

        plot_sweeps({args.url: reports}, args.plot)


def serve_forever(settings: Settings) -> None:
    from lmgate.server.app import create_app

    level = settings.server.log_level
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # One JSON line per request on stdout (server/metrics.py), instead of uvicorn's access log.
    access = logging.getLogger("lmgate.access")
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    access.addHandler(handler)
    access.propagate = False
    server: DrainingServer | None = None

    def fatal(reason: str) -> None:  # no model can ever load: stop, and exit non-zero below
        assert server is not None
        server.fatal = reason
        server.should_exit = True

    app = create_app(settings, on_fatal=fatal)
    config = uvicorn.Config(
        app,
        host=settings.server.host,
        port=settings.server.http_port,
        log_level=level,
        access_log=False,
        http=http_protocol(settings.server.header_timeout_s),
        # The drain (DrainingServer) already waited for in-flight requests: don't wait a second time.
        timeout_graceful_shutdown=1,
    )
    server = DrainingServer(config, app.state.drain)
    server.run()
    if server.fatal is not None:
        sys.exit(f"lmgate: cannot serve: {server.fatal}")


class DrainingServer(uvicorn.Server):
    """uvicorn, but the first SIGTERM / SIGINT drains (server/drain.py) before exiting; a second
    one exits at once."""

    def __init__(self, config: uvicorn.Config, drain: Drain) -> None:
        super().__init__(config)
        self._drain = drain
        self._loop: asyncio.AbstractEventLoop | None = None
        self._draining = False
        self.fatal: str | None = None
        """Why the server stopped on its own (no model can load), if it did."""

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().startup(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._draining or self._loop is None:
            super().handle_exit(sig, frame)
            return
        self._draining = True
        self._captured_signals.append(sig)  # re-raised after shutdown, as uvicorn does
        self._loop.call_soon_threadsafe(lambda: asyncio.ensure_future(self._drain_then_exit()))

    async def _drain_then_exit(self) -> None:
        await self._drain.run()
        self.should_exit = True


if __name__ == "__main__":
    main()
