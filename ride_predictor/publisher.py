"""Publish messages to Pub/Sub and wait, within a bound, until the server has them.

A thin adapter around the Pub/Sub API client (``google.pubsub_v1.PublisherClient``): the client
is created on first use and shared by every thread of the process (it is thread-safe), and every
publish either returns the server's message ids or raises ``PublishError`` within its timeout.
``PUBSUB_EMULATOR_HOST`` is honoured by the client itself.

Why not the batching ``google.cloud.pubsub_v1`` client: every request of the function waits for
its own messages anyway, so a batching timer (10 ms by default) only adds latency, and with no
timer that client sends one RPC per message and starts threads for every batch. Instead,
concurrent calls share RPCs by *group commit*, with at most ``max_rpcs_in_flight`` RPCs in flight
per topic: a call that finds a slot free and nothing queued before it sends at once, on its own
thread, what is queued for that topic (up to one request's limits); calls that find every slot
busy queue up and go together in the next RPC once a slot frees. An idle instance therefore
publishes with one RPC and no wait, and a busy one sends fewer, larger RPCs, without waiting
for one round trip per RPC ahead of it (see docs/speed.md, for the measurements).

Each call keeps its own deadline when it shares an RPC: the RPC runs until the latest deadline
among its calls, sent on that call's thread, and every other call waits for the outcome until
its own deadline. A call with a short timeout never cuts the RPC of a call with a longer one.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from types import MappingProxyType
from typing import Any, NamedTuple, Protocol

from ride_predictor.errors import PublishError as PublishError  # raised here: importable here

# Publish RPCs in flight per topic at most (``PUBLISH_MAX_RPCS_IN_FLIGHT``): see settings.
from ride_predictor.settings import DEFAULT_MAX_RPCS_IN_FLIGHT

# The Publish API takes at most 1,000 messages and 10 MB per request; the byte budget leaves
# room for the request's own framing.
MAX_MESSAGES_PER_REQUEST = 1000
MAX_BYTES_PER_REQUEST = 9 * 1000 * 1000
# Per-message overhead counted against the byte budget besides data and attributes.
_MESSAGE_OVERHEAD_BYTES = 64
# An attribute value holds at most 1,024 bytes (and a message at most 100 attributes).
MAX_ATTRIBUTE_BYTES = 1024


def attribute_value(text: str, limit: int = MAX_ATTRIBUTE_BYTES) -> str:
    """``text`` cut to at most ``limit`` bytes of UTF-8 (an attribute value's limit), whole
    characters only, with an ellipsis when cut."""
    if len(text) * 4 <= limit:  # cheap: no character takes more than 4 bytes
        return text
    encoded = text.encode()
    if len(encoded) <= limit:
        return text
    return encoded[: limit - 3].decode(errors="ignore") + "…"


class OutgoingMessage(NamedTuple):
    """One Pub/Sub message: its bytes and string attributes.

    A named tuple: a 1,000-ride message makes 1,000 of these, and a frozen dataclass takes
    about 1 µs to build where a tuple takes a third of that.
    """

    data: bytes
    attributes: Mapping[str, str] = MappingProxyType({})


class MessagePublisher(Protocol):
    """What the function needs from a publisher; tests inject an in-memory one."""

    def publish(self, topic: str, messages: Sequence[OutgoingMessage]) -> list[str]:
        """Publish ``messages`` to ``topic`` and return their ids, or raise ``PublishError``."""
        ...


def _default_client() -> Any:
    from google.pubsub_v1 import PublisherClient

    return PublisherClient()


def message_size(message: OutgoingMessage) -> int:
    """What a message counts against a request's byte budget."""
    return (
        len(message.data)
        + sum(len(key) + len(value) for key, value in message.attributes.items())
        + _MESSAGE_OVERHEAD_BYTES
    )


def request_chunks(messages: Sequence[OutgoingMessage]) -> Iterator[Sequence[OutgoingMessage]]:
    """Split ``messages``, in order, into runs that each fit in one Publish request."""
    start, size = 0, 0
    for index, message in enumerate(messages):
        size_of_message = message_size(message)
        if index > start and (
            index - start >= MAX_MESSAGES_PER_REQUEST
            or size + size_of_message > MAX_BYTES_PER_REQUEST
        ):
            yield messages[start:index]
            start, size = index, 0
        size += size_of_message
    if start < len(messages):
        yield messages[start:]


class _Call:
    """One ``publish`` call waiting in its topic's queue; its sender fills in the outcome."""

    __slots__ = ("deadline", "error", "ids", "messages", "size", "to_send", "wakeup")

    def __init__(
        self,
        messages: Sequence[OutgoingMessage],
        size: int,
        deadline: float,
        lock: threading.Lock,
    ) -> None:
        self.messages = messages
        self.size = size
        self.deadline = deadline
        self.ids: list[str] | None = None
        self.error: BaseException | None = None
        # The batch this call's thread must send, once one is taken for it (see _take_batch).
        self.to_send: list[_Call] | None = None
        # Its own condition on the publisher's lock: a sender wakes exactly the calls it
        # finished and the one that sends next, not every waiting thread.
        self.wakeup = threading.Condition(lock)

    @property
    def finished(self) -> bool:
        return self.ids is not None or self.error is not None


class PubSubPublisher:
    """Publishes to any topic through one lazily created, process-wide ``PublisherClient``.

    At most ``max_rpcs_in_flight`` Publish RPCs are in flight per topic at any time; calls that
    find every slot busy queue and share the next RPC (group commit, see the module doc).
    """

    def __init__(
        self,
        timeout_seconds: float = 10.0,
        client_factory: Callable[[], Any] = _default_client,
        max_rpcs_in_flight: int = DEFAULT_MAX_RPCS_IN_FLIGHT,
    ) -> None:
        if max_rpcs_in_flight < 1:
            raise ValueError(f"max_rpcs_in_flight must be at least 1, got {max_rpcs_in_flight}")
        self.timeout_seconds = timeout_seconds
        self.max_rpcs_in_flight = max_rpcs_in_flight
        self._client_factory = client_factory
        self._client: Any = None
        self._lock = threading.Lock()
        # Group commit state, per topic: the calls waiting to be sent, oldest first, and how
        # many RPCs are in flight; guarded by one lock.
        self._state = threading.Lock()
        self._queues: dict[str, list[_Call]] = {}
        self._in_flight: dict[str, int] = {}

    def _get_client(self) -> Any:
        client = self._client
        if client is None:
            with self._lock:
                if self._client is None:
                    self._client = self._client_factory()
                client = self._client
        return client

    def publish(self, topic: str, messages: Sequence[OutgoingMessage]) -> list[str]:
        """Publish ``messages`` to the topic path ``topic``; return their server message ids.

        Raises ``PublishError`` if any message is refused, fails, or is not acknowledged by the
        server within ``timeout_seconds`` (retries of retryable errors count against that bound).

        ``PublishError`` does not always mean "not published": a call that times out while the
        RPC carrying its messages is in flight (its own, or one it shares) is told it failed,
        yet the server may still publish those messages. The caller retries its input, so
        publishing is at-least-once (docs/failures.md). A call that times out while still
        queued is dropped from the queue and never sent.
        """
        if not messages:
            return []
        deadline = time.monotonic() + self.timeout_seconds
        size = sum(message_size(message) for message in messages)
        if len(messages) <= MAX_MESSAGES_PER_REQUEST and size <= MAX_BYTES_PER_REQUEST:
            return self._publish_queued(topic, messages, size, deadline)
        # Too big for one request: its requests go through the queue one after the other, in
        # order, so they too count against the topic's RPCs in flight.
        ids: list[str] = []
        for chunk in request_chunks(messages):
            chunk_size = sum(message_size(message) for message in chunk)
            ids += self._publish_queued(topic, chunk, chunk_size, deadline)
        return ids

    def _publish_queued(
        self, topic: str, messages: Sequence[OutgoingMessage], size: int, deadline: float
    ) -> list[str]:
        """Queue one call that fits in a request; send when a batch is handed to it, or wait for
        the sender of the batch that took it, until its own deadline.

        Only the head of a topic's queue takes a batch, and what it takes starts with its own
        call, so every queued call's thread is waiting on its condition: a notification to the
        head is never lost. Whenever the head or the number of RPCs in flight changes (a batch
        taken, an RPC finished, the head timed out), ``_wake_next_sender`` wakes the new head if
        a slot is free; a head woken twice takes one slot and wakes the next head, so no free
        slot is left idle while calls queue.

        The batch is sent by the thread of its call with the latest deadline, with that deadline
        (the head's own thread when it is alone or has it): each call then waits for the outcome
        until its own deadline and no later, and no call fails earlier than its own timeout
        because it shares an RPC with a call whose time runs out sooner.
        """
        call = _Call(messages, size, deadline, self._state)
        with self._state:
            queue = self._queues.setdefault(topic, [])
            queue.append(call)
            while True:
                if call.finished:
                    return self._outcome(call, topic)
                if call.to_send is not None:
                    break
                now = time.monotonic()
                if now >= deadline:
                    self._abandon(topic, call)
                    raise self._timed_out(topic)
                if (
                    queue
                    and queue[0] is call
                    and self._in_flight.get(topic, 0) < self.max_rpcs_in_flight
                ):
                    batch = self._take_batch(topic, now)
                    self._in_flight[topic] = self._in_flight.get(topic, 0) + 1
                    self._wake_next_sender(topic)
                    sender = max(batch, key=lambda queued: queued.deadline)
                    if sender.deadline <= deadline:
                        sender = call  # no hand-over when its own deadline is the latest
                    sender.to_send = batch
                    if sender is call:
                        break
                    sender.wakeup.notify()
                    continue
                call.wakeup.wait(deadline - now)
        to_send = call.to_send
        assert to_send is not None  # the loop above is left with a batch to send, or returns
        self._send_batch(topic, to_send, deadline)
        return self._outcome(call, topic)

    def _send_batch(self, topic: str, batch: list[_Call], deadline: float) -> None:
        """Send the calls of ``batch`` in one RPC and hand each its ids or the error."""
        outcome: list[str] | BaseException
        try:
            outcome = self._send(topic, [m for queued in batch for m in queued.messages], deadline)
        except BaseException as error:  # every waiter must learn the outcome
            outcome = error
        with self._state:
            start = 0
            for queued in batch:
                if isinstance(outcome, BaseException):
                    queued.error = outcome
                else:
                    queued.ids = outcome[start : start + len(queued.messages)]
                    start += len(queued.messages)
                queued.wakeup.notify()
            self._in_flight[topic] -= 1
            self._wake_next_sender(topic)

    def _take_batch(self, topic: str, now: float) -> list[_Call]:
        """The oldest queued calls of ``topic`` that fit in one request, starting with the head.

        Calls past their deadline whose threads have not yet run to drop them are dropped here,
        with a ``PublishError``: nothing is sent after its caller stopped waiting.
        """
        queue = self._queues[topic]
        batch: list[_Call] = []
        count, size, index = 0, 0, 0
        while index < len(queue):
            queued = queue[index]
            if batch and queued.deadline <= now:
                queued.error = self._timed_out(topic)
                queued.wakeup.notify()
                del queue[index]
                continue
            if batch and (
                count + len(queued.messages) > MAX_MESSAGES_PER_REQUEST
                or size + queued.size > MAX_BYTES_PER_REQUEST
            ):
                break
            count += len(queued.messages)
            size += queued.size
            batch.append(queued)
            index += 1
        del queue[:index]
        return batch

    def _wake_next_sender(self, topic: str) -> None:
        """If ``topic`` has a free slot and calls queued, wake the head of its queue to send."""
        queue = self._queues.get(topic)
        if queue and self._in_flight.get(topic, 0) < self.max_rpcs_in_flight:
            queue[0].wakeup.notify()

    def _abandon(self, topic: str, call: _Call) -> None:
        """Drop a timed-out call from its queue (if not yet taken by a sender)."""
        queue = self._queues.get(topic, [])
        if call in queue:
            was_head = queue[0] is call
            queue.remove(call)
            if was_head:  # it may have been woken to send, and now will not
                self._wake_next_sender(topic)

    def _timed_out(self, topic: str) -> PublishError:
        """The error of a call whose deadline passed before its messages were sent or acked."""
        return PublishError(f"publish to {topic} did not finish in {self.timeout_seconds}s")

    @staticmethod
    def _outcome(call: _Call, topic: str) -> list[str]:
        if call.error is not None:
            if isinstance(call.error, PublishError):
                raise call.error
            raise PublishError(f"publish to {topic} failed: {call.error!r}") from call.error
        assert call.ids is not None
        return call.ids

    def _send(self, topic: str, messages: Sequence[OutgoingMessage], deadline: float) -> list[str]:
        """One Publish RPC, retried on retryable errors until ``deadline``."""
        from google.api_core import exceptions, retry
        from google.pubsub_v1.types import PublishRequest, PubsubMessage

        remaining = max(0.001, deadline - time.monotonic())
        # The raw protobuf types, wrapped without a copy: building proto-plus messages costs
        # about 10 µs each (see docs/speed.md).
        request = PublishRequest.wrap(
            PublishRequest.pb()(
                topic=topic,
                messages=[
                    PubsubMessage.pb()(data=message.data, attributes=message.attributes)
                    for message in messages
                ],
            )
        )
        response = self._get_client().publish(
            request=request,
            retry=retry.Retry(
                initial=0.1,
                maximum=1.0,
                multiplier=2.0,
                timeout=remaining,
                predicate=retry.if_exception_type(
                    exceptions.ServiceUnavailable,
                    exceptions.DeadlineExceeded,
                    exceptions.InternalServerError,
                    exceptions.Aborted,
                    exceptions.ResourceExhausted,
                    exceptions.Unknown,
                ),
            ),
            timeout=remaining,
        )
        ids = list(response.message_ids)
        if len(ids) != len(messages):
            raise PublishError(
                f"publish to {topic} returned {len(ids)} ids for {len(messages)} messages"
            )
        return ids
