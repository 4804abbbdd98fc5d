"""publisher.py's group commit against a fake Pub/Sub API that enforces the service's limits.

Every test holds the RPCs it needs in flight with the fake's events and waits for calls to
queue behind them with readiness checks, so which calls share which RPC is decided by the test,
not by timing. The only clock involved is a caller's own timeout, in the tests about timeouts.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence

import pytest

from devstack.processes import wait_until
from publisher import MAX_MESSAGES_PER_REQUEST, OutgoingMessage, PublishError, PubSubPublisher
from tests.fake_pubsub_api import (
    API_MAX_MESSAGES,
    API_MAX_REQUEST_BYTES,
    WAIT_SECONDS,
    FakePublisherClient,
)

TOPIC = "projects/p/topics/t"
# A caller's timeout when it should not matter: far longer than any test.
LONG = 60.0


@pytest.fixture
def api() -> Iterator[FakePublisherClient]:
    """The fake API, holding every response until the test lets it go.

    After the test: nothing may still be held, and no request may have broken the Publish
    API's limits (whatever the publisher made of the refusal).
    """
    client = FakePublisherClient(holding=True)
    yield client
    client.release_all()
    assert client.refused == [], "a request over the Publish API's limits was sent"


def publisher_on(api: FakePublisherClient, timeout: float = LONG) -> PubSubPublisher:
    return PubSubPublisher(timeout_seconds=timeout, client_factory=lambda: api)


def batch(name: str, count: int, pad_to: int = 0) -> list[OutgoingMessage]:
    """``count`` messages whose data is unique (``name-i``), each padded to ``pad_to`` bytes."""
    return [OutgoingMessage(f"{name}-{i}".encode().ljust(pad_to, b".")) for i in range(count)]


class Caller(threading.Thread):
    """One ``publish`` call on its own thread; ``outcome()`` is its ids or what it raised."""

    def __init__(self, publisher: PubSubPublisher, messages: Sequence[OutgoingMessage]) -> None:
        super().__init__(daemon=True)
        self.publisher = publisher
        self.messages = messages
        self.result: list[str] | Exception | None = None
        self.start()

    def run(self) -> None:
        try:
            self.result = self.publisher.publish(TOPIC, self.messages)
        except Exception as error:
            self.result = error

    def outcome(self) -> list[str] | Exception | None:
        self.join(WAIT_SECONDS)
        assert not self.is_alive(), "the publish call did not return"
        return self.result


def own_ids(api: FakePublisherClient, messages: Sequence[OutgoingMessage]) -> list[str]:
    """The ids the server gave ``messages``, in the caller's order."""
    return [api.id_of[message.data] for message in messages]


def wait_queued(publisher: PubSubPublisher, caller: Caller) -> None:
    """Wait until ``caller`` waits in its topic's queue (behind the RPC in flight), or is done.

    (A call with a short timeout may be done before this sees it queued; the test's own
    assertions on its outcome then say whether that was right.)
    """

    def queued() -> bool:
        queue = publisher._queues.get(TOPIC, [])
        return any(call.messages is caller.messages for call in queue) or not caller.is_alive()

    wait_until(queued, "the call queued behind the RPC in flight", timeout_seconds=WAIT_SECONDS)


def in_flight(api: FakePublisherClient, publisher: PubSubPublisher) -> Caller:
    """A one-message call whose RPC is in flight (held by the fake) when this returns."""
    caller = Caller(publisher, batch("in-flight", 1))
    api.wait_for_rpcs(1)
    return caller


def queue_behind(
    api: FakePublisherClient, publisher: PubSubPublisher, *messages: list[OutgoingMessage]
) -> list[Caller]:
    """One caller per message list, queued in this order behind the RPC in flight."""
    callers = []
    for caller_messages in messages:
        callers.append(Caller(publisher, caller_messages))
        wait_queued(publisher, callers[-1])
    return callers


def test_the_fake_refuses_what_the_service_refuses() -> None:
    api = FakePublisherClient()
    publisher = publisher_on(api)
    too_many = batch("m", API_MAX_MESSAGES + 1)
    too_big = batch("b", 1, pad_to=API_MAX_REQUEST_BYTES)
    # Straight to the client: the publisher itself would split these.
    for messages in (too_many, too_big):
        with pytest.raises(PublishError, match="too large"):
            publisher._send_or_raise(TOPIC, messages, deadline=float("inf"))
    assert len(api.refused) == 2
    assert api.rpcs == []


def test_calls_that_arrive_during_an_rpc_share_the_next_one(api: FakePublisherClient) -> None:
    publisher = publisher_on(api)
    first = in_flight(api, publisher)
    callers = queue_behind(api, publisher, batch("b", 2), batch("c", 1))
    api.release_all()

    assert first.outcome() == own_ids(api, first.messages)
    for caller in callers:
        assert caller.outcome() == own_ids(api, caller.messages)
    assert api.requests == [[b"in-flight-0"], [b"b-0", b"b-1", b"c-0"]]  # one RPC for both


@pytest.mark.parametrize(
    ("counts", "rpcs"),
    [
        ((600, 600), [[0], [1]]),
        ((400, 400, 400), [[0, 1], [2]]),
        ((999, 1, 1), [[0, 1], [2]]),
        ((1, 1000), [[0], [1]]),
    ],
    ids=["600+600", "400+400+400", "999+1+1", "1+1000"],
)
def test_queued_calls_share_an_rpc_only_up_to_1000_messages(
    api: FakePublisherClient, counts: tuple[int, ...], rpcs: list[list[int]]
) -> None:
    assert MAX_MESSAGES_PER_REQUEST == API_MAX_MESSAGES
    publisher = publisher_on(api)
    first = in_flight(api, publisher)
    callers = queue_behind(
        api, publisher, *(batch(f"c{index}", n) for index, n in enumerate(counts))
    )
    api.release_all()

    assert first.outcome() == own_ids(api, first.messages)
    for caller in callers:
        assert caller.outcome() == own_ids(api, caller.messages)  # its own ids, in its order
    expected = [[m.data for index in rpc for m in callers[index].messages] for rpc in rpcs]
    assert api.requests[1:] == expected


MB = 1_000_000


@pytest.mark.parametrize(
    ("sizes", "rpcs"),
    [
        ((5_500_000, 5_500_000), [[0], [1]]),
        ((4 * MB, 4 * MB, 4 * MB), [[0, 1], [2]]),
        ((3 * MB, 3 * MB, 2 * MB, 2 * MB), [[0, 1, 2], [3]]),
    ],
    ids=["5.5+5.5MB", "4+4+4MB", "3+3+2+2MB"],
)
def test_queued_calls_share_an_rpc_only_within_the_byte_limit(
    api: FakePublisherClient, sizes: tuple[int, ...], rpcs: list[list[int]]
) -> None:
    publisher = publisher_on(api)
    first = in_flight(api, publisher)
    # Each call: four messages making up its size.
    callers = queue_behind(
        api, publisher, *(batch(f"c{index}", 4, size // 4) for index, size in enumerate(sizes))
    )
    api.release_all()

    assert first.outcome() == own_ids(api, first.messages)
    for caller in callers:
        assert caller.outcome() == own_ids(api, caller.messages)
    expected = [[m.data for index in rpc for m in callers[index].messages] for rpc in rpcs]
    assert api.requests[1:] == expected
    assert all(rpc.request_bytes <= API_MAX_REQUEST_BYTES for rpc in api.rpcs)


def test_a_call_too_big_to_share_goes_beside_the_queue_split_in_order(
    api: FakePublisherClient,
) -> None:
    publisher = publisher_on(api)
    first = in_flight(api, publisher)
    api.holding = False  # the first RPC stays held; the next ones are not
    messages = batch("big", 2 * API_MAX_MESSAGES + 1)

    ids = publisher.publish(TOPIC, messages)  # does not wait for the RPC in flight

    assert ids == own_ids(api, messages)
    assert [len(request) for request in api.requests[1:]] == [1000, 1000, 1]
    assert [data for request in api.requests[1:] for data in request] == [m.data for m in messages]
    api.release_all()
    assert first.outcome() == own_ids(api, first.messages)


def test_a_failed_shared_rpc_fails_every_call_in_it(api: FakePublisherClient) -> None:
    publisher = publisher_on(api)
    first = in_flight(api, publisher)
    callers = queue_behind(api, publisher, batch("b", 1), batch("c", 1))
    api.failure = RuntimeError("unavailable")
    api.release_all()

    assert first.outcome() == own_ids(api, first.messages)
    for caller in callers:
        outcome = caller.outcome()
        assert isinstance(outcome, PublishError)
        assert "unavailable" in str(outcome)


def test_a_call_that_timed_out_in_the_queue_is_never_sent_afterwards(
    api: FakePublisherClient,
) -> None:
    publisher = publisher_on(api)
    first = in_flight(api, publisher)
    publisher.timeout_seconds = 0.2
    with pytest.raises(PublishError, match="did not finish"):
        publisher.publish(TOPIC, batch("timed-out", 1))
    publisher.timeout_seconds = LONG
    api.release_all()
    assert first.outcome() == own_ids(api, first.messages)

    # The next call finds nothing queued: it sends its own message and nothing else.
    later = batch("later", 1)
    assert publisher.publish(TOPIC, later) == own_ids(api, later)
    assert api.requests == [[b"in-flight-0"], [b"later-0"]]


def test_a_live_call_queued_behind_a_timed_out_one_still_completes(
    api: FakePublisherClient,
) -> None:
    publisher = publisher_on(api)
    first = in_flight(api, publisher)
    publisher.timeout_seconds = 0.5
    (timed_out,) = queue_behind(api, publisher, batch("timed-out", 1))
    # Long enough to outlast the timed-out call; short enough that a live call left waiting
    # (never woken to send) fails the test in seconds rather than hanging it.
    publisher.timeout_seconds = 10.0
    (live,) = queue_behind(api, publisher, batch("live", 1))
    assert isinstance(timed_out.outcome(), PublishError)

    api.release_all()

    assert live.outcome() == own_ids(api, live.messages)
    assert first.outcome() == own_ids(api, first.messages)
    assert api.requests == [[b"in-flight-0"], [b"live-0"]]


def test_a_call_whose_own_rpc_outlives_its_timeout_gets_publish_error(
    api: FakePublisherClient,
) -> None:
    publisher = publisher_on(api, timeout=0.3)

    with pytest.raises(PublishError, match="DeadlineExceeded"):
        publisher.publish(TOPIC, batch("slow", 1))

    # The server had the message: the caller was told it failed, yet it is published, and the
    # input's redelivery will publish it again (at-least-once; see docs/failures.md).
    assert api.requests == [[b"slow-0"]]
    api.release_all()
    # Nothing is left marked in flight: the topic's next call goes out at once.
    assert publisher.publish(TOPIC, batch("next", 1)) == [api.id_of[b"next-0"]]


def test_a_call_that_times_out_while_its_shared_rpc_is_in_flight_gets_publish_error(
    api: FakePublisherClient,
) -> None:
    publisher = publisher_on(api)
    first = in_flight(api, publisher)
    (sender,) = queue_behind(api, publisher, batch("sender", 1))
    # Far longer than the few milliseconds until its RPC is sent (the next lines), so that it
    # times out in flight, not in the queue.
    publisher.timeout_seconds = 2.0
    (rider,) = queue_behind(api, publisher, batch("rider", 1))
    publisher.timeout_seconds = LONG
    api.release(0)
    assert api.wait_for_rpcs(2)[1].data == [b"sender-0", b"rider-0"]

    outcome = rider.outcome()  # while the RPC carrying its message is still held

    assert isinstance(outcome, PublishError)
    assert "did not finish" in str(outcome)
    api.release_all()
    assert sender.outcome() == own_ids(api, sender.messages)
    assert first.outcome() == own_ids(api, first.messages)
    # The rider's message was published although its caller got PublishError.
    assert b"rider-0" in api.id_of
