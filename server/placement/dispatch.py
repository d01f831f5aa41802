"""From a request to a running stream on one replica: pool, capabilities, admission, replica, retry.

1. The pool: the requested model's, or the next of its ``fallback`` chain when it is unavailable
   (not loaded, every replica ejected) or saturated (no room to run now); if every usable pool's
   queue is full too, 429. A LoRA adapter's name reaches its base model's pool (never a fallback)
   and marks the requests with the adapter (``GenerateRequest.adapter``).
2. The capability contract: a sampling parameter the backend cannot honour is refused (``strict``)
   or served and reported (``lenient``); ``n`` and ``max_tokens`` caps are checked, and a prompt
   that cannot fit the context is refused before anything tokenizes it.
3. Admission: a running slot of the pool's gate (or a place in its queue).
4. A replica, chosen by the pool's router (prefix affinity or least outstanding tokens). A replica
   that fails before anything was streamed is marked failed and the next one is tried; once a
   token went out, a failure ends the stream with an error instead (no duplicated output).
5. The stream is guarded: the per-request timeout (counted from step 3), a drain's cut, and on its
   end the gate, the router's accounting and the backend stream are released, whatever the ending.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass

from lmgate.backends.base import Backend
from lmgate.backends.engine.limits import check_prompt_size
from lmgate.backends.errors import BackendError
from lmgate.backends.tasks import Task
from lmgate.backends.types import GenerateRequest, Role, SamplingParams, TokenDelta, ToolChoice
from lmgate.server.closing_stream import Closable, ClosingStream
from lmgate.server.errors import (
    InvalidRequestError,
    RateLimitError,
    RequestTimeoutError,
    ServiceUnavailableError,
    from_backend_error,
)
from lmgate.server.placement.drain import Drain
from lmgate.server.placement.generation import open_stream, open_streams
from lmgate.server.placement.pool import ModelPool
from lmgate.server.placement.prefix_index import prefix_blocks
from lmgate.server.placement.registry import ModelRegistry
from lmgate.server.tenancy.quota import Lease, token_estimate
from lmgate.server.tenancy.records import Tenant
from lmgate.server.tenancy.scope import check_model, salted

log = logging.getLogger(__name__)

AFFINITY_BYTES = 512
_INSTRUCTIONS = (Role.SYSTEM, Role.DEVELOPER)
_DEFAULTS = SamplingParams()
_PARAMS = tuple(f.name for f in dataclasses.fields(SamplingParams) if f.name not in ("penalty_last_n", "speculative"))
"""What a backend may not honour (speculation never changes the output: a backend without it just ignores it)."""


@dataclass
class Dispatched:
    """The streams of one request, opened on one replica of ``pool``."""

    streams: list[Closable[TokenDelta]]
    pool: ModelPool
    backend: Backend
    ignored_params: tuple[str, ...]
    adapter: str | None = None
    """The LoRA adapter the requests run with, when the model asked for is one."""

    @property
    def model(self) -> str:
        """The model a response names: the adapter, or the pool that serves (a fallback's name if it did)."""
        return self.adapter or self.pool.name


def affinity_key(request: GenerateRequest) -> bytes:
    """The first bytes of the prefix requests are likely to share, so that they share its KV cache.

    A chat's is its leading system/developer messages, which many users' conversations share (the
    users' own text would scatter them); without any, its first message, which every later turn of
    the same conversation repeats. A raw prompt's is its start. A tenant's requests start theirs
    with its cache salt: its prefixes are cached apart from other tenants' (server/tenancy/scope.py),
    and a LoRA adapter's with its name, as its KV is its own.
    """
    salt = (request.cache_salt or "").encode()
    adapter = f"lora:{request.adapter}\0".encode() if request.adapter is not None else b""
    return salt + adapter + _shared_prefix(request)


def _shared_prefix(request: GenerateRequest) -> bytes:
    if request.messages is not None:
        shared = list(itertools.takewhile(lambda m: m.role in _INSTRUCTIONS, request.messages)) or request.messages[:1]
        text = "".join(f"<{m.role.value}>{m.content[:AFFINITY_BYTES]}" for m in shared)
    elif request.prompt is not None:
        text = request.prompt
    else:
        return b"".join(t.to_bytes(4, "little") for t in (request.prompt_token_ids or ())[: AFFINITY_BYTES // 4])
    return text[:AFFINITY_BYTES].encode()[:AFFINITY_BYTES]


def used_params(sampling: SamplingParams) -> list[str]:
    """The sampling parameters a request sets to something other than their defaults."""
    return [name for name in _PARAMS if getattr(sampling, name) != getattr(_DEFAULTS, name)]


def _check_tools(pool: ModelPool, request: GenerateRequest) -> None:
    tools = request.tools
    if tools is not None and tools.choice is not ToolChoice.NONE and not pool.primary.capabilities.tools:
        raise InvalidRequestError(
            f"model `{pool.name}` ({pool.backend_kind}) does not call tools: its chat template shows no tool-call "
            "format lmgate knows (set `tool_parser` in its config), or its backend cannot; send the request without "
            "`tools`, or with tool_choice none",
            param="tools",
        )


class Dispatcher:
    def __init__(self, registry: ModelRegistry, drain: Drain) -> None:
        self.registry = registry
        self.drain = drain

    async def open(
        self,
        model: str,
        requests: list[GenerateRequest],
        tenant: Tenant | None = None,
        placed: Callable[[str, str], None] | None = None,
    ) -> Dispatched:
        """Open ``requests`` (the prompts of one client request) on one replica of the chosen pool.

        ``placed(pool name, backend kind)`` is called once the pool is chosen (the model asked for,
        or a fallback), before anything about the request can fail there: metrics label by it.
        The pool's ``request_timeout_s`` runs from here: queueing for a slot and waiting for the
        first token count, and a drain that times out cuts those waits too (server/placement/drain.py).
        ``tenant`` (a key with a record): a model outside its scope is not found, its requests carry
        its cache salt, its quota is charged after the checks, and it queues in its own line."""
        if self.drain.draining:
            raise self.drain.refused()
        check_model(self.registry, model, tenant)
        requests = salted(requests, tenant)
        adapter = self.registry.adapter_of(model)
        if adapter is not None:
            requests = [dataclasses.replace(r, adapter=adapter) for r in requests]
        pool = await self.choose_pool(model, Task.GENERATE, tenant.name if tenant else "")
        if placed is not None:
            placed(pool.name, pool.backend_kind)
        sampling = requests[0].sampling
        ignored = self._check_capabilities(pool, sampling, len(requests))
        _check_tools(pool, requests[0])
        info = pool.primary.info
        try:
            for request in requests:
                check_prompt_size(request, info.context_length, info.max_token_bytes)
        except BackendError as exc:
            raise from_backend_error(exc) from None
        lease = tenant.quota.admit(requests, time.monotonic()) if tenant is not None else None
        try:
            return await self._open_within_deadline(pool, requests, ignored, tenant, lease)
        except BaseException:
            if lease is not None:
                lease.cancel()
            raise

    async def _open_within_deadline(
        self, pool: ModelPool, requests: list[GenerateRequest], ignored: tuple[str, ...], tenant: Tenant | None,
        lease: Lease | None,
    ) -> Dispatched:  # fmt: skip
        deadline = None
        if pool.settings.request_timeout_s is not None:
            deadline = asyncio.get_running_loop().time() + pool.settings.request_timeout_s
        try:
            async with asyncio.timeout_at(deadline) as timer:
                self.drain.watch(timer)
                try:
                    backend, index, streams, cost = await self._admit_and_open(pool, requests, tenant)
                finally:
                    self.drain.unwatch(timer)
        except TimeoutError:
            raise self.drain.cut_error() if self.drain.cut else timed_out(pool) from None
        released = _Release(pool, index, cost, len(streams))
        guarded = [_guarded(s, pool, index, deadline, released, self.drain) for s in streams]
        if lease is not None:
            guarded = [lease.watch(s, r) for s, r in zip(guarded, requests, strict=True)]
        return Dispatched(guarded, pool, backend, ignored, requests[0].adapter)

    async def _admit_and_open(
        self, pool: ModelPool, requests: list[GenerateRequest], tenant: Tenant | None = None
    ) -> tuple[Backend, int, list[Closable[TokenDelta]], int]:
        """A slot of the pool's gate, then the streams on a replica; the slot is given back on failure."""
        if tenant is None:
            await pool.gate.acquire()
        else:
            await pool.gate.acquire(tenant.name, token_estimate(requests), tenant.record.weight)
        try:
            return await self._open_on_replica(pool, requests)
        except BaseException:
            pool.gate.release()
            raise

    async def choose_pool(self, model: str, task: Task, tenant: str = "") -> ModelPool:
        """The pool that serves ``model`` now (step 1): its own, or the first fallback that serves
        ``task`` and can take the request; 400 when ``model`` itself does not serve ``task``."""
        pool = self.registry.pool(model)
        if self.registry.adapter_of(model) is not None and task is not Task.GENERATE:
            raise InvalidRequestError(f"`{model}` is a LoRA adapter of `{pool.name}`; adapters serve generation only, "
                                      f"not {task} requests: ask `{pool.name}` itself", param="model",
                                      code="model_not_supported")  # fmt: skip
        if not pool.settings.serves(task):
            served = " and ".join(str(t) for t in pool.settings.tasks)
            raise InvalidRequestError(
                f"model `{pool.name}` does not serve {task} requests (its tasks: {served}): ask a model that does",
                param="model", code="model_not_supported",
            )  # fmt: skip
        usable: list[ModelPool] = []
        now = time.monotonic()
        # A fallback model does not have the adapter: an adapter's requests wait for its base pool.
        chain = [pool] if self.registry.adapter_of(model) is not None else self._chain(pool)
        for candidate in chain:
            if not candidate.settings.serves(task):
                continue
            with contextlib.suppress(ServiceUnavailableError):
                await candidate.ensure_loaded()
            if not candidate.routable(now):
                continue
            candidate.last_used = now
            if candidate.gate.has_room:
                return candidate
            usable.append(candidate)
        for candidate in usable:
            if not candidate.gate.full_for(tenant):
                return candidate
        if usable:
            raise RateLimitError(
                f"model `{pool.name}` and its fallbacks are at capacity; retry shortly", retry_after_s=1
            )
        raise ServiceUnavailableError(f"model `{pool.name}` has no replica that can serve now; retry shortly",
                                      param="model")  # fmt: skip

    def _chain(self, pool: ModelPool) -> list[ModelPool]:
        chain = [pool]
        while chain[-1].settings.fallback is not None:
            chain.append(self.registry.pool(chain[-1].settings.fallback))
        return chain

    @staticmethod
    def _check_request_tokens(pool: ModelPool, sampling: SamplingParams, prompts: int) -> None:
        """n x max_tokens has a ceiling (``max_request_tokens``): one request cannot ask for unbounded work."""
        cap = pool.settings.max_request_tokens
        if cap is None:
            return
        rows = sampling.beam_width if sampling.use_beam_search else sampling.n
        per_row = sampling.max_tokens or pool.primary.info.context_length
        if prompts * rows * per_row > cap:
            what = f"{prompts} prompt(s) x {rows} {'beams' if sampling.use_beam_search else 'choices'} x {per_row}"
            unset = "" if sampling.max_tokens else " (max_tokens unset: the context length)"
            raise InvalidRequestError(
                f"the request may generate {what} tokens{unset}, more than model `{pool.name}` allows one request "
                f"(max_request_tokens = {cap}); set a lower max_tokens or n",
                param="n" if sampling.max_tokens and rows > 1 else "max_tokens",
            )

    def _check_capabilities(self, pool: ModelPool, sampling: SamplingParams, prompts: int) -> tuple[str, ...]:
        capabilities = pool.primary.capabilities
        if sampling.n > capabilities.max_n:
            raise InvalidRequestError(f"n={sampling.n} is more than model `{pool.name}` serves ({capabilities.max_n})",
                                      param="n")  # fmt: skip
        cap = pool.settings.max_tokens_cap
        if cap is not None and sampling.max_tokens is not None and sampling.max_tokens > cap:
            raise InvalidRequestError(f"max_tokens={sampling.max_tokens} is above this model's cap of {cap}",
                                      param="max_tokens")  # fmt: skip
        self._check_request_tokens(pool, sampling, prompts)
        unsupported = tuple(p for p in used_params(sampling) if p not in capabilities.sampling_params)
        if unsupported and pool.settings.params == "strict":
            raise InvalidRequestError(
                f"model `{pool.name}` ({pool.backend_kind}) does not honour {', '.join(unsupported)}; "
                f"it supports {', '.join(sorted(capabilities.sampling_params))}",
                param=unsupported[0],
            )
        return unsupported

    async def _open_on_replica(
        self, pool: ModelPool, requests: list[GenerateRequest]
    ) -> tuple[Backend, int, list[Closable[TokenDelta]], int]:
        key = affinity_key(requests[0])
        blocks = prefix_blocks(requests[0]) if len(pool.replicas) > 1 else None  # one replica: nothing to choose
        cost = sum(_cost(r) for r in requests)
        tried: set[int] = set()
        last: ServiceUnavailableError | None = None
        while True:
            now = time.monotonic()
            index = pool.router.pick(now, key, exclude=pool.unusable | tried, blocks=blocks)
            if index is None:
                raise no_replica(pool, last)
            backend = pool.replicas[index]
            pool.router.started(index, cost)
            try:
                if len(requests) == 1:
                    streams = [await open_stream(backend, requests[0])]
                else:
                    streams = await open_streams(backend, requests)
            except ServiceUnavailableError as exc:
                last = exc
                pool.router.ended(index, cost)
                pool.router.failed(index, time.monotonic())
                tried.add(index)
                continue  # nothing was streamed yet: another replica may serve it
            except BaseException:
                pool.router.ended(index, cost)
                raise
            pool.router.succeeded(index)
            return backend, index, streams, cost


@dataclass
class _Release:
    """Gives back the gate slot and the router's accounting once every stream of a request ended."""

    pool: ModelPool
    index: int
    cost: int
    open_streams: int

    def stream_ended(self) -> None:
        self.open_streams -= 1
        if self.open_streams == 0:
            self.pool.router.ended(self.index, self.cost)
            self.pool.gate.release()


def _guarded(
    stream: Closable[TokenDelta], pool: ModelPool, index: int, deadline: float | None, release: _Release,
    drain: Drain,
) -> Closable[TokenDelta]:  # fmt: skip
    """``stream`` within the request's deadline, cut by a drain that times out; its slot and the
    router's accounting are given back when it ends, fails or is closed, read or not."""

    async def give_back() -> None:
        try:
            await stream.aclose()
        finally:
            release.stream_ended()

    return ClosingStream(_within_deadline(stream, pool, index, deadline, drain), give_back)


async def _within_deadline(
    stream: Closable[TokenDelta], pool: ModelPool, index: int, deadline: float | None, drain: Drain
) -> AsyncGenerator[TokenDelta, None]:
    while True:
        drain.check()
        try:
            async with asyncio.timeout_at(deadline) as timer:
                drain.watch(timer)
                try:
                    delta = await anext(stream)
                finally:
                    drain.unwatch(timer)
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise drain.cut_error() if drain.cut else timed_out(pool) from None
        except ServiceUnavailableError:
            pool.router.failed(index, time.monotonic())
            raise
        yield delta


def no_replica(pool: ModelPool, last: ServiceUnavailableError | None) -> ServiceUnavailableError:
    """Every usable replica was tried (or none is usable). What the last one tried said goes to the log, not
    to the client: an upstream's error may name its address, its organisation or a masked key."""
    if last is not None:
        log.warning("model %s: no replica could serve a request; the last one tried said: %s", pool.name, last.message)
    return ServiceUnavailableError(f"no replica of model `{pool.name}` could serve the request", param="model")


def timed_out(pool: ModelPool) -> RequestTimeoutError:
    return RequestTimeoutError(
        f"the request took longer than model `{pool.name}`'s request_timeout_s ({pool.settings.request_timeout_s} s)"
    )


def _cost(request: GenerateRequest) -> int:
    """Tokens the request will hold: a prompt estimate (4 bytes a token) plus what it may generate."""
    if request.prompt_token_ids is not None:
        prompt = len(request.prompt_token_ids)
    else:
        text = request.prompt if request.prompt is not None else "".join(m.content for m in request.messages or ())
        prompt = len(text) // 4 + 1
    return (prompt + (request.sampling.max_tokens or 256)) * request.sampling.n
