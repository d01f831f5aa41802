"""Tenants end to end: a real server, API key records, the official openai SDK and gRPC stubs.

Keys are scoped (models, endpoints), limited (requests and tokens per minute, requests in flight),
served fairly at admission, and cache-isolated: one key's cached prompt blocks are never hit by
another's identical prompt, unless both keys name the same cache group.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import re
import signal
import time
from pathlib import Path

import grpc
import httpx
import openai
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from lmgate.server.settings import validate_settings
from lmgate.v1 import inference_pb2 as pb
from lmgate.v1 import inference_pb2_grpc as pb_grpc

from server_helpers import Process, ServerThread, wait_ready

NAMES = ("alpha", "beta", "gamma", "delta", "limited", "metered", "single", "scraper", "careful", "embedder")
SECRETS = {name: f"sk-{name}-0123456789abcdef0123456789abcdef" for name in NAMES}
POLL_S = 0.2


def record(name: str, **fields: object) -> dict[str, object]:
    return {"name": name, "secret_sha256": hashlib.sha256(SECRETS[name].encode()).hexdigest(), **fields}


KEYS = [
    record("alpha", endpoints=["inference", "metrics"]),
    record("beta", models=["tiny-chat", "slow"]),
    record("gamma", cache_group="team"),
    record("delta", cache_group="team"),
    record("limited", requests_per_minute=1),
    record("metered", tokens_per_minute=240),
    record("single", max_concurrent=1),
    record("scraper", endpoints=["metrics"]),
    record("careful", requests_per_minute=1),
    record("embedder", requests_per_minute=1),
]


def models(tiny_chat_path: object) -> list[dict[str, object]]:
    return [
        {"name": "tiny-chat", "gguf": str(tiny_chat_path), "max_seqs": 4, "n_ctx": 2048, "check_integrity": True},
        {"name": "slow", "backend": "fake", "token_delay_s": 0.05, "max_running": 1, "max_waiting": 8},
        {"name": "quick", "backend": "fake"},
        {"name": "private", "backend": "fake"},
    ]


@pytest.fixture(scope="module")
def keys_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("tenants") / "keys.yaml"
    path.write_text(yaml.safe_dump({"keys": KEYS}))
    return path


@pytest.fixture(scope="module")
def server(tiny_chat_path, keys_file):
    settings = validate_settings({
        "server": {"grpc_port": 0, "keys_file": str(keys_file), "metrics_auth": True},
        "models": models(tiny_chat_path),
    })  # fmt: skip
    with ServerThread(settings, wait_ready=False) as server:
        wait_ready(server.base_url)
        yield server


def client(server: ServerThread, name: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=SECRETS[name], max_retries=0)


def complete(server: ServerThread, name: str, model: str = "quick", **params: object) -> openai.types.Completion:
    params.setdefault("max_tokens", 4)
    params.setdefault("prompt", "one two three")
    return client(server, name).completions.create(model=model, **params)


def grpc_call(server: ServerThread, name: str, model: str) -> grpc.aio.AioRpcError | None:
    async def call() -> grpc.aio.AioRpcError | None:
        async with grpc.aio.insecure_channel(server.grpc_target) as channel:
            stub = pb_grpc.InferenceStub(channel)
            request = pb.CompleteRequest(model=model, text="one two", sampling=pb.SamplingParams(max_tokens=2))
            try:
                async for _ in stub.Complete(request, metadata=(("authorization", f"Bearer {SECRETS[name]}"),)):
                    pass
            except grpc.aio.AioRpcError as exc:
                return exc
        return None

    return asyncio.run(call())


def test_a_model_outside_the_keys_scope_does_not_exist_for_it(server):
    with pytest.raises(openai.NotFoundError) as hidden:
        complete(server, "beta", model="private")
    with pytest.raises(openai.NotFoundError) as missing:
        complete(server, "beta", model="nowhere")
    assert hidden.value.body["code"] == "model_not_found"
    assert hidden.value.body["message"].replace("private", "nowhere") == missing.value.body["message"]
    assert "quick" not in hidden.value.body["message"]  # only the key's models are listed
    assert {m.id for m in client(server, "beta").models.list()} == {"tiny-chat", "slow"}
    assert "private" in {m.id for m in client(server, "alpha").models.list()}
    assert complete(server, "alpha", model="private").choices[0].finish_reason is not None
    refused = grpc_call(server, "beta", "private")
    assert refused is not None and refused.code() is grpc.StatusCode.NOT_FOUND


def test_embeddings_keep_the_keys_scope_and_quota(server):
    with pytest.raises(openai.NotFoundError):
        client(server, "beta").embeddings.create(model="private", input="hello")
    assert len(client(server, "embedder").embeddings.create(model="quick", input="hello").data) == 1
    with pytest.raises(openai.RateLimitError) as refused:
        client(server, "embedder").embeddings.create(model="quick", input="hello")
    assert "requests_per_minute" in refused.value.body["message"]


def test_an_endpoint_outside_the_keys_groups_is_forbidden(server):
    def scrape(name: str | None) -> httpx.Response:
        headers = {"authorization": f"Bearer {SECRETS[name]}"} if name else {}
        return httpx.get(f"{server.base_url}/metrics", headers=headers)

    assert scrape("alpha").status_code == 200
    forbidden = scrape("beta")
    assert forbidden.status_code == 403 and forbidden.json()["error"]["code"] == "permission_denied"
    assert scrape(None).status_code == 401
    assert scrape("scraper").status_code == 200
    with pytest.raises(openai.PermissionDeniedError) as denied:
        complete(server, "scraper")
    assert "inference" in denied.value.body["message"]
    rpc = grpc_call(server, "scraper", "quick")
    assert rpc is not None and rpc.code() is grpc.StatusCode.PERMISSION_DENIED
    wrong = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="sk-nobody", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.models.list()


def test_requests_per_minute_are_refused_with_a_retry_after_from_the_bucket(server):
    complete(server, "limited")
    with pytest.raises(openai.RateLimitError) as refused:
        complete(server, "limited")
    assert refused.value.body["code"] == "requests_per_minute_exceeded"
    assert "requests_per_minute" in refused.value.body["message"]
    assert 2 <= int(refused.value.response.headers["retry-after"]) <= 60  # the bucket's wait, not a constant 1
    rpc = grpc_call(server, "limited", "quick")
    assert rpc is not None and rpc.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert 2 <= int(dict(rpc.trailing_metadata())["retry-after"]) <= 60


TEN_WORDS = "one two three four five six seven eight nine ten"


def test_a_request_refused_as_invalid_is_not_charged(server):
    with pytest.raises(openai.BadRequestError):
        complete(server, "careful", n=9)  # more choices than the model serves (max_n 8): 400 at dispatch
    assert complete(server, "careful").choices  # its one request a minute is still there


def test_tokens_per_minute_are_refused_until_the_bucket_refills(server):
    for _ in range(30):  # 240 tokens a minute; each request uses 10 + 10 (the fake echoes its prompt)
        try:
            complete(server, "metered", max_tokens=10, prompt=TEN_WORDS)
        except openai.RateLimitError as exc:
            assert exc.body["code"] == "tokens_per_minute_exceeded"
            break
    else:
        pytest.fail("tokens_per_minute never refused a request")
    for _ in range(int(120 / POLL_S)):  # refills at 4 tokens a second: polled, not timed
        try:
            assert complete(server, "metered", max_tokens=10, prompt=TEN_WORDS).usage.total_tokens == 20
            return
        except openai.RateLimitError:
            time.sleep(POLL_S)
    pytest.fail("the tokens_per_minute bucket never refilled")


def test_max_concurrent_refuses_a_second_request_in_flight(server):
    single = client(server, "single")
    stream = single.completions.create(model="slow", prompt=" ".join(["word"] * 200), max_tokens=200, stream=True)
    next(iter(stream))
    with pytest.raises(openai.RateLimitError) as refused:
        complete(server, "single")
    assert refused.value.body["code"] == "max_concurrent_exceeded"
    stream.close()
    for _ in range(int(30 / POLL_S)):
        try:
            complete(server, "single")
            return
        except openai.RateLimitError:
            time.sleep(POLL_S)
    pytest.fail("the in-flight slot was never given back")


async def test_one_keys_flood_does_not_keep_another_keys_requests_out(server):
    """`slow` runs one request at a time and queues 8: alpha floods it without pause, and while its
    requests fill the queue, beta asks three times."""
    gate = server.app.state.models.pools["slow"].gate
    stop = asyncio.Event()
    flooded: list[str] = []

    def aclient(name: str) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=f"{server.base_url}/v1", api_key=SECRETS[name], max_retries=0)

    async def ask(client: openai.AsyncOpenAI) -> str:
        try:
            await client.completions.create(model="slow", prompt=TEN_WORDS, max_tokens=10)  # 0.5 s each
        except openai.RateLimitError:
            return "refused"
        return "ok"

    async def flood() -> None:
        client = aclient("alpha")
        while not stop.is_set():
            flooded.append(await ask(client))
            await asyncio.sleep(0.01)

    flooders = [asyncio.ensure_future(flood()) for _ in range(20)]
    try:
        for _ in range(int(30 / 0.05)):
            if gate.waiting == gate.max_waiting:
                break
            await asyncio.sleep(0.05)
        assert gate.waiting == gate.max_waiting, "the flood never filled the queue"
        beta = aclient("beta")
        others = await asyncio.gather(*(ask(beta) for _ in range(3)))
    finally:
        stop.set()
        await asyncio.gather(*flooders)
    assert others == ["ok", "ok", "ok"]
    assert "refused" in flooded  # the flood was refused beyond its share of the queue, not beta


PROMPT = "You are a careful assistant for the accounts team. " * 6 + "Answer briefly."


def cached(server: ServerThread, name: str) -> int:
    reply = client(server, name).chat.completions.create(
        model="tiny-chat", messages=[{"role": "system", "content": PROMPT}, {"role": "user", "content": "hi"}],
        max_tokens=1, temperature=0,
    )  # fmt: skip
    server.wait_idle("tiny-chat")
    return reply.usage.prompt_tokens_details.cached_tokens


def test_a_tenants_cached_prompt_is_never_hit_by_another_tenant(server):
    assert cached(server, "alpha") == 0
    assert cached(server, "alpha") > 0  # its own repeat hits
    assert cached(server, "beta") == 0  # the same prompt from another key does not
    assert cached(server, "beta") > 0
    assert cached(server, "gamma") == 0  # gamma and delta share a cache group, apart from alpha's
    assert cached(server, "delta") > 0


def test_a_stored_response_is_its_tenants_alone(server):
    """Another key can neither read, continue nor delete it: to that key it does not exist."""
    alpha, beta = client(server, "alpha"), client(server, "beta")
    kept = alpha.responses.create(model="tiny-chat", input="What does a cow say?", max_output_tokens=8)
    assert alpha.responses.retrieve(kept.id).id == kept.id
    with pytest.raises(openai.NotFoundError):
        beta.responses.retrieve(kept.id)
    with pytest.raises(openai.BadRequestError) as err:
        beta.responses.create(model="tiny-chat", input="And a dog?", previous_response_id=kept.id, max_output_tokens=8)
    assert err.value.body["code"] == "previous_response_not_found"
    with pytest.raises(openai.NotFoundError):
        beta.responses.delete(kept.id)
    follow_up = alpha.responses.create(model="tiny-chat", input="And a dog?", previous_response_id=kept.id,
                                       max_output_tokens=8)  # fmt: skip
    assert follow_up.status in {"completed", "incomplete"}


def test_metrics_and_logs_name_the_tenant_never_the_secret(server, caplog):
    with caplog.at_level(logging.INFO, logger="lmgate.access"):
        complete(server, "beta", model="slow")
        for _ in range(2):
            with contextlib.suppress(openai.RateLimitError):
                complete(server, "limited")
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "lmgate.access"]
    assert any(line.get("tenant") == "beta" and line["status"] == "ok" for line in lines)
    assert any(line.get("limit") == "requests_per_minute" and line["tenant"] == "limited" for line in lines)
    text = httpx.get(f"{server.base_url}/metrics", headers={"authorization": f"Bearer {SECRETS['alpha']}"}).text
    assert 'lmgate_tenant_requests_total{model="slow",status="ok",tenant="beta"}' in text
    assert 'lmgate_tenant_rate_limited_total{limit="requests_per_minute",tenant="limited"}' in text
    assert not any(secret in text for secret in SECRETS.values())
    assert not any(SECRETS["beta"] in r.getMessage() for r in caplog.records)


def test_a_broken_keys_file_on_reload_keeps_the_keys_in_force(server, keys_file):
    keys_file.write_text("keys: [")
    try:
        assert server.app.state.tenants.reload() is False
        assert complete(server, "alpha").choices
    finally:
        keys_file.write_text(yaml.safe_dump({"keys": KEYS}))


def test_keys_reload_on_sighup_without_dropping_a_stream(tmp_path):
    keys = tmp_path / "keys.yaml"
    keys.write_text(yaml.safe_dump({"keys": [record("alpha")]}))
    config = tmp_path / "lmgate.yaml"
    config.write_text(json.dumps({
        "server": {"keys_file": str(keys)},
        "models": [{"name": "slow", "backend": "fake", "token_delay_s": 0.02}],
    }))  # fmt: skip
    process = Process(config)
    try:
        wait_ready(process.url)
        alpha, beta = (openai.OpenAI(base_url=f"{process.url}/v1", api_key=SECRETS[n], max_retries=0)
                       for n in ("alpha", "beta"))  # fmt: skip
        with pytest.raises(openai.AuthenticationError):
            beta.models.list()
        words = " ".join(["word"] * 100)  # the fake echoes its prompt: 100 tokens, 2 s
        stream = alpha.completions.create(model="slow", prompt=words, max_tokens=100, stream=True)
        chunks = iter(stream)
        next(chunks)
        keys.write_text(yaml.safe_dump({"keys": [record("alpha"), record("beta")]}))
        process.process.send_signal(signal.SIGHUP)
        for _ in range(int(30 / POLL_S)):
            try:
                beta.models.list()
                break
            except openai.AuthenticationError:
                time.sleep(POLL_S)
        else:
            pytest.fail("the new key never worked after SIGHUP")
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    finally:
        process.stop()


def test_the_dashboards_tenant_row_queries_metrics_the_server_exposes(server):

    dashboard = json.loads((Path(__file__).resolve().parents[2] / "deploy/grafana/lmgate.json").read_text())
    (row,) = [p for p in dashboard["panels"] if p["type"] == "row" and p["title"].startswith("Tenants")]
    queried = {n for p in row["panels"] for t in p["targets"] for n in re.findall(r"lmgate_\w+", t["expr"])}
    for _ in range(2):
        with contextlib.suppress(openai.RateLimitError):
            complete(server, "limited")
    text = httpx.get(f"{server.base_url}/metrics", headers={"authorization": f"Bearer {SECRETS['alpha']}"}).text
    exposed = {s.name for family in text_string_to_metric_families(text) for s in family.samples}
    assert len(queried) == 4 and queried <= exposed
