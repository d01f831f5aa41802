"""gRPC over TLS and mutual TLS, and a gateway that authenticates to its workers with a key file:
certificates from a test CA (trustme), real servers, real stubs and the official SDK."""

from __future__ import annotations

import grpc
import openai
import pytest
import trustme
from pydantic import ValidationError

from lmgate.server.settings import validate_settings
from lmgate.v1 import inference_pb2 as pb
from lmgate.v1 import inference_pb2_grpc as pb_grpc

from server_helpers import ServerThread

WORKER_KEY = "sk-worker-0123456789"


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A CA, the worker's certificate (for 127.0.0.1) and a gateway's client certificate, as PEM files."""
    folder = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    files = {"ca": folder / "ca.pem", "key_file": folder / "worker-key.txt"}
    ca.cert_pem.write_to_path(str(files["ca"]))
    for name, names in (("worker", ("127.0.0.1", "localhost")), ("gateway", ("gateway.lmgate.test",))):
        cert = ca.issue_cert(*names)
        files[f"{name}_cert"], files[f"{name}_key"] = folder / f"{name}.pem", folder / f"{name}-key.pem"
        cert.cert_chain_pems[0].write_to_path(str(files[f"{name}_cert"]))
        cert.private_key_pem.write_to_path(str(files[f"{name}_key"]))
    files["key_file"].write_text(WORKER_KEY + "\n")
    keys = folder / "worker-keys.txt"
    keys.write_text(f"# the gateway's key\n{WORKER_KEY}\n")
    files["worker_keys"] = keys
    return files


def worker_settings(pki, *, mutual: bool):
    server = {"grpc_port": 0, "grpc_tls_cert_file": str(pki["worker_cert"]),
              "grpc_tls_key_file": str(pki["worker_key"]), "api_keys_file": str(pki["worker_keys"])}  # fmt: skip
    if mutual:
        server["grpc_tls_client_ca_file"] = str(pki["ca"])
    return validate_settings({"server": server, "models": [{"name": "echo", "backend": "fake"}]})


def list_models(target: str, credentials: grpc.ChannelCredentials | None) -> list[str]:
    channel = grpc.insecure_channel(target) if credentials is None else grpc.secure_channel(target, credentials)
    with channel:
        stub = pb_grpc.InferenceStub(channel)
        reply = stub.ListModels(
            pb.ListModelsRequest(), timeout=10, metadata=(("authorization", f"Bearer {WORKER_KEY}"),)
        )
        return [m.name for m in reply.models]


def gateway(pki, target: str, **tls: object):
    entry = {
        "name": "chain",
        "backend": "grpc",
        "target": target,
        "remote_model": "echo",
        "api_key_file": str(pki["key_file"]),
        "tls_ca_file": str(pki["ca"]),
        "connect_timeout_s": 10,
        **tls,
    }
    return ServerThread(validate_settings({"server": {"grpc_port": None}, "models": [entry]}))  # fmt: skip


def test_a_tls_worker_refuses_plaintext_and_serves_a_gateway_that_checks_its_certificate(pki):
    with ServerThread(worker_settings(pki, mutual=False)) as worker:
        with pytest.raises(grpc.RpcError) as refused:
            list_models(worker.grpc_target, None)
        assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
        trusted = grpc.ssl_channel_credentials(root_certificates=pki["ca"].read_bytes())
        assert list_models(worker.grpc_target, trusted) == ["echo"]
        with gateway(pki, worker.grpc_target) as front:
            client = openai.OpenAI(base_url=f"{front.base_url}/v1", api_key="unused", max_retries=0)
            answer = client.completions.create(model="chain", prompt="one two three", max_tokens=8)
            assert answer.choices[0].text == "one two three"


def test_a_mutual_tls_worker_serves_only_clients_with_a_certificate_it_trusts(pki):
    with ServerThread(worker_settings(pki, mutual=True)) as worker:
        server_only = grpc.ssl_channel_credentials(root_certificates=pki["ca"].read_bytes())
        with pytest.raises(grpc.RpcError) as refused:
            list_models(worker.grpc_target, server_only)
        assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
        client_cert = {"tls_cert_file": str(pki["gateway_cert"]), "tls_key_file": str(pki["gateway_key"])}
        with gateway(pki, worker.grpc_target, **client_cert) as front:
            client = openai.OpenAI(base_url=f"{front.base_url}/v1", api_key="unused", max_retries=0)
            answer = client.completions.create(model="chain", prompt="four five", max_tokens=8)
            assert answer.choices[0].text == "four five"


@pytest.mark.parametrize(
    ("server", "entry", "says"),
    [
        ({"grpc_tls_cert_file": "a.pem"}, None, "go together"),
        ({"grpc_tls_client_ca_file": "ca.pem"}, None, "mutual TLS"),
        (None, {"tls_cert_file": "c.pem"}, "go together"),
        (None, {"tls_server_name": "w"}, "need tls_ca_file"),
        (None, {"api_key_env": "K", "api_key_file": "k.txt"}, "not both"),
    ],
)
def test_tls_settings_that_cannot_work_are_refused_naming_them(server, entry, says):
    model = {"name": "chain", "backend": "grpc", "target": "127.0.0.1:1", **(entry or {})}
    with pytest.raises((ValidationError, ValueError)) as err:
        validate_settings({"server": server or {}, "models": [model]})
    assert says in str(err.value)
