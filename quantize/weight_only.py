"""``lmgate quantize gptq|awq``: an HF checkpoint to a 4/8-bit GPTQ or AWQ checkpoint.

Two maintained tools do the fitting (DESIGN §9; auto-gptq and AutoAWQ are abandoned):

- **GPTQModel** (default): writes the GPTQ and AWQ (GEMM) checkpoint formats that transformers,
  vLLM and lmgate's ``transformers`` backend load. On CPU, AWQ runs GPTQModel's torch kernel in
  bf16; ``GPTQMODEL_CPU_WORKERS`` defaults to this process's CPUs.
- **llm-compressor**: GPTQ written as compressed-tensors, vLLM's native format (transformers
  decompresses it on CPU). Its AWQ needs a GPU (it refuses to run on CPU); that is said up front.

Both take the calibration text of ``calibration.py`` and leave ``quantization.json`` (manifest.py)
next to the weights (GPTQModel also leaves its per-layer log in ``logs/`` there). GPTQ wants
input sizes that are multiples of the group size; AWQ's CPU kernel wants output sizes that are
multiples of 64: a model that does not fit gets the tool's own message.
"""

from __future__ import annotations

import contextlib
import enum
import importlib.metadata
import os
from pathlib import Path

from lmgate.quantize.calibration import Calibration
from lmgate.quantize.checkpoint import check_checkpoint
from lmgate.quantize.errors import QuantizeError
from lmgate.quantize.manifest import checkpoint_sha256, write_manifest


class Method(enum.StrEnum):
    GPTQ = "gptq"
    AWQ = "awq"


class Tool(enum.StrEnum):
    GPTQMODEL = "gptqmodel"
    LLM_COMPRESSOR = "llm-compressor"


def quantize_weights(source: Path, out: Path, *, method: Method, bits: int, group_size: int,
                     calibration: Calibration, tool: Tool = Tool.GPTQMODEL) -> Path:  # fmt: skip
    """Quantize ``source`` into the directory ``out`` (created) and write its manifest; returns ``out``.

    CheckpointError when ``source`` lacks a file; QuantizeError with the tool's reason when it fails;
    ModuleNotFoundError when the tool (or torch) is not installed."""
    check_checkpoint(source)
    if tool is Tool.LLM_COMPRESSOR and method is Method.AWQ and not _has_accelerator():
        raise QuantizeError("llm-compressor's AWQ needs a GPU; on CPU use --tool gptqmodel for AWQ")
    out.mkdir(parents=True, exist_ok=True)
    run = _with_gptqmodel if tool is Tool.GPTQMODEL else _with_llm_compressor
    try:
        fmt = run(source, out, method, bits, group_size, calibration.samples)
    except (ValueError, TypeError, NotImplementedError, RuntimeError) as exc:
        raise QuantizeError(f"{tool.value} could not quantize {source} with {method.value}: {exc}") from exc
    package = "gptqmodel" if tool is Tool.GPTQMODEL else "llmcompressor"
    write_manifest(
        out, method=method.value, bits=bits, group_size=group_size, format=fmt,
        tool={"name": tool.value, "version": importlib.metadata.version(package)},
        source={"path": str(source), "sha256": checkpoint_sha256(source)},
        calibration=calibration.describe(),
    )  # fmt: skip
    return out


def _with_gptqmodel(source: Path, out: Path, method: Method, bits: int, group_size: int, samples: list[str]) -> str:
    os.environ.setdefault("GPTQMODEL_CPU_WORKERS", str(len(os.sched_getaffinity(0))))
    import torch
    from gptqmodel import AWQConfig, GPTQConfig, GPTQModel

    source, out = source.resolve(), out.resolve()
    if method is Method.AWQ:
        model = GPTQModel.load(str(source), AWQConfig(bits=bits, group_size=group_size), dtype=torch.bfloat16,
                               device="cpu")  # fmt: skip
    else:
        model = GPTQModel.load(str(source), GPTQConfig(bits=bits, group_size=group_size), device="cpu")
    # GPTQModel writes its per-layer log (loss, damping, time per module) to ./logs: keep it with the output.
    with contextlib.chdir(out):
        model.quantize(samples, batch_size=4, backend="awq_torch" if method is Method.AWQ else "auto")
    model.save(str(out))
    return "gptq" if method is Method.GPTQ else "awq-gemm"


def _with_llm_compressor(source: Path, out: Path, method: Method, bits: int, group_size: int,
                         samples: list[str]) -> str:  # fmt: skip
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.awq import AWQModifier
    from llmcompressor.modifiers.quantization import GPTQModifier
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source)
    model = AutoModelForCausalLM.from_pretrained(source, dtype="auto")
    max_len = 512
    data = Dataset.from_dict({"text": samples}).map(
        lambda row: tokenizer(row["text"], truncation=True, max_length=max_len), remove_columns=["text"]
    )
    weights = {"num_bits": bits, "type": "int", "strategy": "group", "group_size": group_size,
               "symmetric": method is Method.GPTQ}  # fmt: skip
    groups = {"group_0": {"targets": ["Linear"], "weights": weights}}
    modifier_class = GPTQModifier if method is Method.GPTQ else AWQModifier
    recipe = modifier_class(config_groups=groups, ignore=["lm_head"])
    oneshot(model=model, dataset=data, recipe=recipe, max_seq_length=max_len, num_calibration_samples=len(samples))
    model.save_pretrained(out, save_compressed=True)
    tokenizer.save_pretrained(out)
    return "compressed-tensors"


def _has_accelerator() -> bool:
    import torch

    return torch.cuda.is_available()
