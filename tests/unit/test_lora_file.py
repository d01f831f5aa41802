"""GGUF LoRA adapters checked against their base model before llama.cpp sees them, and their settings."""

import dataclasses

import gguf
import numpy as np
import pytest

from lmgate.backends.llamacpp.lora_file import LoraFileError, check_lora_file
from lmgate.quantize.gguf_lora import build_random_lora, random_pairs, write_lora_gguf
from lmgate.quantize.random_model import PRESETS
from lmgate.server.settings import ConfigError, validate_settings

SHAPE = PRESETS["test-tiny"]


def test_a_random_adapter_over_its_random_base_passes(random_model_path, tmp_path):
    info = check_lora_file(build_random_lora(tmp_path / "a.gguf", SHAPE, rank=4), random_model_path, name="a")
    assert info.rank == 4 and len(info.adapted) == SHAPE.layers * 3


def _problem(path, base) -> str:
    with pytest.raises(LoraFileError) as caught:
        check_lora_file(path, base, name="x")
    return str(caught.value)


def test_a_missing_or_non_gguf_adapter_is_named(random_model_path, tmp_path):
    assert "LoRA adapter 'x'" in _problem(tmp_path / "nope.gguf", random_model_path)
    assert "no such file" in _problem(tmp_path / "nope.gguf", random_model_path)
    text = tmp_path / "notes.gguf"
    text.write_text("hello")
    assert "is not a GGUF file" in _problem(text, random_model_path)


def test_a_model_given_as_an_adapter_is_refused(random_model_path):
    assert "is not a LoRA adapter" in _problem(random_model_path, random_model_path)


def test_an_adapter_for_another_architecture_is_refused(random_model_path, tmp_path):
    path = tmp_path / "qwen.gguf"
    write_lora_gguf(path, arch="qwen2", alpha=0, pairs=random_pairs(SHAPE), name="qwen")
    assert "is for the 'qwen2' architecture, but the base model" in _problem(path, random_model_path)


def test_an_adapter_for_another_shape_is_refused_before_llama_cpp(random_model_path, tmp_path):
    path = tmp_path / "wide.gguf"
    wide = dataclasses.replace(SHAPE, hidden=128, ffn=256)
    write_lora_gguf(path, arch="llama", alpha=0, pairs=random_pairs(wide), name="wide")
    assert "do not fit the base weight" in _problem(path, random_model_path)
    deep = dataclasses.replace(SHAPE, layers=SHAPE.layers + 1)
    write_lora_gguf(path, arch="llama", alpha=0, pairs=random_pairs(deep), name="deep")
    assert f"adapts 'blk.{SHAPE.layers}.attn_q.weight', which the base model does not have" in _problem(
        path, random_model_path
    )


def _write_raw(path, tensors: dict[str, np.ndarray]) -> None:
    writer = gguf.GGUFWriter(str(path), arch="llama")
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    for name, data in tensors.items():
        writer.add_tensor(name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_tensors_llama_cpp_would_crash_on_are_refused(random_model_path, tmp_path):
    a, b = random_pairs(SHAPE)["blk.0.attn_q.weight"]
    path = tmp_path / "bad.gguf"
    _write_raw(path, {"blk.0.attn_q.weight.lora_a": a})
    assert "blk.0.attn_q.weight.lora_b is missing" in _problem(path, random_model_path)
    _write_raw(path, {"blk.0.attn_q.weight.lora_a": a[None], "blk.0.attn_q.weight.lora_b": b})
    assert "LoRA tensors are matrices" in _problem(path, random_model_path)
    _write_raw(path, {"blk.0.attn_q.weight.lora_a": a.astype(np.float64), "blk.0.attn_q.weight.lora_b": b})
    assert "is stored as F64" in _problem(path, random_model_path)
    _write_raw(path, {"blk.0.attn_q.weight.lora_a": a, "blk.0.attn_q.weight.lora_b": b[:, :2]})
    assert "do not fit the base weight" in _problem(path, random_model_path)
    _write_raw(path, {"blk.0.attn_q.weight.bias": a})
    assert "is neither a .lora_a nor a .lora_b tensor" in _problem(path, random_model_path)


def _settings(*adapters: dict, backend: str = "llamacpp") -> None:
    source = {"gguf": "m.gguf"} if backend == "llamacpp" else {"model": "/m"}
    validate_settings({"models": [{"name": "base", "backend": backend, **source, "lora_adapters": list(adapters)}]})


def test_adapter_settings_are_checked_with_the_model():
    _settings({"name": "woof", "path": "w.gguf", "scale": 0.5})
    with pytest.raises(ConfigError, match=r"models.0.lora_adapters.0.scale: Input should be less than or equal to 4"):
        _settings({"name": "woof", "path": "w.gguf", "scale": 9})
    with pytest.raises(ConfigError, match=r"models.0.lora_adapters.0.scale: Input should be greater than 0"):
        _settings({"name": "woof", "path": "w.gguf", "scale": 0})
    with pytest.raises(ConfigError, match=r"'woof' is named twice"):
        _settings({"name": "woof", "path": "a.gguf"}, {"name": "woof", "path": "b.gguf"})
    with pytest.raises(ConfigError, match=r"vLLM applies an adapter at the strength it was trained with"):
        _settings({"name": "woof", "path": "/w", "scale": 2}, backend="vllm")


def test_an_adapter_name_is_a_model_name_and_must_be_unique():
    with pytest.raises(ConfigError, match=r"models.1.lora_adapters.0.name: 'base' is already the name"):
        validate_settings({"models": [
            {"name": "base", "gguf": "m.gguf"},
            {"name": "other", "gguf": "o.gguf", "lora_adapters": [{"name": "base", "path": "w.gguf"}]},
        ]})  # fmt: skip
    with pytest.raises(ConfigError, match=r"fallback 'woof' is a LoRA adapter"):
        validate_settings({"models": [
            {"name": "base", "gguf": "m.gguf", "lora_adapters": [{"name": "woof", "path": "w.gguf"}]},
            {"name": "other", "gguf": "o.gguf", "fallback": "woof"},
        ]})  # fmt: skip
