"""The transformers engine driven step by step (no thread): rows joining and leaving the batch."""

import pytest
import torch

from lmgate.backends.transformers.config import TransformersConfig
from lmgate.backends.transformers.engine import Engine
from lmgate.backends.transformers.hf_model import HfModel
from lmgate.backends.transformers.rows import Request
from lmgate.backends.types import FinishReason, SamplingParams


class Outputs:
    """What the engine published, step by step, kept by request id."""

    def __init__(self) -> None:
        self.by_request: dict[str, list[list]] = {}

    def __call__(self, outputs: dict) -> None:
        for request_id, deltas in outputs.items():
            self.by_request.setdefault(request_id, []).append(deltas)

    def of(self, request_id: str) -> list[list]:
        return self.by_request.setdefault(request_id, [])


@pytest.fixture(scope="module")
def published():
    return Outputs()


@pytest.fixture(scope="module")
def engine(hf_model, published):
    return Engine(HfModel(TransformersConfig(model=hf_model)), max_seqs=8, publish=published)


def run(engine: Engine, steps: int) -> None:
    with torch.inference_mode():
        for _ in range(steps):
            engine._apply_inbox(block=False)
            engine.step()
            engine._after_step()
            engine._deliver()


def test_an_aborted_beam_search_leaves_the_batch_and_the_others_go_on(engine, published):
    prompt = engine.model.tokenizer.encode("Once upon a time")
    beams, sampled = published.of("beams"), published.of("sampled")
    search = SamplingParams(use_beam_search=True, n=2, best_of=4, max_tokens=200, ignore_eos=True)
    engine.add(Request("beams", prompt, search, 200))
    engine.add(Request("sampled", prompt, SamplingParams(temperature=0, ignore_eos=True), 200))
    run(engine, 3)
    stats = engine.stats()
    assert stats.running == 5  # four beams and one sampled row share the batch
    assert stats.kv_cells_used > 5 * len(prompt)
    engine.abort("beams")
    run(engine, 1)
    stats = engine.stats()
    assert stats.running == 1
    assert stats.kv_cells_used <= len(prompt) + 5  # only the sampled row's cells are left
    aborted = [d for step in beams for d in step if d.finish_reason is FinishReason.ABORT]
    assert sorted(d.index for d in aborted) == [0, 1]
    # prefill and a decode in the first step, then one token a step: 5 after 4 steps, unhurt by the abort
    assert sum(len(d.token_ids) for step in sampled for d in step) == 5
    engine.abort("sampled")
    run(engine, 1)
    assert engine.stats().running == 0 and engine.stats().kv_cells_used == 0


def test_a_beam_search_that_ends_early_frees_its_beams(engine, published):
    prompt = engine.model.tokenizer.encode("<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
                                           "<|im_start|>assistant\n")  # fmt: skip
    out = published.of("b")
    search = SamplingParams(use_beam_search=True, n=2, best_of=3, max_tokens=160)
    engine.add(Request("b", prompt, search, 160))
    run(engine, 160)
    final = [d for step in out for d in step]
    assert [d.index for d in final] == [0, 1] and all(d.finish_reason is FinishReason.STOP for d in final)
    assert final[0].text == "The capital of France is Paris."
    assert engine.stats().running == 0 and engine.stats().kv_cells_used == 0
