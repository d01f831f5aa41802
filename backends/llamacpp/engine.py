"""The llama.cpp engine: ``step()`` = schedule → run → postprocess, on its own thread.

The thread, its inbox and the hand-over of each step's deltas are ``EngineThread``'s
(backends/engine/thread.py); this class is what a step does and how requests join and leave. It
runs in an engine process of its own (backends/engine/host.py), never in the gateway.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from lmgate.backends.engine.beam_search import BeamSearch
from lmgate.backends.engine.output_text import next_token
from lmgate.backends.engine.thread import EngineThread, Publish
from lmgate.backends.llamacpp import beams, memory_plan, speculator
from lmgate.backends.llamacpp.config import LlamaCppConfig
from lmgate.backends.llamacpp.embedder import Embedder, EmbedJob
from lmgate.backends.llamacpp.kv_cache import KVCacheManager, KVIntegrityError, default_idle_tokens
from lmgate.backends.llamacpp.kv_manager import KVManager
from lmgate.backends.llamacpp.llama_model import LlamaModel
from lmgate.backends.llamacpp.runner import Runner, Sampled
from lmgate.backends.llamacpp.scheduler import Scheduler, SchedulerConfig, SchedulerOutput
from lmgate.backends.llamacpp.sequence import Sequence, SequenceStatus
from lmgate.backends.llamacpp.stream_cache import StreamCacheManager
from lmgate.backends.types import BackendStats, FinishReason, TokenDelta, Usage

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Request:
    """One request's sequences on the engine: one per choice, or a beam search's root."""

    request_id: str
    seqs: list[Sequence]
    unfinished: int = field(init=False)
    """Choices not yet finished (a beam search's n choices all finish together)."""

    def __post_init__(self) -> None:
        self.unfinished = self.seqs[0].sampling.n


class Engine(EngineThread[Request]):
    """Continuous batching over one ``LlamaModel``."""

    def __init__(
        self,
        model: LlamaModel,
        config: LlamaCppConfig,
        publish: Publish,
        on_failure: Callable[[BaseException], None] | None = None,
    ) -> None:
        super().__init__("lmgate-llamacpp-engine", publish, on_failure)
        self.model = model
        self.runner = Runner(model)
        self.embedder = Embedder(model, config.embed_max_seqs)
        host_cells = self._host_tier_cells(config.cache_ram_mib) if model.restorable else 0
        kv: KVManager
        streams = model.stream_cells is not None
        if model.stream_cells is not None:
            kv = StreamCacheManager(
                model.stream_cells, model.num_slots, prefix_caching=config.prefix_cache, host_cells_max=host_cells
            )
        else:
            idle = default_idle_tokens(model.n_params, model.attention_rows, host_tier=host_cells > 0)
            kv = KVCacheManager(
                model.n_ctx,
                model.num_slots,
                prefix_caching=config.prefix_cache,
                cached_cells_max=model.n_ctx // 8 if config.cache_cells is None else config.cache_cells,
                cached_idle_tokens=config.cache_idle_tokens or idle,
                host_cells_max=host_cells,
            )
        self.scheduler = Scheduler(SchedulerConfig(config.max_seqs, model.n_batch, config.prefill_chunk, streams), kv)
        self.speculator = speculator.build(config, model, kv)
        self._check = config.check_integrity
        self._stats = BackendStats(kv_cells_total=model.n_ctx)
        self._steps = 0
        self._generated = 0

    def stop(self) -> None:
        """Abort everything, end the thread and free llama.cpp's objects."""
        super().stop()
        if self.speculator is not None:
            self.speculator.close()
        self.embedder.close()
        self.runner.close()
        self.model.close()

    def embed(self, job: EmbedJob) -> None:
        """Queue an embedding request (any thread); its ``reply`` is called on the engine thread."""
        self.call_soon(lambda: self.embedder.add(job))

    @property
    def has_work(self) -> bool:
        return self.scheduler.has_work or self.embedder.pending

    def _accept(self, request: Request) -> None:
        if request.seqs[0].sampling.use_beam_search:
            beams.start_search(request.seqs[0], self.model)
        for seq in request.seqs:
            self.scheduler.add(seq)

    def step(self) -> None:
        # One embedding batch, then one generation step: neither kind waits for the other's queue.
        if self.embedder.pending:
            self.embedder.step()
        if self.scheduler.has_work:
            self._generation_step()

    def _generation_step(self) -> None:
        output = self.scheduler.schedule()
        if not output.chunks and not self.scheduler.running and self.scheduler.waiting:
            # An idle cache admits anything that fits it (kv_cache.admit): the head (of the step's
            # adapter: every adapter's was tried) cannot ever run. Ending it beats spinning on it for
            # ever with everything behind it stuck.
            head = next(s for s in self.scheduler.waiting if s.adapter == output.adapter)
            log.error("request %s cannot be admitted into an idle KV cache: aborted", head.request_id)
            self._abort(head.request_id)
            return
        if self.speculator is not None:
            output = self.speculator.extend(output)
        self._mark_started(output)
        sampled = self.runner.execute(output)
        self._postprocess(output, sampled)
        self.scheduler.kv.advance(output.num_tokens)

    @staticmethod
    def _mark_started(output: SchedulerOutput) -> None:
        now = time.monotonic()
        for chunk in output.chunks:
            if chunk.seq.started_at is None:
                chunk.seq.started_at = now

    def _postprocess(self, output: SchedulerOutput, sampled: list[Sampled]) -> None:
        if self.speculator is not None:
            drafted = {id(c.seq): len(c.draft) for c in output.chunks if c.draft}
            for s in sampled:
                if id(s.seq) in drafted:
                    self.speculator.observe(s.seq, drafted[id(s.seq)], len(s.accepted))
        for s in sampled:
            if s.accepted:  # decoded this step: update() counts them computed and commits their blocks
                s.seq.token_ids.extend(s.accepted)
                self._generated += len(s.accepted)
        self.scheduler.update(output)
        for seq in output.starved:
            if seq.beam is not None:  # only beams starve (scheduler.py)
                self._end_search(seq.beam)
        searches: dict[int, list[Sampled]] = {}
        for s in sampled:
            if s.seq.beam is not None:
                searches.setdefault(id(s.seq.beam), []).append(s)
                continue
            s.seq.append(s.token_id)
            self._emit(s.seq.request_id, [self._advance(s)])
        for group in searches.values():
            search = group[0].seq.beam
            assert search is not None
            if not search.closed and beams.advance(search, group, self.scheduler, self.runner):
                self._end_search(search)
        self._generated += len(sampled)
        self._steps += 1

    def _end_search(self, search: BeamSearch[Sequence]) -> None:
        if search.closed:
            return
        request_id = beams.prompt_of(search).request_id
        deltas = beams.finish(search, self.model, self.scheduler, self.runner)
        self._requests[request_id].unfinished -= len(deltas)
        self._emit(request_id, deltas)

    def _advance(self, s: Sampled) -> TokenDelta:
        """Apply a step's tokens of one sequence (already appended): text, stop rules, limits.

        With speculation they are the accepted drafts and then the sampled token, taken one by one as
        if each came from a step of its own: where one ends the choice, the tokens after it are
        dropped from the sequence, as if never sampled.
        """
        seq = s.seq
        if not s.accepted:
            text, finish = self._next_token(seq, s.token_id, seq.num_tokens)
            tokens: tuple[int, ...] = (s.token_id,)
        else:
            tokens = (*s.accepted, s.token_id)
            first, texts = seq.num_tokens - len(tokens), []
            for j, token in enumerate(tokens):
                text, finish = self._next_token(seq, token, first + j + 1)
                texts.append(text)
                if finish is not None:
                    del seq.token_ids[first + j + 1 :]
                    self._generated -= len(tokens) - (j + 1)  # counted in _postprocess, never emitted
                    tokens = tokens[: j + 1]
                    break
            text = "".join(texts)
        usage = None if finish is None else self._finish(seq, finish)
        logprobs = (s.logprob,) if s.logprob is not None else ()
        return TokenDelta(seq.index, text, tokens, logprobs, finish, usage)

    def _next_token(self, seq: Sequence, token: int, num_tokens: int) -> tuple[str, FinishReason | None]:
        """The text and finish of ``token``, the sequence's ``num_tokens``-th token."""
        model = self.model
        stops = token in seq.sampling.stop_token_ids or token in model.eog_ids
        return next_token(
            seq.output,
            None if stops else lambda: model.pieces[token] if seq.shown is None else _shown(seq.shown, token, model),
            lambda: num_tokens - seq.num_prompt_tokens >= seq.max_tokens or num_tokens >= model.max_model_len,
        )

    def _finish(self, seq: Sequence, reason: FinishReason) -> Usage:
        self.scheduler.finish(seq)
        self.runner.release(seq)
        if self.speculator is not None:
            self.speculator.release(seq)
        seq.finish_reason = reason
        self._requests[seq.request_id].unfinished -= 1
        return Usage(seq.num_prompt_tokens, seq.num_output_tokens, seq.num_cached_tokens, seq.queue_time)

    def _abort(self, request_id: str) -> None:
        request = self._requests.get(request_id)
        if request is None:
            return  # finished already, or never seen
        search = request.seqs[0].beam
        if search is not None and not search.closed:
            beams.close(search, self.scheduler, self.runner)
            usage = Usage(beams.prompt_of(search).num_prompt_tokens, 0)
            self._emit(
                request_id, [TokenDelta(i, "", finish_reason=FinishReason.ABORT, usage=usage) for i in range(search.n)]
            )
            request.unfinished = 0
            return
        for seq in request.seqs:
            if seq.status is not SequenceStatus.FINISHED:
                usage = self._finish(seq, FinishReason.ABORT)
                self._emit(request_id, [TokenDelta(seq.index, "", finish_reason=FinishReason.ABORT, usage=usage)])

    def _after_step(self) -> None:
        kv = self.scheduler.kv
        self.runner.apply(kv.take_ops())
        if self._check:
            self.check_integrity()
        cached = kv.reclaimable_cells
        self._stats = BackendStats(
            running=len(self.scheduler.running),
            waiting=len(self.scheduler.waiting),
            kv_cells_used=kv.used_cells - cached,
            kv_cells_cached=cached,
            kv_cells_total=kv.total_cells,
            prefix_queries=kv.prefix_queries,
            prefix_hits=kv.prefix_hits,
            preemptions=self.scheduler.num_preemptions,
            prefix_evictions=kv.evictions,
            prefix_host_bytes=kv.host.cells * self.model.kv_cell_bytes if kv.host is not None else 0,
            steps=self._steps,
            generated_tokens=self._generated,
            spec_drafted_tokens=self.speculator.drafted if self.speculator is not None else 0,
            spec_accepted_tokens=self.speculator.accepted if self.speculator is not None else 0,
        )

    def _host_tier_cells(self, cache_ram_mib: int) -> int:
        available = memory_plan.available_bytes()
        cells = memory_plan.host_tier_cells(cache_ram_mib, self.model.kv_cell_bytes, available)
        if cells * self.model.kv_cell_bytes < cache_ram_mib * 2**20:
            log.warning("cache_ram_mib=%d: %d MiB is available now; the host tier holds at most half",
                        cache_ram_mib, available // 2**20)  # fmt: skip
        return cells

    def check_integrity(self) -> None:
        """The book-keeping agrees with itself and with what llama.cpp holds, slot by slot."""
        kv = self.scheduler.kv
        held = {slot: self.runner.cached_tokens(slot) for slot in range(kv.num_slots)}
        self.scheduler.check_integrity(held)
        copies = kv.host.keys() if kv.host is not None else set()
        if self.runner.host_keys() != copies:  # a copy's bytes kept after the tier let it go would leak
            raise KVIntegrityError(f"host copies {sorted(self.runner.host_keys())} != the tier's {sorted(copies)}")


def _shown(shown: Mapping[int, bytes], token: int, model: LlamaModel) -> bytes:
    """The text ``token`` adds to an output that shows the special tokens ``shown`` (Sequence.shown)."""
    return shown.get(token) or model.pieces[token]
