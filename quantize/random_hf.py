"""Random-weight HF checkpoints with a byte-level BPE tokenizer (Qwen2 layout), for tests.

The counterpart of random_model.py in Hugging Face format: a ``Qwen2ForCausalLM`` of any small
shape (q/k/v biases, NeoX RoPE) with a GPT-2-style byte-level BPE tokenizer trained here, with the
``tokenizers`` library, on the project's generated corpus, using Qwen2's own split regex. Nothing
is downloaded. Needs torch and transformers (the ``quantize`` extra).

    python -m lmgate.quantize.random_hf --out /tmp/qwen2-tiny
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from lmgate.quantize.extras import run_script
from lmgate.quantize.hf_to_gguf import PRE_TOKENIZERS
from lmgate.quantize.tinychat.corpus import plain_text

if TYPE_CHECKING:
    from tokenizers import Tokenizer

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def train_byte_level_tokenizer(vocab_size: int, *, seed: int = 0) -> Tokenizer:
    """A ``tokenizers.Tokenizer``: Qwen2's split regex, byte-level alphabet, BPE merges from the corpus."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    qwen2 = next(pattern for pattern, name in PRE_TOKENIZERS.items() if name == "qwen2")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(qwen2), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])  # fmt: skip
    tokenizer.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - len(SPECIALS), initial_alphabet=alphabet, show_progress=False)
    tokenizer.train_from_iterator(plain_text(seed=seed, count=2000), trainer)
    tokenizer.add_special_tokens(SPECIALS)
    return tokenizer


def build_random_qwen2(out: Path, *, hidden: int = 256, layers: int = 2, heads: int = 8, kv_heads: int = 4,
                       ffn: int = 768, vocab_size: int = 1024, seed: int = 0) -> Path:  # fmt: skip
    """Write a random Qwen2 checkpoint (float32 safetensors, tokenizer, chat template) to ``out``."""
    import torch
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    out.mkdir(parents=True, exist_ok=True)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=train_byte_level_tokenizer(vocab_size, seed=seed), eos_token="<|im_end|>",
        pad_token="<|endoftext|>", chat_template=CHATML,
    )  # fmt: skip
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    config = Qwen2Config(
        vocab_size=vocab_size, hidden_size=hidden, intermediate_size=ffn, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=2048,
        tie_word_embeddings=False, eos_token_id=eos, bos_token_id=None, initializer_range=0.2,
    )  # fmt: skip
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config).eval()
    with torch.no_grad():  # biases are zero at init: make them count, so a lost bias shows
        for layer in model.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                proj.bias.normal_(0.0, 0.5)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    config_path = out / "tokenizer_config.json"
    config_json = json.loads(config_path.read_text())
    config_json["add_bos_token"] = False
    config_path.write_text(json.dumps(config_json, indent=2))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Build a random-weight Qwen2 HF checkpoint with a byte-level BPE.")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    run_script("random_hf", lambda: print(f"wrote {build_random_qwen2(args.out, seed=args.seed)}"))


if __name__ == "__main__":
    main()
