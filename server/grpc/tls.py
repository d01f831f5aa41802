"""TLS for the gRPC server: its certificate, and client certificates when mutual TLS is asked for."""

from __future__ import annotations

from pathlib import Path

import grpc

from lmgate.server.settings import ConfigError, ServerSettings


def server_credentials(settings: ServerSettings) -> grpc.ServerCredentials | None:
    """The server's TLS credentials (None: plaintext); ``ConfigError`` naming the setting when a file
    cannot be read. With ``grpc_tls_client_ca_file`` every client must present a certificate it signed."""
    if settings.grpc_tls_cert_file is None or settings.grpc_tls_key_file is None:
        return None
    cert = _read(settings.grpc_tls_cert_file, "server.grpc_tls_cert_file")
    key = _read(settings.grpc_tls_key_file, "server.grpc_tls_key_file")
    client_ca = settings.grpc_tls_client_ca_file
    roots = _read(client_ca, "server.grpc_tls_client_ca_file") if client_ca is not None else None
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=roots, require_client_auth=roots is not None)


def _read(path: Path, setting: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{setting}: cannot read {path}: {exc.strerror}") from None
