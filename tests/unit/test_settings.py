"""YAML settings: validation messages that say where, what and why."""

from pathlib import Path

import pytest

from lmgate.server.settings import (
    ConfigError,
    FakeModelSettings,
    LlamaCppModelSettings,
    TransformersModelSettings,
    load_settings,
    model_name_from_path,
)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "lmgate.yaml"
    path.write_text(text)
    return path


def test_design_example_loads_with_llamacpp_as_the_default_kind(tmp_path):
    settings = load_settings(
        write(
            tmp_path,
            """
server: {host: 0.0.0.0, http_port: 9000}
models:
  - name: chat-small
    aliases: [default]
    gguf: models/tiny-chat.gguf
    n_ctx: 8192
    max_seqs: 8
  - name: echo
    backend: fake
""",
        )
    )
    small, echo = settings.models
    assert isinstance(small, LlamaCppModelSettings) and small.n_ctx == 8192 and small.aliases == ["default"]
    assert isinstance(echo, FakeModelSettings)
    assert settings.server.http_port == 9000


def test_unknown_backend_kind_lists_the_known_ones(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_settings(write(tmp_path, "models:\n  - {name: m, backend: tgi}\n"))
    assert "'llamacpp'" in str(err.value) and "'fake'" in str(err.value) and "tgi" in str(err.value)


def test_unknown_field_is_refused_with_its_location(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_settings(write(tmp_path, "models:\n  - {name: m, gguf: x.gguf, n_cxt: 5}\n"))
    assert "models.0.n_cxt" in str(err.value)


def test_a_name_used_twice_is_refused(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_settings(
            write(tmp_path, "models:\n  - {name: a, backend: fake}\n  - {name: b, aliases: [a], backend: fake}\n")
        )
    assert "'a'" in str(err.value)


def test_invalid_yaml_and_wrong_top_level_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(write(tmp_path, "models: [\n"))
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_settings(write(tmp_path, "- 1\n"))


@pytest.mark.parametrize(
    ("path", "name"),
    [
        ("models/tiny-chat.gguf", "tiny-chat"),
        ("/x/Llama 3 8B.Q4_K_M.gguf", "llama-3-8b.q4_k_m"),
        ("weird/@@@.gguf", "model"),
    ],
)
def test_model_name_is_taken_from_the_file(path, name):
    assert model_name_from_path(Path(path)) == name


def test_a_transformers_model_validates_without_importing_torch(tmp_path):
    import sys

    settings = load_settings(write(tmp_path, "models:\n  - {name: q, backend: transformers, model: m-gptq/}\n"))
    (model,) = settings.models
    assert isinstance(model, TransformersModelSettings) and model.max_seqs == 8 and model.dtype == "auto"
    assert "lmgate.backends.transformers.hf_model" not in sys.modules  # the module that imports torch
    with pytest.raises(ConfigError) as err:
        load_settings(write(tmp_path, "models:\n  - {name: q, backend: transformers, model: m, dtype: int4}\n"))
    assert "dtype" in str(err.value) and "int4" in str(err.value)


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ("n_ctx: 10", "n_ctx=10 is below the 16 sequences it must hold (max_seqs 8 + cache_slots 8): set n_ctx >= 16"),
        (
            "n_ctx: 12, prefix_cache: false, max_seqs: 16",
            "n_ctx=12 is below the 16 sequences it must hold (max_seqs 16): set n_ctx >= 16, or lower max_seqs",
        ),
        ("n_batch: 16, max_seqs: 12", "n_batch=16 is below the 24 sequences one step may carry"),
        ("n_threads: 100000", "n_threads"),
    ],
)
def test_settings_that_would_abort_llama_cpp_are_refused_with_the_value_that_works(tmp_path, fields, expected):
    with pytest.raises(ConfigError) as err:
        load_settings(write(tmp_path, f"models:\n  - {{name: m, gguf: x.gguf, {fields}}}\n"))
    assert expected in str(err.value) and "models.0" in str(err.value)


def test_the_smallest_context_that_holds_every_sequence_is_accepted(tmp_path):
    settings = load_settings(write(tmp_path, "models:\n  - {name: m, gguf: x.gguf, n_ctx: 16}\n"))
    assert settings.models[0].n_ctx == 16


def test_a_metrics_port_cannot_bypass_metrics_auth(tmp_path):
    with pytest.raises(ConfigError) as err:
        server = "server: {metrics_auth: true, metrics_port: 9100, api_keys_env: K}\n"
        load_settings(write(tmp_path, server + "models: []\n"))
    assert "metrics_port serves /metrics without authentication" in str(err.value)


def test_relative_paths_are_taken_from_the_config_files_directory(tmp_path):
    config = tmp_path / "conf" / "lmgate.yaml"
    config.parent.mkdir()
    config.write_text(
        "server: {api_keys_file: keys.txt}\n"
        "models:\n  - {name: a, gguf: ../models/a.gguf}\n  - {name: b, gguf: /abs/b.gguf}\n"
        "  - {name: c, backend: transformers, model: ~/ckpt}\n"
    )
    settings = load_settings(config)
    a, b, c = settings.models
    assert a.gguf == tmp_path / "conf" / "../models/a.gguf" and b.gguf == Path("/abs/b.gguf")
    assert c.model == Path.home() / "ckpt"
    assert settings.server.api_keys_file == tmp_path / "conf" / "keys.txt"


def test_two_servers_on_one_port_are_refused(tmp_path):
    with pytest.raises(ConfigError) as err:
        server = "server: {http_port: 9000, metrics_port: 9000}\n"
        load_settings(write(tmp_path, server + "models: [{name: m, backend: fake}]\n"))
    assert "server: http_port and metrics_port are both 9000" in str(err.value)
