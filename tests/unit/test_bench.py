"""lmgate bench counts what the server streams (checked against the fake backend over real HTTP)."""

import argparse

from lmgate.bench import draft_model, rounds, suite
from lmgate.bench.client import BenchConfig, BenchReport, percentiles, run_bench
from lmgate.bench.speculative import SpeculativeRun
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
    assert list(rounds.interleave_levels(2, ["a", "b"], [1, 8])) == [
        (0, 1, "a"), (0, 1, "b"), (0, 8, "b"), (0, 8, "a"), (1, 1, "b"), (1, 1, "a"), (1, 8, "a"), (1, 8, "b"),
    ]  # fmt: skip
    ratio = rounds.ratios([10.0, 30.0, 20.0], [10.0, 10.0, 40.0])  # per round: 1, 3, 0.5
    assert (ratio.median, ratio.low, ratio.high) == (1.0, 0.5, 3.0)


def report(tps: float, c: int = 1) -> BenchReport:
    ms = {"p50": 10.0, "p90": 20.0, "p99": 30.0}
    return BenchReport(c, 8, 0, 1.0, int(tps), tps, ms, ms, ms, 0.5)


def test_the_suite_renders_every_scenario_with_paired_ratios():
    """Two rounds of made-up reports: the tables show medians and the per-round ratios."""
    levels = [1, 16]
    results = {
        name: {
            "sweep": [[report(base * r, c) for c in levels] for r in (1, 2)],
            "shared": [[report(base * r, 16)] for r in (1, 2)],
            "varied": [[report(base * r, 8)] for r in (1, 2)],
        }
        for name, base in (("lmgate", 110.0), ("llama-server", 100.0), (suite.UNIFIED, 90.0))
    }
    results["lmgate"] |= {"free": [[report(100.0, 8)]] * 2, "structured": [[report(95.0, 8)]] * 2}
    results["llama-cpp-python"] = {"sweep": [[report(50.0, c) for c in levels]]}
    args = argparse.Namespace(levels=levels, threads=2, ctx=16384, slots=16, max_tokens=64)
    text = suite.render(results, args, "test machine")
    assert "| 1 | 165.0 (110.0–220.0) | 150.0 (100.0–200.0) | 50.0 | 1.10× (1.10–1.10) |" in text
    assert "## Output lengths of their own (c=8)" in text and "8 to 128 tokens" in text
    assert "| lmgate | llama-server | lmgate (unified) | lmgate / llama-server |" in text
    assert "Constrained / free: 0.95×" in text


def test_varied_lengths_spread_over_an_eighth_to_twice_max_tokens_alike_on_every_run():
    varied = BenchConfig("http://x", "m", 8, 64, max_tokens=64, varied=True)
    lengths = [varied.max_tokens_for(i) for i in range(64)]
    assert min(lengths) == 8 and max(lengths) <= 128 and len(set(lengths)) > 40
    other = BenchConfig("http://y", "m", 1, 64, max_tokens=64, varied=True)
    assert lengths == [other.max_tokens_for(i) for i in range(64)]
    assert {BenchConfig("http://x", "m", 8, 64, max_tokens=64).max_tokens_for(i) for i in range(64)} == {64}


def test_the_draft_model_section_compares_the_speculating_lmgate_with_every_server():
    reports = {
        name: [[report(base * r, c) for c in (1, 8)] for r in (1, 2)]
        for name, base in ((draft_model.PLAIN, 100.0), (draft_model.DRAFT, 120.0), (draft_model.ANCHOR, 105.0),
                           (draft_model.ANCHOR_DRAFT, 125.0))
    }  # fmt: skip
    text = "\n".join(draft_model.render(SpeculativeRun((1, 8), reports, drafted=200.0, accepted=150.0)))
    assert "## Speculative decoding: a draft model" in text and "2 layers 256 wide" in text
    row = "| 1 | 150.0 (100.0–200.0) | 180.0 (120.0–240.0) | 157.5 (105.0–210.0) | 187.5 (125.0–250.0) | 1.20× "
    assert row in text
    assert "| 0.96× (0.96–0.96) |" in text  # 120 / 125 in both rounds
    assert "accepted 150 (75%)" in text
