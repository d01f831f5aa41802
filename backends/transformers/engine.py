"""The batching loop over a transformers model: one thread, one step at a time.

A step admits waiting requests while rows are free (their prompts prefilled together, left-padded,
one row per choice after the prefill), then decodes one token for every running row in a single
forward pass over the shared ``BatchCache``. Finished and aborted rows leave between steps, so a
request never waits for another one to end (continuous batching). Requests and aborts arrive
through a thread-safe inbox; each step's deltas go, one call per request, to the request's sink.
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from lmgate.backends.output_text import OutputText
from lmgate.backends.transformers.batch_cache import BatchCache, new_cache
from lmgate.backends.transformers.detokenizer import Detokenizer
from lmgate.backends.transformers.hf_model import HfModel
from lmgate.backends.transformers.sampler import Choice, RowSampler
from lmgate.backends.types import (
    BackendStats,
    FinishReason,
    SamplingParams,
    TokenDelta,
    TokenLogprob,
    TopLogprob,
    Usage,
)

log = logging.getLogger(__name__)

Sink = Callable[[list[TokenDelta] | BaseException], None]
"""Receives a request's deltas of one step, or the error that ended it. Called on the engine thread."""


@dataclass(eq=False)
class Row:
    """One choice of one request. Owned by the engine thread."""

    index: int
    tokens: list[int]
    """Prompt and output so far; the last one is fed to the model at the next decode."""
    num_prompt: int
    max_tokens: int
    sampler: RowSampler
    detokenizer: Detokenizer
    output: OutputText
    finish: FinishReason | None = None

    @property
    def num_output(self) -> int:
        return len(self.tokens) - self.num_prompt


@dataclass(eq=False)
class Request:
    request_id: str
    prompt: list[int]
    sampling: SamplingParams
    max_tokens: int
    sink: Sink
    rows: list[Row] = field(default_factory=list)
    """One per choice, made at admission (none while waiting)."""
    queued_at: float = field(default_factory=time.monotonic)
    started_at: float | None = None
    unfinished: int = field(init=False)
    """Choices without a finish reason yet."""

    def __post_init__(self) -> None:
        self.unfinished = self.sampling.n


_STOP = object()


class Engine:
    """Continuous batching over one ``HfModel``. ``add``/``abort``/``stats`` are thread-safe."""

    def __init__(self, model: HfModel, max_seqs: int) -> None:
        self.model = model
        self._max_seqs = max_seqs
        new_cache(model.model.config)  # refuse a model whose cache cannot be batched, before serving
        self._batch = BatchCache()
        self._running: list[Row] = []
        self._owner: dict[int, Request] = {}
        self._waiting: collections.deque[Request] = collections.deque()
        self._requests: dict[str, Request] = {}
        self._inbox: queue.SimpleQueue[Request | str | object] = queue.SimpleQueue()
        self._outbox: dict[str, list[TokenDelta]] = {}
        self._token_text: dict[int, str] = {}
        self._stats = BackendStats(kv_cells_total=max_seqs * model.max_model_len)
        self._steps = 0
        self._generated = 0
        self._thread = threading.Thread(target=self._run, name="lmgate-transformers-engine", daemon=True)
        self.failed: BaseException | None = None

    # --- any thread ---

    def start(self) -> None:
        self._thread.start()

    def add(self, request: Request) -> None:
        self._inbox.put(request)

    def abort(self, request_id: str) -> None:
        self._inbox.put(request_id)

    def stats(self) -> BackendStats:
        return self._stats

    def stop(self) -> None:
        """Abort everything and end the thread."""
        if self._thread.is_alive():
            self._inbox.put(_STOP)
            self._thread.join()

    # --- engine thread ---

    def _run(self) -> None:
        try:
            with torch.inference_mode():
                while self._apply_inbox(block=not (self._running or self._waiting)):
                    self.step()
                    self._publish()
                    self._deliver()
        except BaseException as exc:  # the engine is dead: tell every waiting request why
            log.exception("transformers engine failed")
            self.failed = exc
            for request in self._requests.values():
                request.sink(exc)
            self._requests.clear()
        finally:
            for request_id in list(self._requests):
                self._abort(request_id)
            self._deliver()

    def step(self) -> None:
        admitted = self._admit()
        if admitted:
            self._prefill(admitted)
        if self._running:
            self._decode()
        if admitted or self._running:
            self._steps += 1

    def _admit(self) -> list[Request]:
        admitted: list[Request] = []
        rows = len(self._running)
        while self._waiting and rows + self._waiting[0].sampling.n <= self._max_seqs:
            request = self._waiting.popleft()
            rows += request.sampling.n
            admitted.append(request)
        return admitted

    def _prefill(self, group: list[Request]) -> None:
        """One forward pass over the admitted prompts (left-padded); each row samples its first token."""
        width = max(len(r.prompt) for r in group)
        ids = torch.zeros((len(group), width), dtype=torch.long)
        mask = torch.zeros((len(group), width), dtype=torch.long)
        for i, r in enumerate(group):
            ids[i, width - len(r.prompt) :] = torch.tensor(r.prompt)
            mask[i, width - len(r.prompt) :] = 1
        cache = new_cache(self.model.model.config)
        now = time.monotonic()
        logits = self._forward(ids, mask, (mask.cumsum(-1) - 1).clamp(min=0), cache)
        index: list[int] = []
        for i, request in enumerate(group):
            request.started_at = now
            for row in self._new_rows(request):
                self._advance(request, row, row.sampler.sample(logits[i], row.tokens))
                if row.finish is None:
                    index.append(i)
                    self._running.append(row)
                    self._owner[id(row)] = request
        if index:
            self._batch.extend(cache, mask, index)

    def _decode(self) -> None:
        """One token for every running row, in one forward pass."""
        ids = torch.tensor([[row.tokens[-1]] for row in self._running], dtype=torch.long)
        positions = self._batch.real_tokens().unsqueeze(1)
        self._batch.grow()
        logits = self._forward(ids, self._batch.mask, positions, self._batch.cache)
        for i, row in enumerate(self._running):
            self._advance(self._owner[id(row)], row, row.sampler.sample(logits[i], row.tokens))
        self._drop_finished()

    def _forward(self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache: object) -> torch.Tensor:
        out = self.model.model(
            input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache, use_cache=True,
            logits_to_keep=1,
        )  # fmt: skip
        return out.logits[:, -1, : self.model.n_vocab].float()

    def _new_rows(self, request: Request) -> list[Row]:
        s = request.sampling
        banned = self.model.eos_ids if s.ignore_eos else frozenset()
        tok = self.model.tokenizer
        request.rows = [
            Row(
                i, list(request.prompt), len(request.prompt), request.max_tokens,
                RowSampler(s, seed=s.choice_seed(i), banned=banned), Detokenizer(tok, request.prompt),
                OutputText(s.stop),
            )
            for i in range(s.n)
        ]  # fmt: skip
        return request.rows

    def _advance(self, request: Request, row: Row, choice: Choice) -> None:
        """Apply one sampled token to its row: text, stop rules, limits; queue the delta."""
        token = choice.token_id
        row.tokens.append(token)
        self._generated += 1
        s = request.sampling
        finish: FinishReason | None = None
        text = ""
        if token in s.stop_token_ids or (token in self.model.eos_ids and not s.ignore_eos):
            finish = FinishReason.STOP
        else:
            text = row.output.append(row.detokenizer.add(token).encode())
            if row.output.stopped:
                finish = FinishReason.STOP
        if finish is None and (row.num_output >= row.max_tokens or len(row.tokens) >= self.model.max_model_len):
            finish = FinishReason.LENGTH
        usage = None
        if finish is not None:
            if not row.output.stopped:
                text += row.output.append(row.detokenizer.flush().encode())
            text += row.output.finish()
            row.finish = finish
            request.unfinished -= 1
            usage = self._usage(request, row)
        logprobs = (self._logprob(choice),) if choice.logprob is not None else ()
        self._outbox.setdefault(request.request_id, []).append(
            TokenDelta(row.index, text, (token,), logprobs, finish, usage)
        )

    @staticmethod
    def _usage(request: Request, row: Row) -> Usage:
        queued = None if request.started_at is None else request.started_at - request.queued_at
        return Usage(row.num_prompt, row.num_output, 0, queued)

    def _logprob(self, choice: Choice) -> TokenLogprob:
        assert choice.logprob is not None
        top = tuple(TopLogprob(t, text := self._text(t), lp, text.encode()) for t, lp in choice.top)
        text = self._text(choice.token_id)
        return TokenLogprob(choice.token_id, text, choice.logprob, text.encode(), top)

    def _text(self, token_id: int) -> str:
        text = self._token_text.get(token_id)
        if text is None:
            text = self._token_text[token_id] = self.model.tokenizer.decode([token_id])
        return text

    def _drop_finished(self) -> None:
        keep = [i for i, row in enumerate(self._running) if row.finish is None]
        if len(keep) == len(self._running):
            return
        for row in self._running:
            if row.finish is not None:
                del self._owner[id(row)]
        self._running = [self._running[i] for i in keep]
        self._batch.keep(keep)

    def _deliver(self) -> None:
        for request_id, deltas in self._outbox.items():
            request = self._requests.get(request_id)
            if request is None:
                continue  # failed and told already
            request.sink(deltas)
            if request.unfinished == 0:
                del self._requests[request_id]
        self._outbox.clear()

    def _apply_inbox(self, *, block: bool) -> bool:
        """Apply queued commands (waiting for one if ``block``); False once asked to stop."""
        while True:
            try:
                command = self._inbox.get(block=block)
            except queue.Empty:
                return True
            block = False
            if command is _STOP:
                return False
            if isinstance(command, Request):
                self._requests[command.request_id] = command
                self._waiting.append(command)
            elif isinstance(command, str):
                self._abort(command)

    def _abort(self, request_id: str) -> None:
        """End every unfinished choice of the request (waiting or running) with ``abort``."""
        request = self._requests.get(request_id)
        if request is None:
            return  # finished already, or never seen
        if request in self._waiting:
            self._waiting.remove(request)
        outbox = self._outbox.setdefault(request_id, [])
        finished = {row.index for row in request.rows if row.finish is not None}
        for row in request.rows:
            row.finish = row.finish or FinishReason.ABORT
        usage = Usage(len(request.prompt), 0)
        for index in range(request.sampling.n):
            if index not in finished:
                row_usage = self._usage(request, request.rows[index]) if request.rows else usage
                outbox.append(TokenDelta(index, "", finish_reason=FinishReason.ABORT, usage=row_usage))
        request.unfinished = 0
        self._drop_finished()

    def _publish(self) -> None:
        self._stats = BackendStats(
            running=len(self._running),
            waiting=sum(r.sampling.n for r in self._waiting),
            kv_cells_used=int(self._batch.mask.sum()),
            kv_cells_total=self._max_seqs * self.model.max_model_len,
            steps=self._steps,
            generated_tokens=self._generated,
        )
