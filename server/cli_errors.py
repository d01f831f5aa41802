"""What ``lmgate`` prints when a command cannot do what was asked: one line on stderr, ``lmgate: …``,
and a non-zero exit status; the traceback only with ``--log-level debug``.

    CliError          exit 1   the command could not run: a file, a port, a server, a model
    └── UsageError    exit 2   an argument is wrong (as argparse's own errors, see OneLineParser)

Every command runs under :func:`reported`, the one place where exceptions become that line
(``explain``). Errors whose message is written for the user print it as it is: CliError, the
config's ConfigError, a GGUF file's GGUFFileError, a model's ModelLoadError, the quantize tools'
ToolError, the bench's BenchError. A missing optional package says which extra to install; an
OS error names its file; anything else prints its type and message and how to see the traceback.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Callable
from typing import NoReturn

DEBUG_HINT = "run again with --log-level debug for the traceback"


class CliError(Exception):
    """The command could not run; the message names what (the file, the port, the option) and the fix."""

    exit_code = 1


class UsageError(CliError):
    """An argument is wrong; the message names it and the value."""

    exit_code = 2


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line naming the command and pointing to its --help (exit 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def explain(exc: BaseException) -> tuple[str, int]:
    """The line to print for ``exc`` and the exit status."""
    # Imported here, on the error path only: the command's start stays light.
    from lmgate.backends.errors import ModelLoadError
    from lmgate.backends.llamacpp.gguf_file import GGUFFileError
    from lmgate.bench.client import BenchError
    from lmgate.quantize.errors import ToolError
    from lmgate.quantize.extras import missing_package_message
    from lmgate.server.settings import ConfigError

    if isinstance(exc, CliError):
        return str(exc), exc.exit_code
    if isinstance(exc, ConfigError | GGUFFileError | ModelLoadError | ToolError | BenchError):
        return str(exc), 1
    if isinstance(exc, ModuleNotFoundError) and (missing := missing_package_message(exc.name)) is not None:
        return missing, 1
    if isinstance(exc, OSError) and exc.filename is not None:
        return f"{exc.filename}: {exc.strerror or exc}", 1
    return f"unexpected {type(exc).__name__}: {exc} ({DEBUG_HINT})", 1


def reported(command: Callable[[], int | None], *, debug: bool) -> NoReturn:
    """Run ``command`` and exit with its status; an exception is one line on stderr (its traceback too,
    when ``debug``), Ctrl-C is exit status 130."""
    try:
        status = command()
    except KeyboardInterrupt:
        sys.exit(130)
    except SystemExit:
        raise
    except Exception as exc:
        message, status = explain(exc)
        if debug:
            traceback.print_exc()
        print(f"lmgate: {message}", file=sys.stderr)
        sys.exit(status)
    sys.exit(status or 0)
