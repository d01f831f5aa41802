"""What an HF checkpoint directory must hold before lmgate converts, quantizes or evaluates it.

``lmgate quantize gguf|gptq|awq --from DIR`` and ``lmgate eval --model DIR`` read a Hugging Face
checkpoint from a local directory (there is no model hub here): ``config.json``, the weights as
``*.safetensors`` and the tokenizer (``tokenizer.json``). :func:`check_checkpoint` says which of
them is missing and where to get a checkpoint (docs/quantize.md, "Getting an HF checkpoint").
Stdlib only.
"""

from __future__ import annotations

from pathlib import Path

from lmgate.quantize.errors import CheckpointError

GET_ONE = "docs/quantize.md, 'Getting an HF checkpoint'"
GGUF_ARCHITECTURES = {"LlamaForCausalLM": "llama", "MistralForCausalLM": "llama", "Qwen2ForCausalLM": "qwen2"}
"""HF architecture → llama.cpp architecture: what ``lmgate quantize gguf`` converts (hf_to_gguf.py)."""


def check_checkpoint(source: Path, *, tokenizer: bool = True) -> None:
    """Raise CheckpointError naming the first thing ``source`` lacks: the directory, config.json,
    the safetensors weights, or (with ``tokenizer``) tokenizer.json."""
    if not source.exists():
        raise CheckpointError(f"{source}: no such directory (an HF checkpoint directory is expected: {GET_ONE})")
    if not source.is_dir():
        kind = "a GGUF file, which is already converted" if source.suffix == ".gguf" else "a file"
        raise CheckpointError(f"{source} is {kind}, not an HF checkpoint directory ({GET_ONE})")
    if not (source / "config.json").is_file():
        raise CheckpointError(f"{source} is not an HF checkpoint directory: it has no config.json ({GET_ONE})")
    if not any(source.glob("*.safetensors")):
        bins = " (it has PyTorch *.bin weights: save them as safetensors)" if any(source.glob("*.bin")) else ""
        raise CheckpointError(f"{source} has no *.safetensors weights{bins} ({GET_ONE})")
    if tokenizer and not (source / "tokenizer.json").is_file():
        raise CheckpointError(
            f"{source} has no tokenizer.json (a fast tokenizer, as transformers saves it) ({GET_ONE})"
        )
