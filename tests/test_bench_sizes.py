"""What the bench measures for the cost model: the Publish RPCs the function sends
(bench/publish_meter.py), the pushed messages, the log lines and the dead letter
(bench/sizes.py); each on a case whose bytes are counted here by hand."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

from google.pubsub_v1.types import PublishRequest, PubsubMessage

from bench import publish_meter, sizes
from bench.harness import push_body

TOPIC = "projects/p/topics/t"  # 19 bytes


def request(*messages: tuple[bytes, dict[str, str]]) -> PublishRequest:
    """A Publish request built as publisher.py builds it (raw protobuf, wrapped)."""
    return PublishRequest.wrap(
        PublishRequest.pb()(
            topic=TOPIC,
            messages=[PubsubMessage.pb()(data=data, attributes=attrs) for data, attrs in messages],
        )
    )


def test_the_meter_measures_messages_payload_and_request_bytes_per_rpc() -> None:
    meter = publish_meter.Meter()
    meter.record(request((b"x" * 100, {"ride_id": "12"})))
    meter.record(request(*[(b"y" * 50, {"a": "bc"})] * 3))
    meter.record(request(*[(b"y" * 50, {"a": "bc"})] * 3))

    histogram = meter.histogram()

    # Protobuf bytes of the first: topic 1 + 1 + 19; message 1 + 1 + (data 1 + 1 + 100, one
    # attribute entry 1 + 1 + (key 1 + 1 + 7, value 1 + 1 + 2)) = 21 + 119.
    assert histogram["1"] == {"rpcs": 1, "payload_bytes": 100 + 7 + 2, "request_bytes": 140}
    # Three messages of 50 bytes and a 1 + 2 byte attribute: 3 x 53 payload bytes; each
    # message 1 + 1 + (52 + 1 + 1 + (3 + 4)) = 63 on the wire, plus the topic's 21.
    assert histogram["3"] == {"rpcs": 2, "payload_bytes": 2 * 159, "request_bytes": 2 * 210}
    assert list(histogram) == ["1", "3"]

    meter.reset()
    assert meter.histogram() == {}


def test_install_keeps_each_request_and_passes_the_call_through_once() -> None:
    class Client:
        def publish(self, request: Any = None, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
            return request, kwargs

    meter = publish_meter.Meter()
    publish_meter.install(Client, meter)
    publish_meter.install(Client, meter)  # idempotent: not wrapped twice
    one = request((b"z", {}))

    assert Client().publish(request=one, timeout=3.0) == (one, {"timeout": 3.0})
    assert meter.histogram() == {"1": {"rpcs": 1, "payload_bytes": 1, "request_bytes": 26}}


def test_histograms_of_several_runs_add_up_bucket_by_bucket() -> None:
    first = {"2": {"rpcs": 1, "payload_bytes": 10, "request_bytes": 20}}
    second = {
        "2": {"rpcs": 2, "payload_bytes": 30, "request_bytes": 50},
        "10": {"rpcs": 1, "payload_bytes": 5, "request_bytes": 9},
    }
    assert publish_meter.merge([second, first]) == {
        "2": {"rpcs": 3, "payload_bytes": 40, "request_bytes": 70},
        "10": {"rpcs": 1, "payload_bytes": 5, "request_bytes": 9},
    }


def test_a_pushed_message_counts_its_data_attributes_and_id() -> None:
    body = json.dumps(
        {
            "message": {
                "data": base64.b64encode(b'{"a": 1}').decode(),  # 8 bytes
                "attributes": {"k": "vv"},  # 3 bytes
                "messageId": "1234",  # 4 bytes
            },
            "subscription": "projects/p/subscriptions/s",
        }
    ).encode()

    measured = sizes.push_sizes([body, body])

    assert measured == {"count": 2, "http_body_bytes": len(body), "message_bytes": 15}


def test_log_lines_are_counted_per_kind_with_their_newlines(tmp_path: Path) -> None:
    single = '{"severity": "INFO", "message": "prediction published", "ride_id": 1}\n'
    batch = '{"severity": "INFO", "message": "prediction published", "ride_count": 3}\n'
    rejected = '{"severity": "ERROR", "message": "rejected message: bad"}\n'
    log = tmp_path / "function.log"
    log.write_text("[INFO] Booting worker\n" + single * 3 + batch + rejected + "not json {\n")

    assert sizes.log_line_sizes(log) == {
        "single": {"lines": 3, "bytes": 3 * len(single)},
        "batch": {"lines": 1, "bytes": len(batch)},
    }
    assert sizes.log_line_sizes(tmp_path / "missing.log")["single"] == {"lines": 0, "bytes": 0}
    merged = sizes.merge_log_sizes([sizes.log_line_sizes(log)] * 2)
    assert merged["single"] == {"lines": 6, "bytes": 6 * len(single)}


def test_the_dead_letter_is_the_rejected_ride_and_the_dlq_attributes() -> None:
    ride = {"ride": {"PULocationID": 1, "DOLocationID": 2, "trip_distance": 1.5}, "ride_id": 7}
    body = push_body(json.dumps(ride).encode())  # messageId: 32 hex characters
    rejected = json.dumps({**ride, "ride": {**ride["ride"], "PULocationID": 0}}).encode()
    reason = "Expected `int` >= 1 - at `$.ride.PULocationID`"
    subscription = "projects/bench/subscriptions/taxi-ride-streaming-push"
    attributes = (
        len("dlq_reason") + len(reason)
        + len("dlq_source_message_id") + 32
        + len("dlq_source_publish_time") + len("2024-01-08T08:22:49.792Z")
        + len("dlq_source_subscription") + len(subscription)
        + len("ride_id") + len("7")  # the rejected ride's own ride_id
    )  # fmt: skip

    assert sizes.dead_letter_payload_bytes(body) == len(rejected) + attributes


def test_the_log_entry_estimates_are_whole_entries_not_lines() -> None:
    # Estimates, not measurements: they must at least hold the resource, the log name and (for
    # the request log) the HTTP request; a request log entry is the larger of the two.
    envelope, request_log = sizes.log_entry_envelope_bytes(), sizes.request_log_entry_bytes()
    assert 300 < envelope < request_log < 2000
