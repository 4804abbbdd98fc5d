"""What the function sends per Publish RPC, measured inside its process (bench only).

``install()`` wraps ``google.pubsub_v1.PublisherClient.publish`` (the one call the publisher
makes per RPC) so that ``METER`` keeps every request, by reference, as it is sent; nothing is
computed on the request's path. ``Meter.histogram()`` measures them afterwards: per number of
messages in an RPC, how many RPCs carried that many, the bytes Pub/Sub's pricing counts of their
messages (data plus attribute keys and values) and the bytes of the serialized
``PublishRequest``. ``bench/variants/probe.py`` installs it when ``BENCH_PUBLISH_METER`` is
set and returns the histogram with its ``dump`` command; ``merge`` adds up several runs'.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from typing import Any

# What a histogram bucket holds, per number of messages in an RPC.
RPCS, PAYLOAD_BYTES, REQUEST_BYTES = "rpcs", "payload_bytes", "request_bytes"
Histogram = dict[str, dict[str, int]]


class Meter:
    """Keeps Publish requests; measures them on demand (thread-safe)."""

    def __init__(self) -> None:
        self._requests: list[Any] = []
        self._lock = threading.Lock()

    def record(self, request: Any) -> None:
        """Keep ``request`` (a ``PublishRequest``) to be measured later."""
        with self._lock:
            self._requests.append(request)

    def reset(self) -> None:
        """Forget the requests kept so far."""
        with self._lock:
            self._requests.clear()

    def histogram(self) -> Histogram:
        """The kept requests, measured: ``{messages per RPC: {rpcs, payload_bytes,
        request_bytes}}`` (keys are strings, as in JSON)."""
        with self._lock:
            requests = list(self._requests)
        buckets: Histogram = {}
        for request in requests:
            raw = type(request).pb(request)
            bucket = buckets.setdefault(
                str(len(raw.messages)), {RPCS: 0, PAYLOAD_BYTES: 0, REQUEST_BYTES: 0}
            )
            bucket[RPCS] += 1
            bucket[PAYLOAD_BYTES] += sum(message_payload_bytes(m) for m in raw.messages)
            bucket[REQUEST_BYTES] += raw.ByteSize()
        return merge([buckets])


METER = Meter()


def install(client_class: Any = None, meter: Meter = METER) -> None:
    """Wrap ``client_class.publish`` (``google.pubsub_v1.PublisherClient``'s by default) so
    that ``meter`` keeps each request it is given; idempotent."""
    if client_class is None:
        from google.pubsub_v1 import PublisherClient

        client_class = PublisherClient
    original = client_class.publish
    if getattr(original, "metered", False):
        return

    def publish(self: Any, request: Any = None, **kwargs: Any) -> Any:
        if request is not None:  # flattened fields: not how ride_predictor.publisher calls it
            meter.record(request)
        return original(self, request=request, **kwargs)

    publish.metered = True  # type: ignore[attr-defined]
    client_class.publish = publish


def message_payload_bytes(message: Any) -> int:
    """A ``PubsubMessage``'s data plus its attribute keys and values, in bytes."""
    return len(message.data) + sum(
        len(key.encode()) + len(value.encode()) for key, value in message.attributes.items()
    )


def merge(histograms: Iterable[Mapping[str, Mapping[str, int]]]) -> Histogram:
    """The sum of several histograms, bucket by bucket, ordered by messages per RPC."""
    merged: Histogram = {}
    for one in histograms:
        for size, bucket in one.items():
            total = merged.setdefault(size, {RPCS: 0, PAYLOAD_BYTES: 0, REQUEST_BYTES: 0})
            for key in (RPCS, PAYLOAD_BYTES, REQUEST_BYTES):
                total[key] += bucket.get(key, 0)
    return dict(sorted(merged.items(), key=lambda item: int(item[0])))
