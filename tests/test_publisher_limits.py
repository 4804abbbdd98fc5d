"""publisher.py's group commit against a fake Pub/Sub API that enforces the service's limits.

Every test holds the RPCs it needs in flight with the fake's events and waits for calls to
queue behind them with readiness checks, so which calls share which RPC is decided by the test,
not by timing. The tests that share RPCs run with one RPC in flight per topic and with several
(``SLOTS``): they first fill every slot with a held RPC, then free one slot at a time. Where the
order in which the publisher's threads take its lock matters (a sender waking the next call),
the test installs a ``FifoLock`` as that lock and lines the threads up behind it. The only
clock involved is a caller's own timeout, in the tests about timeouts.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence

import pytest
from google.api_core import exceptions

from devstack.processes import wait_until
from ride_predictor.errors import PublishError
from ride_predictor.publisher import MAX_MESSAGES_PER_REQUEST, OutgoingMessage, PubSubPublisher
from tests.fake_pubsub_api import (
    API_MAX_MESSAGES,
    API_MAX_REQUEST_BYTES,
    WAIT_SECONDS,
    FakePublisherClient,
)

TOPIC = "projects/p/topics/t"
# A caller's timeout when it should not matter: far longer than any test.
LONG = 60.0
# RPCs in flight per topic the sharing and timeout tests run with: one, and several.
SLOTS = [pytest.param(1, id="1-rpc"), pytest.param(3, id="3-rpcs")]
MB = 1_000_000

NewPublisher = Callable[..., PubSubPublisher]


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


@pytest.fixture
def new_publisher(api: FakePublisherClient) -> Iterator[NewPublisher]:
    """Makes publishers on the fake API; after the test, none had more RPCs in flight to a
    topic than its ``max_rpcs_in_flight`` (as the fake counted them)."""
    made: list[PubSubPublisher] = []

    def make(max_rpcs_in_flight: int, timeout: float = LONG) -> PubSubPublisher:
        publisher = PubSubPublisher(
            timeout_seconds=timeout,
            client_factory=lambda: api,
            max_rpcs_in_flight=max_rpcs_in_flight,
        )
        made.append(publisher)
        return publisher

    yield make
    for publisher in made:
        most = max(api.max_in_flight.values(), default=0)
        assert most <= publisher.max_rpcs_in_flight, "more RPCs in flight than the cap"


def batch(name: str, count: int, pad_to: int = 0) -> list[OutgoingMessage]:
    """``count`` messages whose data is unique (``name-i``), each padded to ``pad_to`` bytes."""
    return [OutgoingMessage(f"{name}-{i}".encode().ljust(pad_to, b".")) for i in range(count)]


def data(messages: Sequence[OutgoingMessage]) -> list[bytes]:
    return [message.data for message in messages]


class Caller(threading.Thread):
    """One ``publish`` call on its own thread; ``outcome()`` is its ids or what it raised."""

    def __init__(self, publisher: PubSubPublisher, messages: Sequence[OutgoingMessage]) -> None:
        super().__init__(daemon=True)
        self.publisher = publisher
        self.messages = messages
        self.result: list[str] | Exception | None = None
        # When the call started and returned (monotonic clock).
        self.started = self.returned = float("nan")
        self.start()

    def run(self) -> None:
        self.started = time.monotonic()
        try:
            self.result = self.publisher.publish(TOPIC, self.messages)
        except Exception as error:
            self.result = error
        self.returned = time.monotonic()

    def outcome(self) -> list[str] | Exception | None:
        self.join(WAIT_SECONDS)
        assert not self.is_alive(), "the publish call did not return"
        return self.result


class FifoLock:
    """A lock that threads get in the order they asked for it, and that shows who waits for it.

    Installed as a publisher's state lock (before its first call), it lets a test line the
    publisher's threads up behind it while it holds the lock, then let them run in that order.
    ``threading.Condition`` works on it as on a plain lock (it only needs ``acquire`` and
    ``release``).
    """

    def __init__(self) -> None:
        self._turns = threading.Condition()
        self._next_ticket = 0
        self._serving = 0
        self._threads: dict[int, threading.Thread] = {}

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        with self._turns:
            if not blocking and self._serving != self._next_ticket:
                return False
            ticket = self._take_ticket()
            self._await(ticket)
            return True

    def release(self) -> None:
        with self._turns:
            self._threads.pop(self._serving, None)
            self._serving += 1
            self._turns.notify_all()

    def __enter__(self) -> FifoLock:
        self.acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    def requeue(self) -> None:
        """Release and ask again at once, as one step: the threads waiting now go first."""
        with self._turns:
            ticket = self._take_ticket()
            self._threads.pop(self._serving, None)
            self._serving += 1
            self._turns.notify_all()
            self._await(ticket)

    def wait_for_waiting(self, count: int) -> list[threading.Thread]:
        """Wait until ``count`` threads wait for the lock; return them, first in line first."""
        with self._turns:
            lined_up = self._turns.wait_for(
                lambda: self._next_ticket - self._serving - 1 >= count, WAIT_SECONDS
            )
            assert lined_up, f"{count} threads expected to wait for the publisher's lock"
            return [self._threads[t] for t in range(self._serving + 1, self._next_ticket)]

    def _take_ticket(self) -> int:
        ticket = self._next_ticket
        self._next_ticket += 1
        self._threads[ticket] = threading.current_thread()
        self._turns.notify_all()
        return ticket

    def _await(self, ticket: int) -> None:
        served = self._turns.wait_for(lambda: self._serving == ticket, WAIT_SECONDS)
        assert served, "the publisher's lock was not released"


def on_fifo_lock(publisher: PubSubPublisher) -> FifoLock:
    lock = FifoLock()
    publisher._state = lock  # type: ignore[assignment]
    return lock


def own_ids(api: FakePublisherClient, messages: Sequence[OutgoingMessage]) -> list[str]:
    """The ids the server gave ``messages``, in the caller's order."""
    return [api.id_of[message.data] for message in messages]


def is_queued(publisher: PubSubPublisher, messages: Sequence[OutgoingMessage]) -> bool:
    """Whether a call whose first message is ``messages[0]`` waits in the topic's queue."""
    queue = publisher._queues.get(TOPIC, [])
    return any(call.messages[0] is messages[0] for call in queue)


def wait_queued(api: FakePublisherClient, publisher: PubSubPublisher, caller: Caller) -> None:
    """Wait until ``caller`` waits in its topic's queue (every slot busy) or is done; fail if it
    sent its messages instead.

    (A call with a short timeout may be done before this sees it queued; the test's own
    assertions on its outcome then say whether that was right.)
    """
    first = caller.messages[0].data
    wait_until(
        lambda: (
            is_queued(publisher, caller.messages) or not caller.is_alive() or first in api.id_of
        ),
        "the call queued behind the RPCs in flight",
        timeout_seconds=WAIT_SECONDS,
    )
    assert first not in api.id_of, "sent although every slot was busy"


def fill_slots(api: FakePublisherClient, publisher: PubSubPublisher) -> list[Caller]:
    """One one-message call per slot (``slot<k>-0``), each in its own RPC, all held by the fake
    when this returns: each went out at once although the ones before were still in flight."""
    callers = []
    for index in range(publisher.max_rpcs_in_flight):
        callers.append(Caller(publisher, batch(f"slot{index}", 1)))
        api.wait_for_rpcs(index + 1)
    assert api.requests == [[f"slot{index}-0".encode()] for index in range(len(callers))]
    return callers


def queue_behind(
    api: FakePublisherClient, publisher: PubSubPublisher, *messages: list[OutgoingMessage]
) -> list[Caller]:
    """One caller per message list, queued in this order behind the RPCs in flight."""
    callers = []
    for caller_messages in messages:
        callers.append(Caller(publisher, caller_messages))
        wait_queued(api, publisher, callers[-1])
    return callers


def free_one_slot_at_a_time(api: FakePublisherClient, slots: int, rpcs: int) -> None:
    """With ``slots`` RPCs held, release the first; then release, one by one, each of the next
    ``rpcs`` RPCs the publisher sends in the slot that freed. The other slots stay busy, so the
    order of the RPCs is the publisher's, not the scheduler's."""
    api.release(0)
    for index in range(slots, slots + rpcs):
        api.wait_for_rpcs(index + 1)
        api.release(index)


def assert_own_ids(api: FakePublisherClient, callers: Sequence[Caller]) -> None:
    for caller in callers:
        assert caller.outcome() == own_ids(api, caller.messages)  # its own ids, in its order


def test_the_fake_refuses_what_the_service_refuses() -> None:
    api = FakePublisherClient()
    publisher = PubSubPublisher(client_factory=lambda: api)
    too_many = batch("m", API_MAX_MESSAGES + 1)
    too_big = batch("b", 1, pad_to=API_MAX_REQUEST_BYTES)
    # Straight to one RPC: the publisher's ``publish`` would split these.
    for messages in (too_many, too_big):
        with pytest.raises(exceptions.InvalidArgument, match="too large"):
            publisher._send(TOPIC, messages, deadline=float("inf"))
    assert len(api.refused) == 2
    assert api.rpcs == []
    assert api.in_flight == {TOPIC: 0}


@pytest.mark.parametrize("slots", SLOTS)
def test_calls_that_find_every_slot_busy_share_the_next_rpc(
    api: FakePublisherClient, new_publisher: NewPublisher, slots: int
) -> None:
    publisher = new_publisher(slots)
    in_flight = fill_slots(api, publisher)
    callers = queue_behind(api, publisher, batch("b", 2), batch("c", 1))
    assert len(api.rpcs) == slots  # the calls wait: no RPC beyond the cap

    free_one_slot_at_a_time(api, slots, 1)
    api.release_all()

    assert_own_ids(api, [*in_flight, *callers])
    assert api.requests[slots:] == [[b"b-0", b"b-1", b"c-0"]]  # one RPC for both
    assert api.max_in_flight[TOPIC] == slots


def test_a_call_freed_by_its_rpc_returns_while_the_other_slots_stay_busy(
    api: FakePublisherClient, new_publisher: NewPublisher
) -> None:
    publisher = new_publisher(4)
    in_flight = fill_slots(api, publisher)
    (queued,) = queue_behind(api, publisher, batch("q", 1))

    api.release(2)  # the third slot's RPC, not the oldest

    assert in_flight[2].outcome() == own_ids(api, in_flight[2].messages)
    assert api.wait_for_rpcs(5)[4].data == [b"q-0"]  # sent in the slot that freed
    assert all(caller.is_alive() for caller in (*in_flight[:2], in_flight[3], queued))
    api.release_all()
    assert_own_ids(api, [*in_flight, queued])
    assert api.max_in_flight[TOPIC] == 4


@pytest.mark.parametrize("slots", SLOTS)
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
    api: FakePublisherClient,
    new_publisher: NewPublisher,
    slots: int,
    counts: tuple[int, ...],
    rpcs: list[list[int]],
) -> None:
    assert MAX_MESSAGES_PER_REQUEST == API_MAX_MESSAGES
    publisher = new_publisher(slots)
    in_flight = fill_slots(api, publisher)
    callers = queue_behind(
        api, publisher, *(batch(f"c{index}", n) for index, n in enumerate(counts))
    )

    free_one_slot_at_a_time(api, slots, len(rpcs))
    api.release_all()

    assert_own_ids(api, [*in_flight, *callers])
    expected = [[m.data for index in rpc for m in callers[index].messages] for rpc in rpcs]
    assert api.requests[slots:] == expected


@pytest.mark.parametrize("slots", SLOTS)
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
    api: FakePublisherClient,
    new_publisher: NewPublisher,
    slots: int,
    sizes: tuple[int, ...],
    rpcs: list[list[int]],
) -> None:
    publisher = new_publisher(slots)
    in_flight = fill_slots(api, publisher)
    # Each call: four messages making up its size.
    callers = queue_behind(
        api, publisher, *(batch(f"c{index}", 4, size // 4) for index, size in enumerate(sizes))
    )

    free_one_slot_at_a_time(api, slots, len(rpcs))
    api.release_all()

    assert_own_ids(api, [*in_flight, *callers])
    expected = [[m.data for index in rpc for m in callers[index].messages] for rpc in rpcs]
    assert api.requests[slots:] == expected
    assert all(rpc.request_bytes <= API_MAX_REQUEST_BYTES for rpc in api.rpcs)


@pytest.mark.parametrize(
    ("calls", "in_flight_together", "after"),
    [
        # (messages, bytes per message) per call; which calls share each RPC.
        (
            [(600, 0), (600, 0), (600, 0), (300, 0), (700, 0), (400, 0), (1, 0)],
            [[0], [1], [2, 3]],
            [[4], [5, 6]],
        ),
        (
            [(4, MB), (4, MB), (4, MB), (4, MB), (2, MB), (3, MB), (4, MB)],
            [[0, 1], [2, 3], [4, 5]],
            [[6]],
        ),
    ],
    ids=["messages", "bytes"],
)
def test_several_senders_each_take_a_batch_within_the_limits(
    api: FakePublisherClient,
    new_publisher: NewPublisher,
    calls: list[tuple[int, int]],
    in_flight_together: list[list[int]],
    after: list[list[int]],
) -> None:
    publisher = new_publisher(3)
    in_flight = fill_slots(api, publisher)
    callers = queue_behind(
        api,
        publisher,
        *(batch(f"c{index}", count, pad) for index, (count, pad) in enumerate(calls)),
    )

    for index in range(3):  # every slot frees; the RPCs sent in them are held again
        api.release(index)
    rpcs = api.wait_for_rpcs(6)

    def grouped(groups: list[list[int]]) -> list[list[bytes]]:
        return sorted(
            [d for index in group for d in data(callers[index].messages)] for group in groups
        )

    # Three senders at once, each with the oldest calls that fit when it took them.
    assert sorted(rpc.data for rpc in rpcs[3:]) == grouped(in_flight_together)
    left = [callers[index].messages for group in after for index in group]
    assert [call.messages for call in publisher._queues[TOPIC]] == left
    api.release_all()

    assert_own_ids(api, [*in_flight, *callers])
    assert sorted(api.requests[6:]) == grouped(after)
    assert api.max_in_flight[TOPIC] == 3


def test_a_sender_wakes_the_next_call_while_a_slot_is_still_free(
    api: FakePublisherClient, new_publisher: NewPublisher
) -> None:
    publisher = new_publisher(2)
    lock = on_fifo_lock(publisher)
    in_flight = fill_slots(api, publisher)
    # Too many messages to share an RPC: each needs a slot of its own.
    first, second = queue_behind(api, publisher, batch("first", 600), batch("second", 600))

    with lock:
        api.release(0)
        lock.wait_for_waiting(1)
        api.release(1)
        lock.wait_for_waiting(2)
    # Both slots free before the first queued call runs, and both senders wake that call (one
    # wake-up): it takes one slot and must wake the second call for the other.

    rpcs = api.wait_for_rpcs(4)
    assert sorted(rpc.data for rpc in rpcs[2:]) == sorted(
        [data(first.messages), data(second.messages)]
    )
    api.release_all()
    assert_own_ids(api, [*in_flight, first, second])
    assert api.max_in_flight[TOPIC] == 2


def test_a_call_woken_to_send_after_its_timeout_wakes_the_next_one(
    api: FakePublisherClient, new_publisher: NewPublisher
) -> None:
    publisher = new_publisher(1)
    lock = on_fifo_lock(publisher)
    (in_flight,) = fill_slots(api, publisher)
    publisher.timeout_seconds = 2.0  # long enough to be queued and lined up second, below
    (timed_out,) = queue_behind(api, publisher, batch("timed-out", 1))
    publisher.timeout_seconds = 10.0  # a live call left waiting fails the test in seconds
    (live,) = queue_behind(api, publisher, batch("live", 1))

    with lock:
        api.release(0)
        # The sender frees the slot and wakes the head of the queue, which by then has timed
        # out and waits for the lock behind it.
        assert lock.wait_for_waiting(2) == [in_flight, timed_out]
    api.release_all()  # what is sent from now on is answered at once

    assert isinstance(timed_out.outcome(), PublishError)
    assert live.outcome() == own_ids(api, live.messages)
    assert in_flight.outcome() == own_ids(api, in_flight.messages)
    assert api.requests == [[b"slot0-0"], [b"live-0"]]


def test_a_sender_leaves_out_queued_calls_that_timed_out_before_it_took_them(
    api: FakePublisherClient, new_publisher: NewPublisher
) -> None:
    publisher = new_publisher(1)
    lock = on_fifo_lock(publisher)
    (in_flight,) = fill_slots(api, publisher)
    (live,) = queue_behind(api, publisher, batch("live", 1))
    publisher.timeout_seconds = 2.0  # long enough to be queued and lined up second, below
    (late,) = queue_behind(api, publisher, batch("late", 1))
    publisher.timeout_seconds = LONG

    with lock:
        api.release(0)
        assert lock.wait_for_waiting(1) == [in_flight]
        lock.requeue()  # the sender frees the slot and wakes the live call
        assert lock.wait_for_waiting(2) == [live, late]  # late: its timeout has passed
    # The live call takes a batch before the late call's thread could leave the queue.
    api.release_all()  # what is sent from now on is answered at once

    assert live.outcome() == own_ids(api, live.messages)
    outcome = late.outcome()
    assert isinstance(outcome, PublishError)
    assert "did not finish" in str(outcome)
    assert api.requests == [[b"slot0-0"], [b"live-0"]]  # the late call was never sent
    assert in_flight.outcome() == own_ids(api, in_flight.messages)


def test_a_call_too_big_for_one_request_sends_its_requests_in_order_in_a_free_slot(
    api: FakePublisherClient, new_publisher: NewPublisher
) -> None:
    publisher = new_publisher(2)
    first = Caller(publisher, batch("in-flight", 1))
    api.wait_for_rpcs(1)
    api.holding = False  # the first RPC stays held; the next ones are not
    messages = batch("big", 2 * API_MAX_MESSAGES + 1)

    ids = publisher.publish(TOPIC, messages)  # does not wait for the RPC in flight

    assert ids == own_ids(api, messages)
    assert [len(request) for request in api.requests[1:]] == [1000, 1000, 1]
    assert [d for request in api.requests[1:] for d in request] == data(messages)
    api.release_all()
    assert first.outcome() == own_ids(api, first.messages)
    assert api.max_in_flight[TOPIC] == 2


@pytest.mark.parametrize(
    ("sizes", "requests"),
    [
        ((4 * MB, 4 * MB, 4 * MB), [2, 1]),
        ((2_500_000,) * 4, [3, 1]),
        ((8 * MB, 2 * MB), [1, 1]),
    ],
    ids=["4+4+4MB", "4x2.5MB", "8+2MB"],
)
def test_one_call_whose_messages_together_exceed_10_mb_is_sent_in_requests_that_fit(
    api: FakePublisherClient,
    new_publisher: NewPublisher,
    sizes: tuple[int, ...],
    requests: list[int],
) -> None:
    # Few messages, but too many bytes for one Publish request: the service would refuse it
    # (InvalidArgument, never retried), and the input would come back again and again.
    publisher = new_publisher(1)
    api.release_all()  # every response goes at once
    messages = [
        OutgoingMessage(f"m{index}-".encode().ljust(size, b".")) for index, size in enumerate(sizes)
    ]

    ids = publisher.publish(TOPIC, messages)

    assert ids == own_ids(api, messages)
    assert [len(request) for request in api.requests] == requests
    assert [d for request in api.requests for d in request] == data(messages)  # in order
    assert all(rpc.request_bytes <= API_MAX_REQUEST_BYTES for rpc in api.rpcs)


def test_a_call_too_big_for_one_request_waits_for_a_slot_like_any_other(
    api: FakePublisherClient, new_publisher: NewPublisher
) -> None:
    publisher = new_publisher(1)
    (in_flight,) = fill_slots(api, publisher)
    (big,) = queue_behind(api, publisher, batch("big", 2 * API_MAX_MESSAGES + 1))
    assert len(api.rpcs) == 1

    api.release_all()

    assert_own_ids(api, [in_flight, big])
    assert [len(request) for request in api.requests[1:]] == [1000, 1000, 1]
    assert api.max_in_flight[TOPIC] == 1


@pytest.mark.parametrize("slots", SLOTS)
def test_a_failed_shared_rpc_fails_every_call_in_it(
    api: FakePublisherClient, new_publisher: NewPublisher, slots: int
) -> None:
    publisher = new_publisher(slots)
    in_flight = fill_slots(api, publisher)
    callers = queue_behind(api, publisher, batch("b", 1), batch("c", 1))
    api.failure = RuntimeError("unavailable")
    api.release_all()

    assert_own_ids(api, in_flight)
    for caller in callers:
        outcome = caller.outcome()
        assert isinstance(outcome, PublishError)
        assert "unavailable" in str(outcome)


@pytest.mark.parametrize("slots", SLOTS)
def test_a_call_that_timed_out_in_the_queue_is_never_sent_afterwards(
    api: FakePublisherClient, new_publisher: NewPublisher, slots: int
) -> None:
    publisher = new_publisher(slots)
    in_flight = fill_slots(api, publisher)
    publisher.timeout_seconds = 0.2
    with pytest.raises(PublishError, match="did not finish"):
        publisher.publish(TOPIC, batch("timed-out", 1))
    publisher.timeout_seconds = LONG
    api.release_all()
    assert_own_ids(api, in_flight)

    # The next call finds nothing queued: it sends its own message and nothing else.
    later = batch("later", 1)
    assert publisher.publish(TOPIC, later) == own_ids(api, later)
    assert api.requests[slots:] == [[b"later-0"]]


@pytest.mark.parametrize("slots", SLOTS)
def test_a_live_call_queued_behind_a_timed_out_one_still_completes(
    api: FakePublisherClient, new_publisher: NewPublisher, slots: int
) -> None:
    publisher = new_publisher(slots)
    in_flight = fill_slots(api, publisher)
    publisher.timeout_seconds = 0.5
    (timed_out,) = queue_behind(api, publisher, batch("timed-out", 1))
    # Long enough to outlast the timed-out call; short enough that a live call left waiting
    # (never woken to send) fails the test in seconds rather than hanging it.
    publisher.timeout_seconds = 10.0
    (live,) = queue_behind(api, publisher, batch("live", 1))
    assert isinstance(timed_out.outcome(), PublishError)

    api.release_all()

    assert live.outcome() == own_ids(api, live.messages)
    assert_own_ids(api, in_flight)
    assert api.requests[slots:] == [[b"live-0"]]


def test_a_call_whose_own_rpc_outlives_its_timeout_gets_publish_error(
    api: FakePublisherClient, new_publisher: NewPublisher
) -> None:
    publisher = new_publisher(1, timeout=0.3)

    with pytest.raises(PublishError, match="DeadlineExceeded"):
        publisher.publish(TOPIC, batch("slow", 1))

    # The server had the message: the caller was told it failed, yet it is published, and the
    # input's redelivery will publish it again (at-least-once; see docs/failures.md).
    assert api.requests == [[b"slow-0"]]
    api.release_all()
    # Its slot is free again: the topic's next call goes out at once.
    assert publisher.publish(TOPIC, batch("next", 1)) == [api.id_of[b"next-0"]]


@pytest.mark.parametrize("slots", SLOTS)
def test_a_call_that_times_out_while_its_shared_rpc_is_in_flight_gets_publish_error(
    api: FakePublisherClient, new_publisher: NewPublisher, slots: int
) -> None:
    publisher = new_publisher(slots)
    in_flight = fill_slots(api, publisher)
    (sender,) = queue_behind(api, publisher, batch("sender", 1))
    # Far longer than the few milliseconds until its RPC is sent (the next lines), so that it
    # times out in flight, not in the queue.
    publisher.timeout_seconds = 2.0
    (rider,) = queue_behind(api, publisher, batch("rider", 1))
    publisher.timeout_seconds = LONG
    api.release(0)
    assert api.wait_for_rpcs(slots + 1)[slots].data == [b"sender-0", b"rider-0"]

    outcome = rider.outcome()  # while the RPC carrying its message is still held

    assert isinstance(outcome, PublishError)
    assert "did not finish" in str(outcome)
    api.release_all()
    assert_own_ids(api, [sender, *in_flight])
    # The rider's message was published although its caller got PublishError.
    assert b"rider-0" in api.id_of


def test_a_call_that_waited_in_the_queue_still_returns_within_its_own_timeout(
    api: FakePublisherClient, new_publisher: NewPublisher
) -> None:
    # PUBLISH_TIMEOUT_SECONDS bounds the whole call, queueing included (docs/design.md): the
    # RPC a queued call is sent in may only take what is left of its caller's timeout.
    publisher = new_publisher(1, timeout=2.0)
    in_flight = Caller(publisher, batch("in-flight", 1))  # held until its own 2 s are up
    api.wait_for_rpcs(1)
    publisher.timeout_seconds = 3.0
    (queued,) = queue_behind(api, publisher, batch("queued", 1))

    assert isinstance(in_flight.outcome(), PublishError)
    # Sent once the slot freed, about 2 s into its 3 s; its RPC is held too, past any deadline.
    assert api.wait_for_rpcs(2)[1].data == [b"queued-0"]
    outcome = queued.outcome()

    assert isinstance(outcome, PublishError)
    # Generous: about 3 s is right; an RPC given the full 3 s again returns after about 5 s.
    elapsed = queued.returned - queued.started
    assert elapsed < 3.0 + 1.0, f"a 3 s publish returned after {elapsed:.2f} s"
    rpc_timeout = api.rpcs[1].timeout
    assert rpc_timeout is not None
    assert rpc_timeout < 3.0 - 1.0  # what was left of its 3 s, not all of it


def test_max_rpcs_in_flight_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_rpcs_in_flight"):
        PubSubPublisher(max_rpcs_in_flight=0)


@pytest.mark.parametrize("slots", SLOTS)
def test_a_call_sharing_an_rpc_keeps_its_own_deadline(
    api: FakePublisherClient, new_publisher: NewPublisher, slots: int
) -> None:
    publisher = new_publisher(slots)
    in_flight = fill_slots(api, publisher)
    # The head of the queue has the shorter deadline: long enough to be queued and sent (the
    # next lines), short enough to pass while the shared RPC is held.
    publisher.timeout_seconds = 2.0
    (head,) = queue_behind(api, publisher, batch("head", 1))
    publisher.timeout_seconds = LONG
    (rider,) = queue_behind(api, publisher, batch("rider", 1))
    api.release(0)
    assert api.wait_for_rpcs(slots + 1)[slots].data == [b"head-0", b"rider-0"]

    head_outcome = head.outcome()  # at its own deadline, while the shared RPC is still held

    assert isinstance(head_outcome, PublishError)
    assert "did not finish" in str(head_outcome)
    # Before: the RPC carried the head's deadline, so the rider failed with it, 2 s into its
    # 60 s budget. Now the RPC runs until the latest deadline of the calls it carries.
    api.release_all()
    assert rider.outcome() == own_ids(api, rider.messages)
    assert_own_ids(api, in_flight)
    assert publisher.publish(TOPIC, batch("next", 1)) == [api.id_of[b"next-0"]]


@pytest.mark.parametrize("slots", SLOTS)
def test_a_shared_rpc_is_sent_with_the_latest_deadline_of_its_calls(
    api: FakePublisherClient, new_publisher: NewPublisher, slots: int
) -> None:
    publisher = new_publisher(slots, timeout=LONG)
    in_flight = fill_slots(api, publisher)
    publisher.timeout_seconds = 20.0
    (first,) = queue_behind(api, publisher, batch("first", 1))
    publisher.timeout_seconds = 40.0
    (second,) = queue_behind(api, publisher, batch("second", 1))
    publisher.timeout_seconds = 30.0
    (third,) = queue_behind(api, publisher, batch("third", 1))
    api.release(0)

    shared = api.wait_for_rpcs(slots + 1)[slots]

    assert shared.data == [b"first-0", b"second-0", b"third-0"]
    assert shared.timeout is not None
    assert 30.0 < shared.timeout <= 40.0  # the second call's, the latest
    api.release_all()
    assert_own_ids(api, [first, second, third, *in_flight])
