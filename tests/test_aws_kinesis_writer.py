"""aws/kinesis_writer.py against a hand-written fake of boto3's Kinesis client."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from kinesis_writer import (
    MAX_BYTES_PER_CALL,
    MAX_RECORD_BYTES,
    MAX_RECORDS_PER_CALL,
    KinesisWriter,
    OutputRecord,
    chunk_indices,
)

THROTTLED = "ProvisionedThroughputExceededException"


class FakeKinesisClient:
    """Answers ``put_records`` like Kinesis: per-record results, refusals chosen by a rule.

    ``refuse(call_number, partition_key)`` returns an error code to refuse that record in that
    call (1-based), or None to accept it; ``raise_on_call`` makes that call raise instead.
    """

    def __init__(
        self,
        refuse: Callable[[int, str], str | None] = lambda call, key: None,
        raise_on_call: set[int] | None = None,
    ) -> None:
        self.refuse = refuse
        self.raise_on_call = raise_on_call or set()
        self.calls: list[tuple[str, list[str]]] = []
        self.stored: list[tuple[str, bytes]] = []

    def put_records(self, StreamName: str, Records: list[dict[str, Any]]) -> dict[str, Any]:  # noqa: N803 - boto3's names
        assert len(Records) <= MAX_RECORDS_PER_CALL
        assert sum(len(r["Data"]) + len(r["PartitionKey"].encode()) for r in Records) <= (
            MAX_BYTES_PER_CALL
        )
        self.calls.append((StreamName, [record["PartitionKey"] for record in Records]))
        call = len(self.calls)
        if call in self.raise_on_call:
            raise ConnectionError("endpoint unreachable")
        results = []
        for record in Records:
            code = self.refuse(call, record["PartitionKey"])
            if code:
                results.append({"ErrorCode": code, "ErrorMessage": "Rate exceeded for shard"})
            else:
                self.stored.append((record["PartitionKey"], record["Data"]))
                results.append({"SequenceNumber": str(len(self.stored)), "ShardId": "shard-0"})
        failed = sum(1 for result in results if "ErrorCode" in result)
        return {"FailedRecordCount": failed, "Records": results}


def records(count: int, size: int = 10) -> list[OutputRecord]:
    return [OutputRecord(b"x" * size, f"k{index}") for index in range(count)]


def make_writer(client: FakeKinesisClient, **options: Any) -> tuple[KinesisWriter, list[float]]:
    sleeps: list[float] = []
    writer = KinesisWriter(client_factory=lambda: client, sleep=sleeps.append, **options)
    return writer, sleeps


def test_all_records_written_in_one_call() -> None:
    client = FakeKinesisClient()
    writer, sleeps = make_writer(client)

    assert writer.put("out", records(3)) == set()

    assert client.calls == [("out", ["k0", "k1", "k2"])]
    assert [key for key, _ in client.stored] == ["k0", "k1", "k2"]
    assert sleeps == []


def test_only_refused_records_are_resent_after_a_backoff() -> None:
    client = FakeKinesisClient(
        refuse=lambda call, key: THROTTLED if call == 1 and key in {"k1", "k3"} else None
    )
    writer, sleeps = make_writer(client, base_delay_seconds=0.1)

    assert writer.put("out", records(4)) == set()

    assert client.calls == [("out", ["k0", "k1", "k2", "k3"]), ("out", ["k1", "k3"])]
    assert sorted(key for key, _ in client.stored) == ["k0", "k1", "k2", "k3"]
    (pause,) = sleeps
    assert 0 <= pause <= 0.1


def test_records_refused_every_time_are_returned_after_the_last_attempt() -> None:
    client = FakeKinesisClient(refuse=lambda call, key: "InternalFailure" if key == "k2" else None)
    writer, sleeps = make_writer(client, max_attempts=3)

    assert writer.put("out", records(4)) == {2}

    assert [keys for _, keys in client.calls] == [["k0", "k1", "k2", "k3"], ["k2"], ["k2"]]
    assert len(sleeps) == 2


def test_a_call_that_raises_fails_its_records_without_resending() -> None:
    client = FakeKinesisClient(raise_on_call={1})
    writer, sleeps = make_writer(client)

    assert writer.put("out", records(MAX_RECORDS_PER_CALL + 2)) == set(range(MAX_RECORDS_PER_CALL))

    assert [len(keys) for _, keys in client.calls] == [MAX_RECORDS_PER_CALL, 2]
    assert [key for key, _ in client.stored] == [
        f"k{MAX_RECORDS_PER_CALL}",
        f"k{MAX_RECORDS_PER_CALL + 1}",
    ]
    assert sleeps == []


def test_client_creation_failure_fails_every_record() -> None:
    def no_client() -> Any:
        raise RuntimeError("no region configured")

    writer = KinesisWriter(client_factory=no_client, sleep=lambda _: None)

    assert writer.put("out", records(2)) == {0, 1}


def test_the_client_is_created_once_and_reused() -> None:
    created: list[FakeKinesisClient] = []

    def factory() -> FakeKinesisClient:
        created.append(FakeKinesisClient())
        return created[-1]

    writer = KinesisWriter(client_factory=factory)
    writer.put("a", records(1))
    writer.put("b", records(1))

    assert len(created) == 1


def test_large_batches_are_split_at_500_records() -> None:
    client = FakeKinesisClient()
    writer, _ = make_writer(client)

    assert writer.put("out", records(1201)) == set()

    assert [len(keys) for _, keys in client.calls] == [500, 500, 201]
    assert len(client.stored) == 1201


def test_chunks_respect_the_5_mib_per_call_limit() -> None:
    big = records(12, size=MAX_RECORD_BYTES - 10)

    chunks = chunk_indices(big)

    assert [len(chunk) for chunk in chunks] == [5, 5, 2]
    assert [index for chunk in chunks for index in chunk] == list(range(12))


def test_chunk_indices_of_nothing_is_empty() -> None:
    assert chunk_indices([]) == []


def test_backoff_grows_and_is_capped() -> None:
    writer = KinesisWriter(base_delay_seconds=0.1, max_delay_seconds=0.3)

    for attempt, ceiling in [(1, 0.1), (2, 0.2), (3, 0.3), (8, 0.3)]:
        assert all(0 <= writer.backoff_seconds(attempt) <= ceiling for _ in range(50))


@pytest.mark.parametrize(
    ("data", "key", "message"),
    [
        (b"x", "", "partition key"),
        (b"x", "k" * 257, "partition key"),
        (b"x" * MAX_RECORD_BYTES, "k", "over"),
    ],
    ids=["empty-key", "long-key", "too-big"],
)
def test_records_kinesis_would_reject_cannot_be_built(data: bytes, key: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        OutputRecord(data, key)


def test_largest_allowed_record_can_be_built() -> None:
    assert OutputRecord(b"x" * (MAX_RECORD_BYTES - 256), "k" * 256).size == MAX_RECORD_BYTES


def test_at_least_one_attempt_is_required() -> None:
    with pytest.raises(ValueError, match="max_attempts"):
        KinesisWriter(max_attempts=0)
