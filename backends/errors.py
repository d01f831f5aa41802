"""Errors a backend raises for a request it cannot serve.

The server translates them into its own tree (server/errors.py) in one place; backends never
import the server. Each names the request field at fault, so the client learns what to fix.
"""

from __future__ import annotations


class BackendError(Exception):
    """Base of every error a backend raises on purpose."""


class InvalidRequest(BackendError):
    """The request is well-formed but this model cannot serve it as asked (a client error).

    ``param`` names the request field at fault; ``code`` is a stable machine-readable reason
    (e.g. ``context_length_exceeded``).
    """

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


class BackendUnavailable(BackendError):
    """The backend is not loaded, is stopping or has failed; the request may be retried later."""


class ModelLoadError(BackendUnavailable):
    """The model cannot be loaded as configured: its file is missing or corrupt, it does not fit in
    memory, a setting is out of range for it, or the engine's build is unsafe on this CPU. Retrying
    will not help until the configuration or the machine changes."""
