"""Retry delays: doubling to a cap, back to the start after a stable run."""

from lmgate.backends.backoff import Backoff


def test_delays_double_up_to_the_cap():
    backoff = Backoff(initial_s=0.5, maximum_s=4.0)
    assert [backoff.failed(now=0.0) for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]


def test_a_stable_run_starts_the_delays_again_and_a_short_one_does_not():
    backoff = Backoff(initial_s=1.0, maximum_s=60.0, stable_s=60.0)
    backoff.failed(now=0.0)
    backoff.failed(now=1.0)
    backoff.succeeded(now=3.0)
    assert backoff.failed(now=10.0) == 4.0  # up for 7 s: still failing
    backoff.succeeded(now=20.0)
    assert backoff.failed(now=100.0) == 1.0  # up for 80 s: a fresh failure
