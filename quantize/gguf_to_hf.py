"""A Llama GGUF back to a Hugging Face checkpoint (safetensors + config + tokenizer), float32.

So the same model runs on llama.cpp and on engines that read HF checkpoints (vLLM,
transformers): the embedded tiny-chat model serves the vLLM tier's tests with answers that can be
checked. The weights are dequantized; q/k rows are put back from llama.cpp's pairwise RoPE order
into HF's half-split order (the inverse of llama.cpp's converter); the SentencePiece vocabulary
(pieces, scores, types) becomes a ``tokenizers`` BPE model with merges ranked by score, saved by
transformers as tokenizer.json. Needs safetensors, tokenizers and transformers (the ``quantize``
extra; the vLLM tier has them too): without them the script says what to install.

    python -m lmgate.quantize.gguf_to_hf models/tiny-chat.gguf /tmp/tiny-chat-hf
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import gguf
import numpy as np

from lmgate.backends.llamacpp.gguf_file import open_gguf
from lmgate.quantize.extras import run_script

_LAYER_NAMES = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
_TOP_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}


def _field(reader: gguf.GGUFReader, key: str, default: object = None) -> object:
    field = reader.fields.get(key)
    return default if field is None else field.contents()


def unpermute(weights: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's pairwise-RoPE row order back to HF's (inverse of convert_hf_to_gguf's permute)."""
    return (
        weights.reshape(heads, weights.shape[0] // heads // 2, 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def convert(source: Path, out: Path) -> Path:
    """Write the HF checkpoint of the GGUF ``source`` into ``out``; GGUFFileError for a damaged file,
    ModuleNotFoundError when safetensors, tokenizers or transformers is missing."""
    from safetensors.numpy import save_file
    from transformers import PreTrainedTokenizerFast  # noqa: F401 - fail before the slow part, not after it

    reader = open_gguf(source)
    arch = str(_field(reader, "general.architecture"))
    if arch != "llama":
        raise ValueError(f"{source}: only the llama architecture converts, not {arch!r}")
    heads = int(_field(reader, "llama.attention.head_count"))  # type: ignore[arg-type]
    kv_heads = int(_field(reader, "llama.attention.head_count_kv", heads))  # type: ignore[arg-type]
    hidden = int(_field(reader, "llama.embedding_length"))  # type: ignore[arg-type]
    tensors: dict[str, np.ndarray] = {}
    for tensor in reader.tensors:
        data = gguf.quants.dequantize(tensor.data, tensor.tensor_type).astype(np.float32)
        data = data.reshape([int(d) for d in reversed(tensor.shape)])
        stem, _, _ = tensor.name.rpartition(".")
        if stem.startswith("blk."):
            _, layer, kind = stem.split(".")
            if kind == "attn_q":
                data = unpermute(data, heads)
            elif kind == "attn_k":
                data = unpermute(data, kv_heads)
            tensors[f"model.layers.{layer}.{_LAYER_NAMES[kind]}.weight"] = np.ascontiguousarray(data)
        else:
            tensors[f"{_TOP_NAMES[stem]}.weight"] = np.ascontiguousarray(data)
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "model.safetensors"))
    vocab = _write_tokenizer(reader, out)
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": int(_field(reader, "llama.feed_forward_length")),  # type: ignore[arg-type]
        "num_hidden_layers": int(_field(reader, "llama.block_count")),  # type: ignore[arg-type]
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": hidden // heads,
        "vocab_size": vocab["size"],
        "rms_norm_eps": float(_field(reader, "llama.attention.layer_norm_rms_epsilon", 1e-5)),  # type: ignore[arg-type]
        "rope_theta": float(_field(reader, "llama.rope.freq_base", 10000.0)),  # type: ignore[arg-type]
        "max_position_embeddings": int(_field(reader, "llama.context_length", 2048)),  # type: ignore[arg-type]
        "bos_token_id": vocab["bos"],
        "eos_token_id": vocab["eos"],
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
    }
    (out / "config.json").write_text(json.dumps(config, indent=2))
    generation = {"bos_token_id": vocab["bos"], "eos_token_id": vocab["eos"]}
    (out / "generation_config.json").write_text(json.dumps(generation))
    return out


def _write_tokenizer(reader: gguf.GGUFReader, out: Path) -> dict[str, int]:
    """tokenizer.json for the GGUF's SentencePiece-BPE vocabulary, as HF writes Llama's.

    SentencePiece BPE merges the adjacent pair whose merged piece scores highest; a BPE model whose
    merges are ranked by that score tokenizes identically (this is how HF converts Llama).
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, processors
    from transformers import PreTrainedTokenizerFast

    pieces = [str(p) for p in _field(reader, "tokenizer.ggml.tokens")]  # type: ignore[union-attr]
    scores = [float(x) for x in _field(reader, "tokenizer.ggml.scores")]  # type: ignore[union-attr]
    types = [gguf.TokenType(int(t)) for t in _field(reader, "tokenizer.ggml.token_type")]  # type: ignore[union-attr]
    bos, eos, unk = (int(_field(reader, f"tokenizer.ggml.{k}_token_id")) for k in ("bos", "eos", "unknown"))  # type: ignore[arg-type]
    add_prefix = bool(_field(reader, "tokenizer.ggml.add_space_prefix", True))
    vocab = {piece: i for i, piece in enumerate(pieces)}
    normal = {p for p, t in zip(pieces, types, strict=True) if t is gguf.TokenType.NORMAL}
    merges = sorted(
        ((a, b) for a in normal for b in normal if a + b in normal and len(a + b) > 1),
        key=lambda pair: (-scores[vocab[pair[0] + pair[1]]], vocab[pair[0] + pair[1]]),
    )
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=pieces[unk], byte_fallback=True,
                                     fuse_unk=True))  # fmt: skip
    steps = [normalizers.Replace(" ", "▁")]
    if add_prefix:
        steps.insert(0, normalizers.Prepend("▁"))
    tokenizer.normalizer = normalizers.Sequence(steps)
    decode = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    if add_prefix:
        decode.append(decoders.Strip(" ", 1, 0))
    tokenizer.decoder = decoders.Sequence(decode)
    specials = [p for p, t in zip(pieces, types, strict=True) if t in (gguf.TokenType.CONTROL, gguf.TokenType.UNKNOWN)]
    tokenizer.add_special_tokens([AddedToken(p, special=True, normalized=False) for p in specials])
    if bool(_field(reader, "tokenizer.ggml.add_bos_token", True)):
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{pieces[bos]} $A", pair=f"{pieces[bos]} $A {pieces[bos]} $B",
            special_tokens=[(pieces[bos], bos)],
        )  # fmt: skip
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=pieces[bos],
        eos_token=pieces[eos],
        unk_token=pieces[unk],
        chat_template=_field(reader, "tokenizer.chat_template"),
    )
    fast.save_pretrained(out)
    return {"size": len(pieces), "bos": bos, "eos": eos}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path)
    parser.add_argument("out", type=Path)
    args = parser.parse_args(argv)
    run_script("gguf_to_hf", lambda: print(f"wrote {convert(args.source, args.out)}"))


if __name__ == "__main__":
    main()
