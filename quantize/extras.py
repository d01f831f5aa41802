"""Which pip extra of lmgate brings an optional Python package, and the one-line fix when it is missing.

The core install serves GGUF models; torch, transformers, GPTQModel, llm-compressor, safetensors,
tokenizers, matplotlib and vLLM come with extras (pyproject.toml). A command that needs one of them
imports it where it is used; when that import fails, :func:`missing_package_message` turns the
``ModuleNotFoundError`` into what to install. The ``lmgate`` command does this for every
subcommand (server/cli_errors.py); the module scripts (``python -m lmgate.quantize.gguf_to_hf``)
run under :func:`run_script`. Stdlib only: it must import where the extras are missing.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

CPU_TORCH = "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"
"""The CPU build of torch the quantize and transformers tiers are tested with."""

EXTRAS: dict[str, str] = {
    "safetensors": "quantize",
    "tokenizers": "quantize",
    "llmcompressor": "quantize",
    "compressed_tensors": "quantize",
    "datasets": "quantize",
    "transformers": "transformers",
    "accelerate": "transformers",
    "optimum": "transformers",
    "gptqmodel": "transformers",
    "matplotlib": "bench",
    "vllm": "vllm",
    "sentencepiece": "model",
}
"""Top-level module → the extra that installs it (torch is separate: its CPU build comes first)."""


def missing_package_message(module: str | None) -> str | None:
    """What to install when importing ``module`` failed; None for a module no extra provides."""
    top = (module or "").split(".")[0]
    if top == "torch":
        return (
            f"this needs torch, which is not installed: {CPU_TORCH}, then pip install 'lmgate[quantize]' "
            "(docs/quantize.md)"
        )
    extra = EXTRAS.get(top)
    if extra is None:
        return None
    torch_first = f" (install the CPU torch first: {CPU_TORCH})" if extra in ("quantize", "transformers") else ""
    return (
        f"this needs the Python package `{top}`, which is not installed: pip install 'lmgate[{extra}]' "
        f"(in a checkout: pip install -e '.[{extra}]'){torch_first}"
    )


def run_script(prog: str, main: Callable[[], object]) -> None:
    """Run a module script's ``main``; a missing extra or a missing file is one line and exit status 1."""
    try:
        main()
    except ModuleNotFoundError as exc:
        message = missing_package_message(exc.name)
        if message is None:
            raise
        sys.exit(f"{prog}: {message}")
    except (FileNotFoundError, ValueError) as exc:
        # The scripts' own errors (a checkpoint without config.json, a GGUF that is no GGUF) name the file.
        sys.exit(f"{prog}: {exc}")
