"""The batching loop over a transformers model: one thread, one step at a time.

A step admits waiting requests while rows are free (their prompts prefilled together, left-padded,
one row per choice or beam after the prefill), then decodes one token for every running row in a
single forward pass over the shared ``BatchCache``. Finished and aborted rows leave between steps,
so a request never waits for another one to end (continuous batching). A beam search's rows are
re-chosen every step by the shared policy (backends/engine/beam_search.py): a beam that continues several
ways has its cache row repeated, a beam that lost is dropped. Requests and aborts arrive through a
thread-safe inbox (backends/engine/thread.py); each step's deltas go to ``publish``, all of a
step's in one call. It runs in an engine process of its own (backends/engine/host.py).
"""

from __future__ import annotations

import collections
import contextlib
import time
from collections.abc import Callable

import torch

from lmgate.backends.engine.beam_search import BeamSearch, final_deltas
from lmgate.backends.engine.output_text import OutputText, next_token
from lmgate.backends.engine.thread import EngineThread, Publish
from lmgate.backends.transformers.batch_cache import BatchCache, new_cache
from lmgate.backends.transformers.detokenizer import Detokenizer
from lmgate.backends.transformers.hf_model import HfModel
from lmgate.backends.transformers.rows import BeamRow, Request, Row
from lmgate.backends.transformers.sampler import Choice, RowSampler
from lmgate.backends.types import BackendStats, FinishReason, TokenDelta, TokenLogprob, TopLogprob


class Engine(EngineThread[Request]):
    """Continuous batching over one ``HfModel``; the thread and its inbox are ``EngineThread``'s."""

    def __init__(
        self,
        model: HfModel,
        max_seqs: int,
        publish: Publish,
        on_failure: Callable[[BaseException], None] | None = None,
    ) -> None:
        super().__init__("lmgate-transformers-engine", publish, on_failure)
        self.model = model
        self._max_seqs = max_seqs
        new_cache(model.model.config)  # refuse a model whose cache cannot be batched, before serving
        self._batch = BatchCache()
        self._running: list[Row | BeamRow] = []
        """In the order of the batch cache's rows."""
        self._waiting: collections.deque[Request] = collections.deque()
        self._token_text: dict[int, str] = {}
        self._stats = BackendStats(kv_cells_total=max_seqs * model.max_model_len)
        self._steps = 0
        self._generated = 0

    @property
    def has_work(self) -> bool:
        return bool(self._running or self._waiting)

    def _accept(self, request: Request) -> None:
        self._waiting.append(request)

    def _thread_context(self) -> contextlib.AbstractContextManager[object]:
        mode: contextlib.AbstractContextManager[object] = torch.inference_mode()  # torch is untyped here
        return mode

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
        while self._waiting and rows + self._waiting[0].rows_needed <= self._max_seqs:
            request = self._waiting.popleft()
            rows += request.rows_needed
            admitted.append(request)
        return admitted

    def _prefill(self, group: list[Request]) -> None:
        """One forward pass over the admitted prompts (left-padded); each choice samples its first
        token, each beam search takes its first step."""
        width = max(len(r.prompt) for r in group)
        ids = torch.zeros((len(group), width), dtype=torch.long)
        mask = torch.zeros((len(group), width), dtype=torch.long)
        for i, r in enumerate(group):
            ids[i, width - len(r.prompt) :] = torch.tensor(r.prompt)
            mask[i, width - len(r.prompt) :] = 1
        cache = new_cache(self.model.model.config)
        logits = self._forward(ids, mask, (mask.cumsum(-1) - 1).clamp(min=0), cache)
        index: list[int] = []
        now = time.monotonic()
        for i, request in enumerate(group):
            request.started_at = now
            rows: list[Row | BeamRow] = []
            if request.sampling.use_beam_search:
                request.search = self._new_search(request)
                root = BeamRow(request, request.search.live[0], list(request.prompt))
                rows += [beam for _, beam in self._search_step(request, [(i, root)], logits)]
            else:
                for row in self._new_rows(request):
                    if self._advance(row, row.sampler.sample(logits[i], row.tokens)):
                        rows.append(row)
            index += [i] * len(rows)
            self._running += rows
        if index:
            self._batch.extend(cache, mask, index)

    def _decode(self) -> None:
        """One token for every running row, in one forward pass; then the rows of the next step."""
        ids = torch.tensor([[row.tokens[-1]] for row in self._running], dtype=torch.long)
        positions = self._batch.real_tokens().unsqueeze(1)
        self._batch.grow()
        logits = self._forward(ids, self._batch.mask, positions, self._batch.cache)
        keep: list[int] = []
        running: list[Row | BeamRow] = []
        searches: dict[int, list[tuple[int, BeamRow]]] = {}
        for i, row in enumerate(self._running):
            if isinstance(row, BeamRow):
                searches.setdefault(id(row.request), []).append((i, row))
            elif self._advance(row, row.sampler.sample(logits[i], row.tokens)):
                keep.append(i)
                running.append(row)
        for beams in searches.values():
            for i, row in self._search_step(beams[0][1].request, beams, logits):
                keep.append(i)
                running.append(row)
        self._reshape(running, keep)

    def _forward(self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache: object) -> torch.Tensor:
        out = self.model.model(
            input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache, use_cache=True,
            logits_to_keep=1,
        )  # fmt: skip
        logits: torch.Tensor = out.logits[:, -1, : self.model.n_vocab].float()  # typed for mypy where torch is
        return logits

    # --- sampled choices ---

    def _new_rows(self, request: Request) -> list[Row]:
        s = request.sampling
        banned = self.model.eos_ids if s.ignore_eos else frozenset()
        tok = self.model.tokenizer
        request.rows = [
            Row(
                request, i, list(request.prompt),
                RowSampler(s, seed=s.choice_seed(i), banned=banned,
                           matcher=request.matchers[i] if request.matchers else None),
                Detokenizer(tok, request.prompt), OutputText(s.stop),
            )
            for i in range(s.n)
        ]  # fmt: skip
        return request.rows

    def _advance(self, row: Row, choice: Choice) -> bool:
        """Apply one sampled token to its row (text, stop rules, limits) and queue the delta; True
        while the row goes on."""
        request, s, token = row.request, row.request.sampling, choice.token_id
        row.tokens.append(token)
        self._generated += 1
        stops = token in s.stop_token_ids or (token in self.model.eos_ids and not s.ignore_eos)
        text, finish = next_token(
            row.output,
            None if stops else lambda: row.detokenizer.add(token).encode(),
            lambda: row.num_output >= request.max_tokens or len(row.tokens) >= self.model.max_model_len,
            lambda: row.detokenizer.flush().encode(),
        )
        usage = None
        if finish is not None:
            row.finish = finish
            request.unfinished -= 1
            usage = request.usage(row.num_output)
        logprobs = (self._logprob(choice),) if choice.logprob is not None else ()
        self._emit(request.request_id, [TokenDelta(row.index, text, (token,), logprobs, finish, usage)])
        return finish is None

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

    # --- beam search ---

    def _new_search(self, request: Request) -> BeamSearch[None]:
        s = request.sampling
        ends = frozenset(s.stop_token_ids) | (frozenset() if s.ignore_eos else self.model.eos_ids)
        return BeamSearch[None](width=s.beam_width, n=s.n, max_tokens=request.max_tokens, end_tokens=ends,
                          length_penalty=s.length_penalty)  # fmt: skip

    def _search_step(self, request: Request, beams: list[tuple[int, BeamRow]],
                     logits: torch.Tensor) -> list[tuple[int, BeamRow]]:  # fmt: skip
        """One policy step over the beams' logits (row i of ``logits`` for a beam at batch row i);
        returns the next step's beams with the batch row each continues from."""
        search = request.search
        assert search is not None
        width = 2 * search.width  # ends among the candidates still leave `width` continuations
        candidates, parents = {}, {}
        for i, row in beams:
            top = torch.topk(torch.log_softmax(logits[i], dim=-1), min(width, logits.shape[-1]))
            candidates[id(row.beam)] = list(zip(top.indices.tolist(), top.values.tolist(), strict=True))
            parents[id(row.beam)] = (i, row)
        continuations = search.step(candidates)
        self._generated += len(beams)
        if search.done:
            self._finish_search(request)
            return []
        nxt = []
        for beam, c in zip(search.live, continuations, strict=True):
            i, parent = parents[id(c.parent)]
            nxt.append((i, BeamRow(request, beam, [*parent.tokens, c.token])))
        return nxt

    def _finish_search(self, request: Request) -> None:
        """The n best hypotheses as final deltas; text is made here, once."""
        search = request.search
        assert search is not None
        tokenizer = self.model.tokenizer
        deltas = final_deltas(search.best(), lambda ids: tokenizer.decode(ids, skip_special_tokens=True).encode(),
                              request.sampling.stop, request.usage)  # fmt: skip
        search.closed = True
        request.unfinished = 0
        self._emit(request.request_id, deltas)

    # --- book-keeping ---

    def _reshape(self, running: list[Row | BeamRow], rows: list[int]) -> None:
        """The running list becomes ``running``, whose cache rows are the current ``rows``."""
        if rows != list(range(len(self._running))):
            self._batch.keep(rows)
        self._running = running

    def _abort(self, request_id: str) -> None:
        """End every unfinished choice of the request (waiting or running) with ``abort``."""
        request = self._requests.get(request_id)
        if request is None:
            return  # finished already, or never seen
        if request in self._waiting:
            self._waiting.remove(request)
        done = {row.index for row in request.rows if row.finish is not None}
        outputs = {row.index: row.num_output for row in request.rows}
        self._emit(request_id, [
            TokenDelta(i, "", finish_reason=FinishReason.ABORT, usage=request.usage(outputs.get(i, 0)))
            for i in range(request.sampling.n)
            if i not in done
        ])  # fmt: skip
        request.unfinished = 0
        if request.search is not None:
            request.search.closed = True
        keep = [i for i, row in enumerate(self._running) if row.request is not request]
        self._reshape([self._running[i] for i in keep], keep)

    def _after_step(self) -> None:
        self._stats = BackendStats(
            running=len(self._running),
            waiting=sum(r.rows_needed for r in self._waiting),
            kv_cells_used=int(self._batch.mask.sum()),
            kv_cells_total=self._max_seqs * self.model.max_model_len,
            steps=self._steps,
            generated_tokens=self._generated,
        )
