"""The quantize package's errors, drawn in one place. Each message is written for the person who ran
``lmgate quantize`` or ``lmgate eval``: it names the file or the option, what is wrong and what to do.

    ToolError                          a quantize/eval command cannot do what was asked
    ├── CheckpointError (ValueError)   an HF checkpoint directory lacks a file (checkpoint.py)
    │   └── UnsupportedModel           an architecture or tokenizer the GGUF converter does not handle
    ├── CalibrationError (ValueError)  the calibration text cannot be read or is empty
    ├── QuantizeError (RuntimeError)   GPTQModel / llm-compressor failed on this checkpoint (their reason)
    └── EvalError (ValueError)         the models cannot be compared (different tokenizers)

The ``lmgate`` command prints them as one line (server/cli_errors.py). A missing optional package
is a ``ModuleNotFoundError`` where it is imported, turned into what to install by extras.py.
"""

from __future__ import annotations


class ToolError(Exception):
    """A quantize or eval command cannot do what was asked; the message says why and what to do."""


class CheckpointError(ToolError, ValueError):
    """The directory is not an HF checkpoint lmgate can read; the message says what is missing."""


class UnsupportedModel(CheckpointError):
    """The checkpoint is not one this converter handles; the message says what is."""


class CalibrationError(ToolError, ValueError):
    """The calibration set cannot be read or is empty; the message names the file."""


class QuantizeError(ToolError, RuntimeError):
    """The tool could not quantize this checkpoint; the message carries its reason."""


class EvalError(ToolError, ValueError):
    """The models given to ``lmgate eval`` cannot be measured against each other."""
