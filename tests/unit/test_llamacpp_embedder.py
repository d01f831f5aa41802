"""The llama.cpp engine's embeddings, in-process on the shipped model: interleaved with generation."""

from __future__ import annotations

import threading

from lmgate.backends.embedding import Embeddings, EmbedRequest
from lmgate.backends.llamacpp.config import LlamaCppConfig
from lmgate.backends.llamacpp.host import LlamaCppHost
from lmgate.backends.types import GenerateRequest, SamplingParams


def test_an_embedding_request_runs_between_generation_steps_not_after_them(tiny_chat_path):
    config = LlamaCppConfig(gguf=tiny_chat_path, n_threads=2, check_integrity=True, embed_max_seqs=4)
    events: list[str] = []
    done = threading.Event()

    def publish(outputs):
        for deltas in outputs.values():
            events.extend("finished" if d.finish_reason else "token" for d in deltas)
        if "finished" in events:
            done.set()

    def reply(result: Embeddings | BaseException) -> None:
        assert isinstance(result, Embeddings) and len(result.vectors) == 12
        events.append("embedded")

    host = LlamaCppHost("tiny", config, publish, on_failure=lambda exc: done.set())
    try:
        sampling = SamplingParams(temperature=0.0, max_tokens=40, ignore_eos=True)
        host.submit("gen", GenerateRequest("gen", "tiny", sampling, prompt="Once upon a time"))
        # 12 inputs, 4 a batch: three embedding batches, each beside a generation step.
        host.embed(EmbedRequest("emb", "tiny", tuple(f"Story number {i}." for i in range(12))), reply)
        host.engine.start()
        assert done.wait(120)
    finally:
        host.close()
    assert host.engine.failed is None
    embedded = events.index("embedded")
    assert "token" in events[:embedded] and "token" in events[embedded:]  # generation went on around it
    assert embedded < events.index("finished")


def _embed(config: LlamaCppConfig, inputs: tuple[str, ...]) -> Embeddings:
    results: list[Embeddings | BaseException] = []
    done = threading.Event()

    def reply(result: Embeddings | BaseException) -> None:
        results.append(result)
        done.set()

    host = LlamaCppHost("tiny", config, lambda outputs: None, on_failure=lambda exc: done.set())
    try:
        host.embed(EmbedRequest("emb", "tiny", inputs), reply)
        host.engine.start()
        assert done.wait(120)
    finally:
        host.close()
    assert host.engine.failed is None
    result = results[0]
    assert isinstance(result, Embeddings), result
    return result


def test_with_a_kv_stream_per_sequence_an_input_may_use_the_whole_max_model_len(random_model_path):
    # The embedding context's cache is unified whatever the generation layout: with streams it would split
    # max_model_len (512) over embed_max_seqs (8) streams of 256 cells and refuse a 300-token input.
    long_input = "The quick brown fox jumps over the lazy dog. " * 7  # ~320 tokens
    inputs = (long_input, "Hello world")
    streams = LlamaCppConfig(gguf=random_model_path, n_threads=2, n_ctx=2048, max_seqs=4, kv_unified=False,
                             embed_max_seqs=8)  # fmt: skip
    unified = streams.model_copy(update={"kv_unified": True, "max_model_len": 512})
    got, want = _embed(streams, inputs), _embed(unified, inputs)
    assert got.prompt_tokens == want.prompt_tokens > 300
    for a, b in zip(got.vectors, want.vectors, strict=True):
        assert max(abs(x - y) for x, y in zip(a, b, strict=True)) < 1e-5
