"""What a tenant may see and how its requests are marked: the models its key reaches (any other is
"not found", as if it did not exist) and the prefix-cache salt its requests carry.

The salt keeps one tenant's cached prompt blocks out of every other tenant's reach: the engine's
prefix cache keys its first block on it (backends/llamacpp/sequence.py), vLLM gets it as
``cache_salt``, the router's affinity key starts with it, and a gRPC worker receives it in the
request's ``cache_salt`` field. A key's own salt replaces whatever the client sent, unless the key
is a gateway's (``forward_cache_salt``) forwarding its own tenants' salts.
"""

from __future__ import annotations

import dataclasses

from lmgate.backends.types import GenerateRequest
from lmgate.server.errors import ModelNotFoundError
from lmgate.server.placement.pool import ModelPool
from lmgate.server.placement.registry import ModelRegistry
from lmgate.server.tenancy.records import Tenant


def names_of(pool: ModelPool) -> list[str]:
    """The names that reach a pool's base model (a LoRA adapter is reached by its own name only)."""
    return [pool.name, *pool.settings.aliases]


def visible(registry: ModelRegistry, tenant: Tenant | None) -> list[ModelPool]:
    """The pools whose base model ``tenant`` may reach (all of them without key records)."""
    pools = list(registry.pools.values())
    return pools if tenant is None else [p for p in pools if tenant.record.allows_model(names_of(p))]


def visible_adapters(registry: ModelRegistry, tenant: Tenant | None) -> list[tuple[ModelPool, str]]:
    """The LoRA adapters ``tenant`` may reach, with their base model's pool: a key's ``models`` globs
    are matched against the adapter's own name."""
    return [(pool, adapter) for pool in registry.pools.values() for adapter in pool.adapters
            if tenant is None or tenant.record.allows_model([adapter])]  # fmt: skip


def check_model(registry: ModelRegistry, model: str, tenant: Tenant | None) -> None:
    """ModelNotFoundError, listing only the models the key reaches, when ``model`` is unknown or
    outside the key's ``models``."""
    if tenant is None:
        return
    known = sorted([name for pool in visible(registry, tenant) for name in names_of(pool)]
                   + [adapter for _, adapter in visible_adapters(registry, tenant)])  # fmt: skip
    try:
        pool = registry.pool(model)
    except ModelNotFoundError:
        raise ModelNotFoundError(model, known) from None
    adapter = registry.adapter_of(model)
    if not tenant.record.allows_model([adapter] if adapter is not None else names_of(pool)):
        raise ModelNotFoundError(model, known)


def salted(requests: list[GenerateRequest], tenant: Tenant | None) -> list[GenerateRequest]:
    """``requests`` carrying the tenant's cache salt (a forwarding gateway's own salt only where its
    request carries none); unchanged without a tenant."""
    if tenant is None:
        return requests
    salt = tenant.record.cache_salt
    return [
        r if tenant.record.forward_cache_salt and r.cache_salt else dataclasses.replace(r, cache_salt=salt)
        for r in requests
    ]
