"""Typed settings: one YAML file (DESIGN §7) or CLI flags, validated once at start-up.

    server: {host: 127.0.0.1, http_port: 8000, grpc_port: 50051}
    models:
      - name: tiny-chat
        aliases: [default]
        backend: llamacpp
        gguf: models/tiny-chat.gguf
        n_ctx: 4096
        max_seqs: 8

A model entry is its name and aliases plus its backend kind's own settings (the config class the
backend defines), picked by the ``backend`` field. Errors quote where, the value and the rule.

Relative paths in a config file (every setting typed as a path: ``gguf``, a transformers ``model``,
``api_keys_file``) are resolved against the file's directory, whoever reads it (``serve``,
``check-config``) and wherever it is run from; ``~`` is the home directory.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError, model_validator

from lmgate.backends.fake.config import FakeConfig
from lmgate.backends.grpc.config import GrpcConfig
from lmgate.backends.llamacpp.config import LlamaCppConfig
from lmgate.backends.lora import LoraAdapter
from lmgate.backends.openai.config import OpenAIConfig
from lmgate.backends.registry import BackendKind
from lmgate.backends.transformers.config import TransformersConfig
from lmgate.backends.vllm.config import VllmConfig
from lmgate.server.placement.router import Policy

_NAME = r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$"
_KINDS = {kind.value for kind in BackendKind}


class ConfigError(ValueError):
    """The configuration is invalid; the message says where and how to fix it."""


class ServerSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = Field(default="127.0.0.1", description="Address the HTTP server binds.")
    http_port: int = Field(default=8000, ge=0, le=65535, description="HTTP port (0: any free port).")
    grpc_port: int | None = Field(
        default=50051, ge=0, le=65535, description="gRPC port on the same host (0: any free port; null: off)."
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", description="Server log level; debug also logs llama.cpp's own messages."
    )
    log_prompts: bool = Field(
        default=False, description="Put prompts in the per-request log lines (off: no user text)."
    )
    metrics_port: int | None = Field(
        default=None, ge=0, le=65535, description="Also serve /metrics on this port (it is always on the HTTP port)."
    )
    drain_timeout_s: float = Field(default=30.0, ge=0, description="Grace period for in-flight streams on stop.")
    api_keys_env: str | None = Field(
        default=None, description="Name of an environment variable holding API keys, comma-separated."
    )
    api_keys_file: Path | None = Field(
        default=None, description="A file of API keys, one per line (`#` comments); relative to the config file's."
    )
    keys_file: Path | None = Field(
        default=None,
        description="A YAML file of API key records (name, secret_sha256, models, endpoints, limits; see "
        "docs/routing.md#tenants), re-read on SIGHUP; relative to the config file's. Not with api_keys_*.",
    )
    keys_env: str | None = Field(
        default=None,
        description="Name of an environment variable holding the same key records as YAML or JSON (keys_file's "
        "alternative, e.g. from a Kubernetes Secret; a process's environment cannot change, so a reload needs "
        "keys_file). Not with api_keys_*.",
    )
    metrics_auth: bool = Field(default=False, description="Require an API key for /metrics too.")
    max_body_bytes: int = Field(default=8 * 2**20, ge=1024, description="Largest request body accepted (413 beyond).")
    grpc_tls_cert_file: Path | None = Field(
        default=None,
        description="PEM certificate (chain) of the gRPC server: serve gRPC over TLS, with grpc_tls_key_file "
        "(none: plaintext); relative to the config file's.",
    )
    grpc_tls_key_file: Path | None = Field(default=None, description="The gRPC server certificate's private key (PEM).")
    grpc_tls_client_ca_file: Path | None = Field(
        default=None,
        description="PEM CA bundle: every gRPC client must present a certificate it signed (mutual TLS).",
    )
    grpc_max_connection_age_s: float | None = Field(
        default=300.0,
        gt=0,
        description="gRPC clients are asked to reconnect after this long (calls in flight finish first), so that a "
        "gateway dialing a Kubernetes Service spreads over pods the autoscaler added. None: never.",
    )
    header_timeout_s: float = Field(
        default=15.0, gt=0, description="A connection must send a request's headers within this (else it is closed)."
    )
    body_timeout_s: float = Field(
        default=60.0, gt=0, description="A request's body must arrive within this after its headers (408 beyond)."
    )
    responses_store_max: int = Field(
        default=1000,
        ge=0,
        description="Responses API: finished responses kept in memory for previous_response_id "
        "and GET /v1/responses/{id} (least recently used out first; 0: none kept).",
    )
    responses_store_ttl_s: float = Field(
        default=3600.0, gt=0, description="Responses API: how long a stored response lives after it was created."
    )

    @property
    def auth_enabled(self) -> bool:
        return self.api_keys_env is not None or self.api_keys_file is not None or self.tenants_enabled

    @property
    def tenants_enabled(self) -> bool:
        """API keys are records with scopes and limits (keys_file / keys_env), not plain keys."""
        return self.keys_file is not None or self.keys_env is not None

    @model_validator(mode="after")
    def _tls_files_together(self) -> ServerSettings:
        if (self.grpc_tls_cert_file is None) != (self.grpc_tls_key_file is None):
            raise ValueError("grpc_tls_cert_file and grpc_tls_key_file go together (the certificate and its key)")
        if self.grpc_tls_client_ca_file is not None and self.grpc_tls_cert_file is None:
            raise ValueError("grpc_tls_client_ca_file (mutual TLS) needs grpc_tls_cert_file and grpc_tls_key_file")
        return self

    @model_validator(mode="after")
    def _metrics_auth_covers_every_port(self) -> ServerSettings:
        plain = self.api_keys_env is not None or self.api_keys_file is not None
        if self.tenants_enabled and plain:
            raise ValueError(
                "keys_file/keys_env (key records) and api_keys_env/api_keys_file (plain keys) cannot be combined: "
                "give each plain key a record (a name and its secret_sha256) in the keys file"
            )
        if self.metrics_auth and self.metrics_port is not None:
            raise ValueError(
                "metrics_port serves /metrics without authentication, so it cannot be combined with "
                "metrics_auth: scrape /metrics on the HTTP port with a key, or drop metrics_auth"
            )
        ports = {"http_port": self.http_port, "grpc_port": self.grpc_port, "metrics_port": self.metrics_port}
        taken: dict[int, str] = {}
        for name, port in ports.items():
            if port:  # None: off; 0: any free port
                if port in taken:
                    raise ValueError(f"{taken[port]} and {name} are both {port}: each server needs a port of its own")
                taken[port] = name
        return self


class ModelEntry(BaseModel):
    """What every model entry has, whatever its backend: names, the pool, limits, lifecycle."""

    name: str = Field(pattern=_NAME, description="The name clients put in `model`.")
    aliases: list[Annotated[str, Field(pattern=_NAME)]] = Field(
        default_factory=list, description="Other names that reach this model (e.g. `default`)."
    )
    replicas: int = Field(default=1, ge=1, le=64, description="Copies of this backend in the pool.")
    routing: Policy = Field(default=Policy.PREFIX_AFFINITY, description="How a replica is chosen.")
    affinity_max_load: float = Field(
        default=2.0,
        ge=1.0,
        description="prefix_affinity: a replica takes the requests whose prefix it holds while its open requests "
        "stay within this multiple of the replicas' average; beyond, they spill to another replica (1.0: strict "
        "balance, fewer cache hits; higher: more hits, more uneven load).",
    )
    fallback: str | None = Field(
        default=None, description="Another model that serves when this pool is unavailable or saturated."
    )
    max_running: int = Field(default=64, ge=1, description="Requests served at once by the pool.")
    max_waiting: int = Field(default=256, ge=0, description="Requests queued beyond max_running (429 beyond).")
    max_tokens_cap: int | None = Field(default=None, ge=1, description="Largest max_tokens a request may ask.")
    max_request_tokens: int | None = Field(
        default=262144,
        ge=1,
        description="Most tokens one request may ask to generate over all its choices or beams: prompts x n "
        "(or the beam width) x max_tokens (the context length when max_tokens is unset); 400 beyond. None: no cap.",
    )
    request_timeout_s: float | None = Field(default=600.0, gt=0, description="A request is cut off after this.")
    params: Literal["strict", "lenient"] = Field(
        default="lenient",
        description="A sampling parameter the backend cannot honour: 400 (strict), or served and listed in "
        "the X-Lmgate-Ignored-Params header (lenient).",
    )
    lazy: bool = Field(default=False, description="Load at the first request instead of at start.")
    idle_unload_s: float | None = Field(default=None, gt=0, description="Unload after this long without requests.")


class LlamaCppModelSettings(ModelEntry, LlamaCppConfig):
    pass


class GrpcModelSettings(ModelEntry, GrpcConfig):
    pass


class OpenAIModelSettings(ModelEntry, OpenAIConfig):
    pass


class VllmModelSettings(ModelEntry, VllmConfig):
    pass


class TransformersModelSettings(ModelEntry, TransformersConfig):
    pass


class FakeModelSettings(ModelEntry, FakeConfig):
    pass


def _backend_kind(entry: object) -> str:
    """The ``backend`` field picks the settings class; a GGUF model need not say ``llamacpp``."""
    if isinstance(entry, dict):
        return str(entry.get("backend", "llamacpp"))
    return str(getattr(entry, "backend", "llamacpp"))


ModelSettings = Annotated[
    Annotated[LlamaCppModelSettings, Tag("llamacpp")]
    | Annotated[GrpcModelSettings, Tag("grpc")]
    | Annotated[OpenAIModelSettings, Tag("openai")]
    | Annotated[VllmModelSettings, Tag("vllm")]
    | Annotated[TransformersModelSettings, Tag("transformers")]
    | Annotated[FakeModelSettings, Tag("fake")],
    Discriminator(_backend_kind),
]


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    server: ServerSettings = Field(default_factory=ServerSettings)
    models: list[ModelSettings] = Field(min_length=1)

    @model_validator(mode="after")
    def _names_and_fallbacks(self) -> Settings:
        seen: dict[str, str] = {}
        where: dict[str, str] = {}
        adapters: set[str] = set()
        for i, model in enumerate(self.models):
            named = [(f"models.{i}.name", model.name)]
            named += [(f"models.{i}.aliases.{j}", alias) for j, alias in enumerate(model.aliases)]
            named += [(f"models.{i}.lora_adapters.{j}.name", a.name) for j, a in enumerate(adapters_of(model))]
            adapters |= {a.name for a in adapters_of(model)}
            for here, name in named:
                if name in seen:
                    raise ValueError(
                        f"{here}: {name!r} is already the name, an alias or an adapter at {where[name]}: every model "
                        "name, alias and LoRA adapter name must be unique, so that a request's `model` picks one model"
                    )
                seen[name], where[name] = model.name, here
        for model in self.models:
            chain, current = [model.name], model.fallback
            while current is not None:
                if current not in seen:
                    raise ValueError(f"model {model.name!r}: fallback {current!r} is not a configured model")
                if current in adapters:
                    raise ValueError(f"model {model.name!r}: fallback {current!r} is a LoRA adapter; name a model")
                if seen[current] in chain:
                    raise ValueError(f"model {model.name!r}: fallbacks loop ({' -> '.join([*chain, current])})")
                chain.append(seen[current])
                current = next(m.fallback for m in self.models if m.name == seen[current])
        return self


def adapters_of(model: ModelSettings) -> list[LoraAdapter]:
    """The LoRA adapters a model entry serves (only the llamacpp and vllm kinds have any)."""
    return model.lora_adapters if isinstance(model, LlamaCppModelSettings | VllmModelSettings) else []


def load_settings(path: Path) -> Settings:
    """Read and validate a YAML config file (relative paths against its directory); raises ConfigError
    with every problem found."""
    return validate_settings(read_config_file(path), source=str(path), base_dir=path.parent)


def read_config_file(path: Path) -> dict[str, Any]:
    """The YAML mapping of a config file, not yet validated; raises ConfigError."""
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping with `server` and `models`, got {type(raw).__name__}")
    return raw


def validate_settings(raw: dict[str, Any], *, source: str = "settings", base_dir: Path | None = None) -> Settings:
    """Typed settings from a YAML mapping; relative paths resolved against ``base_dir`` when given (a
    config file's directory). ConfigError naming every problem: where, the rule, the value."""
    try:
        settings = Settings.model_validate(raw)
    except ValidationError as exc:
        problems = [_problem(err) for err in exc.errors()]
        raise ConfigError(f"{source}: {'; '.join(problems)}") from exc
    return settings if base_dir is None else _resolve_paths(settings, base_dir.absolute())


def _problem(err: Any) -> str:
    where = _location(err["loc"])
    if err["type"] == "union_tag_invalid":  # the `backend` field names no known kind
        tag, kinds = str(err["ctx"]["tag"]), sorted(_KINDS)
        close = difflib.get_close_matches(tag.replace(".", "").lower(), kinds, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"{where}.backend: unknown backend kind {tag!r}{hint}; the kinds are {', '.join(map(repr, kinds))}"
    message = str(err["ctx"]["error"]) if err["type"] == "value_error" else err["msg"]
    got = "" if err["type"] in ("missing", "value_error") else f" (got {_short(err['input'])})"
    # A settings-wide rule names its fields itself.
    return f"{where}: {message}{got}" if where else f"{message}{got}"


def _short(value: object) -> str:
    """A value as an error quotes it: scalars as written, a mapping or a list by its size."""
    if isinstance(value, dict):
        return f"a mapping with {', '.join(map(str, list(value)[:4]))}{', ...' if len(value) > 4 else ''}"
    if isinstance(value, list):
        return f"a list of {len(value)}"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _resolve_paths(model: Any, base: Path) -> Any:
    """``model`` with every relative Path field (nested models and lists included) made absolute under ``base``."""
    updates: dict[str, object] = {}
    for name in type(model).model_fields:
        value = getattr(model, name)
        if isinstance(value, Path):
            resolved = value.expanduser()
            resolved = resolved if resolved.is_absolute() else base / resolved
            if resolved != value:
                updates[name] = resolved
        elif isinstance(value, BaseModel):
            updates[name] = _resolve_paths(value, base)
        elif isinstance(value, list) and any(isinstance(v, BaseModel) for v in value):
            updates[name] = [_resolve_paths(v, base) if isinstance(v, BaseModel) else v for v in value]
    return model.model_copy(update=updates) if updates else model


def _location(loc: tuple[int | str, ...]) -> str:
    """``models.0.llamacpp.n_ctx`` → ``models.0.n_ctx``: the union's tag is not a key the user wrote."""
    parts = [p for i, p in enumerate(loc) if not (i and isinstance(loc[i - 1], int) and p in _KINDS)]
    return ".".join(str(p) for p in parts)


def model_name_from_path(path: Path) -> str:
    """``models/Tiny Chat.Q8_0.gguf`` → ``tiny-chat.q8_0``: a valid model name taken from the file."""
    stem = re.sub(r"[^A-Za-z0-9._:-]+", "-", path.stem).strip("-.").lower()
    return stem or "model"
