"""The router's policies on plain data."""

from collections import Counter

from lmgate.backends.types import ChatMessage, GenerateRequest, Role
from lmgate.server.placement.dispatch import affinity_key
from lmgate.server.placement.prefix_index import prefix_blocks
from lmgate.server.placement.router import Policy, Reason, Router, RouterConfig


def test_least_outstanding_tokens_picks_the_lightest_replica():
    router = Router.of(3, RouterConfig(policy=Policy.LEAST_OUTSTANDING))
    router.started(0, 500)
    router.started(1, 100)
    router.started(2, 300)
    assert router.pick(now=0) == 1
    router.ended(1, 100)
    router.started(1, 900)
    assert router.pick(now=0) == 2


def test_the_same_prefix_goes_to_the_same_replica():
    router = Router.of(4)
    key = b"You are a helpful assistant. Answer briefly."
    assert len({router.pick(now=0, affinity_key=key) for _ in range(20)}) == 1


def test_different_prefixes_spread_over_the_replicas():
    router = Router.of(4)
    picks = Counter(router.pick(now=0, affinity_key=f"system prompt {i}".encode()) for i in range(400))
    assert set(picks) == {0, 1, 2, 3}
    assert min(picks.values()) > 40  # consistent hashing with virtual nodes is roughly even


def test_a_hot_prefix_spills_over_once_its_replica_is_over_the_load_bound():
    router = Router.of(2, RouterConfig(epsilon=0.0))
    key = b"the same system prompt for everyone"
    home = router.pick(now=0, affinity_key=key)
    placed = []
    for _ in range(6):
        index = router.pick(now=0, affinity_key=key)
        router.started(index, 10)
        placed.append(index)
    assert Counter(placed) == {home: 3, 1 - home: 3}  # with epsilon 0 each takes at most its share


def test_failures_eject_a_replica_for_a_while_then_it_is_tried_again():
    router = Router.of(2, RouterConfig(policy=Policy.LEAST_OUTSTANDING, failures_to_eject=2, eject_s=10))
    router.failed(0, now=100)
    assert router.pick(now=100) == 0  # one failure is not enough
    router.failed(0, now=100)
    assert router.pick(now=105) == 1
    assert router.pick(now=105, exclude=frozenset({1})) is None
    assert router.pick(now=111) == 0  # back after eject_s
    router.failed(0, now=111)
    assert router.pick(now=112) == 1  # and out again at its first failure
    router.succeeded(0)
    assert router.replicas[0].consecutive_failures == 0


def test_excluded_replicas_are_skipped():
    router = Router.of(3, RouterConfig(policy=Policy.LEAST_OUTSTANDING))
    assert router.pick(now=0, exclude=frozenset({0})) == 1


def chat(*messages: tuple[Role, str]) -> GenerateRequest:
    return GenerateRequest("r", "m", messages=tuple(ChatMessage(role, text) for role, text in messages))


def test_the_affinity_key_of_a_chat_is_its_instructions_not_what_its_user_wrote():
    system = (Role.SYSTEM, "You are Gate. " * 10)
    alice = chat(system, (Role.USER, "What does a duck say?"))
    bob = chat(system, (Role.DEVELOPER, "Be brief."), (Role.USER, "Where do fish live?"))
    carol = chat(system, (Role.DEVELOPER, "Be brief."), (Role.USER, "Hello"), (Role.ASSISTANT, "Hi"), (Role.USER, "?"))
    assert affinity_key(bob) == affinity_key(carol) != affinity_key(alice)
    assert affinity_key(alice) == affinity_key(chat(system, (Role.USER, "Something else entirely")))
    # Without instructions, a conversation keeps its first message: each later turn goes where it went.
    first = (Role.USER, "Tell me a story.")
    assert affinity_key(chat(first)) == affinity_key(chat(first, (Role.ASSISTANT, "Once..."), (Role.USER, "More")))


def test_the_affinity_key_is_bounded_whatever_the_prompt():
    assert len(affinity_key(GenerateRequest("r", "m", prompt="é" * 1_000_000))) == 512


def blocks_of(text: str, salt: str | None = None) -> list[bytes]:
    return prefix_blocks(GenerateRequest("r", "m", prompt=text, cache_salt=salt))


def test_block_keys_are_chained_salted_and_whole_blocks_only():
    system = "You are a careful assistant. " * 30  # about 3.4 blocks
    a, b = blocks_of(system + "What is 2 + 2?"), blocks_of(system + "Tell me a story.")
    assert len(a) == len(b) == 3 and a == b  # the differing tails sit in the partial last block
    longer = blocks_of(system + "x" * 1000)
    assert longer[:3] == a and len(longer) > 3
    changed = blocks_of("Z" + system[1:])
    assert not set(changed) & set(a)  # a different first block changes every key after it
    assert not set(blocks_of(system, salt="tenant-b")) & set(blocks_of(system, salt="tenant-a"))
    assert len(blocks_of("hi")) == 1 and len(blocks_of("é" * 10**6)) == 64


def test_the_replica_holding_the_longest_prefix_wins_whatever_the_ring_says():
    router = Router.of(4)
    conversation = "System: be brief. " * 40
    home = router.pick(now=0, affinity_key=b"first", blocks=blocks_of(conversation))
    for i in range(20):  # later turns: the same start, then more, under keys the ring scatters
        turn = blocks_of(conversation + f" turn {i} " * 50)
        assert router.pick(now=0, affinity_key=f"key {i}".encode(), blocks=turn) == home
    assert router.decisions[Reason.PREFIX] == 20 and router.blocks_matched == 20 * len(blocks_of(conversation))


def test_a_hot_prefix_spills_over_past_the_load_bound_and_new_prefixes_use_the_ring():
    router = Router.of(2, RouterConfig(epsilon=0.25))  # 3 open over 2 replicas: at most 2 on one
    hot = blocks_of("A long shared system prompt. " * 40)
    home = router.pick(now=0, affinity_key=b"hot", blocks=hot)
    router.started(home, 100)
    router.started(home, 100)
    other = router.pick(now=0, affinity_key=b"hot", blocks=hot)
    assert other != home and router.decisions[Reason.AFFINITY] == 2  # home is over the bound: no prefix pick
    assert router.pick(now=0, affinity_key=b"x", blocks=blocks_of("A fresh prompt. " * 40)) is not None


def test_least_outstanding_and_single_replicas_say_so():
    router = Router.of(2, RouterConfig(policy=Policy.LEAST_OUTSTANDING))
    router.pick(now=0, affinity_key=b"k", blocks=blocks_of("hello"))
    router.pick(now=0, exclude=frozenset({0}))
    assert router.decisions == {Reason.LEAST_OUTSTANDING: 1, Reason.ONLY: 1}


def test_round_robin_takes_each_replica_in_turn():
    router = Router.of(3, RouterConfig(policy=Policy.ROUND_ROBIN))
    assert [router.pick(now=0, affinity_key=b"same") for _ in range(6)] == [1, 2, 0, 1, 2, 0]
