"""Prometheus metrics and the per-request log line: the only importer of prometheus_client.

Every request, whatever its transport and backend, is measured here from its stream of deltas
(``RequestTracker``), so every backend reports the same names (DESIGN §8). What only an engine
knows (running and waiting sequences, KV usage, prefix-cache hits, preemptions) is read from each
backend's ``stats()`` at scrape time. One ``Metrics`` per app, on its own ``CollectorRegistry``.

    lmgate_requests_total{model,backend,transport,endpoint,status} counter
    lmgate_time_to_first_token_seconds{model,backend,transport} histogram
    lmgate_inter_token_latency_seconds{...}                     histogram
    lmgate_e2e_request_latency_seconds{...}                     histogram
    lmgate_request_queue_time_seconds{...}                      histogram (backends that know it)
    lmgate_prompt_tokens_total{model,backend}                   counter
    lmgate_generation_tokens_total{model,backend}               counter
    lmgate_generation_tokens_per_second{model,backend}          gauge, over the last 10 s
    lmgate_requests_running / _waiting{model,backend}           gauges, from the engine
    lmgate_kv_cache_usage_ratio{model,backend}                  gauge, cells held by requests
    lmgate_prefix_cache_hits_total / _queries_total{...}        counters, in prompt tokens
    lmgate_preemptions_total{model,backend}                     counter
    lmgate_spec_decode_draft_tokens_total / _accepted_tokens_total{model,backend}  counters: speculative
                                                                decoding (acceptance rate = accepted / draft)
    lmgate_engine_restarts_total{model,backend}                 counter
    lmgate_replicas{model,backend} / lmgate_replicas_usable     gauges: configured / loaded and healthy
    lmgate_discovered_replicas{model}                    gauge: ready workers found by Kubernetes discovery
    lmgate_admission_running / _waiting{model,backend}          gauges, the gateway's own gate (max_running…)
    lmgate_router_decisions_total{model,backend,reason}         counter: prefix, affinity, least_outstanding, only
    lmgate_router_prefix_blocks_total{model,backend,result}     counter: leading blocks routed by prefix, hit / miss
    lmgate_tenant_*{tenant,...}                                 per API key record (server/tenancy/metrics.py)
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import time
from collections import deque
from collections.abc import AsyncGenerator, Callable, Iterator

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    start_http_server,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from lmgate.backends.types import FinishReason, TokenDelta, Usage
from lmgate.server.closing_stream import Closable, ClosingStream
from lmgate.server.errors import ClientDisconnected, LmgateError, ModelNotFoundError
from lmgate.server.placement.pool import ModelState
from lmgate.server.placement.registry import ModelRegistry
from lmgate.server.tenancy.metrics import TenantMetrics, tenant_fields

access_log = logging.getLogger("lmgate.access")
__all__ = ["CONTENT_TYPE", "Metrics", "RequestTracker", "TokenRate", "start_http_server"]

CONTENT_TYPE = CONTENT_TYPE_LATEST
# From a millisecond to minutes: a cached short prompt answers in ms, a long queue in minutes.
TTFT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
                10.0, 20.0, 40.0, 80.0, 160.0, 320.0, 640.0)  # fmt: skip
# Sub-millisecond (a small model batched on a GPU) to seconds (a big one on a busy CPU).
ITL_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1,
               0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0)  # fmt: skip
E2E_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 45.0, 60.0, 120.0, 240.0, 480.0,
               960.0, 1920.0)  # fmt: skip
RATE_WINDOW_S = 10
UNKNOWN = "unknown"
OTHER_ENDPOINT = "other"


class TokenRate:
    """Tokens per second over the last ``window`` whole seconds (per-second buckets)."""

    def __init__(self, window: int = RATE_WINDOW_S, clock: Callable[[], float] = time.monotonic) -> None:
        self._window = window
        self._clock = clock
        self._buckets: deque[list[int]] = deque()  # [second, tokens]

    def add(self, tokens: int) -> None:
        second = int(self._clock())
        if self._buckets and self._buckets[-1][0] == second:
            self._buckets[-1][1] += tokens
        else:
            self._buckets.append([second, tokens])
            self._trim(second)

    def rate(self) -> float:
        now = int(self._clock())
        self._trim(now)
        return sum(tokens for second, tokens in self._buckets if second < now) / self._window

    def _trim(self, now: int) -> None:
        while self._buckets and self._buckets[0][0] < now - self._window:
            self._buckets.popleft()


class Metrics:
    def __init__(self, models: ModelRegistry, *, log_prompts: bool = False) -> None:
        self.models = models
        self.log_prompts = log_prompts
        self.registry = CollectorRegistry()
        request_labels = ["model", "backend", "transport"]
        model_labels = ["model", "backend"]
        self.requests = Counter("lmgate_requests", "Requests by endpoint and outcome.",
                                [*request_labels, "endpoint", "status"], registry=self.registry)  # fmt: skip
        self.endpoints: frozenset[str] = frozenset()
        """The endpoints a request can name (routes, gRPC methods); any other path is counted as ``other``."""
        self.ttft = Histogram("lmgate_time_to_first_token_seconds", "Time to the first token.", request_labels,
                              buckets=TTFT_BUCKETS, registry=self.registry)  # fmt: skip
        self.itl = Histogram("lmgate_inter_token_latency_seconds", "Time between two tokens of a choice.",
                             request_labels, buckets=ITL_BUCKETS, registry=self.registry)  # fmt: skip
        self.e2e = Histogram("lmgate_e2e_request_latency_seconds", "Time from arrival to the last token.",
                             request_labels, buckets=E2E_BUCKETS, registry=self.registry)  # fmt: skip
        self.queue = Histogram("lmgate_request_queue_time_seconds", "Time waiting before the first engine step.",
                               request_labels, buckets=E2E_BUCKETS, registry=self.registry)  # fmt: skip
        self.prompt_tokens = Counter("lmgate_prompt_tokens", "Prompt tokens processed.", model_labels,
                                     registry=self.registry)  # fmt: skip
        self.generation_tokens = Counter("lmgate_generation_tokens", "Tokens generated.", model_labels,
                                         registry=self.registry)  # fmt: skip
        self.tokens_per_second = Gauge("lmgate_generation_tokens_per_second",
                                       f"Tokens generated per second over the last {RATE_WINDOW_S} s.",
                                       model_labels, registry=self.registry)  # fmt: skip
        self._rates: dict[tuple[str, str], TokenRate] = {}
        self.registry.register(_EngineCollector(models))
        self.tenants = TenantMetrics(self.registry)

    def labels_for(self, model: object) -> tuple[str, str]:
        """(canonical name, backend kind) of a requested model; ("unknown", "unknown") if it is not
        served (or not a name at all), so that clients cannot grow the metrics' label sets."""
        try:
            name = self.models.resolve(model) if isinstance(model, str) else None
        except ModelNotFoundError:
            name = None
        if name is None:
            return UNKNOWN, UNKNOWN
        return name, self.models.pools[name].backend_kind

    def rate(self, model: str, backend: str) -> TokenRate:
        key = (model, backend)
        if key not in self._rates:
            self._rates[key] = rate = TokenRate()
            self.tokens_per_second.labels(model, backend).set_function(rate.rate)
        return self._rates[key]

    def endpoint_label(self, endpoint: str) -> str:
        """``endpoint`` as the ``endpoint`` label: a client chooses its path, the label's values stay bounded."""
        return endpoint if endpoint in self.endpoints else OTHER_ENDPOINT

    def rejected(
        self, transport: str, endpoint: str, error: LmgateError, request_id: str | None = None, model: object = None
    ) -> None:
        """A request refused before it reached a route (a malformed body, a missing API key): counted
        and logged under the model it named when that model is served, else under ``unknown``."""
        name, backend = self.labels_for(model)
        self.requests.labels(name, backend, transport, self.endpoint_label(endpoint), error.outcome).inc()
        line = _log_line(request_id, transport, endpoint, name, backend, error.outcome, error)
        access_log.info(json.dumps(line))

    @contextlib.contextmanager
    def request(self, transport: str, endpoint: str, model: str, request_id: str) -> Iterator[RequestTracker]:
        """Track one request; an error raised inside is counted (then re-raised)."""
        tracker = RequestTracker(self, transport, endpoint, model, request_id)
        try:
            yield tracker
        except LmgateError as exc:
            tracker.finish(exc.outcome, exc)
            raise
        except ClientDisconnected:
            tracker.finish("aborted")
            raise
        except Exception:
            tracker.finish("internal_error")
            raise

    def render(self) -> bytes:
        return generate_latest(self.registry)


class RequestTracker:
    """Measures one request from its deltas, and keeps its usage; ``finish`` records it exactly once.

    Labels are the model the request named (resolved to its pool, or ``unknown``) until
    ``placed`` says which pool serves it: a request served by a fallback pool is counted there.
    """

    def __init__(self, metrics: Metrics, transport: str, endpoint: str, model: str, request_id: str) -> None:
        self.metrics = metrics
        self.transport = transport
        self.endpoint = endpoint
        self.request_id = request_id
        self.prompt: str | None = None
        self.tenant: str | None = None
        """The API key record's name, when key records are on: a label and a log field."""
        self.ignored_fields: list[str] = []
        """Fields the client sent that lmgate accepts without effect (OpenAI's ``store``...): logged."""
        self.placed(*metrics.labels_for(model))
        self._started = time.monotonic()
        self._first: float | None = None
        self._last: dict[int, float] = {}
        self._prompt_tokens: dict[int, int] = {}
        self._cached: dict[int, int] = {}
        self._completion: dict[int, int] = {}
        """Tokens of each choice: counted as they stream, replaced by the choice's usage when it ends
        (a stream cut short has no usage, and still generated what it sent)."""
        self._queue: float | None = None
        self._finish_reasons: dict[int, str] = {}
        self._aborted = False
        self._done = False

    def placed(self, model: str, backend: str) -> None:
        """The pool that serves the request (the placement's result): its labels from now on."""
        self.model, self.backend = model, backend
        self._labels = (model, backend, self.transport)
        # Children exist from the first request on, so every series is there even at zero.
        m = self.metrics
        self._ttft, self._itl = m.ttft.labels(*self._labels), m.itl.labels(*self._labels)
        self._e2e, self._queue_histogram = m.e2e.labels(*self._labels), m.queue.labels(*self._labels)
        self._rate = m.rate(model, backend)

    def usage(self) -> Usage:
        """The request's usage so far: each prompt's tokens once (choice i belongs to prompt i // n),
        every choice's completion tokens, cached tokens summed over the prompts."""
        return Usage(sum(self._prompt_tokens.values()), sum(self._completion.values()), sum(self._cached.values()))

    def count(self, usage: Usage) -> None:
        """The usage of a request that streams no deltas (embeddings: its prompt tokens)."""
        self._prompt_tokens[0] = usage.prompt_tokens
        if usage.completion_tokens:
            self._completion[0] = usage.completion_tokens

    def watch(self, stream: Closable[TokenDelta], n: int) -> Closable[TokenDelta]:
        """``stream``, measured; choice i belongs to prompt i // n. Records the outcome at its end
        (``aborted`` when it is closed early, read or not) and closes ``stream``."""

        async def closed() -> None:
            try:
                await stream.aclose()
            finally:
                self.finish("aborted")  # a no-op when the stream ran to its end

        return ClosingStream(self._watch(stream, n), closed)

    async def _watch(self, stream: Closable[TokenDelta], n: int) -> AsyncGenerator[TokenDelta, None]:
        status, error = "aborted", None  # unless it runs to its end: a client that leaves closes it early
        try:
            async for delta in stream:
                self._observe(delta, n)
                yield delta
            status = "aborted" if self._aborted else "ok"
        except LmgateError as exc:
            status, error = exc.outcome, exc
            raise
        finally:
            self.finish(status, error)

    def _observe(self, delta: TokenDelta, n: int) -> None:
        now = time.monotonic()
        tokens = len(delta.token_ids) or bool(delta.text)  # upstreams that send text without ids
        if tokens:
            if self._first is None:
                self._first = now
                self._ttft.observe(now - self._started)
            previous = self._last.get(delta.index)
            if previous is not None:
                self._itl.observe(now - previous)
            self._last[delta.index] = now
            self._rate.add(tokens)
            self._completion[delta.index] = self._completion.get(delta.index, 0) + tokens
        if delta.finish_reason is not None:
            self._finish_reasons[delta.index] = delta.finish_reason.value
        if delta.finish_reason is FinishReason.ABORT:
            self._aborted = True
        if delta.usage is not None:
            usage = delta.usage
            self._prompt_tokens[delta.index // n] = usage.prompt_tokens
            self._cached[delta.index // n] = usage.cached_tokens
            self._completion[delta.index] = usage.completion_tokens
            if usage.queue_time_s is not None and self._queue is None:
                self._queue = usage.queue_time_s

    def finish(self, status: str, error: LmgateError | None = None) -> None:
        """Count and log the request's end: ``status`` is its outcome (``ok``, ``aborted``, an error's
        ``outcome``), ``error`` the error that ended it, if one did. Only the first call counts."""
        if self._done:
            return
        self._done = True
        m, duration = self.metrics, time.monotonic() - self._started
        m.requests.labels(*self._labels, m.endpoint_label(self.endpoint), status).inc()
        usage = self.usage()
        if status == "ok":
            self._e2e.observe(duration)
        if self._queue is not None:
            self._queue_histogram.observe(self._queue)
        m.prompt_tokens.labels(self.model, self.backend).inc(usage.prompt_tokens)
        m.generation_tokens.labels(self.model, self.backend).inc(usage.completion_tokens)
        line = _log_line(self.request_id, self.transport, self.endpoint, self.model, self.backend, status, error)
        choices = sorted(self._last.keys() | self._finish_reasons.keys())  # those that sent or ended
        line |= {
            "finish_reasons": [self._finish_reasons.get(i) for i in choices], "prompt_tokens": usage.prompt_tokens,
            "cached_tokens": usage.cached_tokens, "completion_tokens": usage.completion_tokens,
            "ttft_s": None if self._first is None else round(self._first - self._started, 6),
            "duration_s": round(duration, 6),
        }  # fmt: skip
        if self.ignored_fields:
            line["ignored_fields"] = self.ignored_fields
        if self.tenant is not None:
            line |= tenant_fields(self.tenant, error)
            m.tenants.record(self.tenant, self.model, status, usage.prompt_tokens, usage.completion_tokens, error)
        if m.log_prompts and self.prompt is not None:
            line["prompt"] = self.prompt
        access_log.info(json.dumps(line))


_SUCCESS_CODE = {"http": 200, "grpc": "OK"}
_ABORTED_CODE = {"http": 499, "grpc": "CANCELLED"}  # 499: nginx's "client closed request"
ERROR_LOG_CHARS = 300
ENDPOINT_LOG_CHARS = 200  # a client chooses its path: bounded in the log


def _log_line(
    request_id: str | None, transport: str, endpoint: str, model: str, backend: str, status: str,
    error: LmgateError | None,
) -> dict[str, object]:  # fmt: skip
    """The fields every request log line starts with. ``code`` is the status the error maps to on
    ``transport`` (HTTP status, gRPC code name); a stream that fails after it started was sent 200."""
    if error is not None:
        code: object = error.http_status if transport == "http" else error.grpc_status
    else:
        code = (_SUCCESS_CODE if status == "ok" else _ABORTED_CODE)[transport]
    line: dict[str, object] = {
        "ts": datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds"), "event": "request",
        "request_id": request_id, "endpoint": endpoint[:ENDPOINT_LOG_CHARS], "transport": transport,
        "model": model, "backend": backend, "status": status, "code": code,
    }  # fmt: skip
    if error is not None:
        line["error"] = error.message[:ERROR_LOG_CHARS]
    return line


class _EngineCollector(Collector):
    """What the engines know, read from each loaded backend's stats() at scrape time."""

    def __init__(self, models: ModelRegistry) -> None:
        self._models = models

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        labels = ["model", "backend"]
        running = GaugeMetricFamily("lmgate_requests_running", "Sequences being decoded.", labels=labels)
        waiting = GaugeMetricFamily("lmgate_requests_waiting", "Sequences waiting for the engine.", labels=labels)
        kv = GaugeMetricFamily("lmgate_kv_cache_usage_ratio", "KV cells held by requests / all cells.", labels=labels)
        hits = CounterMetricFamily("lmgate_prefix_cache_hits", "Prompt tokens found in the prefix cache.",
                                   labels=labels)  # fmt: skip
        queries = CounterMetricFamily("lmgate_prefix_cache_queries", "Prompt tokens looked up in the prefix cache.",
                                      labels=labels)  # fmt: skip
        host = GaugeMetricFamily("lmgate_prefix_cache_host_bytes", "Host RAM held by cached prefixes moved out of "
                                 "the KV cache (cache_ram_mib).", labels=labels)  # fmt: skip
        preemptions = CounterMetricFamily("lmgate_preemptions", "Sequences preempted for KV space.", labels=labels)
        drafted = CounterMetricFamily("lmgate_spec_decode_draft_tokens", "Draft tokens verified by speculative "
                                      "decoding.", labels=labels)  # fmt: skip
        accepted = CounterMetricFamily("lmgate_spec_decode_accepted_tokens", "Draft tokens the model agreed with "
                                       "(acceptance rate = accepted / draft).", labels=labels)  # fmt: skip
        restarts = CounterMetricFamily("lmgate_engine_restarts", "Engine processes started again after one died.",
                                       labels=labels)  # fmt: skip
        replicas = GaugeMetricFamily("lmgate_replicas", "Replicas configured (or discovered).", labels=labels)
        discovered = GaugeMetricFamily("lmgate_discovered_replicas", "Ready workers found by discovery (Kubernetes "
                                       "EndpointSlices).", labels=["model"])  # fmt: skip
        usable = GaugeMetricFamily("lmgate_replicas_usable", "Replicas loaded and healthy: the ones routed to.",
                                   labels=labels)  # fmt: skip
        admitted = GaugeMetricFamily("lmgate_admission_running", "Requests holding one of the model's max_running "
                                     "slots.", labels=labels)  # fmt: skip
        queued = GaugeMetricFamily("lmgate_admission_waiting", "Requests queued for a slot (max_waiting).",
                                   labels=labels)  # fmt: skip
        decisions = CounterMetricFamily("lmgate_router_decisions", "Replica choices, by why the replica was chosen "
                                        "(server/placement/router.py).", labels=[*labels, "reason"])  # fmt: skip
        blocks = CounterMetricFamily("lmgate_router_prefix_blocks", "Leading prompt blocks of routed requests: held "
                                     "(hit) or not (miss) by the replica chosen, as the router's index knows.",
                                     labels=[*labels, "result"])  # fmt: skip
        for name, pool in self._models.pools.items():
            router = pool.router
            for reason, count in list(router.decisions.items()):  # a copy: the event loop may add a reason
                decisions.add_metric([name, pool.backend_kind, reason.value], count)
            blocks.add_metric([name, pool.backend_kind, "hit"], router.blocks_matched)
            blocks.add_metric([name, pool.backend_kind, "miss"], router.blocks_looked_up - router.blocks_matched)
            admitted.add_metric([name, pool.backend_kind], pool.gate.running)
            queued.add_metric([name, pool.backend_kind], pool.gate.waiting)
            replicas.add_metric([name, pool.backend_kind], len(pool.replicas))
            if pool.discovered is not None:
                discovered.add_metric([name], pool.discovered)
            ready = pool.state is ModelState.READY
            usable.add_metric([name, pool.backend_kind], len(pool.replicas) - len(pool.unusable) if ready else 0)
            if not ready:
                continue
            stats = pool.stats()
            values = [name, pool.backend_kind]
            running.add_metric(values, stats.running)
            waiting.add_metric(values, stats.waiting)
            kv.add_metric(values, stats.kv_usage)
            hits.add_metric(values, stats.prefix_hits)
            queries.add_metric(values, stats.prefix_queries)
            host.add_metric(values, stats.prefix_host_bytes)
            preemptions.add_metric(values, stats.preemptions)
            drafted.add_metric(values, stats.spec_drafted_tokens)
            accepted.add_metric(values, stats.spec_accepted_tokens)
            restarts.add_metric(values, stats.engine_restarts)
        yield from (running, waiting, kv, hits, queries, host, preemptions, restarts, replicas, usable, admitted)
        yield from (queued, decisions, blocks, drafted, accepted, discovered)
