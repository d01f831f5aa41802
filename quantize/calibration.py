"""Calibration text for GPTQ and AWQ: a file of the user's, or lmgate's built-in set.

GPTQ and AWQ fit the quantized weights to the activations of sample text, so the text should look
like what the model will serve. ``builtin`` is the project's generated English corpus (the one the
embedded chat model learned from): enough for small models and tests, offline by construction;
real deployments pass a file of their own traffic. A file holds one sample per non-empty line, or
``.jsonl`` records with a ``text`` field.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from lmgate.quantize.errors import CalibrationError
from lmgate.quantize.tinychat.corpus import plain_text

BUILTIN = "builtin"
BUILTIN_SAMPLES = 256
BUILTIN_SEED = 20251125


@dataclass(frozen=True)
class Calibration:
    samples: list[str]
    source: str
    """``builtin`` or the file's path."""
    sha256: str
    """Of the samples joined by newlines: the manifest's proof of what the weights were fitted to."""

    def describe(self) -> dict[str, object]:
        return {"source": self.source, "samples": len(self.samples), "sha256": self.sha256}


def load_calibration(spec: str, *, max_samples: int | None = None) -> Calibration:
    """``builtin`` or a path; raises ``CalibrationError`` for an empty or unreadable set."""
    if spec == BUILTIN:
        samples = plain_text(seed=BUILTIN_SEED, count=BUILTIN_SAMPLES)
    else:
        path = Path(spec)
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise CalibrationError(f"--calib: cannot read {path}: {exc.strerror} (a text file, or `builtin`)") from exc
        except UnicodeDecodeError as exc:
            raise CalibrationError(f"--calib: {path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
        if path.suffix == ".jsonl":
            samples = [_jsonl_text(path, number, line) for number, line in enumerate(lines, 1) if line.strip()]
        else:
            samples = [line for line in lines if line.strip()]
    samples = samples[:max_samples] if max_samples else samples
    if not samples:
        raise CalibrationError(f"--calib: the calibration set {spec!r} has no text")
    digest = hashlib.sha256("\n".join(samples).encode()).hexdigest()
    return Calibration(samples, spec, digest)


def _jsonl_text(path: Path, number: int, line: str) -> str:
    try:
        return str(json.loads(line)["text"])
    except (ValueError, KeyError, TypeError) as exc:
        raise CalibrationError(f"--calib: {path} line {number} is not a JSON object with a `text` field") from exc
