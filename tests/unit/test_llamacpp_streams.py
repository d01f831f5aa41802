"""The engine with a KV stream per sequence (``kv_unified`` false), on real llama.cpp with a random tiny model.

Every backend checks its KV book-keeping against llama.cpp after every step (``check_integrity``), so
each test also proves no cell or slot is lost, copies included.
"""

import asyncio

import llama_cpp
import pytest
from pydantic import ValidationError

from lmgate.backends.engine.beam_search import BeamSearch
from lmgate.backends.engine.output_text import OutputText
from lmgate.backends.errors import InvalidRequest, ModelLoadError
from lmgate.backends.llamacpp import beams, speculator
from lmgate.backends.llamacpp.config import LlamaCppConfig
from lmgate.backends.llamacpp.kv_cache import BLOCK_SIZE, KVCacheManager
from lmgate.backends.llamacpp.llama_model import LlamaModel
from lmgate.backends.llamacpp.runner import Runner, Sampled
from lmgate.backends.llamacpp.scheduler import ScheduledChunk, Scheduler, SchedulerConfig, SchedulerOutput
from lmgate.backends.llamacpp.sequence import Sequence
from lmgate.backends.llamacpp.stream_cache import StreamCacheManager
from lmgate.backends.types import FinishReason, SamplingParams

from engine_helpers import assert_idle, assert_same_up_to_ties, collect, make_request, start_backend

PROMPTS = [
    "Hello world",
    "The quick brown fox jumps over the lazy dog",
    "One two three four five six seven eight nine ten eleven twelve",
    "lmgate serves many requests at once",
    "Zebra",
    "The end",
]
LONG = " ".join(PROMPTS * 2)  # ~340 tokens of the random model's tokenizer
STREAMS = {"n_ctx": 2048, "max_seqs": 4, "kv_unified": False}  # 4 streams of 512 cells: max_model_len 512


def usage(choice):
    return choice.deltas[-1].usage


@pytest.fixture(scope="module")
async def streams(random_model_path):
    backend = await start_backend(random_model_path, **STREAMS)
    yield backend
    await backend.shutdown()


@pytest.fixture(scope="module")
async def unified(random_model_path):
    backend = await start_backend(random_model_path, n_ctx=2048, max_seqs=4, prefix_cache=False)
    yield backend
    await backend.shutdown()


@pytest.mark.parametrize(
    ("settings", "stream_cells", "max_model_len"),
    [
        ({"n_ctx": 1024, "max_seqs": 4}, None, 1024),  # no max_model_len: a sequence may use every cell
        ({"n_ctx": 1024, "max_seqs": 4, "max_model_len": 256}, 256, 256),  # it fits a stream: streams
        ({"n_ctx": 1024, "max_seqs": 4, "max_model_len": 257}, None, 257),
        ({"n_ctx": 1000, "max_seqs": 4, "max_model_len": 256}, 256, 256),  # 250 cells, rounded up as llama.cpp does
        ({"n_ctx": 1024, "max_seqs": 3, "max_model_len": 256}, None, 256),  # 3 x 512 cells: 1.5 x n_ctx
        ({"n_ctx": 1024, "max_seqs": 3, "kv_unified": False}, 512, 512),  # asked for: so be it
        ({"n_ctx": 1024, "max_seqs": 4, "max_model_len": 256, "kv_unified": True}, None, 256),
        ({"n_ctx": 1024, "max_seqs": 4, "kv_unified": False}, 256, 256),
        ({"n_ctx": 1024, "max_seqs": 1, "max_model_len": 256}, None, 256),  # one sequence: nothing to split
    ],
)
def test_the_kv_layout_follows_kv_unified_and_max_model_len(random_model_path, settings, stream_cells, max_model_len):
    model = LlamaModel(LlamaCppConfig(gguf=random_model_path, n_threads=1, **settings))
    try:
        assert (model.stream_cells, model.max_model_len) == (stream_cells, max_model_len)
        assert model.num_slots == (
            settings["max_seqs"] if stream_cells else LlamaCppConfig(gguf=random_model_path, **settings).num_slots
        )
        if stream_cells:
            assert model.n_ctx == stream_cells * settings["max_seqs"]
    finally:
        model.close()


def test_a_max_model_len_beyond_a_forced_stream_is_refused_naming_the_fix(random_model_path):
    settings = {"max_seqs": 4, "max_model_len": 512, "kv_unified": False}
    fix = r"does not fit in a KV stream of 256 cells \(n_ctx=1024 / max_seqs=4.*raise n_ctx"
    with pytest.raises(ValidationError, match=fix):  # n_ctx in the config: refused with it (check-config)
        LlamaCppConfig(gguf=random_model_path, n_ctx=1024, **settings)
    with pytest.raises(ModelLoadError, match=fix):  # n_ctx from the model's 1,024 trained positions: at load
        LlamaModel(LlamaCppConfig(gguf=random_model_path, **settings))


async def test_concurrent_greedy_requests_match_one_at_a_time_and_the_unified_cache(streams, unified):
    """More requests than streams, together: each as alone, and as on the unified cache (up to float ties)."""
    prompts = [*PROMPTS, *(f"{p}!" for p in PROMPTS)]
    alone = [await collect(unified, make_request(p, max_tokens=24, logprobs=2)) for p in prompts]
    together = await asyncio.gather(*(collect(streams, make_request(p, max_tokens=24, logprobs=2)) for p in prompts))
    for reference, batched in zip(alone, together, strict=True):
        assert_same_up_to_ties(reference[0], batched[0])
    await assert_idle(streams)


async def test_a_finished_sequences_stream_serves_its_prefix_again(streams, unified):
    [cold] = await collect(streams, make_request(f"Again. {LONG} first", max_tokens=8, logprobs=2))
    [warm] = await collect(streams, make_request(f"Again. {LONG} second", max_tokens=8, logprobs=2))
    [reference] = await collect(unified, make_request(f"Again. {LONG} second", max_tokens=8, logprobs=2))
    prompt_len = len(await streams.tokenize(f"Again. {LONG}"))
    assert usage(cold).cached_tokens < prompt_len // 2
    assert usage(warm).cached_tokens >= prompt_len - 1
    assert_same_up_to_ties(warm, reference)


async def test_a_prefix_is_copied_from_a_sequence_still_running(streams, unified):
    runner = streams.generate(make_request(f"Copied. {LONG} A", max_tokens=150, ignore_eos=True))
    await anext(runner)  # its prompt is computed
    [b] = await collect(streams, make_request(f"Copied. {LONG} B", max_tokens=12, logprobs=2))
    assert streams.stats().running == 1
    await runner.aclose()
    [reference] = await collect(unified, make_request(f"Copied. {LONG} B", max_tokens=12, logprobs=2))
    assert usage(b).cached_tokens >= 48
    assert_same_up_to_ties(b, reference)
    await assert_idle(streams)


@pytest.mark.parametrize("layout", [STREAMS, {"n_ctx": 2048, "max_seqs": 4}], ids=["streams", "unified"])
async def test_a_prompt_sharing_less_than_a_block_reuses_that_head_and_answers_the_same(
    random_model_path, unified, layout
):
    backend = await start_backend(random_model_path, **layout)
    try:
        await collect(backend, make_request(f"Heads one. {LONG}", max_tokens=4))
        [b] = await collect(backend, make_request(f"Heads two. {PROMPTS[1]}", max_tokens=12, logprobs=2))
        first = await backend.tokenize(f"Heads one. {LONG}")
        second = await backend.tokenize(f"Heads two. {PROMPTS[1]}")
        await assert_idle(backend)
    finally:
        await backend.shutdown()
    [reference] = await collect(unified, make_request(f"Heads two. {PROMPTS[1]}", max_tokens=12, logprobs=2))
    common = next(i for i, (x, y) in enumerate(zip(first, second, strict=False)) if x != y)
    assert 0 < common < BLOCK_SIZE and usage(b).cached_tokens == common
    assert usage(reference).cached_tokens == 0  # the reference has no prefix cache
    assert_same_up_to_ties(b, reference)


async def test_prefixes_go_to_host_ram_when_their_stream_is_wanted_and_come_back(random_model_path, unified):
    backend = await start_backend(random_model_path, n_ctx=1024, max_seqs=2, max_model_len=512)
    try:
        for i in range(4):  # two streams: each prompt takes the lowest and puts the one before out
            await collect(backend, make_request(f"{i} {LONG[:300]}", max_tokens=4))
        stats = backend.stats()
        [oldest] = await collect(backend, make_request(f"0 {LONG[:300]}", max_tokens=4, logprobs=2))
    finally:
        await backend.shutdown()
    [reference] = await collect(unified, make_request(f"0 {LONG[:300]}", max_tokens=4, logprobs=2))
    assert stats.prefix_evictions == 3 and stats.prefix_host_bytes > 0
    prompt = usage(oldest).prompt_tokens
    assert usage(oldest).cached_tokens == (prompt - 1) // 16 * 16  # every whole block, from host RAM
    assert_same_up_to_ties(oldest, reference)


async def test_a_prompt_longer_than_a_stream_is_refused(streams):
    """No max_model_len was set: the stream's 512 cells are the limit the gateway checks prompts against."""
    with pytest.raises(InvalidRequest) as err:
        await collect(streams, make_request(LONG * 4, max_tokens=4))
    assert "maximum context length is 512 tokens" in str(err.value)


async def test_beam_search_forks_by_copying_and_frees_every_stream(tiny_chat_path):
    backend = await start_backend(tiny_chat_path, n_ctx=1024, max_seqs=4, max_model_len=256)
    try:
        request = make_request(chat="What does a cow say?", max_tokens=24, n=2, best_of=4, use_beam_search=True)
        choices = await collect(backend, request)
        await assert_idle(backend)
    finally:
        await backend.shutdown()
    assert "moo" in choices[0].text and choices[0].token_ids != choices[1].token_ids
    assert all(c.finish_reason in (FinishReason.STOP, FinishReason.LENGTH) for c in choices)


async def test_a_beam_search_under_load_waits_for_a_stream_per_beam_and_finds_what_it_finds_alone(tiny_chat_path):
    """Three streams, two busy: a search of width 3 waits for all three rather than forking into the one
    idle stream and dropping its other beams (a narrower search, another answer). No prefix cache: the prompt
    is computed whole both times, so equal searches give equal tokens to the bit."""
    backend = await start_backend(tiny_chat_path, n_ctx=768, max_seqs=3, max_model_len=256, prefix_cache=False)
    search = make_request(chat="What does a cow say?", max_tokens=24, n=3, best_of=3, use_beam_search=True)
    try:
        alone = await collect(backend, search)
        started = [asyncio.Event() for _ in range(2)]

        async def busy(i: int) -> None:
            async for _ in backend.generate(make_request(f"Story {i}:", max_tokens=120, ignore_eos=True)):
                started[i].set()

        load = [asyncio.create_task(busy(i)) for i in range(2)]
        for event in started:
            await event.wait()
        under_load = await collect(backend, search)
        await asyncio.gather(*load)
        await assert_idle(backend)
    finally:
        await backend.shutdown()
    assert [c.token_ids for c in under_load] == [c.token_ids for c in alone]
    assert len({tuple(c.token_ids) for c in alone}) == 3


async def test_speculation_in_streams_gives_the_output_without_it(tiny_chat_path):
    plain = await start_backend(tiny_chat_path, n_ctx=1024, max_seqs=4, max_model_len=256)
    ngram = await start_backend(
        tiny_chat_path, n_ctx=1024, max_seqs=4, max_model_len=256, speculative={"method": "ngram"}
    )
    prompt = "A cow says moo. A dog says woof. A cow says moo. A dog says woof. A cow says"
    try:
        [reference] = await collect(plain, make_request(prompt, max_tokens=60, ignore_eos=True, logprobs=2))
        [alone] = await collect(ngram, make_request(prompt, max_tokens=60, ignore_eos=True))
        accepted = ngram.stats().spec_accepted_tokens
        together = await asyncio.gather(
            *(collect(ngram, make_request(prompt, max_tokens=60, ignore_eos=True)) for _ in range(3))
        )
        await assert_idle(ngram)
    finally:
        await plain.shutdown()
        await ngram.shutdown()
    for [choice] in [[alone], *together]:
        assert choice.token_ids == reference.token_ids
    assert accepted > 10  # the lone sequence's drafts were taken


@pytest.fixture(scope="module", params=[False, True], ids=["streams", "unified"])
def model(request, random_model_path):
    """A loaded model (no engine) in either layout."""
    config = LlamaCppConfig(gguf=random_model_path, n_ctx=1024, max_seqs=4, kv_unified=request.param,
                            speculative={"method": "ngram", "max_batch": 4}, n_threads=1)  # fmt: skip
    model = LlamaModel(config)
    yield model
    model.close()


def test_with_streams_only_a_lone_decoding_sequence_speculates(model):
    """llama.cpp evaluates each stream's extra tokens apart: two drafting sequences would cost two
    evaluations of the model, so there the speculator keeps to one sequence (max_batch 1)."""
    built = speculator.build(model._config, model, StreamCacheManager(256, 4))
    assert built is not None and built.config.max_batch == (1 if model.stream_cells else 4)


def test_with_streams_the_runner_orders_the_batch_by_sequence_id(model):
    """llama.cpp makes a micro-batch per run of consecutive ids in batch order: slot order keeps it one;
    the unified cache's batch stays in scheduling order."""
    runner = Runner(model)
    try:
        seqs = [Sequence("r", 0, list(range(10)), SamplingParams(), 4, slot, OutputText()) for slot in (3, 0, 2)]
        for seq, slot in zip(seqs, (3, 0, 2), strict=True):
            seq.slot, seq.num_computed_tokens = slot, 9
        to_sample = runner._fill_batch(SchedulerOutput(tuple(ScheduledChunk(seq, 9, 1) for seq in seqs), (), ()))
        order = [0, 2, 3] if model.stream_cells else [3, 0, 2]
        assert [runner._batch.seq_id[i][0] for i in range(3)] == order
        assert [(seq.slot, i) for seq, i, _ in to_sample] == list(zip(order, range(3), strict=True))
    finally:
        runner.close()


def test_a_beam_search_keeps_its_width_when_one_beam_takes_every_continuation(model):
    """No spare slot (as many as the search is wide): the beams that lost give theirs to the forks of the
    one that won, before it forks. The candidates are given by hand; nothing is decoded."""
    kv = StreamCacheManager(256, 3) if model.stream_cells else KVCacheManager(768, 3, prefix_caching=False)
    scheduler, runner = Scheduler(SchedulerConfig(max_seqs=3, token_budget=64), kv), Runner(model)
    root = Sequence("beam", 0, list(range(5)), SamplingParams(), 8, 0, OutputText())
    search = BeamSearch[Sequence](width=3, n=1, max_tokens=8, end_tokens=frozenset())
    search.live[0].key = search.root = root
    root.beam = search
    scheduler.add(root)

    def step(candidates) -> None:
        output = scheduler.schedule()
        scheduler.update(output)
        sampled = [Sampled(c.seq, -1, None, candidates(c.seq)) for c in output.chunks if c.samples]
        beams.advance(search, sampled, scheduler, runner)

    try:
        step(lambda seq: ((10, -0.1), (11, -0.2), (12, -0.3), (13, -9.0), (14, -9.0), (15, -9.0)))
        assert len(search.live) == 3
        winner = search.live[0].key
        step(lambda seq: ((20, -0.1), (21, -0.2), (22, -0.3), (23, -9.0), (24, -9.0), (25, -9.0)) if seq is winner
             else tuple((30 + i, -9.0) for i in range(6)))  # fmt: skip
        assert len(search.live) == 3 and len(scheduler.running) == 3
        assert [beam.output for beam in search.live] == [[10, 20], [10, 21], [10, 22]]
    finally:
        runner.close()


@pytest.fixture(scope="module")
def streams_model(random_model_path):
    model = LlamaModel(LlamaCppConfig(gguf=random_model_path, n_ctx=1024, max_seqs=4, kv_unified=False, n_threads=1))
    yield model
    model.close()


def test_a_sequence_moved_down_into_a_gap_decodes_as_where_it_was(streams_model):
    """Three sequences in slots 0-2; the middle one ends first and nothing waits, so the last one's cells
    are copied into slot 1 (stream_cache.py ``pack``). It goes on as it would have in slot 2, on llama.cpp."""
    model = streams_model
    assert model.stream_cells is not None

    def run(pack: bool) -> tuple[dict[int, list[int]], dict[int, list[float]], list[tuple[int, int]]]:
        llama_cpp.llama_memory_clear(model.memory, True)
        kv = StreamCacheManager(model.stream_cells, 4, prefix_caching=False)
        moves: list[tuple[int, int]] = []
        packer = kv.pack

        def record() -> list[tuple[int, int]]:
            done = packer() if pack else []
            moves.extend(done)
            return done

        kv.pack = record  # type: ignore[method-assign]
        scheduler, runner = Scheduler(SchedulerConfig(max_seqs=4, token_budget=64, streams=True), kv), Runner(model)
        prompts = [[(7 * i + 3 * k) % 200 + 10 for k in range(12 + 5 * i)] for i in range(3)]
        seqs = [Sequence("r", i, p, SamplingParams(temperature=0.0, logprobs=2), m, i, OutputText())
                for i, (p, m) in enumerate(zip(prompts, (12, 2, 12), strict=True))]  # fmt: skip
        for seq in seqs:
            scheduler.add(seq)
        tokens: dict[int, list[int]] = {i: [] for i in range(3)}
        margins: dict[int, list[float]] = {i: [] for i in range(3)}
        try:
            while scheduler.has_work:
                output = scheduler.schedule()
                sampled = runner.execute(output)
                scheduler.update(output)
                for s in sampled:
                    s.seq.append(s.token_id)
                    tokens[s.seq.index].append(s.token_id)
                    assert s.logprob is not None
                    margins[s.seq.index].append(s.logprob.top[0].logprob - s.logprob.top[1].logprob)
                    if s.seq.num_output_tokens == s.seq.max_tokens:
                        scheduler.finish(s.seq)
                        runner.release(s.seq)
                runner.apply(kv.take_ops())
                held = {slot: llama_cpp.llama_memory_seq_pos_max(model.memory, slot) + 1 for slot in range(4)}
                scheduler.check_integrity(held)
        finally:
            runner.close()
        return tokens, margins, moves

    moved, margins, moves = run(pack=True)
    stayed, _, none = run(pack=False)
    assert moves == [(2, 1)] and none == []
    for i in range(3):
        diverged = next((k for k, (a, b) in enumerate(zip(moved[i], stayed[i], strict=True)) if a != b), None)
        assert diverged is None or margins[i][diverged] < 0.1, f"sequence {i} diverged at {diverged} on a clear winner"
