"""Secrets named by settings as environment variables (API keys): why a variable holds none."""

from __future__ import annotations

import os


def why_no_secret(variable: str | None) -> str | None:
    """None when ``variable`` holds a value (blanks aside) or is None (no secret asked for); else a
    phrase saying it is unset or empty."""
    if variable is None or os.environ.get(variable, "").strip():
        return None
    return f"the environment variable {variable} {'is empty' if variable in os.environ else 'is not set'}"
