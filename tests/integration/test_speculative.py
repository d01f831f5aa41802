"""Speculative decoding through the whole server: the openai SDK and gRPC get the same answers with
it on, off per request, or off in the config; /metrics counts drafts and accepts."""

import re

import grpc
import httpx
import openai
import pytest

from lmgate.server.settings import validate_settings
from lmgate.v1 import inference_pb2 as pb
from lmgate.v1 import inference_pb2_grpc as pb_grpc

from conftest import MODEL
from server_helpers import ServerThread

PROMPT = "A cow lives on a farm. A cow has four legs. A cow lives on a farm."


@pytest.fixture(scope="module")
def server(tiny_chat_path):
    settings = validate_settings({
        "server": {"grpc_port": 0},
        "models": [{"name": MODEL, "gguf": str(tiny_chat_path), "max_seqs": 4, "n_ctx": 2048,
                    "check_integrity": True, "speculative": {"method": "ngram", "num_draft": 5}}],
    })  # fmt: skip
    with ServerThread(settings) as server:
        yield server


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0)


def counters(server) -> tuple[float, float]:
    text = httpx.get(f"{server.base_url}/metrics").text

    def value(name: str) -> float:
        found = re.search(rf'^{name}_total{{[^}}]*model="{MODEL}"[^}}]*}} (\S+)$', text, re.MULTILINE)
        assert found, f"{name} missing from /metrics"
        return float(found.group(1))

    return value("lmgate_spec_decode_draft_tokens"), value("lmgate_spec_decode_accepted_tokens")


def complete(client, **extra) -> str:
    response = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=40, temperature=0, extra_body=extra)
    return response.choices[0].text


def test_the_answer_is_the_same_with_speculation_on_and_off_and_metrics_count_it(server, client):
    drafted, accepted = counters(server)
    off = complete(client, speculative=False, ignore_eos=True)
    assert counters(server) == (drafted, accepted)
    on = complete(client, ignore_eos=True)
    assert on == off
    now_drafted, now_accepted = counters(server)
    assert now_drafted > drafted and now_accepted > accepted
    assert now_accepted <= now_drafted
    assert server.wait_idle(MODEL).kv_cells_used == 0


def test_a_non_boolean_switch_is_a_400_naming_it(client):
    with pytest.raises(openai.BadRequestError) as err:
        complete(client, speculative="sometimes")
    assert err.value.body["param"] == "speculative"


def test_grpc_carries_the_switch(server, client):
    request = pb.CompleteRequest(model=MODEL, text=PROMPT, sampling=pb.SamplingParams(
        temperature=0, max_tokens=40, ignore_eos=True, speculative=False))  # fmt: skip
    drafted = counters(server)[0]
    with grpc.insecure_channel(server.grpc_target) as channel:
        text = "".join(r.text for r in pb_grpc.InferenceStub(channel).Complete(request))
    assert counters(server)[0] == drafted
    assert text == complete(client, ignore_eos=True)
