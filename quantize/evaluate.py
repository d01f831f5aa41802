"""``lmgate eval``: quality and speed of models side by side, with an accuracy gate.

A model is a GGUF file (run by llama.cpp) or an HF checkpoint directory (run by transformers: FP16/
BF16, GPTQ, AWQ, compressed-tensors), so every output of ``lmgate quantize`` is measured on the
same text. For each model: size on disk (the weights), load time, perplexity on a held-out
text, and against the reference (the first model, normally the F16/F32 one) the mean KL
divergence of the next-token distributions and top-1 agreement; then greedy generation speed on
this machine. Models must share the tokenizer (the text is tokenized once per model; differing
token ids are an error).

``--max-ppl-increase 5%`` makes the run fail (exit status 1) when a model's perplexity is more
than that above the reference's: the gate a CI pipeline puts after ``lmgate quantize``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lmgate.backends.llamacpp.gguf_file import open_gguf
from lmgate.quantize.checkpoint import check_checkpoint
from lmgate.quantize.errors import EvalError

WINDOW = 256


@dataclass(frozen=True)
class ModelReport:
    path: Path
    size_bytes: int
    load_s: float
    perplexity: float
    kl_vs_reference: float | None
    top1_vs_reference: float | None
    tokens_per_s: float

    @property
    def name(self) -> str:
        return self.path.name


@dataclass(frozen=True)
class _Scores:
    logprobs: np.ndarray  # (positions, vocab): log-softmax of each position's logits
    targets: np.ndarray  # (positions,): the next token at each position


def evaluate(paths: list[Path], text: str, *, max_tokens: int = 4096, speed_tokens: int = 64,
             threads: int | None = None) -> list[ModelReport]:  # fmt: skip
    """Reports for every model; the first is the reference. Every model is checked before the first
    one runs: GGUFFileError / CheckpointError for a damaged file or an incomplete checkpoint."""
    for path in paths:
        if path.is_dir():
            check_checkpoint(path)
        else:
            open_gguf(path)
    reports: list[ModelReport] = []
    reference: _Scores | None = None
    reference_ids: list[int] | None = None
    for path in paths:
        scores, ids, load_s, tok_s = _run(path, text, max_tokens, speed_tokens, threads)
        if reference_ids is not None and ids != reference_ids:
            raise EvalError(
                f"{path.name} tokenizes the text differently from {paths[0].name}: not comparable "
                "(eval compares quantizations of one model: the same tokenizer)"
            )
        nll = -scores.logprobs[np.arange(len(scores.targets)), scores.targets]
        kl = top1 = None
        if reference is not None:
            p = np.exp(reference.logprobs)
            kl = float(np.mean(np.sum(p * (reference.logprobs - scores.logprobs), axis=-1)))
            top1 = float(np.mean(reference.logprobs.argmax(-1) == scores.logprobs.argmax(-1)))
        else:
            reference, reference_ids = scores, ids
        reports.append(ModelReport(path, _size(path), load_s, math.exp(float(nll.mean())), kl, top1, tok_s))
    return reports


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.glob("*.safetensors"))
    return path.stat().st_size


def _run(path: Path, text: str, max_tokens: int, speed_tokens: int,
         threads: int | None) -> tuple[_Scores, list[int], float, float]:  # fmt: skip
    if path.is_dir():
        return _run_hf(path, text, max_tokens, speed_tokens, threads)
    import llama_cpp

    started = time.perf_counter()
    try:
        llm = llama_cpp.Llama(str(path), n_ctx=WINDOW, logits_all=True, verbose=False, n_threads=threads)
    except ValueError as exc:  # llama-cpp-python's only word for "llama.cpp returned no model"
        raise EvalError(f"llama.cpp could not load {path}: an architecture it does not support?") from exc
    load_s = time.perf_counter() - started
    try:
        ids = llm.tokenize(text.encode(), add_bos=False, special=False)[:max_tokens]
        bos = llm.token_bos()

        def logits_of(tokens: list[int]) -> np.ndarray:
            llm.reset()
            llm.eval(tokens)
            return np.asarray(llm.scores[: len(tokens)])

        scores = _score(ids, bos, logits_of)
        tok_s = _speed(llm, bos, speed_tokens)
    finally:
        llm.close()
    return scores, ids, load_s, tok_s


def _run_hf(path: Path, text: str, max_tokens: int, speed_tokens: int,
            threads: int | None) -> tuple[_Scores, list[int], float, float]:  # fmt: skip
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if threads:
        torch.set_num_threads(threads)
    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, device_map="cpu").eval()
    load_s = time.perf_counter() - started
    ids = tokenizer.encode(text, add_special_tokens=False)[:max_tokens]
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id  # as llama.cpp

    def logits_of(tokens: list[int]) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.tensor([tokens])).logits[0].float().numpy()

    scores = _score(ids, bos, logits_of)
    with torch.inference_mode():
        started = time.perf_counter()
        out = model.generate(torch.tensor([[bos]]), max_new_tokens=speed_tokens, min_new_tokens=speed_tokens,
                             do_sample=False)  # fmt: skip
        tok_s = (out.shape[1] - 1) / (time.perf_counter() - started)
    return scores, ids, load_s, tok_s


def _score(ids: list[int], bos: int, logits_of: Callable[[list[int]], np.ndarray]) -> _Scores:
    """Next-token log-probabilities over ``ids`` in windows of BOS + up to WINDOW - 1 tokens."""
    logprobs, targets = [], []
    for start in range(0, len(ids) - 1, WINDOW - 1):
        chunk = ids[start : start + WINDOW - 1]
        if len(chunk) < 2:
            break
        logits = np.asarray(logits_of([bos, *chunk])[1 : len(chunk)], dtype=np.float64)  # predicts chunk[1:]
        peak = logits.max(-1, keepdims=True)
        logprobs.append(logits - peak - np.log(np.exp(logits - peak).sum(-1, keepdims=True)))
        targets.append(np.asarray(chunk[1:]))
    return _Scores(np.concatenate(logprobs), np.concatenate(targets))


def _speed(llm: object, bos: int, tokens: int) -> float:
    llm.reset()  # type: ignore[attr-defined]
    started = time.perf_counter()
    generated = 0
    for _ in llm.generate([bos], temp=0.0):  # type: ignore[attr-defined]
        generated += 1
        if generated == tokens:
            break
    return generated / (time.perf_counter() - started)


def gate(reports: list[ModelReport], max_increase: float) -> list[str]:
    """Models whose perplexity is more than ``max_increase`` (0.05 = 5 %) above the reference's."""
    base = reports[0].perplexity
    return [
        f"{r.name}: perplexity {r.perplexity:.3f} is {r.perplexity / base - 1:+.1%} over the reference's {base:.3f} "
        f"(allowed {max_increase:+.1%})"
        for r in reports[1:]
        if r.perplexity > base * (1 + max_increase)
    ]


def markdown(reports: list[ModelReport]) -> str:
    lines = ["| model | size MB | load s | perplexity | KL vs ref | top-1 vs ref | tok/s |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in reports:
        kl = "ref" if r.kl_vs_reference is None else f"{r.kl_vs_reference:.4f}"
        top1 = "ref" if r.top1_vs_reference is None else f"{r.top1_vs_reference:.1%}"
        lines.append(f"| {r.name} | {r.size_bytes / 1e6:.1f} | {r.load_s:.2f} | {r.perplexity:.3f} | {kl} | {top1} "
                     f"| {r.tokens_per_s:.1f} |")  # fmt: skip
    return "\n".join(lines)


def plot(reports: list[ModelReport], path: Path) -> None:
    """Size against perplexity; marker area by tokens/s. Needs matplotlib (the bench extra)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    fastest = max(r.tokens_per_s for r in reports) or 1
    for r in reports:
        ax.scatter(r.size_bytes / 1e6, r.perplexity, s=40 + 400 * r.tokens_per_s / fastest, alpha=0.6)
        ax.annotate(f"{r.name}\n{r.tokens_per_s:.0f} tok/s", (r.size_bytes / 1e6, r.perplexity), fontsize=8)
    ax.set_xlabel("file size (MB)")
    ax.set_ylabel("perplexity (lower is better)")
    ax.set_title("size vs quality (marker: speed)")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
