"""Train the embedded default chat model and write it as GGUF (``make model``).

A Llama-shaped decoder of about two million parameters, trained with PyTorch on the CPU on the
generated corpus (quantize/tinychat/corpus.py, plus the function-calling chats of tool_corpus.py,
rendered by the server's chat template code: chats.py) and exported through quantize/gguf_llama.py. The
model applies RoPE in llama.cpp's pairwise order, so its q/k weights are written as they are.
Everything is seeded: the same command gives the same file on the same PyTorch build.

Run: ``python -m lmgate.quantize.tinychat.train --out models/tiny-chat.gguf``
(needs the ``model`` extra: torch and sentencepiece).
"""

from __future__ import annotations

import argparse
import math
import random
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lmgate.backends.chat_template import ChatTemplate
from lmgate.quantize.gguf_llama import LlamaShape, SpmVocab, WeightType, write_llama_gguf
from lmgate.quantize.tinychat.chats import Chat, plain_chat
from lmgate.quantize.tinychat.chats import render as render_chat
from lmgate.quantize.tinychat.corpus import Dialogue, dialogues, plain_text
from lmgate.quantize.tinychat.tokenizer import CHAT_TEMPLATE, SPECIAL_SPLIT, SPECIALS, Tokenizer, train_tokenizer
from lmgate.quantize.tinychat.tool_corpus import tool_chats

SHAPE = LlamaShape(vocab_size=1024, hidden=256, layers=4, heads=8, kv_heads=4, ffn=768, context_length=2048)
#: The share of chat documents that list tools, and how many tool chats the tokenizer reads.
TOOL_SHARE = 0.4
TOKENIZER_TOOL_CHATS = 4000


TEMPLATE = ChatTemplate(CHAT_TEMPLATE)


def render(chat: Chat | Dialogue) -> str:
    """The chat (a plain dialogue: without tools) as the server renders it (chats.py), so training and
    serving text cannot drift apart."""
    return render_chat(chat if isinstance(chat, Chat) else plain_chat(chat), TEMPLATE)


def tokenizer_text(seed: int) -> list[str]:
    """The tokenizer's training lines: the plain dialogues' sentences plus the lines of rendered tool
    chats (tool lists, calls and results, so their JSON gets pieces of its own)."""
    tools = tool_chats(seed + 2)
    fragments = [part for _ in range(TOKENIZER_TOOL_CHATS) for part in SPECIAL_SPLIT.split(render(next(tools)))]
    lines = [line for part in fragments if part not in SPECIALS for line in part.split("\n") if line.strip()]
    return plain_text(seed, 20_000) + lines


def chat_tokens(tokenizer: Tokenizer, text: str) -> tuple[list[int], list[bool]]:
    """``tokenizer.encode_chat(text)`` and, per token, whether it is learnt: the assistant turns'
    content and their closing <|im_end|> (what the model writes when served), not the prompts."""
    ids, learn = tokenizer.encode_chat(text), []
    role = tokenizer.processor.encode("assistant\n")
    content_from = len(ids)  # where the current assistant turn's content starts (none yet)
    for i, token in enumerate(ids):
        if token == tokenizer.im_start_id:
            content_from = i + 1 + len(role) if ids[i + 1 : i + 1 + len(role)] == role else len(ids)
        learn.append(i >= content_from)
        if token == tokenizer.im_end_id:
            content_from = len(ids)
    return ids, learn


def token_stream(tokenizer: Tokenizer, seed: int, n_tokens: int) -> tuple[np.ndarray, np.ndarray]:
    """BOS-separated documents and which tokens are learnt: mostly chats (their answers learnt), one
    in six plain text (all learnt, so completions read well); of the chats, TOOL_SHARE list tools
    (tool_corpus.py)."""
    rng = random.Random(seed + 1)
    chats = dialogues(seed)
    tools = tool_chats(seed + 3)
    out: list[int] = []
    learnt: list[bool] = []
    while len(out) < n_tokens:
        dialogue = next(chats)
        draw = rng.random()
        if draw < 1 / 6:
            ids = [*tokenizer.processor.encode(" ".join(answer for _, answer in dialogue.turns)), tokenizer.im_end_id]
            learn = [True] * len(ids)
        else:
            ids, learn = chat_tokens(tokenizer, render(next(tools) if draw < 1 / 6 + TOOL_SHARE * 5 / 6 else dialogue))
        out += [tokenizer.bos_id, *ids]
        learnt += [False, *learn]
    return np.asarray(out[:n_tokens], dtype=np.int64), np.asarray(learnt[:n_tokens], dtype=bool)


class Block(nn.Module):
    def __init__(self, shape: LlamaShape) -> None:
        super().__init__()
        kv = shape.kv_heads * shape.head_dim
        self.shape = shape
        self.attn_norm = nn.RMSNorm(shape.hidden, eps=shape.rms_eps)
        self.q = nn.Linear(shape.hidden, shape.hidden, bias=False)
        self.k = nn.Linear(shape.hidden, kv, bias=False)
        self.v = nn.Linear(shape.hidden, kv, bias=False)
        self.o = nn.Linear(shape.hidden, shape.hidden, bias=False)
        self.ffn_norm = nn.RMSNorm(shape.hidden, eps=shape.rms_eps)
        self.gate = nn.Linear(shape.hidden, shape.ffn, bias=False)
        self.up = nn.Linear(shape.hidden, shape.ffn, bias=False)
        self.down = nn.Linear(shape.ffn, shape.hidden, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        s = self.shape
        h = self.attn_norm(x)
        q = rope(self.q(h).view(b, t, s.heads, s.head_dim), cos, sin).transpose(1, 2)
        k = rope(self.k(h).view(b, t, s.kv_heads, s.head_dim), cos, sin).transpose(1, 2)
        v = self.v(h).view(b, t, s.kv_heads, s.head_dim).transpose(1, 2)
        att = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        x = x + self.o(att.transpose(1, 2).reshape(b, t, s.hidden))
        h = self.ffn_norm(x)
        return x + self.down(F.silu(self.gate(h)) * self.up(h))


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent pairs (x[2i], x[2i+1]): llama.cpp's LLAMA_ROPE_TYPE_NORM."""
    even, odd = x[..., 0::2], x[..., 1::2]
    return torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=-1).flatten(-2)


class TinyLlama(nn.Module):
    def __init__(self, shape: LlamaShape) -> None:
        super().__init__()
        self.shape = shape
        self.embed = nn.Embedding(shape.vocab_size, shape.hidden)
        self.blocks = nn.ModuleList(Block(shape) for _ in range(shape.layers))
        self.norm = nn.RMSNorm(shape.hidden, eps=shape.rms_eps)
        self.lm_head = nn.Linear(shape.hidden, shape.vocab_size, bias=False)
        for p in self.parameters():
            if p.dim() == 2:
                nn.init.normal_(p, std=0.02)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        t = tokens.shape[1]
        half = self.shape.head_dim // 2
        freqs = self.shape.rope_theta ** (-torch.arange(half, dtype=torch.float32) / half)
        angles = torch.arange(t, dtype=torch.float32)[:, None] * freqs[None, :]
        cos, sin = angles.cos()[None, :, None, :], angles.sin()[None, :, None, :]
        x = self.embed(tokens)
        for block in self.blocks:
            x = block(x, cos, sin)
        return self.lm_head(self.norm(x))

    def gguf_tensors(self) -> dict[str, np.ndarray]:
        def arr(t: torch.Tensor) -> np.ndarray:
            return t.detach().float().numpy()

        out = {
            "token_embd.weight": arr(self.embed.weight),
            "output_norm.weight": arr(self.norm.weight),
            "output.weight": arr(self.lm_head.weight),
        }
        for i, blk in enumerate(self.blocks):
            out |= {
                f"blk.{i}.attn_norm.weight": arr(blk.attn_norm.weight),
                f"blk.{i}.attn_q.weight": arr(blk.q.weight),
                f"blk.{i}.attn_k.weight": arr(blk.k.weight),
                f"blk.{i}.attn_v.weight": arr(blk.v.weight),
                f"blk.{i}.attn_output.weight": arr(blk.o.weight),
                f"blk.{i}.ffn_norm.weight": arr(blk.ffn_norm.weight),
                f"blk.{i}.ffn_gate.weight": arr(blk.gate.weight),
                f"blk.{i}.ffn_up.weight": arr(blk.up.weight),
                f"blk.{i}.ffn_down.weight": arr(blk.down.weight),
            }
        return out


def batches(
    stream: np.ndarray, learnt: np.ndarray, bos_id: int, batch: int, seq_len: int, seed: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Windows that start at a document's BOS, so a chat's later turns are learnt with its start (the
    tool list) in view, as at serving time: (inputs, targets), targets not learnt set to -100."""
    gen = np.random.default_rng(seed)
    documents = np.flatnonzero(stream[: len(stream) - seq_len - 1] == bos_id)
    while True:
        starts = gen.choice(documents, size=batch)
        data = np.stack([stream[s : s + seq_len + 1] for s in starts])
        targets = np.where(np.stack([learnt[s + 1 : s + seq_len + 1] for s in starts]), data[:, 1:], -100)
        yield torch.from_numpy(data[:, :-1]), torch.from_numpy(targets)


def train(
    model: TinyLlama, stream: tuple[np.ndarray, np.ndarray], bos_id: int, steps: int, batch: int, seq_len: int,
    seed: int,
) -> None:  # fmt: skip
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, betas=(0.9, 0.95), weight_decay=0.1)
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))
    )
    started = time.monotonic()
    for step, data in zip(range(steps), batches(*stream, bos_id, batch, seq_len, seed), strict=False):
        inputs, targets = data
        logits = model(inputs)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 50 == 0 or step == steps - 1:
            print(f"step {step:5d}/{steps}  loss {loss.item():.3f}  {time.monotonic() - started:6.0f}s", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("models/tiny-chat.gguf"))
    parser.add_argument("--steps", type=int, default=700)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--seed", type=int, default=1234)
    # One thread by default: float sums then do not depend on the core count, so the file does not
    # either (and on a shared, busy machine one thread trains faster than two fighting for cores).
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    tokenizer = train_tokenizer(tokenizer_text(args.seed), SHAPE.vocab_size)
    stream = token_stream(tokenizer, args.seed, 4_000_000)
    model = TinyLlama(SHAPE)
    print(f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, {len(stream[0])} tokens", flush=True)
    train(model, stream, tokenizer.bos_id, args.steps, args.batch, args.seq_len, args.seed)

    pieces, scores, types = tokenizer.gguf_vocab()
    vocab = SpmVocab(pieces, scores, types, bos_id=tokenizer.bos_id, eos_id=tokenizer.im_end_id, unk_id=0)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_llama_gguf(
        args.out,
        SHAPE,
        model.gguf_tensors(),
        vocab,
        name="tiny-chat",
        weight_type=WeightType.Q8_0,
        chat_template=CHAT_TEMPLATE,
    )
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
