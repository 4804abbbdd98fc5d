"""``python -m monitoring.sizes``: the bytes behind docs/operations.md's observability costs.

Runs the real ``PredictionService`` in process (a constant model, a publisher that keeps what it
is given) and measures what each signal writes: the log lines the log-based metrics count, the
OTLP request of one metrics export and its Prometheus samples, and the prediction log's row.
Also measures, in fresh interpreters, the CPU time that the export thread's imports (the
OpenTelemetry SDK's data model, the OTLP exporter, the resource detector) add to importing
``main``'s dependencies (CPU time: the machine may be busy), and the CPU that counting adds per
message. Sizes are exact.
"""

from __future__ import annotations

import base64
import json
import logging
import statistics
import subprocess
import sys
import timeit
from collections.abc import Sequence
from typing import Any

from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics

import main
from ride_predictor import telemetry
from ride_predictor.json_logging import CloudLoggingFormatter
from ride_predictor.loaders import LoadedModel
from ride_predictor.model_holder import ModelHolder
from ride_predictor.publisher import OutgoingMessage

# What Cloud Logging adds around a Cloud Run stdout line (logName, resource with its four
# labels, timestamps, insertId, the instanceId label): a representative LogEntry, for its size.
_ENTRY_ENVELOPE = {
    "insertId": "6748a3f10009c2ab3e1d2c4f",
    "logName": "projects/my-project-id/logs/run.googleapis.com%2Fstdout",
    "receiveTimestamp": "2026-11-28T10:21:37.640553311Z",
    "resource": {
        "type": "cloud_run_revision",
        "labels": {
            "configuration_name": "ride-prediction",
            "location": "europe-west1",
            "project_id": "my-project-id",
            "revision_name": "ride-prediction-00007-xuz",
            "service_name": "ride-prediction",
        },
    },
    "timestamp": "2026-11-28T10:21:37.639467Z",
    "labels": {"instanceId": "0069c7a988" + "f" * 80},
}


class _KeepingPublisher:
    def __init__(self) -> None:
        self.messages: list[tuple[str, OutgoingMessage]] = []

    def publish(self, topic: str, messages: Sequence[OutgoingMessage]) -> list[str]:
        self.messages += [(topic, message) for message in messages]
        return [str(len(self.messages))] * len(messages)


def _event(data: bytes, message_id: str) -> dict[str, Any]:
    return {
        "message": {
            "data": base64.b64encode(data).decode(),
            "messageId": message_id,
            "publishTime": "2026-11-28T10:21:37.6Z",
            "attributes": {},
        },
        "subscription": "projects/my-project-id/subscriptions/taxi-ride-streaming-push",
    }


def _lines_of_a_run() -> tuple[list[dict[str, Any]], list[bytes], _KeepingPublisher, Any]:
    """Log lines (as JSON text) of a few messages through the real service."""
    version = "5b574e60a51b4c0d8b9a3c9d1e2f3a4b"  # an MLflow run id, the common version
    model = LoadedModel(
        "ride_duration_prediction_model", version, "x", "test", lambda r: [18.2] * len(r)
    )
    publisher, counts = _KeepingPublisher(), telemetry.PredictionTelemetry()
    settings = main.Settings(
        model_uri="x", project_id="my-project-id", dead_letter_stream="ride-prediction-dead-letter"
    )
    service = main.PredictionService(
        settings,
        ModelHolder("x", "m", load=lambda *_: model),
        publisher,
        counts,
    )
    texts: list[bytes] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            texts.append(self.format(record).encode())

    handler = Keep()
    handler.setFormatter(CloudLoggingFormatter())
    function_logger = logging.getLogger("ride_predictor")
    stdout_handlers = list(function_logger.handlers)
    for stdout_handler in stdout_handlers:
        function_logger.removeHandler(stdout_handler)
    function_logger.addHandler(handler)
    try:
        ride = {"ride": {"PULocationID": 130, "DOLocationID": 205, "trip_distance": 3.66}}
        service.handle(
            _event(json.dumps({**ride, "ride_id": 123456789}).encode(), "1234567890123456")
        )
        bad = {"ride": {**ride["ride"], "PULocationID": 0}, "ride_id": 123456790}
        service.handle(_event(json.dumps(bad).encode(), "1234567890123457"))
    finally:
        function_logger.removeHandler(handler)
        for stdout_handler in stdout_handlers:
            function_logger.addHandler(stdout_handler)
    return [json.loads(text) for text in texts], texts, publisher, counts


def _entry_bytes(line: dict[str, Any]) -> int:
    payload = {k: v for k, v in line.items() if k not in ("severity", "time")}
    entry = {**_ENTRY_ENVELOPE, "severity": line["severity"], "jsonPayload": payload}
    return len(json.dumps(entry, separators=(",", ":")).encode())


def _import_seconds(modules: str) -> float:
    code = f"import time; t = time.process_time(); import {modules}; print(time.process_time() - t)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    return float(result.stdout)


def measure() -> dict[str, Any]:
    """Every figure docs/operations.md quotes."""
    lines, texts, publisher, counts = _lines_of_a_run()
    by_message = {
        line["message"].split(":")[0]: (line, text) for line, text in zip(lines, texts, strict=True)
    }
    rejected, rejected_text = by_message["rejected message"]
    published, published_text = by_message["prediction published"]
    export_one = encode_metrics(counts.snapshot()).SerializeToString()
    # During a rollout two versions serve at once: two series of each metric.
    two = telemetry.PredictionTelemetry()
    two.record_predictions("1", [10])
    two.record_predictions("2", [12])
    export_two = encode_metrics(two.snapshot()).SerializeToString()
    samples_per_version = 1 + (len(telemetry.DURATION_BUCKETS_MINUTES) + 1) + 2
    ((_topic, prediction),) = [
        (t, m) for t, m in publisher.messages if t.endswith("ride-predictions")
    ]
    attribute_bytes = sum(
        len(k.encode()) + len(v.encode()) for k, v in prediction.attributes.items()
    )
    # The BigQuery row: the metadata columns (subscription name, a 16-digit message id, the
    # publish time, the attributes as JSON text) and the message's columns kept.
    subscription = "projects/my-project-id/subscriptions/ride-predictions-bigquery"
    body = json.loads(prediction.data)
    row_bytes = (
        len(subscription) + 2 + 16 + 2 + 8
        + len(json.dumps(prediction.attributes, separators=(",", ":")))
        + len(body["model"]) + 2 + len(body["version"]) + 2 + 8
    )  # fmt: skip
    base = "functions_framework, google.cloud.pubsub_v1, msgspec"
    sdk = f"{base}, opentelemetry.sdk.metrics.export, opentelemetry.sdk.resources"
    exporter = (
        f"{sdk}, opentelemetry.exporter.otlp.proto.http.metric_exporter, "
        "opentelemetry.resourcedetector.gcp_resource_detector, google.auth.transport.requests"
    )
    # Interleaved rounds, medians: the three variants see the same machine load.
    rounds = [[_import_seconds(modules) for modules in (base, sdk, exporter)] for _ in range(7)]
    base_seconds, with_sdk, with_exporter = (
        statistics.median(column) for column in zip(*rounds, strict=True)
    )
    counting = telemetry.PredictionTelemetry()
    single = min(
        timeit.repeat(lambda: counting.record_predictions("1", [12]), number=20_000, repeat=5)
    )
    batch = min(
        timeit.repeat(lambda: counting.record_predictions("1", [12] * 1000), number=50, repeat=5)
    )
    return {
        "counting microseconds per single-ride message": round(single / 20_000 * 1e6, 2),
        "counting microseconds per ride of a 1,000-ride message": round(batch / 50 / 1000 * 1e6, 3),
        "rejected line stdout bytes": len(rejected_text),
        "rejected line LogEntry bytes (estimate)": _entry_bytes(rejected),
        "reason_class field bytes": len(json.dumps({"reason_class": rejected["reason_class"]})) - 1,
        "per-message INFO line stdout bytes": len(published_text),
        "per-message INFO line LogEntry bytes (estimate)": _entry_bytes(published),
        "OTLP export request bytes, 1 model version": len(export_one),
        "OTLP export request bytes, 2 model versions": len(export_two),
        "Prometheus samples per export per model version": samples_per_version,
        "prediction message data bytes": len(prediction.data),
        "prediction message attribute bytes": attribute_bytes,
        "prediction log row bytes (estimate)": row_bytes,
        "import seconds: main's libraries": round(base_seconds, 3),
        "import seconds: + OpenTelemetry SDK's data model (export thread)": round(with_sdk, 3),
        "import seconds: + OTLP exporter, detector, google.auth (export thread)": round(
            with_exporter, 3
        ),
    }


if __name__ == "__main__":
    for name, value in measure().items():
        print(f"{name}: {value}")
