"""Read the Kinesis event Lambda passes to the handler, and build its partial-batch response.

Pure functions only. The event is ``{"Records": [{"kinesis": {"data": <base64>,
"sequenceNumber": ..., "partitionKey": ..., "approximateArrivalTimestamp": ...},
"eventSourceARN": ..., "eventID": ...}, ...]}``; all records of one event come from one shard,
in order.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ride_predictor.errors import InvalidRideError
from ride_predictor.messages import decode_base64


class InvalidEventError(ValueError):
    """The event is not a Kinesis event (a wiring error, not a bad record: the handler raises)."""


@dataclass(frozen=True)
class KinesisRecord:
    """One record of a Kinesis event: what the handler uses, as delivered."""

    sequence_number: str
    data: Any
    partition_key: str
    event_source_arn: str
    approximate_arrival_timestamp: Any


def kinesis_records(event: Any) -> list[KinesisRecord]:
    """The records of a Kinesis event, in delivery order.

    Raises ``InvalidEventError`` when ``event`` has no ``Records`` list or a record has no
    ``kinesis.sequenceNumber``: Lambda never sends such an event from a Kinesis stream, and
    without a sequence number a record can be neither reported as failed nor traced.
    """
    records = event.get("Records") if isinstance(event, Mapping) else None
    if not isinstance(records, list):
        raise InvalidEventError("the event has no Records list: not a Kinesis event")
    parsed = []
    for position, record in enumerate(records):
        kinesis = record.get("kinesis") if isinstance(record, Mapping) else None
        sequence_number = kinesis.get("sequenceNumber") if isinstance(kinesis, Mapping) else None
        if not isinstance(kinesis, Mapping) or not isinstance(sequence_number, str):
            raise InvalidEventError(f"Records[{position}] has no kinesis.sequenceNumber")
        if not sequence_number:
            raise InvalidEventError(f"Records[{position}] has no kinesis.sequenceNumber")
        parsed.append(
            KinesisRecord(
                sequence_number=sequence_number,
                data=kinesis.get("data"),
                partition_key=str(kinesis.get("partitionKey") or ""),
                event_source_arn=str(record.get("eventSourceARN") or ""),
                approximate_arrival_timestamp=kinesis.get("approximateArrivalTimestamp"),
            )
        )
    return parsed


def decode_data(record: KinesisRecord, max_bytes: int) -> bytes:
    """The record's payload bytes, from strict base64; ``InvalidRideError`` if unusable."""
    data = record.data
    if not isinstance(data, str) or not data:
        raise InvalidRideError("Kinesis record has no data", reason_class="envelope")
    # Reject before decoding: base64 is 4 characters per 3 bytes.
    if len(data) > (max_bytes + 2) // 3 * 4:
        raise InvalidRideError(
            f"record data is over the limit of {max_bytes} bytes", reason_class="too_large"
        )
    return decode_base64(data, "record data")


def batch_response(
    records: Iterable[KinesisRecord], failed_sequence_numbers: set[str]
) -> dict[str, list[dict[str, str]]]:
    """The ``ReportBatchItemFailures`` response: the failed records, in delivery order.

    Lambda restarts the shard at the lowest failed sequence number, so only records that a retry
    can help (transient failures) may be listed; an empty list acknowledges the whole batch.
    """
    return {
        "batchItemFailures": [
            {"itemIdentifier": record.sequence_number}
            for record in records
            if record.sequence_number in failed_sequence_numbers
        ]
    }
