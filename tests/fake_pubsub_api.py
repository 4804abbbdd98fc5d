"""A hand-written fake of the Pub/Sub API client, as ``publisher.py`` uses it.

``publisher.PubSubPublisher`` calls one method of ``google.pubsub_v1.PublisherClient``:
``publish(request=PublishRequest, retry=..., timeout=...)``, which returns a ``PublishResponse``.
This fake does the same with the server's rules that matter to the publisher:

- the Publish API's limits: at most 1,000 messages and 10,000,000 bytes (the serialised
  request) per request. A request over either is refused as the service refuses it
  (``InvalidArgument``, same wording) *and* recorded in ``refused``: the ``fake_api`` fixture
  fails the test if anything was refused, whatever the publisher made of the error.
- the server publishes a request when it arrives (ids are given then); only the *response* can
  be held back by the test (``holding``), to keep an RPC in flight for as long as it needs.
  A held response that outlives the client's ``timeout`` raises ``DeadlineExceeded`` as gRPC
  does, although the messages were published: the at-least-once case.
- how many requests to each topic are in flight at once (from their arrival until their response
  or error goes back), and the most there ever were (``max_in_flight``): the publisher's cap on
  RPCs in flight per topic is checked against this.

Tests drive concurrency with its events, never with sleeps: ``wait_for_rpcs(n)`` returns once
``n`` requests have reached the server, ``release(index)`` or ``release_all()`` lets held
responses go. The fake does not apply ``retry`` (no test here needs a retried RPC).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from google.api_core import exceptions
from google.pubsub_v1.types import PublishRequest, PublishResponse

# The service's limits (https://cloud.google.com/pubsub/quotas, "Resource limits"; also
# https://cloud.google.com/pubsub/docs/batch-messaging): 1,000 messages and 10 MB per Publish
# request, the size being the serialised request's (its error quotes "request_size").
API_MAX_MESSAGES = 1000
API_MAX_REQUEST_BYTES = 10_000_000
# How long any wait in the fake may take before the test is failed rather than hung.
WAIT_SECONDS = 30.0


@dataclass
class Rpc:
    """One Publish request that reached the (fake) server."""

    topic: str
    data: list[bytes]
    request_bytes: int
    ids: list[str]
    # The client's timeout for the RPC, as given (seconds left, or None).
    timeout: float | None = None
    release: threading.Event = field(default_factory=threading.Event)


class FakePublisherClient:
    """``PublisherClient.publish`` in memory, with the service's limits; see the module doc."""

    def __init__(self, holding: bool = False, failure: Exception | None = None) -> None:
        # While True, every response waits until the test releases it (or the client's
        # deadline passes).
        self.holding = holding
        # Raised instead of publishing (the server refused the request).
        self.failure = failure
        self.rpcs: list[Rpc] = []
        self.refused: list[str] = []
        self.id_of: dict[bytes, str] = {}
        # Per topic: requests in flight now, and the most there ever were at once.
        self.in_flight: dict[str, int] = {}
        self.max_in_flight: dict[str, int] = {}
        self._arrived = threading.Condition()

    def publish(
        self,
        request: PublishRequest | None = None,
        *,
        retry: Any = None,
        timeout: float | None = None,
        metadata: Any = (),
    ) -> PublishResponse:
        """Publish ``request`` as the service would, or refuse it."""
        assert isinstance(request, PublishRequest), "publisher.py sends a PublishRequest"
        raw = PublishRequest.pb(request)
        with self._arrived:
            now = self.in_flight.get(raw.topic, 0) + 1
            self.in_flight[raw.topic] = now
            self.max_in_flight[raw.topic] = max(now, self.max_in_flight.get(raw.topic, 0))
        try:
            return self._publish(raw, timeout)
        finally:
            with self._arrived:
                self.in_flight[raw.topic] -= 1

    def _publish(self, raw: Any, timeout: float | None) -> PublishResponse:
        """The server's side of one request (``raw``, the protobuf): refuse, fail or publish."""
        request_bytes = raw.ByteSize()
        reason = None
        if len(raw.messages) > API_MAX_MESSAGES:
            reason = (
                f"The value for message_count is too large. You passed {len(raw.messages)} "
                f"in the request, but the maximum value is {API_MAX_MESSAGES}."
            )
        elif request_bytes > API_MAX_REQUEST_BYTES:
            reason = (
                f"The value for request_size is too large. You passed {request_bytes} in the "
                f"request, but the maximum value is {API_MAX_REQUEST_BYTES}."
            )
        if reason is not None:
            with self._arrived:
                self.refused.append(reason)
            raise exceptions.InvalidArgument(reason)
        if self.failure is not None:
            raise self.failure
        data = [message.data for message in raw.messages]
        with self._arrived:
            first = sum(len(rpc.ids) for rpc in self.rpcs)
            ids = [f"id-{first + index}" for index in range(len(data))]
            rpc = Rpc(raw.topic, data, request_bytes, ids, timeout)
            self.rpcs.append(rpc)
            self.id_of.update(zip(data, ids, strict=True))
            if not self.holding:
                rpc.release.set()
            self._arrived.notify_all()
        # Published; now the response travels back, unless the test holds it.
        if not rpc.release.wait(WAIT_SECONDS if timeout is None else timeout):
            raise exceptions.DeadlineExceeded("Deadline Exceeded")
        return PublishResponse(message_ids=ids)

    def wait_for_rpcs(self, count: int) -> list[Rpc]:
        """Wait until ``count`` requests have reached the server; return all so far."""
        with self._arrived:
            arrived = self._arrived.wait_for(lambda: len(self.rpcs) >= count, WAIT_SECONDS)
            assert arrived, f"{count} RPCs expected, {len(self.rpcs)} arrived"
            return list(self.rpcs)

    def release(self, index: int) -> None:
        """Let the response of the ``index``-th request go."""
        with self._arrived:
            self.rpcs[index].release.set()

    def release_all(self) -> None:
        """Stop holding: every held response goes, and later ones are not held."""
        with self._arrived:
            self.holding = False
            for rpc in self.rpcs:
                rpc.release.set()

    @property
    def requests(self) -> list[list[bytes]]:
        """The data of every request that reached the server, in arrival order."""
        with self._arrived:
            return [rpc.data for rpc in self.rpcs]
