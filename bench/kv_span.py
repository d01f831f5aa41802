"""What a decode step costs as the occupied span of a unified KV cache grows.

lmgate's llama.cpp context is ``kv_unified`` (one pool of cells shared by every sequence id: prefix
sharing needs it). llama.cpp's attention then runs each token over the whole occupied span of the
pool (``n_kv``: the highest used cell, rounded up to 256), masking out the other sequences' cells;
llama-server's default slots are separate streams, each attending over its own cells. This times
one 16-sequence decode step directly on llama.cpp (no server) in four layouts:

- ``streams``: 16 separate streams (``kv_unified`` off), as llama-server runs;
- ``unified``: one pool, the 16 sequences packed at its start (n_kv about 1,000);
- ``unified, span N``: the same, with one more cell in use at cell ~N (a cached prefix placed
  there), so each step attends over N cells.

    python -m lmgate.bench.kv_span --model .cache/bench/bench-200m.q8_0.gguf
"""

from __future__ import annotations

import argparse
import statistics
import time

import llama_cpp

SEQS = 16
PROMPT = 13


@llama_cpp.llama_log_callback  # type: ignore[misc]  # kept at module level: llama.cpp holds the pointer
def _quiet(_level: int, _text: bytes, _user_data: object) -> None:
    pass


def step_ms(model: llama_cpp.llama_model_p, *, unified: bool, span: int, threads: int, steps: int = 48) -> float:
    """The median time of one decode step of ``SEQS`` sequences (one token each), in ms."""
    params = llama_cpp.llama_context_default_params()
    params.n_ctx, params.n_batch, params.n_ubatch = 16384, 512, 512
    params.n_seq_max = SEQS if not unified else 2 * SEQS  # lmgate: running plus cached slots
    params.n_threads = params.n_threads_batch = threads
    params.kv_unified, params.no_perf = unified, True
    ctx = llama_cpp.llama_init_from_model(model, params)
    batch = llama_cpp.llama_batch_init(512, 0, params.n_seq_max)

    def decode(items: list[tuple[int, int, int]]) -> None:
        batch.n_tokens = len(items)
        for i, (token, pos, seq) in enumerate(items):
            batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = token, pos, 1, 1
            batch.seq_id[i][0] = seq
        if llama_cpp.llama_decode(ctx, batch) != 0:
            raise RuntimeError("llama_decode failed")

    try:
        if span:  # fill cells up to ``span`` with a spare sequence, then keep only its last few
            filler = params.n_seq_max - 1
            for start in range(0, span, 256):
                decode([(100 + i % 50, start + i, filler) for i in range(min(256, span - start))])
            llama_cpp.llama_memory_seq_rm(llama_cpp.llama_get_memory(ctx), filler, 0, span - 64)
        for seq in range(SEQS):
            decode([(10 + (t * 7 + seq) % 90, t, seq) for t in range(PROMPT)])
        times = []
        for k in range(steps):
            started = time.perf_counter()
            decode([(20 + (k + seq) % 90, PROMPT + k, seq) for seq in range(SEQS)])
            times.append(time.perf_counter() - started)
        return 1000 * statistics.median(times)
    finally:
        llama_cpp.llama_batch_free(batch)
        llama_cpp.llama_free(ctx)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=".cache/bench/bench-200m.q8_0.gguf")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    llama_cpp.llama_log_set(_quiet, None)
    llama_cpp.llama_backend_init()
    model = llama_cpp.llama_model_load_from_file(args.model.encode(), llama_cpp.llama_model_default_params())
    layouts = [("streams", False, 0), ("unified", True, 0), ("unified, span 3000", True, 3000),
               ("unified, span 12000", True, 12000)]  # fmt: skip
    results: dict[str, list[float]] = {name: [] for name, _, _ in layouts}
    for _ in range(args.rounds):  # interleaved: the host's drift hits every layout alike
        for name, unified, span in layouts:
            results[name].append(step_ms(model, unified=unified, span=span, threads=args.threads))
    base = statistics.median(results["streams"])
    for name, times in results.items():
        ms = statistics.median(times)
        print(f"{name:22s} {ms:6.1f} ms/step  {ms / base:4.2f}x  ({', '.join(f'{t:.1f}' for t in times)})")
    llama_cpp.llama_model_free(model)


if __name__ == "__main__":
    main()
