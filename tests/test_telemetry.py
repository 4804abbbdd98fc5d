"""telemetry.py: the in-process totals, the request-driven export, the reason classes.

Exporters here are hand-written recorders; the clock is the test's. The totals are pinned to
the OpenTelemetry SDK's own aggregation of the same values. The function itself over HTTP, with
the log-based metrics' filters applied to its real lines, is in tests/test_metric_sources.py.
"""

from __future__ import annotations

import atexit
import base64
import json
import re
import threading
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    InMemoryMetricReader,
    MetricExportResult,
    MetricsData,
)
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View
from opentelemetry.sdk.resources import Resource

import main
from devstack.processes import wait_until
from ride_predictor import telemetry
from ride_predictor.envelope import decode_data, pubsub_message
from ride_predictor.errors import REASON_CLASSES, InvalidRideError
from ride_predictor.messages import (
    RideBatch,
    build_prediction_message,
    decode_message,
    predictions_for,
)
from ride_predictor.model_holder import ModelHolder
from ride_predictor.settings import (
    DEFAULT_MAX_MESSAGE_BYTES,
    InvalidSettingError,
    settings_from_env,
)
from ride_predictor.telemetry import (
    DURATION_METRIC,
    MODEL_VERSION_LABEL,
    PREDICTIONS_METRIC,
    CloudMonitoringExporter,
    PredictionTelemetry,
    TelemetrySettings,
    telemetry_from_env,
)
from tests.conftest import RecordingPublisher, pubsub_event_data
from tests.monitoring_files import MONITORING, rendered_json
from tests.test_failures import INVALID_MESSAGES
from tests.test_main import INVALID_EVENT_DATA
from tests.test_refresh import FakeClock

WAIT_SECONDS = 30.0


def points(data: MetricsData | None) -> dict[str, dict[str, Any]]:
    """{metric name: {model_version: its data point}} of one collection."""
    found: dict[str, dict[str, Any]] = {}
    for resource_metrics in data.resource_metrics if data else []:
        for scope in resource_metrics.scope_metrics:
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    found.setdefault(metric.name, {})[point.attributes[MODEL_VERSION_LABEL]] = point
    return found


class RecordingExporter:
    """Keeps every export; can be made to wait for the test. Also an OpenTelemetry
    ``MetricExporter`` in shape (``timeout_millis``), for ``CloudMonitoringExporter``."""

    def __init__(self) -> None:
        self.exports: list[MetricsData] = []
        self.gate: threading.Event | None = None
        self.shut_down = False

    def export(self, metrics_data: MetricsData, timeout_millis: float = 0) -> Any:
        if self.gate is not None:
            assert self.gate.wait(timeout=WAIT_SECONDS)
        self.exports.append(metrics_data)
        return MetricExportResult.SUCCESS if timeout_millis else True

    def shutdown(self) -> None:
        self.shut_down = True


def exporting_telemetry(
    exporter: Any, clock: FakeClock, export_seconds: float = 60.0
) -> PredictionTelemetry:
    """Telemetry as deployed, with the test's exporter and clock."""
    return PredictionTelemetry(exporter, export_seconds=export_seconds, clock=clock)


def a_message(recorder: PredictionTelemetry, version: str, durations: list[int]) -> None:
    """What the service does per message: count its predictions, then start the due work."""
    recorder.record_predictions(version, durations)
    recorder.export_work.start_if_due()


# --- rejection reason classes -----------------------------------------------------------------


def _decode_event_data(event_data: Any) -> None:
    message = pubsub_message(event_data, "id")
    decode_message(decode_data(message.data), DEFAULT_MAX_MESSAGE_BYTES)


# The class each reason was given by its text before the classes were set where the errors are
# raised (issue 20): the same values, reason by reason.
_CLASS_OF_REASON: tuple[tuple[str, str], ...] = (
    ("envelope", r"^(event data holds no Pub/Sub message|Pub/Sub message has no data)"),
    ("base64", r"^message data is not valid base64"),
    ("too_large", r"^message is \d+ bytes, over the limit"),
    ("empty", r"^message data is empty"),
    ("utf8", r"^message data is not valid UTF-8"),
    ("json", r"^message data is not valid JSON"),
    ("too_deep", r"^JSON nests deeper than"),
    ("batch_too_large", r"^message holds \d+ rides, over the limit"),
    ("prediction", r"^the model (predicted|returned) "),
    ("event_type", r"^the event's type is "),
    ("schema", r"^(Expected |Object missing required field |Integer value out of range)"),
)


def _class_by_text(reason: str) -> str:
    return next((name for name, rule in _CLASS_OF_REASON if re.search(rule, reason)), "other")


def _every_rejection(json_logs: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(reason, reason_class) of every invalid message the failure tests send, and of the other
    raise sites; the service's own (a wrong event type, a batch over the limit) from its lines."""
    errors: list[InvalidRideError] = []
    for _, data in INVALID_MESSAGES:
        text = data if isinstance(data, str) else base64.b64encode(data).decode()
        try:
            decoded = decode_message(decode_data(text), DEFAULT_MAX_MESSAGE_BYTES)
        except InvalidRideError as error:
            errors.append(error)
            continue
        assert isinstance(decoded, RideBatch)
        errors += [e for e in decoded.events if isinstance(e, InvalidRideError)]
    for _, event_data, _ in INVALID_EVENT_DATA:
        with pytest.raises(InvalidRideError) as caught:
            _decode_event_data(event_data)
        errors.append(caught.value)
    with pytest.raises(InvalidRideError) as caught:
        decode_message(b" \n", DEFAULT_MAX_MESSAGE_BYTES)  # base64 of nothing is no data
    errors.append(caught.value)
    with pytest.raises(InvalidRideError) as caught:
        build_prediction_message("m", "1", 1, float("nan"))
    errors.append(caught.value)
    for output, rides in (("text", 1), ([1.0, 2.0], 1)):  # main: the model's whole output
        with pytest.raises(InvalidRideError) as caught:
            predictions_for(output, rides)
        errors.append(caught.value)
    with pytest.raises(InvalidRideError) as caught:
        build_prediction_message("m", "1", 1, "text")
    errors.append(caught.value)
    publisher = RecordingPublisher()
    settings = settings_from_env({"MODEL_URI": "m", "PROJECT_ID": "p", "DEAD_LETTER_STREAM": "d"})
    # Neither rejection below reaches the model: it is never loaded.
    service = main.PredictionService(settings, ModelHolder("m", "m"), publisher=publisher)
    service.handle({"message": {}}, "id", event_type="google.cloud.storage.object.v1.finalized")
    ride = {"ride": {"PULocationID": 1, "DOLocationID": 2, "trip_distance": 1.0}, "ride_id": 1}
    service.handle(pubsub_event_data([ride] * 1001))
    logged = [
        (line["reason"], line["reason_class"])
        for line in json_logs
        if line["message"].startswith("rejected message")
    ]
    assert len(logged) == 2
    return [(error.reason, error.reason_class) for error in errors] + logged


def test_every_known_rejection_has_the_class_its_reason_names(
    json_logs: list[dict[str, Any]],
) -> None:
    rejections = _every_rejection(json_logs)
    assert len(rejections) >= 45
    unclassified = [reason for reason, reason_class in rejections if reason_class == "other"]
    assert unclassified == []
    assert {reason_class for _, reason_class in rejections} == set(REASON_CLASSES) - {"other"}
    for reason, reason_class in rejections:
        assert reason_class == _class_by_text(reason), reason
    assert InvalidRideError("something nobody foresaw").reason_class == "other"


def test_the_log_metric_documents_every_reason_class() -> None:
    descriptor = rendered_json(MONITORING / "log-metrics" / "rejected-rides.json")
    (label,) = descriptor["metricDescriptor"]["labels"]
    for name in REASON_CLASSES:
        assert name in label["description"]


# --- the instruments ----------------------------------------------------------------------


def test_predictions_and_durations_are_counted_by_model_version() -> None:
    recorder = PredictionTelemetry()
    recorder.record_predictions("1", [12])
    recorder.record_predictions("1", [3, 250, 0])
    recorder.record_predictions("2", [40, -7])  # a negative prediction counts as 0 minutes
    recorder.record_predictions("2", [])  # a batch with no valid ride: nothing
    found = points(recorder.snapshot())
    assert {name: point.value for name, point in found[PREDICTIONS_METRIC].items()} == {
        "1": 4,
        "2": 2,
    }
    histogram = found[DURATION_METRIC]
    assert histogram["1"].count == 4
    assert histogram["1"].sum == 265
    assert tuple(histogram["1"].explicit_bounds) == telemetry.DURATION_BUCKETS_MINUTES
    # 0 and 3 fall in (.., 1] and (2, 3]; 12 in (10, 12]; 250 over the last bound.
    bounds = [*histogram["1"].explicit_bounds, "inf"]
    counts = dict(zip(bounds, histogram["1"].bucket_counts, strict=True))
    assert counts[1] == 1
    assert counts[3] == 1
    assert counts[12] == 1
    assert counts["inf"] == 1
    assert histogram["2"].sum == 40
    assert histogram["2"].bucket_counts[0] == 1


def test_the_totals_are_the_opentelemetry_sdks_aggregation_of_the_same_values() -> None:
    """The hand-kept totals (a bisect per ride, for speed) against the SDK's instruments."""
    reader = InMemoryMetricReader()
    provider = MeterProvider(
        metric_readers=[reader],
        views=[
            View(
                instrument_name=DURATION_METRIC,
                aggregation=ExplicitBucketHistogramAggregation(telemetry.DURATION_BUCKETS_MINUTES),
            )
        ],
        shutdown_on_exit=False,
    )
    meter = provider.get_meter("reference")
    counter = meter.create_counter(PREDICTIONS_METRIC)
    histogram = meter.create_histogram(DURATION_METRIC)
    recorder = PredictionTelemetry()
    # Every bound, its neighbours, zero, large and negative values, in two versions. The SDK
    # refuses a negative value; telemetry counts it as 0 minutes (see record_predictions).
    values = [b + d for b in telemetry.DURATION_BUCKETS_MINUTES for d in (-1, 0, 1)]
    values += [0, 1000, 10**6, -3]
    for version in ("1", "2"):
        for start in range(0, len(values), 7):
            message = values[start : start + 7]
            recorder.record_predictions(version, message)
            for value in message:
                histogram.record(max(value, 0), {MODEL_VERSION_LABEL: version})
            counter.add(len(message), {MODEL_VERSION_LABEL: version})
        values.reverse()
    ours, sdk = points(recorder.snapshot()), points(reader.get_metrics_data())
    provider.shutdown()
    for version in ("1", "2"):
        assert ours[PREDICTIONS_METRIC][version].value == sdk[PREDICTIONS_METRIC][version].value
        mine, theirs = ours[DURATION_METRIC][version], sdk[DURATION_METRIC][version]
        assert list(mine.bucket_counts) == list(theirs.bucket_counts)
        assert list(mine.explicit_bounds) == list(theirs.explicit_bounds)
        assert (mine.count, mine.sum) == (theirs.count, theirs.sum)


def test_recording_alone_starts_no_thread() -> None:
    before = threading.active_count()
    recorder = PredictionTelemetry(clock=FakeClock())
    for _ in range(100):
        recorder.record_predictions("1", [5])
    assert threading.active_count() == before


# --- the request-driven export ------------------------------------------------------------


def test_a_request_after_the_period_starts_one_background_export_of_the_totals() -> None:
    clock, exporter = FakeClock(), RecordingExporter()
    recorder = exporting_telemetry(exporter, clock)
    a_message(recorder, "1", [10, 20])
    clock.advance(59)
    a_message(recorder, "1", [30])
    assert exporter.exports == []  # not due yet: no export, no thread
    clock.advance(1)
    exporter.gate = threading.Event()
    a_message(recorder, "1", [40])  # due: starts the export and returns at once
    for _ in range(20):  # the export is under way: no second one starts
        a_message(recorder, "1", [50])
    exporter.gate.set()
    wait_until(lambda: len(exporter.exports) == 1, "the export", WAIT_SECONDS)
    assert points(exporter.exports[0])[PREDICTIONS_METRIC]["1"].value >= 4
    # The next period starts when the export ends; the next export carries the totals.
    wait_until(lambda: not recorder.export_work.running, "the export thread", WAIT_SECONDS)
    a_message(recorder, "1", [60])
    assert len(exporter.exports) == 1
    clock.advance(60)
    a_message(recorder, "2", [70])
    wait_until(lambda: len(exporter.exports) == 2, "the second export", WAIT_SECONDS)
    totals = points(exporter.exports[1])[PREDICTIONS_METRIC]
    assert totals["1"].value == 25
    assert totals["2"].value == 1


def test_a_failed_export_loses_nothing_and_never_reaches_the_request(
    json_logs: list[dict[str, Any]],
) -> None:
    clock = FakeClock()
    failures = []

    def broken_build(settings: TelemetrySettings) -> tuple[Any, Resource]:
        failures.append(settings)
        raise OSError("metadata server unreachable")

    settings = TelemetrySettings(project_id="p", service="fn")
    exporter = CloudMonitoringExporter(settings, build=broken_build)
    recorder = exporting_telemetry(exporter, clock)
    clock.advance(60)
    a_message(recorder, "1", [10])
    wait_until(
        lambda: failures and not recorder.export_work.running, "the failed export", WAIT_SECONDS
    )
    (warning,) = [line for line in json_logs if line["message"] == "metrics export failed"]
    assert warning["severity"] == "WARNING"
    assert "metadata server unreachable" in warning["reason"]

    recording = RecordingExporter()
    exporter._build = lambda settings: (recording, Resource({"job": settings.service or ""}))
    clock.advance(60)
    a_message(recorder, "1", [20])
    wait_until(lambda: recording.exports, "the next export", WAIT_SECONDS)
    (exported,) = recording.exports
    assert points(exported)[PREDICTIONS_METRIC]["1"].value == 2  # both rides: cumulative
    assert exported.resource_metrics[0].resource.attributes["job"] == "fn"


def test_close_flushes_the_last_totals_once() -> None:
    exporter = RecordingExporter()
    recorder = exporting_telemetry(exporter, FakeClock())
    recorder.record_predictions("1", [10])
    recorder.close()
    recorder.close()
    (exported,) = exporter.exports
    assert points(exported)[PREDICTIONS_METRIC]["1"].value == 1
    assert exporter.shut_down


def test_the_deployed_wiring_exports_only_on_cloud_run_with_no_timer_thread() -> None:
    assert telemetry_from_env("p", 60.0, {})._exporter is None
    turned_off = telemetry_from_env("p", 0.0, {"K_SERVICE": "fn"})
    assert turned_off._exporter is None

    exporters: list[RecordingExporter] = []

    def recording(settings: TelemetrySettings) -> RecordingExporter:
        assert settings == TelemetrySettings("p", 30.0, "fn", "fn-00001")
        exporters.append(RecordingExporter())
        return exporters[-1]

    threads = {thread.name for thread in threading.enumerate()}
    deployed = telemetry_from_env(
        "p",
        30.0,
        {"K_SERVICE": "fn", "K_REVISION": "fn-00001"},
        exporter=recording,
    )
    try:
        assert {thread.name for thread in threading.enumerate()} == threads
        deployed.record_predictions("1", [5])
    finally:
        atexit.unregister(deployed.close)
        deployed.close()  # what the exit hook does: the last totals go out
    assert len(exporters[0].exports) == 1


@pytest.mark.parametrize("raw", ["-1", "x", "inf", "nan"])
def test_an_invalid_export_period_is_refused(raw: str) -> None:
    environ = {"MODEL_URI": "gs://b/m", "PROJECT_ID": "p", "METRICS_EXPORT_SECONDS": raw}
    with pytest.raises(InvalidSettingError, match="METRICS_EXPORT_SECONDS"):
        settings_from_env(environ)


def test_the_export_period_defaults_to_a_minute_and_0_turns_it_off() -> None:
    required = {"MODEL_URI": "gs://b/m", "PROJECT_ID": "p"}
    assert settings_from_env(required).metrics_export_seconds == 60
    assert settings_from_env(required | {"METRICS_EXPORT_SECONDS": "0"}).metrics_export_seconds == 0


def test_the_resource_names_the_project_and_the_service() -> None:
    resource = telemetry.cloud_run_resource(TelemetrySettings("p", 60, "fn", "fn-00002"))
    assert resource.attributes["gcp.project_id"] == "p"
    assert resource.attributes["service.name"] == "fn"  # the prometheus_target's job
    assert resource.attributes["cloud.platform"] == "gcp_cloud_run"


def _names(exports: Sequence[MetricsData]) -> set[str]:
    return {name for data in exports for name in points(data)}


def test_the_otlp_request_encodes_both_metrics() -> None:
    """What goes over the wire: the OTLP protobuf of one export, decodable, both metrics."""
    from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics
    from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
        ExportMetricsServiceRequest,
    )

    recorder = PredictionTelemetry()
    recorder.record_predictions("1", [10, 20])
    data = recorder.snapshot()
    assert _names([data]) == {PREDICTIONS_METRIC, DURATION_METRIC}
    request = ExportMetricsServiceRequest.FromString(encode_metrics(data).SerializeToString())
    metrics = {m.name: m for m in request.resource_metrics[0].scope_metrics[0].metrics}
    assert metrics[PREDICTIONS_METRIC].sum.is_monotonic
    assert metrics[PREDICTIONS_METRIC].sum.aggregation_temporality == 2  # CUMULATIVE
    assert metrics[DURATION_METRIC].histogram.data_points[0].count == 2
    assert json.loads(json.dumps(list(metrics)))  # names are plain text


def test_the_deployed_exporter_posts_otlp_protobuf_with_the_instances_resource(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The real OTLP/HTTP exporter, built as deployed, against a local HTTP endpoint."""
    import google.auth
    from google.auth.credentials import Credentials
    from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
        ExportMetricsServiceRequest,
        ExportMetricsServiceResponse,
    )

    class FixedToken(Credentials):
        """Application Default Credentials' stand-in: a token, sent as the bearer."""

        def __init__(self) -> None:
            super().__init__()
            self.token = "test-token"

        def refresh(self, request: Any) -> None:
            self.token = "test-token"

    received: list[tuple[str, str, str, bytes]] = []

    class Endpoint(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append(
                (self.path, self.headers["Content-Type"], self.headers["Authorization"], body)
            )
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.end_headers()
            self.wfile.write(ExportMetricsServiceResponse().SerializeToString())

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Endpoint)
    serving = threading.Thread(target=server.serve_forever, daemon=True)
    serving.start()
    endpoint = f"http://127.0.0.1:{server.server_address[1]}/v1/metrics"
    monkeypatch.setattr(telemetry, "TELEMETRY_METRICS_ENDPOINT", endpoint)
    monkeypatch.setattr(google.auth, "default", lambda scopes=None: (FixedToken(), None))
    try:
        exporter = CloudMonitoringExporter(TelemetrySettings("p", 60.0, "fn", "fn-00003"))
        recorder = PredictionTelemetry(exporter, clock=FakeClock())
        recorder.record_predictions("7", [10, 30])
        recorder.close()
    finally:
        server.shutdown()
        server.server_close()
    ((path, content_type, authorization, body),) = received
    assert path == "/v1/metrics"
    assert content_type == "application/x-protobuf"
    assert authorization == "Bearer test-token"  # Google's credentials, through the session
    request = ExportMetricsServiceRequest.FromString(body)
    (resource_metrics,) = request.resource_metrics
    attributes = {a.key: a.value.string_value for a in resource_metrics.resource.attributes}
    assert attributes["gcp.project_id"] == "p"
    assert attributes["service.name"] == "fn"
    assert attributes["service.instance.id"]  # no metadata server here: one id per process
    metrics = {m.name: m for m in resource_metrics.scope_metrics[0].metrics}
    (count,) = metrics[PREDICTIONS_METRIC].sum.data_points
    assert count.as_int == 2
    assert count.attributes[0].key == MODEL_VERSION_LABEL
    (histogram,) = metrics[DURATION_METRIC].histogram.data_points
    assert (histogram.count, histogram.sum) == (2, 40)
