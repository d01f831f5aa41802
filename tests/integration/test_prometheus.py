"""A real Prometheus scrapes lmgate during traffic; PromQL finds the values and they are plausible.

Needs Debian's `prometheus` binary (.ci/run installs it). Skipped where it is missing, unless
LMGATE_REQUIRE_PROMETHEUS is set (CI sets it), then it fails.
"""

import os
import shutil
import socket
import subprocess
import time

import httpx
import openai
import pytest

from conftest import MODEL, tiny_chat_settings
from server_helpers import ServerThread

PROMETHEUS = shutil.which("prometheus")
STORY = "Once upon a time, there was a child named Tom. One day, Tom went to the park and found a red ball."
pytestmark = pytest.mark.skipif(
    PROMETHEUS is None and not os.environ.get("LMGATE_REQUIRE_PROMETHEUS"),
    reason="the prometheus binary is not installed (apt-get install prometheus)",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lmgate(tiny_chat_path):
    with ServerThread(tiny_chat_settings(tiny_chat_path, metrics_port=free_port())) as server:
        yield server


@pytest.fixture(scope="module")
def prometheus(lmgate, tmp_path_factory):
    assert PROMETHEUS is not None, "install Debian's prometheus package"
    tmp = tmp_path_factory.mktemp("prometheus")
    target = f"127.0.0.1:{lmgate.app.state.settings.server.metrics_port}"
    (tmp / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        f"scrape_configs:\n  - job_name: lmgate\n    static_configs: [{{targets: ['{target}']}}]\n"
    )
    port = free_port()
    process = subprocess.Popen(
        [PROMETHEUS, f"--config.file={tmp / 'prometheus.yml'}", f"--storage.tsdb.path={tmp / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if httpx.get(f"{url}/-/ready").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def query(prometheus: str, promql: str) -> list[dict]:
    response = httpx.get(f"{prometheus}/api/v1/query", params={"query": promql}).json()
    assert response["status"] == "success", response
    return response["data"]["result"]


def scalar(prometheus: str, promql: str) -> float | None:
    result = query(prometheus, promql)
    return float(result[0]["value"][1]) if result else None


def wait_for(prometheus: str, promql: str, expected: float) -> float | None:
    """The query's value once it equals ``expected`` (bounded wait: scrapes come every second)."""
    for _ in range(300):
        value = scalar(prometheus, promql)
        if value == expected:
            return value
        time.sleep(0.1)
    return scalar(prometheus, promql)


def test_prometheus_sees_tokens_latencies_and_the_engine(lmgate, prometheus):
    assert wait_for(prometheus, 'up{job="lmgate"}', 1.0) == 1.0
    client = openai.OpenAI(base_url=f"{lmgate.base_url}/v1", api_key="unused", max_retries=0)
    generated, requests = 0, 0
    started = time.monotonic()
    while time.monotonic() - started < 4 or requests < 8:  # traffic across several scrapes
        reply = client.completions.create(model=MODEL, prompt=STORY, max_tokens=24, temperature=0)
        generated += reply.usage.completion_tokens
        requests += 1
    selector = f'{{job="lmgate",model="{MODEL}"}}'
    assert wait_for(prometheus, f"sum(lmgate_generation_tokens_total{selector})", generated) == generated
    assert scalar(prometheus, f'sum(lmgate_requests_total{{job="lmgate",model="{MODEL}",status="ok"}})') == requests

    rate = scalar(prometheus, f"sum(rate(lmgate_generation_tokens_total{selector}[1m]))")
    assert rate is not None and rate > 0
    ttft_p50 = scalar(
        prometheus,
        f"histogram_quantile(0.5, sum by (le) (rate(lmgate_time_to_first_token_seconds_bucket{selector}[1m])))",
    )
    assert ttft_p50 is not None and 0 < ttft_p50 < 10
    itl_p99 = scalar(
        prometheus,
        f"histogram_quantile(0.99, sum by (le) (rate(lmgate_inter_token_latency_seconds_bucket{selector}[1m])))",
    )
    assert itl_p99 is not None and 0 < itl_p99 < 5
    assert scalar(prometheus, f"lmgate_kv_cache_usage_ratio{selector}") == 0  # idle now
    assert scalar(prometheus, f"lmgate_requests_running{selector}") == 0
    assert scalar(prometheus, f"lmgate_prefix_cache_queries_total{selector}") > 0
    assert scalar(prometheus, f"lmgate_prefix_cache_hits_total{selector}") > 0  # the same prompt each time
    assert scalar(prometheus, f"lmgate_prefix_cache_host_bytes{selector}") is not None
