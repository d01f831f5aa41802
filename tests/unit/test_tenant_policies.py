"""Tenants' pure policies: token buckets, per-key quotas, the fair admission queue, key records."""

from __future__ import annotations

import asyncio
import hashlib

import pytest

from lmgate.backends.engine.output_text import OutputText
from lmgate.backends.llamacpp.sequence import Sequence
from lmgate.backends.types import GenerateRequest, SamplingParams
from lmgate.server.errors import QuotaExceededError, RateLimitError
from lmgate.server.placement.admission import AdmissionGate
from lmgate.server.placement.fair_queue import FairQueue
from lmgate.server.settings import ConfigError
from lmgate.server.tenancy.keys import KeyRecord, load_records
from lmgate.server.tenancy.quota import TenantQuota
from lmgate.server.tenancy.token_bucket import TokenBucket, retry_after

SECRET = hashlib.sha256(b"sk-a").hexdigest()


def FROZEN() -> float:
    """A clock that stands still at 0: the tests move time by hand."""
    return 0.0


def record(**limits: object) -> KeyRecord:
    return KeyRecord(name="a", secret_sha256=SECRET, **limits)


def ask(max_tokens: int = 10, prompt: str = "x" * 39) -> list[GenerateRequest]:
    return [GenerateRequest("r", "m", SamplingParams(max_tokens=max_tokens), prompt=prompt)]


def test_bucket_refuses_what_does_not_fit_and_says_when_it_will():
    bucket = TokenBucket(60, now=0.0)  # one a second
    assert bucket.take(60, 0.0) == 0
    assert bucket.take(3, 0.0) == pytest.approx(3.0)
    assert bucket.take(3, 2.0) == pytest.approx(1.0)  # refilled 2 of 3, took nothing
    assert bucket.take(3, 3.0) == 0


def test_bucket_charges_an_oversized_amount_as_its_capacity():
    bucket = TokenBucket(10, now=0.0)
    assert bucket.take(500, 0.0) == 0 and bucket.level == 0


def test_bucket_correction_may_leave_a_debt_that_delays_the_next_take():
    bucket = TokenBucket(60, now=0.0)
    bucket.take(10, 0.0)
    bucket.give_back(-200, 0.0)  # used 210, not 10: the level is floored at -capacity
    assert bucket.level == -60
    assert bucket.wait_for(1, 0.0) == pytest.approx(61.0)


def test_retry_after_rounds_up_to_whole_seconds():
    assert (retry_after(0.01), retry_after(2.2), retry_after(30.0)) == (1, 3, 30)


def test_quota_names_the_spent_limit_with_a_retry_after_from_its_bucket():
    quota = TenantQuota(record(requests_per_minute=2), now=0.0, clock=FROZEN)
    quota.admit(ask(), 0.0).settle()
    quota.admit(ask(), 0.0).settle()
    with pytest.raises(QuotaExceededError) as refused:
        quota.admit(ask(), 0.0)
    assert refused.value.limit == "requests_per_minute" and refused.value.retry_after_s == 30
    assert refused.value.http_status == 429 and "requests_per_minute" in refused.value.message


def test_quota_charges_the_estimate_then_the_usage():
    quota = TenantQuota(record(tokens_per_minute=100), now=0.0, clock=FROZEN)
    lease = quota.admit(ask(max_tokens=50), 0.0)  # 39 bytes / 4 + 1 = 10, + 50
    assert quota.tokens is not None and quota.tokens.level == pytest.approx(40, abs=1)
    lease.used = 20
    lease.settle()
    assert quota.tokens.level >= 80 and quota.running == 0


def test_quota_refuses_beyond_max_concurrent_and_frees_the_slot_on_settle():
    quota = TenantQuota(record(max_concurrent=1), now=0.0, clock=FROZEN)
    lease = quota.admit(ask(), 0.0)
    with pytest.raises(QuotaExceededError) as refused:
        quota.admit(ask(), 0.0)
    assert refused.value.limit == "max_concurrent"
    lease.settle()
    lease.settle()  # once only
    assert quota.running == 0
    quota.admit(ask(), 0.0)


def test_quota_keeps_what_was_spent_across_a_reload():
    quota = TenantQuota(record(requests_per_minute=2), now=0.0, clock=FROZEN)
    quota.admit(ask(), 0.0).settle()
    quota.update(record(requests_per_minute=1), now=0.0)
    with pytest.raises(QuotaExceededError):
        quota.admit(ask(), 0.0)


def test_fair_queue_serves_tenants_in_turn_and_each_in_order():
    queue: FairQueue[str] = FairQueue(quantum=1)
    for waiter in ("a1", "a2", "a3"):
        queue.push("a", waiter)
    queue.push("b", "b1")
    queue.push("b", "b2")
    assert [queue.pop() for _ in range(6)] == ["a1", "b1", "a2", "b2", "a3", None]


def test_fair_queue_lets_a_short_line_displace_the_longest_lines_newest():
    queue: FairQueue[str] = FairQueue()
    queue.push("a", "a1")
    queue.push("a", "a2")
    assert queue.displace("a") is None  # its own line
    assert queue.displace("b") == "a2"
    queue.push("b", "b1")
    assert queue.displace("c") is None  # a: 1, c: 0, not two fewer
    assert len(queue) == 2


def test_fair_queue_shares_tokens_by_weight_whatever_the_request_sizes():
    queue: FairQueue[str] = FairQueue(quantum=100)
    for i in range(8):
        queue.push("big", f"B{i}", cost=200)  # weight 1, 200 tokens each: one every other turn
        queue.push("small", f"s{i}", cost=50)  # weight 1, 50 tokens: two a turn
        queue.push("heavy", f"H{i}", cost=100, weight=2)  # weight 2: two a turn
    served = [queue.pop() for _ in range(18)]  # two rounds of credit each: 1 + 4 + 4 pops a round
    tokens = {"B": 200, "s": 50, "H": 100}
    spent = {k: sum(tokens[k] for w in served if w is not None and w[0] == k) for k in tokens}
    assert spent["H"] == 2 * spent["s"] and spent["B"] == spent["s"]
    assert spent["s"] == 400
    assert [w for w in served if w and w[0] == "s"] == [f"s{i}" for i in range(8)]  # in order within a key


def test_fair_queue_without_tenants_is_one_fifo():
    queue: FairQueue[int] = FairQueue()
    for i in range(4):
        queue.push("", i)
    assert queue.displace("") is None
    assert [queue.pop() for _ in range(4)] == [0, 1, 2, 3]


async def test_gate_admits_the_other_tenant_through_a_full_queue_and_refuses_the_flood():
    gate = AdmissionGate("m", max_running=1, max_waiting=2)
    await gate.acquire("a")
    flood = [asyncio.ensure_future(gate.acquire("a")) for _ in range(2)]
    await asyncio.sleep(0)
    with pytest.raises(RateLimitError):
        await gate.acquire("a")  # its own line is the longest: refused at once
    other = asyncio.ensure_future(gate.acquire("b"))
    await asyncio.sleep(0)
    with pytest.raises(RateLimitError):
        await flood[1]  # the newest of the flood gave its place up
    gate.release()
    await flood[0]  # a's turn came first (it queued first) ...
    gate.release()
    await other  # ... then b's
    assert gate.running == 1 and gate.waiting == 0


def test_key_records_name_the_source_and_field_of_an_error(tmp_path):
    path = tmp_path / "keys.yaml"
    path.write_text(f"keys:\n  - {{name: a, secret_sha256: {SECRET}, requests_per_minute: 0}}\n")
    with pytest.raises(ConfigError, match=r"keys.yaml \(server.keys_file\): keys.0.requests_per_minute"):
        load_records(path, None)
    path.write_text(f"keys:\n  - {{name: a, secret_sha256: {SECRET}}}\n  - {{name: a, secret_sha256: {SECRET}}}\n")
    with pytest.raises(ConfigError, match="repeated: a"):
        load_records(path, None)


def test_key_records_from_an_environment_variable(monkeypatch):
    monkeypatch.setenv("KEYS", f'{{"keys": [{{"name": "a", "secret_sha256": "{SECRET}", "models": ["chat*"]}}]}}')
    (only,) = load_records(None, "KEYS")
    assert only.allows_model(["chat-small"]) and not only.allows_model(["embed", "e5"])
    monkeypatch.setenv("KEYS", "")
    with pytest.raises(ConfigError, match=r"\$KEYS \(server.keys_env\) is unset or empty"):
        load_records(None, "KEYS")


def test_cache_salt_is_per_key_unless_keys_share_a_group():
    other = hashlib.sha256(b"sk-b").hexdigest()
    a, b = record(), KeyRecord(name="b", secret_sha256=other)
    assert a.cache_salt != b.cache_salt
    grouped = [KeyRecord(name=n, secret_sha256=s, cache_group="team") for n, s in (("a", SECRET), ("b", other))]
    assert grouped[0].cache_salt == grouped[1].cache_salt != a.cache_salt


def sequence(salt: bytes) -> Sequence:
    return Sequence("r", 0, list(range(40)), SamplingParams(), 8, 0, OutputText(()), cache_salt=salt)


def test_salt_changes_every_block_hash_and_no_salt_hashes_as_before():
    plain, salted, again = sequence(b""), sequence(b"tenant-a"), sequence(b"tenant-a")
    assert len(plain.block_hashes()) == 2
    assert not set(plain.block_hashes()) & set(salted.block_hashes())
    assert salted.block_hashes() == again.block_hashes()
    first = hashlib.blake2b(b"", digest_size=16)
    first.update(__import__("array").array("i", range(16)).tobytes())
    assert plain.block_hashes()[0] == first.digest()


def test_a_request_refused_after_its_charge_gets_everything_back():
    quota = TenantQuota(record(requests_per_minute=1, tokens_per_minute=100), now=0.0, clock=FROZEN)
    quota.admit(ask(max_tokens=50), 0.0).cancel()
    assert quota.running == 0 and quota.tokens is not None and quota.tokens.level == pytest.approx(100, abs=1)
    quota.admit(ask(max_tokens=50), 0.0)  # its request-per-minute token was given back too
