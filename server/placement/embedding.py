"""From an embedding request to its vectors: the same placement as a generation, without a stream.

1. The pool: the model's (400 ``model_not_supported`` when its ``tasks`` leave out ``embed``), or
   the first fallback that embeds and has room (``Dispatcher.choose_pool``).
2. ``dimensions`` against the model's vectors (backends/embedding.py ``check_dimensions``).
3. The tenant's quota is charged the inputs' token estimate, corrected to the prompt tokens read.
4. Admission: a running slot of the pool's gate (or a place in its queue), as a generation takes.
5. A replica from the pool's router (the least outstanding tokens: embeddings share no prefix cache);
   one that is unavailable is marked failed and the next tried.
6. The whole wait (queue and engine) is bounded by the pool's ``request_timeout_s`` and a drain's cut.
The vectors come back full length and unit norm; ``dimensions`` shortens them here, for every backend.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from lmgate.backends.embedding import Embeddings, EmbedRequest, check_dimensions, shorten
from lmgate.backends.errors import BackendError
from lmgate.backends.tasks import Task
from lmgate.server.errors import ServiceUnavailableError, from_backend_error
from lmgate.server.placement.dispatch import Dispatcher, no_replica, timed_out
from lmgate.server.placement.pool import ModelPool
from lmgate.server.tenancy.records import Tenant
from lmgate.server.tenancy.scope import check_model


async def embed(
    dispatcher: Dispatcher,
    request: EmbedRequest,
    tenant: Tenant | None = None,
    placed: Callable[[str, str], None] | None = None,
) -> tuple[str, Embeddings]:
    """The name of the pool that served ``request`` and its embeddings (``dimensions`` applied).

    ``placed(pool name, backend kind)`` is called once the pool is chosen, as for ``Dispatcher.open``."""
    if dispatcher.drain.draining:
        raise dispatcher.drain.refused()
    check_model(dispatcher.registry, request.model, tenant)
    pool = await dispatcher.choose_pool(request.model, Task.EMBED, tenant.name if tenant else "")
    if placed is not None:
        placed(pool.name, pool.backend_kind)
    size = pool.primary.info.embedding_size
    try:
        if size is not None:
            check_dimensions(request.dimensions, size, truncatable=pool.settings.embed_truncatable, model=pool.name)
    except BackendError as exc:
        raise from_backend_error(exc) from None
    lease = tenant.quota.charge(request.token_estimate, time.monotonic()) if tenant is not None else None
    try:
        result = await _within_deadline(dispatcher, pool, request, tenant)
        if lease is not None:
            lease.used = result.prompt_tokens
    finally:
        if lease is not None:
            lease.settle()
    return pool.name, _shortened(result, request.dimensions, pool)


def _shortened(result: Embeddings, dimensions: int | None, pool: ModelPool) -> Embeddings:
    if dimensions is None:
        return result
    try:  # an upstream whose size was not known before its answer is checked now
        check_dimensions(dimensions, len(result.vectors[0]), truncatable=pool.settings.embed_truncatable,
                         model=pool.name)  # fmt: skip
    except BackendError as exc:
        raise from_backend_error(exc) from None
    return Embeddings(tuple(shorten(v, dimensions) for v in result.vectors), result.prompt_tokens)


async def _within_deadline(
    dispatcher: Dispatcher, pool: ModelPool, request: EmbedRequest, tenant: Tenant | None
) -> Embeddings:
    drain = dispatcher.drain
    deadline = None
    if pool.settings.request_timeout_s is not None:
        deadline = asyncio.get_running_loop().time() + pool.settings.request_timeout_s
    try:
        async with asyncio.timeout_at(deadline) as timer:
            drain.watch(timer)
            try:
                if tenant is None:
                    await pool.gate.acquire()
                else:
                    await pool.gate.acquire(tenant.name, request.token_estimate, tenant.record.weight)
                try:
                    return await _on_replica(pool, request)
                finally:
                    pool.gate.release()
            finally:
                drain.unwatch(timer)
    except TimeoutError:
        if drain.cut:
            raise drain.cut_error() from None
        raise timed_out(pool) from None


async def _on_replica(pool: ModelPool, request: EmbedRequest) -> Embeddings:
    """Step 5: the router's replica; an unavailable one is marked failed and the next tried."""
    cost = request.token_estimate
    tried: set[int] = set()
    last: ServiceUnavailableError | None = None
    while True:
        index = pool.router.pick(time.monotonic(), None, exclude=pool.unusable | tried)  # no prefix to share
        if index is None:
            raise no_replica(pool, last)
        pool.router.started(index, cost)
        try:
            result = await pool.replicas[index].embed(request)
        except BackendError as exc:
            error = from_backend_error(exc)
            if not isinstance(error, ServiceUnavailableError):
                raise error from exc
            last = error
            pool.router.failed(index, time.monotonic())
            tried.add(index)
            continue
        finally:
            pool.router.ended(index, cost)
        pool.router.succeeded(index)
        return result
