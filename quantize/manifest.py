"""``quantization.json``: what a quantized checkpoint was made from and how.

Written next to the weights by ``lmgate quantize gptq|awq``: the method, bits, group size, the tool
and its version, the calibration set (source, size, hash) and a hash of the source checkpoint, so
a model registry can tell two quantizations apart and trace one back to its inputs.
"""

from __future__ import annotations

import datetime
import hashlib
import json
from pathlib import Path
from typing import Any

MANIFEST = "quantization.json"
_HASHED = ("*.safetensors", "*.bin", "config.json", "tokenizer.json", "tokenizer.model", "tokenizer_config.json")


def checkpoint_sha256(directory: Path) -> str:
    """One SHA-256 over the weights, config and tokenizer files of ``directory`` (names and bytes, sorted)."""
    digest = hashlib.sha256()
    files = sorted({p for pattern in _HASHED for p in directory.glob(pattern) if p.is_file()})
    for path in files:
        digest.update(path.name.encode() + b"\0")
        with path.open("rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


def write_manifest(out: Path, **fields: Any) -> Path:
    """Write ``fields`` plus the creation time to ``out/quantization.json``."""
    path = out / MANIFEST
    body = {**fields, "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")}
    path.write_text(json.dumps(body, indent=2) + "\n")
    return path


def read_manifest(directory: Path) -> dict[str, Any]:
    return json.loads((directory / MANIFEST).read_text())
