"""What each replica's prefix cache probably holds, learnt from what was routed where.

A request's prefix is cut into blocks of its canonical text (a chat's messages in order, a prompt's
text, a token prompt's ids), and each block is keyed by a hash chained over every block before it,
as the engines key their KV blocks: two requests share block *k*'s key exactly when their first *k*
blocks are equal. The tenant's cache salt starts the chain, so tenants never match each other.

NOTE: approximated at the gateway (SGLang's cache-aware router does the same) rather than read from
the workers: it costs no RPC or scrape on the request path, works for every backend kind (remote
OpenAI-compatible servers cannot tell), and is right while a replica's cache outlives what the index
remembers — the index keeps a bounded number of blocks per replica, least recently routed out first,
well under what an engine caches. A replica that restarts or evicts early only costs a miss.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict

from lmgate.backends.types import GenerateRequest

BLOCK_CHARS = 256
"""Characters (or, for a token prompt, 4-byte ids) per block: about 64 tokens of English text."""
MAX_BLOCKS = 64
"""Blocks looked at per request (16 K characters): longer prefixes route by their start."""
BLOCKS_PER_REPLICA = 65_536
"""Block keys remembered per replica (about 16 M characters of distinct prefixes)."""


def _canonical(request: GenerateRequest) -> bytes:
    if request.messages is not None:
        # Templates render the tools first (in the system turn): they are part of the shared prefix.
        parts = (
            [f"<tool {t.name}>{t.description}{t.parameters}" for t in request.tools.functions] if request.tools else []
        )
        for m in request.messages:
            calls = "".join(f"<call {c.name}>{c.arguments}" for c in m.tool_calls)
            parts.append(f"<{m.role.value}>{m.content}{calls}")
        return "".join(parts).encode()[: BLOCK_CHARS * MAX_BLOCKS]
    if request.prompt is not None:
        return request.prompt.encode()[: BLOCK_CHARS * MAX_BLOCKS]
    ids = (request.prompt_token_ids or ())[: BLOCK_CHARS * MAX_BLOCKS // 4]
    return b"".join(t.to_bytes(4, "little") for t in ids)


def prefix_blocks(request: GenerateRequest) -> list[bytes]:
    """The chained keys of the request's whole blocks (a last partial block is not shared reliably and
    is left out; a prompt shorter than one block has a single key)."""
    text = _canonical(request)
    whole = max(1, len(text) // BLOCK_CHARS)
    key = hashlib.blake2b((request.cache_salt or "").encode(), digest_size=16).digest()
    keys = []
    for i in range(whole):
        key = hashlib.blake2b(key + text[i * BLOCK_CHARS : (i + 1) * BLOCK_CHARS], digest_size=16).digest()
        keys.append(key)
    return keys


class PrefixIndex:
    """The block keys routed to one replica, bounded, least recently routed out first."""

    def __init__(self, capacity: int = BLOCKS_PER_REPLICA) -> None:
        self._keys: OrderedDict[bytes, None] = OrderedDict()
        self._capacity = capacity

    def match(self, blocks: list[bytes]) -> int:
        """How many leading blocks this replica probably holds (chained keys: the first miss ends it)."""
        matched = 0
        for key in blocks:
            if key not in self._keys:
                break
            matched += 1
        return matched

    def add(self, blocks: list[bytes]) -> None:
        for key in blocks:
            self._keys[key] = None
            self._keys.move_to_end(key)
        while len(self._keys) > self._capacity:
            self._keys.popitem(last=False)

    def __len__(self) -> int:
        return len(self._keys)
