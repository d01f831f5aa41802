"""Stored responses, for ``previous_response_id`` and ``GET /v1/responses/{id}``: bounded, in memory.

A response is kept when its request had ``store: true`` (the default, as OpenAI) and it finished
(``completed`` or ``incomplete``; a failed or abandoned one is not kept), with the conversation it
closes: the messages of every turn before it, its input and its output (not its ``instructions``,
which OpenAI does not carry over either). It lives ``ttl_s`` from its creation, and at most
``max_entries`` are kept: the least recently used goes first. ``store: false`` keeps nothing.

NOTE: in the gateway's memory, not shared: after a restart, or behind a load balancer spreading a
conversation over several gateways, an id may be unknown (400 ``previous_response_not_found``, as
OpenAI answers for an expired one). Each entry holds a whole conversation, which fitted the model's
context when it was made, so memory is bounded by ``max_entries`` x the context's text.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from lmgate.backends.types import ChatMessage
from lmgate.server.http.responses_objects import ResponseObject


@dataclass(frozen=True, slots=True)
class StoredResponse:
    response: ResponseObject
    conversation: tuple[ChatMessage, ...]
    """Every message up to and including this response's output, without instructions."""
    expires_at: float
    owner: str | None = None
    """The tenant (API key record) that created it: no other tenant finds it. None without records."""


class ResponseStore:
    """Owned by the event loop (no locking)."""

    def __init__(self, max_entries: int, ttl_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_entries = max_entries
        self.ttl_s = ttl_s
        self._clock = clock
        self._entries: OrderedDict[str, StoredResponse] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, response: ResponseObject, conversation: tuple[ChatMessage, ...], owner: str | None = None) -> None:
        """Keep ``response`` for ``owner``; the least recently used entries leave when the store is full."""
        if self.max_entries == 0:
            return
        self._entries[response.id] = StoredResponse(response, conversation, self._clock() + self.ttl_s, owner)
        self._entries.move_to_end(response.id)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def get(self, response_id: str, owner: str | None = None) -> StoredResponse | None:
        """The entry, None when it was never stored, expired, was pushed out or is another tenant's
        (which reads exactly as one that does not exist)."""
        entry = self._entries.get(response_id)
        if entry is None or entry.owner != owner:
            return None
        if entry.expires_at <= self._clock():
            del self._entries[response_id]
            return None
        self._entries.move_to_end(response_id)
        return entry

    def delete(self, response_id: str, owner: str | None = None) -> bool:
        """Forget the entry; False if there was none for ``owner`` (or it had expired)."""
        if self.get(response_id, owner) is None:
            return False
        del self._entries[response_id]
        return True
