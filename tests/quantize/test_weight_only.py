"""lmgate quantize gptq|awq: GPTQModel and llm-compressor on CPU, the manifest, and lmgate eval on the results."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lmgate.quantize.evaluate import evaluate, gate
from lmgate.quantize.manifest import checkpoint_sha256, read_manifest


@pytest.mark.parametrize(
    ("fixture", "method", "tool", "quant_method"),
    [("gptq_model", "gptq", "gptqmodel", "gptq"), ("awq_model", "awq", "gptqmodel", "awq"),
     ("compressed_model", "gptq", "llm-compressor", "compressed-tensors")],
)  # fmt: skip
def test_the_manifest_says_what_was_made_from_what(request, hf_model, calibration, fixture, method, tool,
                                                   quant_method):  # fmt: skip
    out = request.getfixturevalue(fixture)
    manifest = read_manifest(out)
    assert (manifest["method"], manifest["bits"], manifest["group_size"]) == (method, 4, 128)
    assert manifest["tool"]["name"] == tool and manifest["tool"]["version"]
    assert manifest["source"]["sha256"] == checkpoint_sha256(hf_model)
    assert manifest["calibration"] == {"source": "builtin", "samples": 64, "sha256": calibration.sha256}
    config = json.loads((out / "config.json").read_text())
    assert config["quantization_config"]["quant_method"] == quant_method
    if tool == "gptqmodel":  # its per-layer log goes with the output, not into the working directory
        assert any((out / "logs").iterdir()) and not (Path.cwd() / "logs").exists()
    weights = sum(p.stat().st_size for p in out.glob("*.safetensors"))
    assert weights < sum(p.stat().st_size for p in hf_model.glob("*.safetensors")) / 3  # 4-bit beside float32


def test_quantized_checkpoints_stay_close_to_the_reference(hf_model, gptq_model, awq_model, compressed_model,
                                                           held_out):  # fmt: skip
    reference, *quantized = evaluate([hf_model, gptq_model, awq_model, compressed_model], held_out.read_text(),
                                     max_tokens=1024, speed_tokens=8)  # fmt: skip
    for report in quantized:
        assert 0 < report.kl_vs_reference < 0.05, report
        assert report.top1_vs_reference > 0.9, report
        assert report.size_bytes < reference.size_bytes / 3
    assert gate([reference, *quantized], 0.05) == []


def test_the_command_refuses_what_cannot_run_here_with_one_line(hf_model, tmp_path):
    def quantize(*args):
        cmd = [sys.executable, "-m", "lmgate.server.cli", "quantize", *args, "--out", str(tmp_path / "out")]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=300)

    awq = quantize("awq", "--from", str(hf_model), "--tool", "llm-compressor")
    assert awq.returncode == 1 and "llm-compressor's AWQ needs a GPU" in awq.stderr
    missing = quantize("gptq", "--from", str(tmp_path / "nowhere"))
    assert missing.returncode == 1 and "no such directory (an HF checkpoint directory is expected" in missing.stderr
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    no_text = quantize("gptq", "--from", str(hf_model), "--calib", str(empty))
    assert no_text.returncode == 1 and "has no text" in no_text.stderr
    assert not (tmp_path / "out").exists()
