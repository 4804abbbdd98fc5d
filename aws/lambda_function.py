"""AWS Lambda ``lambda_function.lambda_handler``: Kinesis ride events in, predictions out.

The tutorial's AWS variant of the Cloud Function in ``main.py``, over the same core package,
``ride_predictor``: the same validation and features (``messages``), the same model call and
checks (``inference``), the same lazily loaded MLflow model and its refresh (``model_holder``;
``MODEL_URI`` may be ``s3://…``), the same log lines (``json_logging``) and the same output
message. Only the trigger and the output
differ: a Kinesis event source mapping delivers batches of records, and predictions go to the
Kinesis stream ``PREDICTIONS_STREAM_NAME``, one record per ride, partitioned by ``ride_id``.

Failures follow ``docs/design.md``, mapped onto Kinesis' partial batch responses
(``FunctionResponseTypes=["ReportBatchItemFailures"]`` on the event source mapping):

* permanent (bad base64, JSON, shape or values; a model output that is not a number in the bound
  of ``ride_duration``, or not one per record): one ERROR log line,
  the record goes to ``DEAD_LETTER_STREAM_NAME`` when it is set, and it is *not* reported, so
  the shard moves past it;
* transient (the model cannot be loaded yet, a prediction or dead-letter record not written
  after retries): the record's sequence number is returned in ``batchItemFailures`` and Lambda
  delivers it again.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgspec

from kinesis_event import KinesisRecord, batch_response, decode_data, kinesis_records
from kinesis_writer import MAX_PARTITION_KEY_CHARS, KinesisWriter, OutputRecord, RecordWriter
from lambda_settings import LambdaSettings, settings_from_env
from ride_predictor.errors import InvalidRideError, ModelLoadError
from ride_predictor.inference import predict_rides
from ride_predictor.json_logging import JsonLineFormatter, install_json_handler
from ride_predictor.loaders import LoadedModel
from ride_predictor.messages import (
    PredictionMessage,
    RideBatch,
    RideEvent,
    decode_message,
    encode_message,
)
from ride_predictor.model_holder import ModelHolder
from ride_predictor.registry import bound_mlflow_http_requests

# The dead-letter record carries the source data as delivered (base64). A Kinesis record may
# hold 1 MiB, whose base64 is a third larger than the 1 MiB a dead-letter record may hold, so
# longer data is cut to this many characters and flagged ``dlq_data_truncated``.
MAX_DEAD_LETTER_DATA_CHARS = 768 * 1024
_MAX_REASON_CHARS = 1024

# The same logger as the Cloud Function's service; the model holder's lines go to a child.
logger = logging.getLogger("ride_predictor")


def ride_event(raw: bytes, max_bytes: int) -> RideEvent:
    """Decode and validate one record's payload: one ride event, as ``docs/design.md`` defines it.

    A JSON array of rides (which the Pub/Sub function accepts) is refused: on Kinesis each ride
    is its own record, which is what lets a failure be reported for that ride alone.
    """
    decoded = decode_message(raw, max_bytes)
    if isinstance(decoded, RideBatch):
        raise InvalidRideError(
            "record data is a JSON array: a Kinesis record must hold one ride event (an object)",
            reason_class="schema",
        )
    return decoded


def prediction_record(message: PredictionMessage) -> OutputRecord:
    """The Kinesis record for one prediction, partitioned by its ride_id.

    The data is the Cloud Function's output message, byte for byte (``messages.encode_message``).
    Partitioning by ride_id keeps every prediction of a ride on one shard, in order; a ride_id
    is at most 256 characters (``messages.MAX_RIDE_ID_CHARS``), the partition key limit.
    """
    return OutputRecord(data=encode_message(message), partition_key=str(message.prediction.ride_id))


class DeadLetterEnvelope(msgspec.Struct):
    """The dead-letter record's data: the source record's data as delivered, and why.

    Kinesis records have no attributes, so the ``dlq_*`` attributes of the Pub/Sub dead-letter
    format become fields.
    """

    data: str | None  # the source record's base64 data, as delivered
    dlq_reason: str
    dlq_source_sequence_number: str
    dlq_source_partition_key: str
    dlq_source_event_source_arn: str
    dlq_source_arrival_timestamp: Any
    dlq_data_truncated: bool


def dead_letter_record(record: KinesisRecord, error: InvalidRideError) -> OutputRecord:
    """The dead-letter record: a ``DeadLetterEnvelope`` as compact JSON, like every output.

    It keeps the source's partition key, so rejected records of one key stay in order.
    """
    data = record.data if isinstance(record.data, str) else None
    envelope = DeadLetterEnvelope(
        data=data[:MAX_DEAD_LETTER_DATA_CHARS] if data is not None else None,
        dlq_reason=error.reason[:_MAX_REASON_CHARS],
        dlq_source_sequence_number=record.sequence_number,
        dlq_source_partition_key=record.partition_key,
        dlq_source_event_source_arn=record.event_source_arn,
        dlq_source_arrival_timestamp=record.approximate_arrival_timestamp,
        dlq_data_truncated=data is not None and len(data) > MAX_DEAD_LETTER_DATA_CHARS,
    )
    partition_key = record.partition_key or record.sequence_number
    return OutputRecord(
        # An arrival timestamp of a type JSON does not know is written as its text.
        data=msgspec.json.encode(envelope, enc_hook=str),
        partition_key=partition_key[:MAX_PARTITION_KEY_CHARS],
    )


@dataclass(frozen=True)
class _Accepted:
    """A record that passed validation, with its ride."""

    position: int
    record: KinesisRecord
    event: RideEvent


@dataclass(frozen=True)
class _Rejected:
    """A record that can never succeed, and why."""

    position: int
    record: KinesisRecord
    error: InvalidRideError
    ride_id: Any = None


class KinesisPredictionService:
    """Handles one Kinesis event: validate, predict, write, and report what failed."""

    def __init__(
        self, settings: LambdaSettings, model_holder: ModelHolder, writer: RecordWriter
    ) -> None:
        self.settings = settings
        self.model_holder = model_holder
        self.writer = writer
        self._message_log_level = logging.getLevelName(settings.message_log_level)

    def handle(self, event: Any, request_id: str = "") -> dict[str, list[dict[str, str]]]:
        """Handle a Kinesis event; return the ``batchItemFailures`` response.

        Raises ``kinesis_event.InvalidEventError`` for an event that is not from Kinesis. Any
        other exception (a bug, a model that raises) propagates too, before anything is written:
        Lambda then retries the whole batch, bisecting it when ``BisectBatchOnFunctionError``
        is on, so one poisonous record ends up alone and, after ``MaximumRetryAttempts``, in the
        event source mapping's on-failure destination.

        Afterwards, a model refresh that is due starts in the background.
        """
        try:
            return self._handle(event, request_id)
        finally:
            self.model_holder.refresh_work.start_if_due()

    def _handle(self, event: Any, request_id: str) -> dict[str, list[dict[str, str]]]:
        started = time.perf_counter()
        records = kinesis_records(event)
        accepted, rejected = self._validate(records)
        failed: set[str] = set()
        model: LoadedModel | None = None
        written = 0
        if accepted:
            try:
                model = self.model_holder.get()
            except ModelLoadError as error:
                logger.warning(
                    "model not loaded: the batch's valid records will be retried",
                    extra={"fields": {"reason": str(error), "records": len(accepted)}},
                )
                failed.update(item.record.sequence_number for item in accepted)
            else:
                predicted, unpredictable = self._predict(model, accepted)
                rejected.extend(unpredictable)
                not_written = self._write_predictions(model, predicted, started)
                failed |= not_written
                written = len(predicted) - len(not_written)
        failed |= self._dead_letter(sorted(rejected, key=lambda item: item.position))
        response = batch_response(records, failed)
        logger.info(
            "batch handled",
            extra={
                "fields": {
                    "aws_request_id": request_id,
                    "records": len(records),
                    "predictions_written": written,
                    "rejected": len(rejected),
                    "failed": len(response["batchItemFailures"]),
                    "model_version": model.version if model else None,
                    "latency_ms": _elapsed_ms(started),
                }
            },
        )
        return response

    def _validate(self, records: list[KinesisRecord]) -> tuple[list[_Accepted], list[_Rejected]]:
        accepted: list[_Accepted] = []
        rejected: list[_Rejected] = []
        max_bytes = self.settings.max_message_bytes
        for position, record in enumerate(records):
            try:
                event = ride_event(decode_data(record, max_bytes), max_bytes)
            except InvalidRideError as error:
                rejected.append(_Rejected(position, record, error, error.ride_id))
            else:
                accepted.append(_Accepted(position, record, event))
        return accepted, rejected

    def _predict(
        self, model: LoadedModel, accepted: list[_Accepted]
    ) -> tuple[list[tuple[_Accepted, PredictionMessage]], list[_Rejected]]:
        """Predict the whole batch in one model call. A prediction that is not a finite number
        in ``ride_duration``'s bound is permanent for its record; an output that is not one
        prediction per ride, for every record of the call."""
        predicted: list[tuple[_Accepted, PredictionMessage]] = []
        unpredictable: list[_Rejected] = []
        try:
            results = predict_rides(model, [item.event for item in accepted])
        except InvalidRideError as error:
            results = [error] * len(accepted)
        for item, result in zip(accepted, results, strict=True):
            if isinstance(result, InvalidRideError):
                unpredictable.append(
                    _Rejected(item.position, item.record, result, item.event.ride_id)
                )
            else:
                predicted.append((item, result))
        return predicted, unpredictable

    def _write_predictions(
        self,
        model: LoadedModel,
        predicted: list[tuple[_Accepted, PredictionMessage]],
        started: float,
    ) -> set[str]:
        """Write the predictions; return the sequence numbers of the records not written."""
        if not predicted:
            return set()
        not_written = self.writer.put(
            self.settings.predictions_stream_name,
            [prediction_record(message) for _, message in predicted],
        )
        failed: set[str] = set()
        for index, (item, message) in enumerate(predicted):
            fields: dict[str, Any] = {
                "sequence_number": item.record.sequence_number,
                "ride_id": item.event.ride_id,
                "model_version": model.version,
            }
            if index in not_written:
                failed.add(item.record.sequence_number)
                logger.warning(
                    "prediction not written: the record will be retried",
                    extra={"fields": {**fields, "stream": self.settings.predictions_stream_name}},
                )
            elif logger.isEnabledFor(self._message_log_level):
                fields.update(
                    ride_duration=message.prediction.ride_duration,
                    latency_ms=_elapsed_ms(started),
                )
                logger.log(self._message_log_level, "prediction written", extra={"fields": fields})
        return failed

    def _dead_letter(self, rejected: list[_Rejected]) -> set[str]:
        """Log every rejected record and write it to the dead-letter stream when one is set.

        Returns the sequence numbers whose dead-letter record could not be written: those are
        retried rather than lost.
        """
        for item in rejected:
            fields: dict[str, Any] = {
                "reason": item.error.reason,
                "sequence_number": item.record.sequence_number,
            }
            if item.ride_id is not None:
                fields["ride_id"] = item.ride_id
            logger.error("rejected record: %s", item.error.reason, extra={"fields": fields})
        stream = self.settings.dead_letter_stream_name
        if not rejected or stream is None:
            return set()
        not_written = self.writer.put(
            stream, [dead_letter_record(item.record, item.error) for item in rejected]
        )
        failed: set[str] = set()
        for index in sorted(not_written):
            sequence_number = rejected[index].record.sequence_number
            failed.add(sequence_number)
            logger.error(
                "dead-letter record not written: the record will be retried",
                extra={"fields": {"sequence_number": sequence_number, "stream": stream}},
            )
        return failed


def _elapsed_ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 2)


_service: KinesisPredictionService | None = None
_service_lock = threading.Lock()


def build_service(settings: LambdaSettings) -> KinesisPredictionService:
    """Wire the real model holder and Kinesis writer for ``settings`` (nothing is loaded yet)."""
    logger.setLevel(settings.log_level)
    install_json_handler(logger, JsonLineFormatter())
    bound_mlflow_http_requests(os.environ)
    return KinesisPredictionService(
        settings,
        ModelHolder.from_settings(settings),
        KinesisWriter(),
    )


def get_service() -> KinesisPredictionService:
    """The execution environment's service, built from the environment on first use.

    Kept across invocations, so the model and the boto3 client are loaded once per warm
    environment.
    """
    global _service
    with _service_lock:
        if _service is None:
            _service = build_service(settings_from_env())
        return _service


def lambda_handler(event: Mapping[str, Any], context: Any) -> dict[str, list[dict[str, str]]]:
    """Entry point for a Kinesis event source mapping with ``ReportBatchItemFailures``.

    Returns ``{"batchItemFailures": [{"itemIdentifier": <sequenceNumber>}, ...]}`` listing the
    records to deliver again (transient failures only).
    """
    request_id = getattr(context, "aws_request_id", "") if context is not None else ""
    return get_service().handle(event, request_id=str(request_id or ""))
