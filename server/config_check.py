"""What ``lmgate check-config`` verifies beyond the settings' own validation: that ``serve`` could start
with them on this machine, now.

- API keys: ``api_keys_env`` / ``api_keys_file`` give at least one key (``serve`` refuses otherwise;
  the same code reads them); ``keys_file`` / ``keys_env`` hold valid key records.
- ``llamacpp`` models: the ``gguf`` file exists and its header reads (the check the engine makes
  before loading: not a GGUF file, damaged, cut short); each LoRA adapter fits it (the engine's check
  too: backends/llamacpp/lora_file.py); a speculative ``draft_model`` is a GGUF with the model's
  token list (the engine checks the vocabulary again as llama.cpp loaded it).
- ``transformers`` models: ``model`` is an HF checkpoint directory (config.json, safetensors).
- ``openai`` and ``grpc`` models: ``api_key_env``, when set, names a variable that holds a key.
- ``grpc`` models with ``discovery``: the Kubernetes client (the ``kubernetes`` extra) is installed
  (the API server itself, on another machine, is not asked).

Paths are the resolved ones (server/settings.py: relative to the config file's directory), so a
file that ``serve`` would not find is reported here with the path it would look at. Not checked:
what only loading can tell (memory, a checkpoint's tensors) and other machines (``grpc`` targets,
``openai`` base URLs, ``vllm`` models).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import gguf

from lmgate.backends.env_secret import why_no_secret
from lmgate.backends.llamacpp.gguf_file import GGUFFileError, open_gguf
from lmgate.backends.llamacpp.lora_file import LoraFileError, check_lora_file
from lmgate.quantize.checkpoint import check_checkpoint
from lmgate.quantize.errors import CheckpointError
from lmgate.server.auth import ApiKeys
from lmgate.server.settings import (
    ConfigError,
    GrpcModelSettings,
    LlamaCppModelSettings,
    OpenAIModelSettings,
    Settings,
    TransformersModelSettings,
)
from lmgate.server.tenancy.records import Tenants


def _draft_problem(path: Path, target: gguf.GGUFReader) -> str | None:
    """Why ``path`` cannot draft for the model read by ``target``; None if it can."""
    try:
        draft = open_gguf(path)
    except GGUFFileError as exc:
        return f"{exc}" + ("" if path.exists() else " (a relative path is taken from the config file's directory)")
    tokens = [_tokens(r) for r in (draft, target)]
    if tokens[0] != tokens[1]:
        return f"{path.name} has another vocabulary than the model: a draft model needs the same tokenizer"
    return None


def _tokens(reader: gguf.GGUFReader) -> list[str] | None:
    field = reader.fields.get("tokenizer.ggml.tokens")
    return None if field is None else list(field.contents())


def serving_problems(settings: Settings) -> list[str]:
    """Each reason ``serve`` would refuse or fail with these settings here, naming the field; empty if none."""
    problems = []
    try:
        ApiKeys.from_settings(settings.server)
        Tenants.from_settings(settings.server)
    except ConfigError as exc:
        problems.append(f"server: {exc}")
    for i, model in enumerate(settings.models):
        if isinstance(model, LlamaCppModelSettings):
            try:
                reader = open_gguf(model.gguf)
            except GGUFFileError as exc:
                where = "" if model.gguf.exists() else " (a relative path is taken from the config file's directory)"
                problems.append(f"models.{i}.gguf: {exc}{where}")
                continue
            draft = model.speculative.draft_model
            if draft is not None and (why := _draft_problem(draft, reader)):
                problems.append(f"models.{i}.speculative.draft_model: {why}")
            for j, adapter in enumerate(model.lora_adapters):
                try:
                    check_lora_file(adapter.path, model.gguf, name=adapter.name)
                except LoraFileError as exc:
                    problems.append(f"models.{i}.lora_adapters.{j}: {exc}")
        elif isinstance(model, TransformersModelSettings):
            try:
                check_checkpoint(model.model, tokenizer=False)
            except CheckpointError as exc:
                problems.append(f"models.{i}.model: {exc}")
        elif isinstance(model, OpenAIModelSettings | GrpcModelSettings) and (why := why_no_secret(model.api_key_env)):
            problems.append(f"models.{i}.api_key_env: {why}")
        if isinstance(model, GrpcModelSettings) and model.discovery is not None and not _has_kubernetes_client():
            problems.append(
                f"models.{i}.discovery: the Kubernetes client is not installed: pip install 'lmgate[kubernetes]'"
            )
    return problems


def _has_kubernetes_client() -> bool:
    return importlib.util.find_spec("lightkube") is not None
