"""docs/configuration.md: every setting documented, and the reference current with the settings models."""

from lmgate.server import config_docs
from lmgate.server.settings import ServerSettings


def test_the_settings_reference_in_the_docs_is_current():
    text = config_docs.DOC.read_text()
    start, end = text.index(config_docs.BEGIN), text.index(config_docs.END) + len(config_docs.END)
    assert text[start:end] == config_docs.render(), "run `make config-docs` (python -m lmgate.server.config_docs)"


def test_every_setting_has_a_meaning():
    models = [ServerSettings, *(model for _, model, _ in config_docs.BACKENDS)]
    undocumented = [
        f"{model.__name__}.{name}"
        for model in models
        for name, field in model.model_fields.items()
        if name != "backend" and not field.description
    ]
    assert undocumented == []


def test_the_reference_gives_type_default_and_meaning():
    reference = config_docs.render()
    assert "| `max_seqs` | integer (≥ 1, ≤ 128) | `8` | Sequences decoded together at most. |" in reference
    assert "| `n_threads` | integer (≥ 1, ≤ 512) | the CPUs this process may use, at most its CPU quota |" in reference
    assert "| `gguf` | path | required |" in reference
    for kind, _, _ in config_docs.BACKENDS:
        assert f"### `backend: {kind}`" in reference
