"""API key records: who a key is, what it may reach, how much it may use. Read from a YAML file
(``server.keys_file``) or an environment variable (``server.keys_env``), the same document:

    keys:
      - name: team-a                       # shown in metrics and logs (never the secret)
        secret_sha256: 9f86d08...          # printf %s "$KEY" | sha256sum
        models: ["chat*", "embed"]         # globs over a model's name and aliases; default all
        endpoints: [inference, metrics]    # inference (default), metrics, admin
        requests_per_minute: 600
        tokens_per_minute: 100000          # prompt + completion
        max_concurrent: 16
        weight: 2                          # twice the tokens of a weight-1 key when a model is saturated
        cache_group: team-a-shared         # keys of one group share prefix-cache entries

Secrets are stored as SHA-256 digests. NOTE: a fast hash is enough for high-entropy keys (random
32-byte API keys cannot be brute-forced from a digest); argon2 would cost ~50 ms a request for
no gain against that, and it protects only guessable passwords, which API keys must not be.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from lmgate.server.settings import ConfigError

Endpoint = Literal["inference", "metrics", "admin"]


def _inference_only() -> list[Endpoint]:
    return ["inference"]


class KeyRecord(BaseModel):
    """One API key: its name, its secret's digest, its scopes and its limits (None: unlimited)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$", description="Label in metrics and logs.")
    secret_sha256: str = Field(pattern=r"^[0-9a-fA-F]{64}$", description="SHA-256 of the key, hex.")
    models: list[str] = Field(default_factory=lambda: ["*"], description="Globs over model names and aliases.")
    endpoints: list[Endpoint] = Field(default_factory=_inference_only, description="Endpoint groups allowed.")
    requests_per_minute: int | None = Field(default=None, ge=1, description="Requests admitted per minute.")
    tokens_per_minute: int | None = Field(default=None, ge=1, description="Prompt + completion tokens per minute.")
    max_concurrent: int | None = Field(default=None, ge=1, description="Requests in flight at once.")
    weight: int = Field(
        default=1, ge=1, le=1000, description="Share of a saturated model's admissions, in tokens, against other keys."
    )
    cache_group: str | None = Field(
        default=None, min_length=1, description="Keys naming the same group share prefix-cache entries."
    )
    forward_cache_salt: bool = Field(
        default=False,
        description="A gateway's key on a worker: the `cache_salt` its gRPC requests carry is kept, not replaced.",
    )

    @field_validator("secret_sha256")
    @classmethod
    def _lower(cls, value: str) -> str:
        return value.lower()

    def allows_model(self, names: list[str]) -> bool:
        """Whether any of a model's ``names`` (its name and aliases) matches one of the globs."""
        return any(fnmatch.fnmatchcase(name, glob) for name in names for glob in self.models)

    @property
    def cache_salt(self) -> str:
        """The prefix-cache salt of this key's requests: from its group, else from its secret's digest
        (which no other tenant knows, so no one can send a request that lands in its cache)."""
        seed = f"group:{self.cache_group}" if self.cache_group is not None else f"key:{self.secret_sha256}"
        return hashlib.sha256(b"lmgate-cache-salt\0" + seed.encode()).hexdigest()[:32]


class KeysDocument(BaseModel):
    model_config = ConfigDict(extra="forbid")

    keys: list[KeyRecord] = Field(min_length=1)


def digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def load_records(keys_file: Path | None, keys_env: str | None) -> list[KeyRecord]:
    """The key records of the file or the variable; ConfigError naming the source, the field and the fix."""
    if keys_file is not None:
        source = f"{keys_file} (server.keys_file)"
        try:
            text = keys_file.read_text()
        except OSError as exc:
            raise ConfigError(f"server.keys_file: cannot read {keys_file}: {exc.strerror}") from exc
    else:
        assert keys_env is not None
        source = f"${keys_env} (server.keys_env)"
        text = os.environ.get(keys_env, "")
        if not text.strip():
            raise ConfigError(f"{source} is unset or empty: set it to a YAML or JSON document `keys: [...]`")
    try:
        document = KeysDocument.model_validate(yaml.safe_load(text) or {})
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source} is not valid YAML: {exc}") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"{source}: {where}: {first['msg']}") from None
    names = [r.name for r in document.keys]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise ConfigError(f"{source}: key names must be unique; repeated: {', '.join(duplicated)}")
    return document.keys
