"""The function's own metrics: rides predicted and the predicted durations, by model version.

What only the function knows, and a log line per ride would make expensive, is counted in
process (``ride_predictions_total``, ``predicted_ride_duration_minutes``: every ride of a batch
included) and written to Cloud Monitoring through its OTLP endpoint (Google Cloud Managed
Service for Prometheus) with OpenTelemetry's data model and exporter. The rest comes from lines
the function writes anyway, through log-based metrics (a rejection's ERROR line carries its
``reason_class``: ``errors.REASON_CLASSES``). ``docs/operations.md`` says why, and what each
costs.

Counting is a lock and a bisect per ride (about 0.2 microseconds), kept by hand: the
OpenTelemetry SDK's instruments cost 5 to 20 microseconds per recorded value, which would double
the CPU of a 1,000-ride message. ``tests/test_telemetry.py`` pins the totals to the SDK's own
aggregation. Under Cloud Run's request-based billing the CPU is throttled between requests, so
no timer thread exports: the export is periodic background work (``export_work``) that the
service starts when due, after a message, as it does the model refresh; the totals are
cumulative, so an export that is late or fails loses nothing (the next one carries the totals).
The last totals are flushed at process exit. Outside Cloud Run (``K_SERVICE`` unset: tests, the
local stack) nothing is exported.
"""

from __future__ import annotations

import atexit
import bisect
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol

from ride_predictor.background import PeriodicWork

if TYPE_CHECKING:  # imported when a snapshot is taken: the cold start does not pay for them
    from opentelemetry.sdk.metrics.export import MetricsData
    from opentelemetry.sdk.resources import Resource

logger = logging.getLogger("ride_predictor.telemetry")

# Metric names as Managed Service for Prometheus stores them: prometheus.googleapis.com/<name>/
# counter and .../histogram. Only [a-z_] and a counter already ending in _total, so no
# conversion rule can change them (docs/design.md, "Signals").
PREDICTIONS_METRIC = "ride_predictions_total"
DURATION_METRIC = "predicted_ride_duration_minutes"
MODEL_VERSION_LABEL = "model_version"
# Bucket upper bounds of the predicted-duration histogram, in minutes: a model that shifts its
# predictions by a few minutes moves rides between buckets (the course model predicts 5 to 60).
DURATION_BUCKETS_MINUTES: tuple[float, ...] = (
    1, 2, 3, 5, 7, 10, 12, 15, 20, 25, 30, 40, 50, 60, 90, 120,
)  # fmt: skip

DEFAULT_EXPORT_SECONDS = 60.0
TELEMETRY_METRICS_ENDPOINT = "https://telemetry.googleapis.com/v1/metrics"
EXPORT_TIMEOUT_SECONDS = 10.0
_MONITORING_WRITE_SCOPE = "https://www.googleapis.com/auth/monitoring.write"
# A histogram point's min and max are not kept (the buckets carry the shape): None leaves them
# out of the OTLP message, though the SDK's dataclass declares them float.
_NOT_KEPT: Any = None


@dataclass(frozen=True)
class TelemetrySettings:
    """Whether and how often this instance writes its metrics (see ``telemetry_settings``)."""

    project_id: str
    export_seconds: float = DEFAULT_EXPORT_SECONDS
    service: str | None = None  # K_SERVICE: set by Cloud Run, and only there
    revision: str | None = None

    @property
    def exports(self) -> bool:
        """Only a function on Cloud Run writes to Cloud Monitoring, and only if not turned off."""
        return self.service is not None and self.export_seconds > 0


def telemetry_settings(
    project_id: str, export_seconds: float, environ: Mapping[str, str]
) -> TelemetrySettings:
    """The export period (``METRICS_EXPORT_SECONDS``, read with the other settings in
    ``settings``) with what Cloud Run tells the instance: ``K_SERVICE``, ``K_REVISION``."""
    return TelemetrySettings(
        project_id=project_id,
        export_seconds=export_seconds,
        service=environ.get("K_SERVICE") or None,
        revision=environ.get("K_REVISION") or None,
    )


class MetricsExporter(Protocol):
    """Where snapshots go: ``CloudMonitoringExporter`` when deployed, a recorder in tests."""

    def export(self, metrics_data: MetricsData) -> bool:
        """Send the snapshot; False if it could not be sent (the next one carries the totals)."""

    def shutdown(self) -> None:
        """Release what the exporter holds (an HTTP session)."""


@dataclass
class _VersionTotals:
    """Cumulative totals of one model version: rides, and their durations' histogram."""

    count: int = 0
    total_minutes: int = 0
    bucket_counts: list[int] = field(
        default_factory=lambda: [0] * (len(DURATION_BUCKETS_MINUTES) + 1)
    )


class PredictionTelemetry:
    """The in-process totals, and their periodic export.

    ``record_predictions`` is what the function calls per message: it adds to the totals under
    a lock. ``export_work`` is due every ``export_seconds`` when there is an exporter; started,
    it exports in a background thread, and the caller never waits for Cloud Monitoring.
    ``snapshot`` is the totals in OpenTelemetry's data model (a monotonic cumulative sum and an
    explicit-bucket histogram per version). Without an exporter (tests, the local stack) the
    totals are only kept.
    """

    def __init__(
        self,
        exporter: MetricsExporter | None = None,
        export_seconds: float = DEFAULT_EXPORT_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._exporter = exporter
        self._lock = threading.Lock()
        self._totals: dict[str, _VersionTotals] = {}
        self._start_time_ns = time.time_ns()
        self._closed = False
        self.export_work = PeriodicWork("metrics-export", self.flush, export_seconds, clock)
        if exporter is not None:
            self.export_work.schedule()

    def record_predictions(self, model_version: str, durations: Iterable[int]) -> None:
        """Count the published predictions of one message."""
        buckets = DURATION_BUCKETS_MINUTES
        with self._lock:
            totals = self._totals.get(model_version)
            if totals is None:
                totals = self._totals[model_version] = _VersionTotals()
            bucket_counts = totals.bucket_counts
            for duration in durations:
                # A linear model can predict a negative duration: counted as 0 minutes (the
                # lowest bucket), as a histogram's sum must not decrease (OpenTelemetry's
                # instruments drop such values, which would hide a bad model instead).
                minutes = duration if duration > 0 else 0
                # Bucket i holds (bound i-1, bound i]: OpenTelemetry's explicit buckets.
                bucket_counts[bisect.bisect_left(buckets, minutes)] += 1
                totals.count += 1
                totals.total_minutes += minutes

    def snapshot(self) -> MetricsData:
        """The cumulative totals now, as OpenTelemetry ``MetricsData`` (resource set on export)."""
        from opentelemetry.sdk.metrics.export import (
            AggregationTemporality,
            Histogram,
            HistogramDataPoint,
            Metric,
            MetricsData,
            NumberDataPoint,
            ResourceMetrics,
            ScopeMetrics,
            Sum,
        )
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.util.instrumentation import InstrumentationScope

        with self._lock:
            totals = {
                version: (t.count, t.total_minutes, list(t.bucket_counts))
                for version, t in self._totals.items()
            }
        now, start = time.time_ns(), self._start_time_ns
        cumulative = AggregationTemporality.CUMULATIVE
        counts = [
            NumberDataPoint({MODEL_VERSION_LABEL: version}, start, now, count)
            for version, (count, _, _) in totals.items()
        ]
        histograms = [
            HistogramDataPoint(
                attributes={MODEL_VERSION_LABEL: version},
                start_time_unix_nano=start,
                time_unix_nano=now,
                count=count,
                sum=total,
                bucket_counts=bucket_counts,
                explicit_bounds=list(DURATION_BUCKETS_MINUTES),
                min=_NOT_KEPT,
                max=_NOT_KEPT,
            )
            for version, (count, total, bucket_counts) in totals.items()
        ]
        metrics = [
            Metric(
                name=PREDICTIONS_METRIC,
                description="Rides predicted and published, by model version.",
                unit="",
                data=Sum(counts, cumulative, is_monotonic=True),
            ),
            Metric(
                name=DURATION_METRIC,
                description="Predicted ride durations in minutes, by model version.",
                unit="",
                data=Histogram(histograms, cumulative),
            ),
        ]
        scope = InstrumentationScope("ride_predictor")
        return MetricsData(
            [ResourceMetrics(Resource.get_empty(), [ScopeMetrics(scope, metrics, "")], "")]
        )

    def flush(self) -> None:
        """Export the totals now, if there is an exporter; never raises."""
        if self._exporter is None or not self._totals:
            return
        try:
            self._exporter.export(self.snapshot())
        except Exception as error:  # never lets metrics take serving down
            logger.warning("metrics export failed", extra={"fields": {"reason": repr(error)}})

    def close(self) -> None:
        """Flush the last totals and stop (registered at process exit when exporting)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self.export_work.stop()
        self.flush()
        if self._exporter is not None:
            self._exporter.shutdown()


class CloudMonitoringExporter:
    """OTLP over HTTP to Cloud Monitoring's Telemetry API, built on first use.

    The OTLP exporter, Google's credentials and the instance's identity (from the metadata
    server, through the GCP resource detector) are fetched in the export thread, so neither the
    cold start nor a request pays for them. Totals are cumulative (what Managed Service for
    Prometheus stores), so a failed export is made good by the next one.
    """

    def __init__(
        self,
        settings: TelemetrySettings,
        build: Callable[[TelemetrySettings], tuple[Any, Resource]] | None = None,
    ) -> None:
        self._settings = settings
        self._build = build or otlp_exporter
        self._exporter: Any = None  # an OpenTelemetry MetricExporter
        self._resource: Resource | None = None

    def export(self, metrics_data: MetricsData) -> bool:
        """Send the totals with this instance's resource; one WARNING line when that fails."""
        from opentelemetry.sdk.metrics.export import MetricExportResult

        try:
            if self._exporter is None or self._resource is None:
                self._exporter, self._resource = self._build(self._settings)
            resource = self._resource
            data = replace(
                metrics_data,
                resource_metrics=[
                    replace(resource_metrics, resource=resource)
                    for resource_metrics in metrics_data.resource_metrics
                ],
            )
            result = self._exporter.export(data, timeout_millis=EXPORT_TIMEOUT_SECONDS * 1000)
        except Exception as error:  # credentials, metadata server, network: try next time
            result, reason = MetricExportResult.FAILURE, repr(error)
        else:
            reason = "the Telemetry API refused the export"
        if result is not MetricExportResult.SUCCESS:
            logger.warning("metrics export failed", extra={"fields": {"reason": reason}})
            return False
        return True

    def shutdown(self) -> None:
        """Close the HTTP session, if one was opened."""
        if self._exporter is not None:
            self._exporter.shutdown()


def otlp_exporter(settings: TelemetrySettings) -> tuple[Any, Resource]:
    """The OTLP/HTTP exporter to the Telemetry API with Application Default Credentials, and
    the instance's resource (imported and built in the export thread, on first use)."""
    import google.auth
    from google.auth.transport.requests import AuthorizedSession
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    from opentelemetry.resourcedetector.gcp_resource_detector import (
        GoogleCloudResourceDetector,
    )
    from opentelemetry.sdk.resources import Resource

    credentials, _ = google.auth.default(scopes=[_MONITORING_WRITE_SCOPE])
    exporter = OTLPMetricExporter(
        endpoint=TELEMETRY_METRICS_ENDPOINT,
        session=AuthorizedSession(credentials),
        timeout=EXPORT_TIMEOUT_SECONDS,
    )
    # Region and instance id from the metadata server; job = the Cloud Run service.
    detected = GoogleCloudResourceDetector(raise_on_error=False).detect()
    resource = detected.merge(cloud_run_resource(settings))
    if not resource.attributes.get("faas.instance"):
        # The Telemetry API rejects points without an instance: one id per process then.
        resource = resource.merge(Resource({"service.instance.id": uuid.uuid4().hex}))
    return exporter, resource


def cloud_run_resource(settings: TelemetrySettings) -> Resource:
    """The attributes the Telemetry API maps to the prometheus_target resource: the project
    (required), job = service.name = the Cloud Run service, and the platform."""
    from opentelemetry.sdk.resources import Resource

    attributes: dict[str, str] = {
        "gcp.project_id": settings.project_id,
        "cloud.platform": "gcp_cloud_run",
    }
    if settings.service:
        attributes["service.name"] = settings.service
    if settings.revision:
        attributes["service.version"] = settings.revision
    return Resource.create(attributes)


def telemetry_from_env(
    project_id: str,
    export_seconds: float,
    environ: Mapping[str, str],
    exporter: Callable[[TelemetrySettings], MetricsExporter] = CloudMonitoringExporter,
) -> PredictionTelemetry:
    """The deployed function's telemetry: exporting on Cloud Run, counting only elsewhere."""
    settings = telemetry_settings(project_id, export_seconds, environ)
    if not settings.exports:
        return PredictionTelemetry()
    telemetry = PredictionTelemetry(exporter(settings), export_seconds=settings.export_seconds)
    atexit.register(telemetry.close)
    return telemetry
