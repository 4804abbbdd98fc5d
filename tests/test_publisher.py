"""publisher.py against the real Pub/Sub emulator, and its group commit with a fake client."""

from __future__ import annotations

import json
import threading
import types
from collections.abc import Callable
from typing import Any

import pytest

from devstack.processes import wait_until
from devstack.pubsub_admin import PubSubAdmin
from publisher import (
    MAX_BYTES_PER_REQUEST,
    MAX_MESSAGES_PER_REQUEST,
    OutgoingMessage,
    PublishError,
    PubSubPublisher,
    message_size,
    request_chunks,
    topic_path,
)
from tests.conftest import PROJECT_ID, unique


def test_bytes_and_attributes_arrive(pubsub: PubSubAdmin) -> None:
    topic, subscription = unique("predictions"), unique("predictions-sub")
    pubsub.create_topic(topic)
    pubsub.create_subscription(subscription, topic)
    body = json.dumps({"prediction": {"ride_duration": 18, "ride_id": 123}}).encode()
    attributes = {"ride_id": "123", "model_version": "abc", "source_message_id": "42"}

    message_ids = PubSubPublisher().publish(
        topic_path(PROJECT_ID, topic), [OutgoingMessage(body, attributes)]
    )

    (received,) = pubsub.pull(subscription, expected=1)
    assert received.data == body
    assert received.attributes == attributes
    assert message_ids == [received.message_id]


def test_many_messages_in_one_call_all_arrive_in_any_order(pubsub: PubSubAdmin) -> None:
    topic, subscription = unique("predictions"), unique("predictions-sub")
    pubsub.create_topic(topic)
    pubsub.create_subscription(subscription, topic)
    messages = [OutgoingMessage(str(i).encode(), {"ride_index": str(i)}) for i in range(250)]

    ids = PubSubPublisher().publish(topic_path(PROJECT_ID, topic), messages)

    received = pubsub.pull(subscription, expected=250)
    assert len(set(ids)) == 250
    assert sorted(int(m.data) for m in received) == list(range(250))


def test_a_missing_topic_raises_publish_error(pubsub: PubSubAdmin) -> None:
    with pytest.raises(PublishError, match=r"NotFound|not found"):
        PubSubPublisher(timeout_seconds=5).publish(
            topic_path(PROJECT_ID, unique("missing")), [OutgoingMessage(b"x")]
        )


def test_the_client_is_created_once_and_lazily(pubsub: PubSubAdmin) -> None:
    created: list[object] = []

    def factory() -> object:
        from publisher import _default_client

        created.append(client := _default_client())
        return client

    topic = unique("predictions")
    pubsub.create_topic(topic)
    publisher = PubSubPublisher(client_factory=factory)
    assert created == []
    for _ in range(3):
        publisher.publish(topic_path(PROJECT_ID, topic), [OutgoingMessage(b"x")])
    assert len(created) == 1


class FakeClient:
    """Records every Publish request; the first one can be held until released."""

    def __init__(self, hold_first: bool = False, failure: Exception | None = None) -> None:
        self.requests: list[list[bytes]] = []
        self.entered = threading.Event()
        self.release = threading.Event()
        if not hold_first:
            self.release.set()
        self.failure = failure
        self._count = 0
        self._lock = threading.Lock()

    def publish(self, request: Any, retry: Any, timeout: float) -> Any:
        with self._lock:
            first = not self.requests
            self.requests.append([message.data for message in request.messages])
        if first:
            self.entered.set()
            assert self.release.wait(30)
        if self.failure is not None:
            raise self.failure
        with self._lock:
            ids = [str(self._count + i) for i in range(len(request.messages))]
            self._count += len(ids)
        return types.SimpleNamespace(message_ids=ids)


def _queued(publisher: PubSubPublisher, topic: str, count: int) -> None:
    """Wait until ``count`` calls are queued behind the RPC in flight."""
    wait_until(
        lambda: len(publisher._queues.get(topic, [])) >= count,
        f"{count} calls queued behind the RPC in flight",
        timeout_seconds=30,
    )


def _in_threads(*calls: Callable[[], Any]) -> tuple[list[threading.Thread], list[Any]]:
    results: list[Any] = [None] * len(calls)

    def run(index: int, call: Callable[[], Any]) -> None:
        try:
            results[index] = call()
        except Exception as error:
            results[index] = error

    threads = [threading.Thread(target=run, args=(index, call)) for index, call in enumerate(calls)]
    for thread in threads:
        thread.start()
    return threads, results


def test_calls_that_arrive_during_an_rpc_share_the_next_one() -> None:
    client = FakeClient(hold_first=True)
    publisher = PubSubPublisher(client_factory=lambda: client)
    topic = "projects/p/topics/t"

    first, first_result = _in_threads(lambda: publisher.publish(topic, [OutgoingMessage(b"a")]))
    assert client.entered.wait(30)
    others, results = _in_threads(
        lambda: publisher.publish(topic, [OutgoingMessage(b"b"), OutgoingMessage(b"c")]),
        lambda: publisher.publish(topic, [OutgoingMessage(b"d")]),
    )
    _queued(publisher, topic, 2)
    client.release.set()
    for thread in first + others:
        thread.join(30)

    assert client.requests[0] == [b"a"]
    assert sorted(client.requests[1]) == [b"b", b"c", b"d"]  # one RPC for both callers
    assert len(client.requests) == 2
    assert first_result == [["0"]]
    ids_by_data = dict(zip(client.requests[1], ["1", "2", "3"], strict=True))
    assert results == [[ids_by_data[b"b"], ids_by_data[b"c"]], [ids_by_data[b"d"]]]


def test_a_failed_shared_rpc_fails_every_call_in_it() -> None:
    client = FakeClient(hold_first=True, failure=RuntimeError("unavailable"))
    publisher = PubSubPublisher(client_factory=lambda: client)
    topic = "projects/p/topics/t"

    first, first_result = _in_threads(lambda: publisher.publish(topic, [OutgoingMessage(b"a")]))
    assert client.entered.wait(30)
    others, results = _in_threads(
        lambda: publisher.publish(topic, [OutgoingMessage(b"b")]),
        lambda: publisher.publish(topic, [OutgoingMessage(b"c")]),
    )
    _queued(publisher, topic, 2)
    client.release.set()
    for thread in first + others:
        thread.join(30)

    assert len(client.requests) == 2
    for result in first_result + results:
        assert isinstance(result, PublishError)
        assert "unavailable" in str(result)


def test_a_call_stuck_behind_an_rpc_times_out_and_is_never_sent() -> None:
    client = FakeClient(hold_first=True)
    publisher = PubSubPublisher(timeout_seconds=0.2, client_factory=lambda: client)
    topic = "projects/p/topics/t"

    first, _ = _in_threads(lambda: publisher.publish(topic, [OutgoingMessage(b"a")]))
    assert client.entered.wait(30)
    with pytest.raises(PublishError, match="did not finish"):
        publisher.publish(topic, [OutgoingMessage(b"late")])
    client.release.set()
    first[0].join(30)

    assert client.requests == [[b"a"]]


def test_more_than_one_request_worth_is_split_in_order() -> None:
    client = FakeClient()
    publisher = PubSubPublisher(client_factory=lambda: client)
    messages = [OutgoingMessage(str(i).encode()) for i in range(MAX_MESSAGES_PER_REQUEST + 1)]

    ids = publisher.publish("projects/p/topics/t", messages)

    assert [len(request) for request in client.requests] == [MAX_MESSAGES_PER_REQUEST, 1]
    assert [data for request in client.requests for data in request] == [m.data for m in messages]
    assert ids == [str(i) for i in range(len(messages))]


def test_requests_stay_under_the_byte_limit() -> None:
    big = OutgoingMessage(b"x" * (MAX_BYTES_PER_REQUEST // 3))
    chunks = list(request_chunks([big] * 7))
    assert [len(chunk) for chunk in chunks] == [2, 2, 2, 1]
    assert all(sum(message_size(m) for m in chunk) <= MAX_BYTES_PER_REQUEST for chunk in chunks)
