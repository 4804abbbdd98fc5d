"""Publish messages to Pub/Sub and wait, within a bound, until the server has them.

A thin adapter around the Pub/Sub API client (``google.pubsub_v1.PublisherClient``): the client
is created on first use and shared by every thread of the process (it is thread-safe), and every
publish either returns the server's message ids or raises ``PublishError`` within its timeout.
``PUBSUB_EMULATOR_HOST`` is honoured by the client itself.

Why not the batching ``google.cloud.pubsub_v1`` client: every request of the function waits for
its own messages anyway, so a batching timer (10 ms by default) only adds latency, and with no
timer that client sends one RPC per message and starts threads for every batch. Instead,
concurrent calls share RPCs by *group commit*: a call that finds no RPC in flight to its topic
sends at once, on its own thread, everything queued for that topic; calls that arrive meanwhile
queue up and go together in the next RPC. An idle instance therefore publishes with one RPC and
no wait, and a busy one sends fewer, larger RPCs (see docs/speed.md, for the measurements).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from types import MappingProxyType
from typing import Any, NamedTuple, Protocol

# The Publish API takes at most 1,000 messages and 10 MB per request; the byte budget leaves
# room for the request's own framing.
MAX_MESSAGES_PER_REQUEST = 1000
MAX_BYTES_PER_REQUEST = 9 * 1000 * 1000
# Per-message overhead counted against the byte budget besides data and attributes.
_MESSAGE_OVERHEAD_BYTES = 64


class PublishError(RuntimeError):
    """A publish did not reach the server in time (a transient failure: retry the input)."""


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


def topic_path(project_id: str, topic: str) -> str:
    """The full resource name of a topic (what the client calls a topic path)."""
    return f"projects/{project_id}/topics/{topic}"


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

    __slots__ = ("error", "ids", "messages", "size", "wakeup")

    def __init__(
        self, messages: Sequence[OutgoingMessage], size: int, lock: threading.Lock
    ) -> None:
        self.messages = messages
        self.size = size
        self.ids: list[str] | None = None
        self.error: BaseException | None = None
        # Its own condition on the publisher's lock: a sender wakes exactly the calls it
        # finished and the one that sends next, not every waiting thread.
        self.wakeup = threading.Condition(lock)

    @property
    def finished(self) -> bool:
        return self.ids is not None or self.error is not None


class PubSubPublisher:
    """Publishes to any topic through one lazily created, process-wide ``PublisherClient``."""

    def __init__(
        self,
        timeout_seconds: float = 10.0,
        client_factory: Callable[[], Any] = _default_client,
    ) -> None:
        self.timeout_seconds = timeout_seconds
        self._client_factory = client_factory
        self._client: Any = None
        self._lock = threading.Lock()
        # Group commit state, per topic: the calls waiting to be sent, and whether a call is
        # sending an RPC right now; guarded by one lock.
        self._state = threading.Lock()
        self._queues: dict[str, list[_Call]] = {}
        self._sending: set[str] = set()

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
        if len(messages) > MAX_MESSAGES_PER_REQUEST or size > MAX_BYTES_PER_REQUEST:
            # Too big to share a request: sent on its own, in as many requests as it takes.
            ids: list[str] = []
            for chunk in request_chunks(messages):
                ids += self._send_or_raise(topic, chunk, deadline)
            return ids

        call = _Call(messages, size, self._state)
        with self._state:
            self._queues.setdefault(topic, []).append(call)
        while True:
            with self._state:
                while not call.finished and topic in self._sending:
                    remaining = deadline - time.monotonic()
                    timed_out = remaining <= 0 or not call.wakeup.wait(remaining)
                    if timed_out and not call.finished:
                        self._abandon(topic, call)
                        raise PublishError(
                            f"publish to {topic} did not finish in {self.timeout_seconds}s"
                        )
                if call.finished:
                    return self._outcome(call, topic)
                # Nothing in flight to this topic: this thread sends what is queued, oldest
                # first, which includes its own call unless older ones fill the request.
                batch = self._take_batch(topic)
                self._sending.add(topic)
            self._send_batch(topic, batch, deadline)

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
            self._sending.discard(topic)
            self._wake_next_sender(topic)

    def _take_batch(self, topic: str) -> list[_Call]:
        """The oldest queued calls of ``topic`` that fit in one request (at least one)."""
        queue = self._queues[topic]
        count, size, taken = 0, 0, 0
        for queued in queue:
            if taken and (
                count + len(queued.messages) > MAX_MESSAGES_PER_REQUEST
                or size + queued.size > MAX_BYTES_PER_REQUEST
            ):
                break
            count += len(queued.messages)
            size += queued.size
            taken += 1
        batch = queue[:taken]
        del queue[:taken]
        return batch

    def _wake_next_sender(self, topic: str) -> None:
        """With nothing in flight to ``topic``, wake its oldest queued call to send."""
        queue = self._queues.get(topic)
        if queue and topic not in self._sending:
            queue[0].wakeup.notify()

    def _abandon(self, topic: str, call: _Call) -> None:
        """Drop a timed-out call from its queue (if not yet taken by a sender)."""
        queue = self._queues.get(topic, [])
        if call in queue:
            queue.remove(call)
            self._wake_next_sender(topic)  # it may have been woken to send, and now will not

    @staticmethod
    def _outcome(call: _Call, topic: str) -> list[str]:
        if call.error is not None:
            if isinstance(call.error, PublishError):
                raise call.error
            raise PublishError(f"publish to {topic} failed: {call.error!r}") from call.error
        assert call.ids is not None
        return call.ids

    def _send_or_raise(
        self, topic: str, messages: Sequence[OutgoingMessage], deadline: float
    ) -> list[str]:
        try:
            return self._send(topic, messages, deadline)
        except PublishError:
            raise
        except Exception as error:
            raise PublishError(f"publish to {topic} failed: {error!r}") from error

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
