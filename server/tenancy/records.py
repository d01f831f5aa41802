"""Tenants: the API key records in force, who a request's key is, and each key's quota.

``Tenants.identify(authorization)`` finds the record whose secret digest matches, comparing every
record's in constant time (``hmac.compare_digest``). ``reload()`` (on SIGHUP) re-reads the file or
variable: new records apply to the next request, connections and requests in flight are not
touched, and a key that stays keeps its buckets (what it spent this minute stays spent). A reload
that fails keeps the records in force and says why.
"""

from __future__ import annotations

import hmac
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from lmgate.server.settings import ConfigError, ServerSettings
from lmgate.server.tenancy.keys import Endpoint, KeyRecord, digest, load_records
from lmgate.server.tenancy.quota import TenantQuota

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Tenant:
    """The key a request came with: its record and its quota (shared by all its requests)."""

    record: KeyRecord
    quota: TenantQuota

    @property
    def name(self) -> str:
        return self.record.name


class Tenants:
    def __init__(self, keys_file: Path | None, keys_env: str | None) -> None:
        """ConfigError when the records cannot be read or are invalid."""
        self._file, self._env = keys_file, keys_env
        self._records: list[tuple[bytes, KeyRecord]] = []
        self._quotas: dict[str, TenantQuota] = {}
        self._apply(load_records(keys_file, keys_env))

    @classmethod
    def from_settings(cls, server: ServerSettings) -> Tenants | None:
        """The key records, or None when they are not configured (plain API keys or no auth)."""
        return cls(server.keys_file, server.keys_env) if server.tenants_enabled else None

    @property
    def names(self) -> list[str]:
        return [record.name for _, record in self._records]

    def identify(self, authorization: str | None) -> Tenant | None:
        """The tenant of ``Authorization: Bearer <key>`` (header or metadata value), None if no record matches."""
        scheme, _, key = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not key or key != key.strip():
            return None
        given = digest(key)
        found: KeyRecord | None = None
        for expected, record in self._records:
            if hmac.compare_digest(given, expected):
                found = record
        return None if found is None else Tenant(found, self._quotas[found.name])

    def reload(self) -> bool:
        """Read the records again; on an error keep those in force, log why and return False."""
        try:
            records = load_records(self._file, self._env)
        except ConfigError as exc:
            log.error("API keys not reloaded, the previous ones stay in force: %s", exc)
            return False
        self._apply(records)
        log.info("API keys reloaded: %d keys (%s)", len(records), ", ".join(r.name for r in records))
        return True

    def _apply(self, records: list[KeyRecord]) -> None:
        now = time.monotonic()
        quotas: dict[str, TenantQuota] = {}
        for record in records:
            quota = self._quotas.get(record.name)
            if quota is None:
                quota = TenantQuota(record, now)
            else:
                quota.update(record, now)
            quotas[record.name] = quota
        self._records = [(bytes.fromhex(r.secret_sha256), r) for r in records]
        self._quotas = quotas


def endpoint_of(path: str) -> Endpoint:
    """The endpoint group of an HTTP path or gRPC method: ``metrics`` for /metrics, ``admin`` for
    /admin/..., ``inference`` for the rest (the OpenAI routes, lmgate.v1.Inference)."""
    if path == "/metrics":
        return "metrics"
    if path.startswith("/admin/"):
        return "admin"
    return "inference"
