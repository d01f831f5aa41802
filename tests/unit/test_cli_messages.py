"""What the `lmgate` command says when it cannot do what was asked, run as a user runs it (a subprocess):
one line on stderr, naming the file, the option or the setting and the fix; a non-zero exit status;
no traceback unless --log-level debug."""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from lmgate.server.cli_errors import UsageError, explain
from lmgate.server.cli_serve import embedded_model

REPO = Path(__file__).resolve().parents[2]


def lmgate(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "lmgate.server.cli", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, env=env, cwd=cwd)


def one_line_error(result: subprocess.CompletedProcess, status: int, *fragments: str) -> str:
    """The error line, after checking the status, that it is the only line and holds ``fragments``."""
    assert result.returncode == status, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    assert result.stderr.endswith("\n") and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("lmgate"), result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr
    return result.stderr


def test_version_names_lmgate_and_its_llama_cpp_bindings():
    result = lmgate("--version")
    assert result.returncode == 0 and result.stdout.startswith("lmgate 0.") and "llama-cpp-python 0." in result.stdout


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        ((), ["the following arguments are required: COMMAND", "see lmgate --help"]),
        (("plan", "--params", "7B", "--ctx", "0"), ["lmgate plan: argument --ctx: must be at least 1, got 0"]),
        (("plan", "--params", "7B", "--ctx", "-5"), ["argument --ctx: must be at least 1, got -5"]),
        (("plan", "--params", "7B", "--seqs", "0"), ["argument --seqs: must be at least 1, got 0"]),
        (("plan", "--params", "lots"), ["argument --params: expected a parameter count such as 7B", "'lots'"]),
        (("serve", "--port", "http"), ["lmgate serve: argument --port: expected a port number, got 'http'"]),
        (("eval", "--model", "m.gguf", "--text", "/missing.txt"), ["argument --text: /missing.txt: no such file"]),
        (("serve", "--model", "a.gguf", "--config", "b.yaml"), ["argument --config: not allowed with argument"]),
        (("serve", "--config", "b.yaml", "--n-ctx", "8"), ["--n-ctx applies to --model only: with --config, set it"]),
    ],
)
def test_a_wrong_argument_is_one_line_and_exit_status_2(args, fragments):
    one_line_error(lmgate(*args), 2, *fragments)


def test_help_gives_the_defaults_and_points_to_docs_that_exist():
    serve = lmgate("serve", "--help").stdout
    assert "docs/configuration.md" in serve and (REPO / "docs" / "configuration.md").is_file()
    flat = " ".join(serve.split())
    assert "sequences decoded together (default 8)" in flat
    assert "llama.cpp threads (default: the CPUs this process may use" in flat
    assert "(default: the model's trained context, at most 4096)" in flat
    assert "HTTP port (default 8000" in flat and "gRPC port (default 50051" in flat
    assert "Qwen2" in lmgate("quantize", "gguf", "--help").stdout


def test_serve_without_a_model_needs_the_embedded_one_where_there_is_none(tmp_path):
    assert embedded_model() == REPO / "models" / "tiny-chat.gguf"
    with pytest.raises(UsageError) as err:
        embedded_model(tmp_path / "models" / "tiny-chat.gguf")
    assert "pass --model FILE.gguf or --config FILE.yaml" in str(err.value)


# --- GGUF files: missing, not GGUF, cut short ---


@pytest.fixture(scope="module")
def damaged(tmp_path_factory: pytest.TempPathFactory, tiny_chat_path: Path) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("damaged")
    truncated, not_gguf = folder / "truncated.gguf", folder / "model.gguf"
    truncated.write_bytes(tiny_chat_path.read_bytes()[:100_000])
    not_gguf.write_text("<html>404 not found</html>")
    return {"truncated": truncated, "not_gguf": not_gguf, "missing": folder / "missing.gguf"}


@pytest.mark.parametrize("command", ["plan", "eval"])
def test_a_damaged_gguf_is_named_with_what_is_wrong(damaged, command, tiny_chat_path):
    def run(path: Path) -> subprocess.CompletedProcess:
        if command == "plan":
            return lmgate("plan", "--model", str(path))
        return lmgate("eval", "--model", str(tiny_chat_path), "--model", str(path), "--text", str(REPO / "README.md"))

    one_line_error(run(damaged["truncated"]), 1, f"{damaged['truncated']} is truncated: it has 100000 bytes but its "
                   "tensors end at byte", "fetch or convert it again")  # fmt: skip
    one_line_error(run(damaged["not_gguf"]), 1, f"{damaged['not_gguf']} is not a GGUF file (it starts with b'<htm'")
    one_line_error(run(damaged["missing"]), 1, f"{damaged['missing']}: no such file")


def test_debug_shows_the_traceback_as_well(damaged):
    result = lmgate("plan", "--model", str(damaged["truncated"]), "--log-level", "debug")
    assert result.returncode == 1 and "Traceback" in result.stderr
    assert result.stderr.splitlines()[-1].startswith(f"lmgate: {damaged['truncated']} is truncated")


# --- plan: by parameters, by HF config ---


def test_plan_estimates_a_model_from_its_parameter_count():
    result = lmgate("plan", "--params", "7B", "--quant", "q4_k_m", "--ctx", "8192", "--seqs", "4")
    assert result.returncode in (0, 1), result.stderr  # 1: it does not fit on this machine
    out = result.stdout
    assert "shape:     assumed: Llama 2 7B's, the nearest well-known size (--hf-config gives the real one)" in out
    assert "weights:   3.67 GiB  (7.00B parameters x 4.5 bits: q4_k_m stores them as Q4_K blocks" in out
    assert "KV cache:  4.00 GiB  (8192 cells shared by 4 sequences, f16)" in out
    assert ("fits:" in out) == (result.returncode == 0)
    assert "weights:   13.04 GiB  (7.00B parameters x 16 bits, f16)" in lmgate("plan", "--params", "7B").stdout


def test_plan_reads_the_shape_from_an_hf_config(tmp_path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({
        "architectures": ["MistralForCausalLM"], "hidden_size": 4096, "intermediate_size": 14336,
        "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8, "vocab_size": 32000,
        "max_position_embeddings": 32768,
    }))  # fmt: skip
    out = lmgate("plan", "--hf-config", str(config), "--quant", "q8_0", "--ctx", "8192", "--seqs", "4").stdout
    assert "model: 32 layers, 32/8 heads of 128, vocab 32000, trained context 32768" in out
    assert "7.24B parameters (counted from the config) x 8.5 bits, q8_0" in out
    assert "KV cache:  1.00 GiB" in out
    config.write_text("{}")
    one_line_error(lmgate("plan", "--hf-config", str(config)), 1, "--hf-config:", "has no integer `hidden_size`")


# --- check-config: what serve needs, not only what validates ---


def write_config(folder: Path, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "lmgate.yaml"
    path.write_text(text)
    return path


def test_check_config_finds_a_missing_gguf_where_serve_would_look(tmp_path):
    config = write_config(tmp_path / "conf", "models:\n  - {name: m, gguf: models/m.gguf}\n")
    missing = tmp_path / "conf" / "models" / "m.gguf"
    one_line_error(lmgate("check-config", str(config)), 1, f"models.0.gguf: {missing}: no such file",
                   "relative path is taken from the config file's directory")  # fmt: skip
    assert lmgate("check-config", str(config), "--settings-only").returncode == 0


def test_relative_paths_are_taken_from_the_config_files_directory_wherever_lmgate_runs(tmp_path, tiny_chat_path):
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "m.gguf").symlink_to(tiny_chat_path)
    config = write_config(tmp_path / "conf", "models:\n  - {name: m, gguf: ../models/m.gguf}\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = lmgate("check-config", str(config), cwd=elsewhere)
    assert result.returncode == 0 and "valid" in result.stdout, result.stderr


def test_check_config_checks_a_draft_model_s_file_and_vocabulary(tmp_path, tiny_chat_path, random_model_path):
    def config(draft: str) -> Path:
        return write_config(tmp_path / "conf", f"models:\n  - {{name: m, gguf: {tiny_chat_path}, speculative: "
                                               f"{{method: draft, draft_model: {draft}}}}}\n")  # fmt: skip

    one_line_error(lmgate("check-config", str(config("d.gguf"))), 1,
                   f"models.0.speculative.draft_model: {tmp_path / 'conf' / 'd.gguf'}: no such file")  # fmt: skip
    other = "models.0.speculative.draft_model: test-tiny.gguf has another vocabulary than the model"
    one_line_error(lmgate("check-config", str(config(str(random_model_path)))), 1, other)
    assert lmgate("check-config", str(config(str(tiny_chat_path)))).returncode == 0


def test_check_config_refuses_api_keys_that_serve_would_refuse(tmp_path):
    config = write_config(tmp_path, "server: {api_keys_env: LMGATE_TEST_KEYS}\nmodels:\n  - {name: m, backend: fake}\n")
    env = {k: v for k, v in os.environ.items() if k != "LMGATE_TEST_KEYS"}
    one_line_error(lmgate("check-config", str(config), env=env), 1,
                   "the environment variable LMGATE_TEST_KEYS is not set (server.api_keys_env)")  # fmt: skip
    one_line_error(lmgate("check-config", str(config), env={**env, "LMGATE_TEST_KEYS": " "}), 1,
                   "LMGATE_TEST_KEYS is empty (server.api_keys_env)")  # fmt: skip
    assert lmgate("check-config", str(config), env={**env, "LMGATE_TEST_KEYS": "k1,k2"}).returncode == 0


@pytest.mark.parametrize(
    ("models", "fragments"),
    [
        ("[{name: m, backend: llama.cpp, gguf: m.gguf}]",
         ["models.0.backend: unknown backend kind 'llama.cpp' (did you mean 'llamacpp'?); the kinds are", "'vllm'"]),
        ("[{name: chat, backend: fake}, {name: chat, backend: fake}]",
         ["models.1.name: 'chat' is already the name, an alias or an adapter at models.0.name"]),
        ("[{name: a, backend: fake, aliases: [b]}, {name: b, backend: fake}]",
         ["models.1.name: 'b' is already the name, an alias or an adapter at models.0.aliases.0"]),
    ],
)  # fmt: skip
def test_config_messages_name_the_setting_and_the_fix(tmp_path, models, fragments):
    message = one_line_error(lmgate("check-config", str(write_config(tmp_path, f"models: {models}\n"))), 1, *fragments)
    assert "Input tag" not in message and "Value error" not in message and "(top level)" not in message


# --- bench, quantize, the module scripts ---


def test_bench_against_no_server_says_so_and_fails():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
    result = lmgate("bench", "--url", url, "-c", "1", "--requests", "2")
    one_line_error(result, 1, f"lmgate: cannot benchmark {url}: nothing answers at {url}", "is the server running?")


@pytest.fixture
def hf_checkpoint(tmp_path: Path) -> Path:
    """A directory with the files an HF checkpoint has (their content is never read: the tool is missing)."""
    for name, text in (("config.json", "{}"), ("model.safetensors", ""), ("tokenizer.json", "{}")):
        (tmp_path / name).write_text(text)
    return tmp_path


def test_quantize_says_which_package_to_install(hf_checkpoint):
    if importlib.util.find_spec("torch") is not None:
        pytest.skip("torch is installed here")
    result = lmgate("quantize", "gptq", "--from", str(hf_checkpoint), "--out", str(hf_checkpoint / "out"))
    one_line_error(result, 1, "this needs torch, which is not installed: pip install torch==2.13.0",
                   "pip install 'lmgate[quantize]'")  # fmt: skip


@pytest.mark.parametrize(
    ("remove", "fragment"),
    [
        (None, "no such directory (an HF checkpoint directory is expected: docs/quantize.md"),
        ("config.json", "is not an HF checkpoint directory: it has no config.json"),
        ("model.safetensors", "has no *.safetensors weights"),
        ("tokenizer.json", "has no tokenizer.json"),
    ],
)
def test_quantize_says_what_the_checkpoint_lacks(hf_checkpoint, remove, fragment):
    source = hf_checkpoint / "absent" if remove is None else hf_checkpoint
    if remove is not None:
        (hf_checkpoint / remove).unlink()
    for method in ("gguf", "gptq"):
        result = lmgate("quantize", method, "--from", str(source), "--out", str(hf_checkpoint / "out"))
        one_line_error(result, 1, fragment)


def test_gguf_to_hf_without_the_quantize_extra_says_what_to_install(tmp_path, tiny_chat_path):
    if all(importlib.util.find_spec(m) is not None for m in ("safetensors", "tokenizers", "transformers")):
        pytest.skip("the quantize extra is installed here")
    command = [sys.executable, "-m", "lmgate.quantize.gguf_to_hf", str(tiny_chat_path), str(tmp_path / "hf")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "Traceback" not in result.stderr and result.stderr.count("\n") == 1
    assert result.stderr.startswith("gguf_to_hf: this needs the Python package `")
    assert "pip install 'lmgate[quantize]'" in result.stderr


def test_an_unexpected_error_is_one_line_with_the_way_to_see_more():
    assert explain(ValueError("boom")) == (
        "unexpected ValueError: boom (run again with --log-level debug for the traceback)",
        1,
    )
    missing = FileNotFoundError(2, "No such file or directory", "/x.txt")
    assert explain(missing) == ("/x.txt: No such file or directory", 1)


@pytest.mark.parametrize(
    ("module", "extra"),
    [
        ("matplotlib.pyplot", "bench"),
        ("gptqmodel", "transformers"),
        ("safetensors.numpy", "quantize"),
        ("vllm", "vllm"),
    ],
)
def test_a_missing_package_names_the_extra_that_brings_it(module, extra):
    message, status = explain(ModuleNotFoundError(f"No module named {module!r}", name=module))
    assert status == 1 and f"pip install 'lmgate[{extra}]'" in message and module.split(".")[0] in message
