"""Streams and uploads on a local AWS API (moto): what tests and demos do besides the Lambda."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

from devstack.processes import wait_until

STREAM_READY_TIMEOUT_SECONDS = 30.0


def create_stream(kinesis: Any, name: str, shard_count: int = 1) -> None:
    """Create a Kinesis data stream and wait until it is ACTIVE (polled, not slept for)."""
    kinesis.create_stream(StreamName=name, ShardCount=shard_count)
    wait_until(
        lambda: (
            kinesis.describe_stream_summary(StreamName=name)["StreamDescriptionSummary"][
                "StreamStatus"
            ]
            == "ACTIVE"
        ),
        f"Kinesis stream {name}",
        STREAM_READY_TIMEOUT_SECONDS,
    )


def read_stream(kinesis: Any, name: str) -> list[dict[str, Any]]:
    """Every record in the stream, shard by shard from the oldest, via ``get_records``."""
    records: list[dict[str, Any]] = []
    for shard in kinesis.list_shards(StreamName=name)["Shards"]:
        iterator = kinesis.get_shard_iterator(
            StreamName=name, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
        )["ShardIterator"]
        while iterator:
            response = kinesis.get_records(ShardIterator=iterator, Limit=1000)
            records.extend(response["Records"])
            # An open shard always hands back a next iterator; stop once caught up.
            if not response["Records"] or response.get("MillisBehindLatest", 0) == 0:
                break
            iterator = response.get("NextShardIterator")
    return records


def read_as_lambda_event(kinesis: Any, name: str) -> dict[str, Any]:
    """The stream's records shaped as the Lambda event a Kinesis event source mapping sends.

    Every field the mapping fills is filled from the real records: base64 data, sequence number,
    partition key, arrival time, the stream's ARN and the event id ``<shard id>:<sequence>``.
    A real mapping sends one event per shard, so use a one-shard stream to get a faithful event.
    """
    summary = kinesis.describe_stream_summary(StreamName=name)["StreamDescriptionSummary"]
    region = kinesis.meta.region_name
    entries = []
    for shard in kinesis.list_shards(StreamName=name)["Shards"]:
        iterator = kinesis.get_shard_iterator(
            StreamName=name, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
        )["ShardIterator"]
        for record in kinesis.get_records(ShardIterator=iterator, Limit=10000)["Records"]:
            entries.append(
                {
                    "kinesis": {
                        "kinesisSchemaVersion": "1.0",
                        "partitionKey": record["PartitionKey"],
                        "sequenceNumber": record["SequenceNumber"],
                        "data": base64.b64encode(record["Data"]).decode(),
                        "approximateArrivalTimestamp": record[
                            "ApproximateArrivalTimestamp"
                        ].timestamp(),
                    },
                    "eventSource": "aws:kinesis",
                    "eventVersion": "1.0",
                    "eventID": f"{shard['ShardId']}:{record['SequenceNumber']}",
                    "eventName": "aws:kinesis:record",
                    "awsRegion": region,
                    "eventSourceARN": summary["StreamARN"],
                }
            )
    return {"Records": entries}


def upload_directory(s3: Any, local_dir: Path, s3_uri: str) -> str:
    """Upload every file under ``local_dir`` to ``s3://bucket/prefix``, creating the bucket."""
    bucket, _, prefix = s3_uri.removeprefix("s3://").partition("/")
    existing = {entry["Name"] for entry in s3.list_buckets().get("Buckets", [])}
    if bucket not in existing:
        s3.create_bucket(Bucket=bucket)
    for path in sorted(local_dir.rglob("*")):
        if path.is_file():
            key = f"{prefix.rstrip('/')}/{path.relative_to(local_dir).as_posix()}"
            s3.upload_file(str(path), bucket, key)
    return s3_uri
