"""Delays between retries of something that keeps failing: an engine process, a model's load.

Pure policy (no clock, no sleeping): the caller says when it failed and when it came up, and asks
how long to wait. Delays double from ``initial_s`` up to ``maximum_s``; a success that lasted
``stable_s`` starts the sequence again.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Backoff:
    initial_s: float = 0.5
    maximum_s: float = 30.0
    stable_s: float = 60.0
    failures: int = 0
    """Failures in a row (since the last stable success)."""
    _up_since: float | None = None

    def succeeded(self, now: float) -> None:
        """It came up at ``now`` (monotonic seconds)."""
        self._up_since = now

    def failed(self, now: float) -> float:
        """It failed at ``now``: the delay before the next try."""
        if self._up_since is not None and now - self._up_since >= self.stable_s:
            self.failures = 0
        self._up_since = None
        delay = min(self.maximum_s, self.initial_s * 2.0**self.failures)
        self.failures += 1
        return delay
