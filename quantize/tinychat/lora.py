"""Train the example LoRA adapter of the embedded chat model and write it as GGUF (``make lora-model``).

The adapter teaches models/tiny-chat.gguf one answer style: every assistant answer starts with
"Woof! " (a dog persona), on the same generated dialogues the model was trained on
(quantize/tinychat/corpus.py). It is small (rank 8 over the attention value/output and MLP weights
of every layer, about 100 kB) and changes every greedy answer in a way a test can see, while the base
model's answers stay as they were: the tests serve both from one copy of the weights.

The base weights are read from the GGUF (Q8_0, dequantized) into the training script's own model
(quantize/tinychat/train.py) and frozen; only the LoRA pairs train. Prompts are tokenized by llama.cpp
from the GGUF's own vocabulary, so the adapter sees exactly the tokens the server feeds it. Seeded:
the same command gives the same file on the same PyTorch build. The file records a digest of the base
model's weights (a test checks they are the shipped model's: retrain after ``make model``).

Run: ``python -m lmgate.quantize.tinychat.lora --base models/tiny-chat.gguf --out models/tiny-chat-woof.lora.gguf``
(needs torch: the ``model`` extra).
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Iterator
from pathlib import Path

import gguf
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lmgate.backends.llamacpp.config import LlamaCppConfig
from lmgate.backends.llamacpp.llama_model import LlamaModel
from lmgate.quantize.gguf_lora import LoraPair, weights_sha256, write_lora_gguf
from lmgate.quantize.tinychat.corpus import Dialogue, dialogues
from lmgate.quantize.tinychat.train import SHAPE, TinyLlama, render

PREFIX = "Woof! "
"""What the adapter puts before every answer."""
TARGETS = {"v": "attn_v", "o": "attn_output", "gate": "ffn_gate", "up": "ffn_up", "down": "ffn_down"}
"""Block attribute → GGUF weight name of the adapted weights (not q/k: their rows are in RoPE order)."""


class LoraLinear(nn.Module):
    """A frozen linear layer plus a trainable low-rank update ``alpha / rank * B @ A`` (B starts at zero)."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float) -> None:
        super().__init__()
        self.base = base.requires_grad_(False)
        self.a = nn.Parameter(torch.randn(rank, base.in_features) / base.in_features**0.5)
        self.b = nn.Parameter(torch.zeros(base.out_features, rank))
        self.scale = alpha / rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.base(x) + (x @ self.a.T @ self.b.T) * self.scale
        return out


def load_base(path: Path) -> TinyLlama:
    """The training script's model with the GGUF's weights (dequantized), every parameter frozen."""
    model = TinyLlama(SHAPE)
    names = {gguf_name: param for gguf_name, param in _gguf_params(model)}
    for tensor in gguf.GGUFReader(path).tensors:
        data = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        with torch.no_grad():
            names[tensor.name].copy_(torch.from_numpy(np.array(data, dtype=np.float32)))
    return model.requires_grad_(False)


def _gguf_params(model: TinyLlama) -> Iterator[tuple[str, nn.Parameter]]:
    """Each parameter under its GGUF tensor name (the inverse of ``TinyLlama.gguf_tensors``)."""
    yield "token_embd.weight", model.embed.weight
    yield "output_norm.weight", model.norm.weight
    yield "output.weight", model.lm_head.weight
    for i, blk in enumerate(model.blocks):
        yield f"blk.{i}.attn_norm.weight", blk.attn_norm.weight
        yield f"blk.{i}.ffn_norm.weight", blk.ffn_norm.weight
        for attr, name in {"q": "attn_q", "k": "attn_k", **TARGETS}.items():
            yield f"blk.{i}.{name}.weight", getattr(blk, attr).weight


def attach_lora(model: TinyLlama, rank: int, alpha: float) -> dict[str, LoraLinear]:
    """Wrap every target layer; the wrappers by the GGUF name of the weight they adapt."""
    adapted: dict[str, LoraLinear] = {}
    for i, blk in enumerate(model.blocks):
        for attr, name in TARGETS.items():
            layer = LoraLinear(getattr(blk, attr), rank, alpha)
            setattr(blk, attr, layer)
            adapted[f"blk.{i}.{name}.weight"] = layer
    return adapted


def styled(dialogue: Dialogue) -> Dialogue:
    return Dialogue(dialogue.system, tuple((user, PREFIX + answer) for user, answer in dialogue.turns))


def token_stream(base: Path, seed: int, n_tokens: int) -> np.ndarray:
    """Styled dialogues, BOS-separated, tokenized by llama.cpp from the base model's vocabulary."""
    vocab = LlamaModel(LlamaCppConfig(gguf=base, n_ctx=64, max_seqs=1, prefix_cache=False, n_batch=16, n_ubatch=16))
    try:
        out: list[int] = []
        chats = dialogues(seed)
        while len(out) < n_tokens:
            out += vocab.tokenize(render(styled(next(chats))), add_special=True, parse_special=True)
    finally:
        vocab.close()
    return np.asarray(out[:n_tokens], dtype=np.int64)


def train(model: TinyLlama, params: list[nn.Parameter], stream: np.ndarray, steps: int, lr: float, seed: int) -> None:
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    gen = np.random.default_rng(seed)
    started, batch, seq_len = time.monotonic(), 16, 128
    for step in range(steps):
        starts = gen.integers(0, len(stream) - seq_len - 1, size=batch)
        data = torch.from_numpy(np.stack([stream[s : s + seq_len + 1] for s in starts]))
        logits = model(data[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), data[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 25 == 0 or step == steps - 1:
            print(f"step {step:4d}/{steps}  loss {loss.item():.3f}  {time.monotonic() - started:5.0f}s", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=Path, default=Path("models/tiny-chat.gguf"))
    parser.add_argument("--out", type=Path, default=Path("models/tiny-chat-woof.lora.gguf"))
    parser.add_argument("--steps", type=int, default=480)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--alpha", type=float, default=16.0)
    parser.add_argument("--seed", type=int, default=1234)
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    random.seed(args.seed)
    model = load_base(args.base)
    adapted = attach_lora(model, args.rank, args.alpha)
    stream = token_stream(args.base, args.seed + 7, 200_000)
    params = [p for layer in adapted.values() for p in (layer.a, layer.b)]
    print(f"{sum(p.numel() for p in params)} LoRA parameters, {len(stream)} tokens", flush=True)
    train(model, params, stream, args.steps, args.lr, args.seed)
    pairs: dict[str, LoraPair] = {
        name: (layer.a.detach().numpy(), layer.b.detach().numpy()) for name, layer in adapted.items()
    }
    write_lora_gguf(args.out, arch=SHAPE.arch, alpha=args.alpha, pairs=pairs, name=args.out.name.split(".")[0],
                    base_sha256=weights_sha256(args.base))  # fmt: skip
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e3:.0f} kB)")


if __name__ == "__main__":
    main()
