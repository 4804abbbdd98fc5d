"""Kinesis-shaped Lambda events and an in-memory stream writer, for the AWS tests."""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from typing import Any

from kinesis_writer import OutputRecord

STREAM_ARN = "arn:aws:kinesis:us-east-1:123456789012:stream/taxi-ride-streaming"
SAMPLE_RIDE = {
    "ride": {"PULocationID": 130, "DOLocationID": 205, "trip_distance": 3.66},
    "ride_id": 123,
}


def ride(ride_id: int | str, pu: int = 130, do: int = 205, distance: float = 3.66) -> dict:
    """A valid ride event."""
    return {
        "ride": {"PULocationID": pu, "DOLocationID": do, "trip_distance": distance},
        "ride_id": ride_id,
    }


def sequence_number(position: int) -> str:
    """A sequence number shaped like Kinesis' (56 digits), increasing with ``position``."""
    return f"4959{position:052d}"


def kinesis_entry(
    payload: Any, position: int = 0, partition_key: str | None = None
) -> dict[str, Any]:
    """One ``Records[]`` entry as Lambda delivers it; ``payload`` is JSON-encoded unless bytes,
    and used as the base64 text itself when it is a ``str``."""
    if isinstance(payload, str):
        data = payload
    else:
        raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        data = base64.b64encode(raw).decode()
    return {
        "kinesis": {
            "kinesisSchemaVersion": "1.0",
            "partitionKey": partition_key if partition_key is not None else f"pk-{position}",
            "sequenceNumber": sequence_number(position),
            "data": data,
            "approximateArrivalTimestamp": 1704702169.792 + position,
        },
        "eventSource": "aws:kinesis",
        "eventVersion": "1.0",
        "eventID": f"shardId-000000000000:{sequence_number(position)}",
        "eventName": "aws:kinesis:record",
        "invokeIdentityArn": "arn:aws:iam::123456789012:role/ride-duration-lambda",
        "awsRegion": "us-east-1",
        "eventSourceARN": STREAM_ARN,
    }


def kinesis_event(*payloads: Any) -> dict[str, Any]:
    """A Lambda Kinesis event with one record per payload, in order."""
    return {
        "Records": [kinesis_entry(payload, position) for position, payload in enumerate(payloads)]
    }


def failures(*positions: int) -> dict[str, list[dict[str, str]]]:
    """The partial-batch response that reports the records at ``positions``."""
    return {"batchItemFailures": [{"itemIdentifier": sequence_number(p)} for p in positions]}


class InMemoryWriter:
    """A ``RecordWriter`` that keeps what it got, per stream; can be told to refuse records."""

    def __init__(self) -> None:
        self.written: dict[str, list[OutputRecord]] = {}
        self.calls: list[tuple[str, int]] = []
        # Streams whose every record is refused, and (stream, partition key) pairs refused.
        self.failing_streams: set[str] = set()
        self.failing_keys: set[tuple[str, str]] = set()

    def put(self, stream_name: str, records: Sequence[OutputRecord]) -> set[int]:
        self.calls.append((stream_name, len(records)))
        refused = set()
        for index, record in enumerate(records):
            if stream_name in self.failing_streams or (
                (stream_name, record.partition_key) in self.failing_keys
            ):
                refused.add(index)
            else:
                self.written.setdefault(stream_name, []).append(record)
        return refused

    def json_to(self, stream_name: str) -> list[Any]:
        """Decoded JSON bodies written to ``stream_name``."""
        return [json.loads(record.data) for record in self.written.get(stream_name, [])]

    def keys_to(self, stream_name: str) -> list[str]:
        """Partition keys of the records written to ``stream_name``."""
        return [record.partition_key for record in self.written.get(stream_name, [])]
