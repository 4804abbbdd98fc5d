"""What the function sends per Publish RPC, measured inside its process (bench only).

``install()`` wraps ``google.pubsub_v1.PublisherClient.publish`` (the one call ``publisher.py``
makes per RPC) so that every request is kept, by reference, as it is sent; nothing is computed
on the request's path. ``histogram()`` measures them afterwards: per number of messages in an
RPC, how many RPCs carried that many, the bytes Pub/Sub counts of their messages (data plus
attribute keys and values, which its pricing page bills), and the bytes of the serialized
``PublishRequest``. ``bench/variants/probe.py`` installs it when ``BENCH_PUBLISH_METER`` is set
and returns the histogram with its ``dump`` command; ``merge`` adds histograms of several runs.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from typing import Any

# What a histogram bucket holds, per number of messages in an RPC.
RPCS, PAYLOAD_BYTES, REQUEST_BYTES = "rpcs", "payload_bytes", "request_bytes"

_requests: list[Any] = []
_lock = threading.Lock()
_installed = False


def install() -> None:
    """Wrap ``PublisherClient.publish`` to keep each request it is given (idempotent)."""
    global _installed
    if _installed:
        return
    from google.pubsub_v1 import PublisherClient

    original = PublisherClient.publish

    def publish(self: Any, request: Any = None, **kwargs: Any) -> Any:
        with _lock:
            _requests.append(request)
        return original(self, request=request, **kwargs)

    PublisherClient.publish = publish  # type: ignore[method-assign]
    _installed = True


def reset() -> None:
    """Forget the requests kept so far."""
    with _lock:
        _requests.clear()


def histogram() -> dict[str, dict[str, int]]:
    """The kept requests, measured: ``{messages per RPC: {rpcs, payload_bytes, request_bytes}}``
    (keys are strings, as in JSON)."""
    with _lock:
        requests = list(_requests)
    buckets: dict[str, dict[str, int]] = {}
    for request in requests:
        if request is None:  # called with flattened fields: not this project's publisher
            continue
        raw = type(request).pb(request)
        bucket = buckets.setdefault(
            str(len(raw.messages)), {RPCS: 0, PAYLOAD_BYTES: 0, REQUEST_BYTES: 0}
        )
        bucket[RPCS] += 1
        bucket[PAYLOAD_BYTES] += sum(message_payload_bytes(m) for m in raw.messages)
        bucket[REQUEST_BYTES] += raw.ByteSize()
    return buckets


def message_payload_bytes(message: Any) -> int:
    """A ``PubsubMessage``'s data plus its attribute keys and values, in bytes."""
    return len(message.data) + sum(
        len(key.encode()) + len(value.encode()) for key, value in message.attributes.items()
    )


def merge(histograms: Iterable[Mapping[str, Mapping[str, int]]]) -> dict[str, dict[str, int]]:
    """The sum of several histograms, bucket by bucket."""
    merged: dict[str, dict[str, int]] = {}
    for one in histograms:
        for size, bucket in one.items():
            total = merged.setdefault(size, {RPCS: 0, PAYLOAD_BYTES: 0, REQUEST_BYTES: 0})
            for key in (RPCS, PAYLOAD_BYTES, REQUEST_BYTES):
                total[key] += bucket.get(key, 0)
    return dict(sorted(merged.items(), key=lambda item: int(item[0])))
