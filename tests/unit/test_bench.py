"""lmgate bench counts what the server streams (checked against the fake backend over real HTTP)."""

from lmgate.bench import rounds
from lmgate.bench.client import BenchConfig, percentiles, run_bench
from lmgate.server.settings import validate_settings

from server_helpers import ServerThread


def test_percentiles_of_known_values():
    assert percentiles([]) == {"p50": 0.0, "p90": 0.0, "p99": 0.0}
    p = percentiles([i / 1000 for i in range(1, 102)])  # 1..101 ms
    assert round(p["p50"]) == 51 and round(p["p90"]) == 91 and round(p["p99"]) == 100


async def test_bench_counts_every_request_and_token():
    settings = validate_settings({"server": {"grpc_port": 0}, "models": [{"name": "echo", "backend": "fake"}]})
    with ServerThread(settings) as server:
        prompt = "one two three four five"
        config = BenchConfig(server.base_url, "echo", concurrency=3, requests=7, max_tokens=64, prompt=prompt)
        report = await run_bench(config)
    assert (report.requests, report.errors) == (7, 0)
    assert report.output_tokens == 7 * 5  # the fake backend echoes the five prompt words
    assert report.output_tokens_per_s > 0 and report.ttft_ms["p50"] > 0


def test_distinct_prompts_differ_from_their_first_words_and_between_runs():
    run = BenchConfig("http://x", "m", 1, 3, prompt="Once upon a time", distinct="Run a1")
    other = BenchConfig("http://x", "m", 1, 3, prompt="Once upon a time", distinct="Run b2")
    prompts = [run.prompt_for(i) for i in range(3)] + [other.prompt_for(i) for i in range(3)]
    assert len({p.split(".")[0] for p in prompts}) == 6  # no two share what comes before the fixed text
    assert all(p.endswith("Once upon a time") for p in prompts)
    same = BenchConfig("http://x", "m", 1, 3, prompt="Once upon a time")
    assert {same.prompt_for(i) for i in range(3)} == {"Once upon a time"}


def test_rounds_rotate_who_runs_first_and_ratios_pair_rounds():
    assert list(rounds.interleave(2, ["a", "b", "c"])) == [(0, "a"), (0, "b"), (0, "c"), (1, "b"), (1, "c"), (1, "a")]
    assert [rounds.rotate(["a", "b"], k) for k in range(3)] == [["a", "b"], ["b", "a"], ["a", "b"]]
    ratio = rounds.ratios([10.0, 30.0, 20.0], [10.0, 10.0, 40.0])  # per round: 1, 3, 0.5
    assert (ratio.median, ratio.low, ratio.high) == (1.0, 0.5, 3.0)
