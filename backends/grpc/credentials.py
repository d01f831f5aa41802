"""How a gateway proves itself to its workers and checks them: an API key, TLS, mutual TLS.

Files are read when the backend starts (a retry reads them again, so rotated certificates are
picked up on reconnect); a file that cannot be read, or holds no key, is a ``ModelLoadError``
naming the setting, and the model is not served from that worker until it is fixed.
"""

from __future__ import annotations

import os
from pathlib import Path

import grpc

from lmgate.backends.env_secret import why_no_secret
from lmgate.backends.errors import ModelLoadError
from lmgate.backends.grpc.config import GrpcConfig


def authorization(config: GrpcConfig) -> tuple[tuple[str, str], ...]:
    """``authorization`` metadata with the key of ``api_key_env`` or ``api_key_file`` (none: empty)."""
    if config.api_key_env is not None:
        if (why := why_no_secret(config.api_key_env)) is not None:
            raise ModelLoadError(f"api_key_env: {why}")
        key = os.environ[config.api_key_env].strip()
    elif config.api_key_file is not None:
        key = _read(config.api_key_file, "api_key_file").decode(errors="replace").strip()
        if not key:
            raise ModelLoadError(f"api_key_file: {config.api_key_file} is empty: write the worker's API key in it")
    else:
        return ()
    return (("authorization", f"Bearer {key}"),)


def channel_credentials(config: GrpcConfig) -> grpc.ChannelCredentials | None:
    """TLS credentials when ``tls_ca_file`` is set (with a client certificate for mutual TLS); None:
    plaintext."""
    if config.tls_ca_file is None:
        return None
    ca = _read(config.tls_ca_file, "tls_ca_file")
    cert = _read(config.tls_cert_file, "tls_cert_file") if config.tls_cert_file is not None else None
    key = _read(config.tls_key_file, "tls_key_file") if config.tls_key_file is not None else None
    return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)


def _read(path: Path, setting: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ModelLoadError(f"{setting}: cannot read {path}: {exc.strerror}") from None
