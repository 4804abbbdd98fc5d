"""Write records to a Kinesis data stream with ``PutRecords``, retrying only what failed.

``PutRecords`` is not all-or-nothing: the call succeeds while single records inside it fail
(``FailedRecordCount``, a per-record ``ErrorCode`` such as
``ProvisionedThroughputExceededException``). ``KinesisWriter.put`` sends the records in calls
within the API's limits, resends just the failed ones with bounded, jittered backoff, and returns
the positions of those that never got in, so the caller can report exactly those as failed.
Call-level errors (throttling, timeouts, 5xx) are retried by botocore itself; a call that still
fails after those marks all of its records as failed.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

# PutRecords limits (Kinesis Data Streams quotas).
MAX_RECORDS_PER_CALL = 500
MAX_BYTES_PER_CALL = 5 * 1024 * 1024
MAX_RECORD_BYTES = 1024 * 1024  # data plus partition key
MAX_PARTITION_KEY_CHARS = 256

DEFAULT_MAX_ATTEMPTS = 4
DEFAULT_BASE_DELAY_SECONDS = 0.1
DEFAULT_MAX_DELAY_SECONDS = 1.0

logger = logging.getLogger("ride_predictor.kinesis_writer")


@dataclass(frozen=True)
class OutputRecord:
    """One record to write: its bytes and partition key, checked against Kinesis' limits.

    An invalid record would make Kinesis reject the whole call it travels in, so it is refused
    here, where it is built, with ``ValueError``.
    """

    data: bytes
    partition_key: str

    def __post_init__(self) -> None:
        if not 0 < len(self.partition_key) <= MAX_PARTITION_KEY_CHARS:
            raise ValueError(f"a partition key has 1 to {MAX_PARTITION_KEY_CHARS} characters")
        if self.size > MAX_RECORD_BYTES:
            raise ValueError(f"a record is {self.size} bytes, over {MAX_RECORD_BYTES}")

    @property
    def size(self) -> int:
        """The bytes the record counts for against Kinesis' per-record and per-call limits."""
        return len(self.data) + len(self.partition_key.encode())


class RecordWriter(Protocol):
    """What the handler needs from a stream writer; unit tests give it an in-memory one."""

    def put(self, stream_name: str, records: Sequence[OutputRecord]) -> set[int]:
        """Write ``records`` to ``stream_name``; return the indices of those not written."""
        ...


def chunk_indices(
    records: Sequence[OutputRecord],
    max_records: int = MAX_RECORDS_PER_CALL,
    max_bytes: int = MAX_BYTES_PER_CALL,
) -> list[list[int]]:
    """Split record positions, in order, into groups that each fit one ``PutRecords`` call."""
    chunks: list[list[int]] = []
    current: list[int] = []
    current_bytes = 0
    for index, record in enumerate(records):
        if current and (len(current) >= max_records or current_bytes + record.size > max_bytes):
            chunks.append(current)
            current, current_bytes = [], 0
        current.append(index)
        current_bytes += record.size
    if current:
        chunks.append(current)
    return chunks


def _default_client() -> Any:
    import boto3
    from botocore.config import Config

    # Bounded waits: a hung connection must not eat the Lambda's whole timeout. botocore's
    # standard retry mode already retries throttled and failed calls (not failed records).
    return boto3.client(
        "kinesis",
        config=Config(
            connect_timeout=5,
            read_timeout=10,
            retries={"mode": "standard", "max_attempts": 3},
        ),
    )


class KinesisWriter:
    """Writes to any stream through one lazily created boto3 Kinesis client.

    boto3 finds the region, the credentials and ``AWS_ENDPOINT_URL_KINESIS`` in the environment.
    """

    def __init__(
        self,
        client_factory: Callable[[], Any] = _default_client,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        base_delay_seconds: float = DEFAULT_BASE_DELAY_SECONDS,
        max_delay_seconds: float = DEFAULT_MAX_DELAY_SECONDS,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self.max_attempts = max_attempts
        self.base_delay_seconds = base_delay_seconds
        self.max_delay_seconds = max_delay_seconds
        self._client_factory = client_factory
        self._sleep = sleep
        self._client: Any = None
        self._lock = threading.Lock()

    def _get_client(self) -> Any:
        with self._lock:
            if self._client is None:
                self._client = self._client_factory()
            return self._client

    def backoff_seconds(self, attempt: int) -> float:
        """The pause after failed attempt ``attempt`` (1-based): full jitter, capped."""
        ceiling = min(self.max_delay_seconds, self.base_delay_seconds * 2 ** (attempt - 1))
        return random.uniform(0, ceiling)  # noqa: S311 - jitter, not security

    def put(self, stream_name: str, records: Sequence[OutputRecord]) -> set[int]:
        """Write ``records`` to ``stream_name``; return the indices that could not be written.

        Records refused one by one are resent up to ``max_attempts`` times in all; a call that
        raises (after botocore's own retries) fails all of its records at once, without resending.
        """
        not_written: set[int] = set()
        pending = list(range(len(records)))
        for attempt in range(1, self.max_attempts + 1):
            refused: list[int] = []
            error_codes: Counter[str] = Counter()
            for chunk in chunk_indices([records[index] for index in pending]):
                indices = [pending[position] for position in chunk]
                try:
                    response = self._get_client().put_records(
                        StreamName=stream_name,
                        Records=[
                            {"Data": records[i].data, "PartitionKey": records[i].partition_key}
                            for i in indices
                        ],
                    )
                except Exception as error:  # any failure of the call: these records are not in
                    logger.error(
                        "put_records failed",
                        extra={
                            "fields": {
                                "stream": stream_name,
                                "records": len(indices),
                                "reason": repr(error),
                            }
                        },
                    )
                    not_written.update(indices)
                    continue
                if not response.get("FailedRecordCount"):
                    continue
                for index, result in zip(indices, response["Records"], strict=True):
                    if result.get("ErrorCode"):
                        refused.append(index)
                        error_codes[result["ErrorCode"]] += 1
            if not refused:
                break
            final = attempt == self.max_attempts
            logger.warning(
                "put_records refused some records",
                extra={
                    "fields": {
                        "stream": stream_name,
                        "attempt": attempt,
                        "refused": len(refused),
                        "error_codes": dict(error_codes),
                        "will_retry": not final,
                    }
                },
            )
            if final:
                not_written.update(refused)
                break
            self._sleep(self.backoff_seconds(attempt))
            pending = refused
        return not_written
