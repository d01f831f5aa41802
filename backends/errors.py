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


QUOTE_LIMIT = 60
"""Characters of a string value an error message quotes."""


def quote_value(value: object) -> str:
    """A value as an error message shows it: short scalars as written, long text cut, containers by their
    size and keys only (a message list, a tool definition or a prompt is never copied into an error)."""
    if isinstance(value, bytes | bytearray):
        return f"{len(value)} bytes that are not a JSON object"
    if isinstance(value, dict):
        keys = [str(k)[:20] for k in list(value)[:6]]
        return f"an object with keys {', '.join(keys)}{', ...' if len(value) > 6 else ''}" if keys else "{}"
    if isinstance(value, list | tuple):
        return f"a list of {len(value)} item{'s' if len(value) != 1 else ''}"
    if isinstance(value, str) and len(value) > QUOTE_LIMIT:
        return f"{value[:QUOTE_LIMIT]!r}... ({len(value)} characters)"
    text = repr(value)
    return text if len(text) <= QUOTE_LIMIT else f"{text[:QUOTE_LIMIT]}..."


def field_problem(param: str | None, rule: str, value: object, *, quoted: bool = True, more: int = 0) -> str:
    """The one wording of a request's bad value, over both transports: ``field: rule (got value)``,
    and how many more problems the request has."""
    got = f" (got {quote_value(value)})" if quoted else ""
    extra = f" ({more} more problem(s))" if more > 0 else ""
    return f"{param or 'body'}: {rule}{got}{extra}"
