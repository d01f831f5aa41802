"""The ``lmgate`` command: what each subcommand accepts. What they do is in cli_serve.py (serve) and
cli_tools.py (the one-shot commands); how they fail is in cli_errors.py.

    lmgate serve                                              # the embedded model (models/tiny-chat.gguf)
    lmgate serve --model models/tiny-chat.gguf                # one GGUF, no config file
    lmgate serve --config lmgate.yaml [--host H] [--port P] [--grpc-port G | --no-grpc]
    lmgate check-config lmgate.yaml                           # validate a config file: can it serve?
    lmgate plan --model FILE.gguf --ctx 8192 --seqs 8         # memory estimate before serving
    lmgate plan --params 7B --quant q4_k_m --ctx 8192 --seqs 4     # ... of a model you do not have yet
    lmgate bench --url http://127.0.0.1:8000 -c 1 4 8         # concurrent streaming benchmark
    lmgate quantize gguf --from HF_DIR --type q4_k_m --out m.gguf
    lmgate quantize gptq --from HF_DIR --bits 4 --group-size 128 --calib builtin --out m-gptq/
    lmgate eval --model m-f16.gguf --model m-q4_k_m.gguf --text held-out.txt --max-ppl-increase 5%

Flags override the config file's ``server`` section; ``--model`` builds a one-model config whose
name is taken from the file (and which answers to ``default`` as well). Every error is one line
(``lmgate: …``) and a non-zero exit status; ``--log-level debug`` adds the traceback.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import platform
from pathlib import Path

from lmgate.backends.llamacpp.config import LlamaCppConfig, default_threads
from lmgate.backends.llamacpp.model_shape import QUANTS, parse_params
from lmgate.quantize.checkpoint import GGUF_ARCHITECTURES
from lmgate.server import cli_serve, cli_tools
from lmgate.server.cli_errors import OneLineParser, reported
from lmgate.server.settings import ServerSettings


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    reported(lambda: args.run(args), debug=args.log_level == "debug")


def version() -> str:
    def of(package: str) -> str:
        try:
            return importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"

    return f"lmgate {of('lmgate')} (llama-cpp-python {of('llama_cpp_python')}, Python {platform.python_version()})"


def build_parser() -> argparse.ArgumentParser:
    common = OneLineParser(add_help=False)
    common.add_argument("--log-level", choices=["debug", "info", "warning", "error"],
                        help="debug also prints the traceback of an error (serve: default info)")  # fmt: skip
    parser = OneLineParser(prog="lmgate", description="LLM serving gateway: OpenAI HTTP and gRPC APIs")
    parser.add_argument("--version", action="version", version=version())
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str, run: object, *, leaf: bool = True) -> OneLineParser:
        sub = commands.add_parser(name, help=help, description=help, parents=[common] if leaf else [])
        sub.set_defaults(run=run)
        return sub

    _serve_arguments(command("serve", "serve models over the OpenAI HTTP API and gRPC", cli_serve.run_serve))
    check = command("check-config", "validate a YAML config file: can `serve` serve it?", cli_tools.run_check_config)
    check.add_argument("file", type=Path)
    check.add_argument(
        "--settings-only",
        action="store_true",
        help="validate the settings only, not the files "
        "and environment variables they name (a config meant for another machine or an image)",
    )
    _plan_arguments(command("plan", "estimate the memory a model needs before serving it", cli_tools.run_plan))
    _bench_arguments(command("bench", "measure an OpenAI-compatible server with concurrent streams",
                             cli_tools.run_bench))  # fmt: skip
    quantize = command("quantize", "convert and quantize models", cli_tools.run_quantize, leaf=False)
    _quantize_arguments(quantize.add_subparsers(dest="format", required=True, metavar="FORMAT"), common)
    _eval_arguments(command("eval", "perplexity, KL, top-1 agreement, size and speed of GGUF files and HF "
                            "checkpoints", cli_tools.run_eval))  # fmt: skip
    return parser


def _serve_arguments(serve: argparse.ArgumentParser) -> None:
    fields, server = LlamaCppConfig.model_fields, ServerSettings.model_fields
    source = serve.add_mutually_exclusive_group()
    source.add_argument("--config", type=Path, help="YAML config file (docs/configuration.md)")
    source.add_argument("--model", type=Path, help="serve one GGUF file with default settings "
                        "(default: the embedded models/tiny-chat.gguf, in a checkout)")  # fmt: skip
    serve.add_argument("--host", help=f"bind address (default {server['host'].default})")
    serve.add_argument("--port", type=port, help=f"HTTP port (default {server['http_port'].default}; 0: any free)")
    grpc = serve.add_mutually_exclusive_group()
    grpc.add_argument("--grpc-port", type=port, help=f"gRPC port (default {server['grpc_port'].default}; 0: any free)")
    grpc.add_argument("--no-grpc", action="store_true", help="do not serve gRPC")
    serve.add_argument("--threads", type=positive_int, help=f"with --model: llama.cpp threads (default: the CPUs "
                       f"this process may use, at most its CPU quota: {default_threads()} here)")  # fmt: skip
    serve.add_argument("--n-ctx", type=positive_int, help="with --model: KV-cache cells of all sequences together "
                       "(default: the model's trained context, at most 4096)")  # fmt: skip
    serve.add_argument("--max-model-len", type=positive_int, help="with --model: the longest prompt + output of one "
                       "sequence (default: n-ctx); at most n-ctx / max-seqs gives each sequence a KV stream of its "
                       "own, faster under concurrency (docs/performance.md#per-sequence-kv-streams)")  # fmt: skip
    serve.add_argument(
        "--max-seqs",
        type=positive_int,
        help=f"with --model: sequences decoded together (default {fields['max_seqs'].default})",
    )
    serve.add_argument("--no-prefix-cache", action="store_true", help="with --model: recompute every prompt")
    serve.add_argument(
        "--lora",
        action="append",
        metavar="[NAME=]PATH",
        help="with --model: also serve this GGUF LoRA adapter as model NAME (default: from the file name); "
        "repeatable (docs/lora.md)",
    )


def _plan_arguments(plan: argparse.ArgumentParser) -> None:
    source = plan.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", type=Path, help="a GGUF file: its header gives the shape and the weights")
    source.add_argument("--hf-config", type=Path, help="an HF config.json: the shape, and the weights at --quant")
    params_help = ("a parameter count (7B, 0.5B, 350M): weights at --quant, the KV cache of an assumed "
                   "Llama-like shape of that size (named in the output)")  # fmt: skip
    source.add_argument("--params", type=param_count, help=params_help)
    plan.add_argument(
        "--quant",
        choices=list(QUANTS),
        default="f16",
        help="with --params / --hf-config: the GGUF type the weights are stored in (default f16)",
    )
    plan.add_argument("--ctx", type=positive_int, default=4096, help="KV-cache cells (context; default 4096)")
    plan.add_argument("--seqs", type=positive_int, default=8, help="sequences decoded together (default 8)")


def _bench_arguments(bench: argparse.ArgumentParser) -> None:
    bench.add_argument("--url", default="http://127.0.0.1:8000", help="server base URL, without /v1")
    bench.add_argument("--model", default="default", help="the model name to ask for (default: default)")
    bench.add_argument("-c", "--concurrency", type=positive_int, nargs="+", default=[1, 2, 4, 8, 16])
    bench.add_argument("--requests", type=positive_int, help="per concurrency level (default 4 x c, at least 8)")
    bench.add_argument("--max-tokens", type=positive_int, default=64)
    bench.add_argument(
        "--same-prompt", action="store_true", help="every request sends the same prompt (default: distinct prompts)"
    )
    bench.add_argument(
        "--varied-lengths",
        action="store_true",
        help="request i asks for its own output length, max-tokens/8 to 2 x max-tokens (default: all max-tokens)",
    )
    bench.add_argument("--json", type=Path, help="also write the reports as JSON")
    bench.add_argument("--plot", type=Path, help="also write a PNG plot (needs the `bench` extra: matplotlib)")


def _quantize_arguments(formats: argparse._SubParsersAction[OneLineParser], common: OneLineParser) -> None:
    source_help = "local HF checkpoint directory: config.json, *.safetensors, tokenizer.json (docs/quantize.md)"
    architectures = ", ".join(name.removesuffix("ForCausalLM") for name in GGUF_ARCHITECTURES)
    what = f"an HF checkpoint ({architectures}) to a GGUF file"
    to_gguf = formats.add_parser("gguf", help=what, description=what, parents=[common])
    to_gguf.add_argument("--from", dest="source", type=Path, required=True, help=source_help)
    to_gguf.add_argument("--type", default="q8_0", choices=["f32", "f16", "q8_0", "q6_k", "q5_k_m", "q4_k_m"])
    to_gguf.add_argument("--out", type=Path, required=True)
    for method in ("gptq", "awq"):
        what = f"an HF checkpoint to a {method.upper()} checkpoint directory (needs the quantize extra and torch)"
        weights = formats.add_parser(method, help=what, description=what, parents=[common])
        weights.add_argument("--from", dest="source", type=Path, required=True, help=source_help)
        weights.add_argument("--bits", type=int, default=4, choices=[4, 8])
        weights.add_argument("--group-size", type=positive_int, default=128)
        weights.add_argument("--calib", default="builtin", help="text file (a sample per line, or .jsonl with "
                             "`text`) or `builtin` (lmgate's generated English corpus)")  # fmt: skip
        weights.add_argument("--max-samples", type=positive_int, help="use at most this many calibration samples")
        weights.add_argument("--tool", default="gptqmodel", choices=["gptqmodel", "llm-compressor"],
                             help="gptqmodel: GPTQ/AWQ formats; llm-compressor: compressed-tensors")  # fmt: skip
        weights.add_argument("--out", type=Path, required=True, help="output directory")


def _eval_arguments(evaluate: argparse.ArgumentParser) -> None:
    evaluate.add_argument(
        "--model",
        type=Path,
        action="append",
        required=True,
        help="a GGUF file or an HF checkpoint directory; repeat; the first is the reference",
    )
    evaluate.add_argument("--text", type=readable_file, required=True, help="held-out text to measure on")
    evaluate.add_argument("--max-tokens", type=positive_int, default=4096)
    evaluate.add_argument("--max-ppl-increase", type=percent, help="fail when a model's perplexity is more than "
                          "this over the reference's, e.g. 5%%")  # fmt: skip
    evaluate.add_argument("--markdown", type=Path, help="also write the table here")
    evaluate.add_argument("--plot", type=Path, help="also write a PNG (needs the bench extra: matplotlib)")


# --- argument types: a wrong value is argparse's one-line usage error (exit status 2) ---


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 0 to 65535, got {value}")
    return value


def percent(text: str) -> float:
    """``5%`` or ``5`` → 0.05."""
    try:
        value = float(text.strip().removesuffix("%"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a percentage such as 5%%, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {text!r}")
    return value / 100


def param_count(text: str) -> int:
    try:
        return parse_params(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def readable_file(text: str) -> Path:
    path = Path(text)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"{path}: {'is a directory' if path.is_dir() else 'no such file'}")
    return path


if __name__ == "__main__":
    main()
