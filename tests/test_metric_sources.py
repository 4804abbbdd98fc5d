"""Each metric's source is really emitted by the running function as monitoring/ expects it.

The function runs through functions-framework's own app and test client with a real model; its
telemetry's snapshot is read in OpenTelemetry's data model, and its JSON log lines are turned into
the LogEntries Cloud Logging makes of them and run through the log-based metrics' own filters and
label extractors (rendered from monitoring/log-metrics/). With MESSAGE_LOG_LEVEL=DEBUG, the
level a high-volume deployment uses, every metric still has its source.
"""

from __future__ import annotations

import base64
import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest
from cloudevents.conversion import to_binary
from functions_framework import create_app

import main
from ride_predictor import telemetry
from ride_predictor.errors import REASON_CLASSES, ModelLoadError
from ride_predictor.model_holder import ModelHolder
from tests.conftest import (
    PROJECT_ID,
    SAMPLE_FEATURES,
    ModelFixture,
    RecordingPublisher,
    pubsub_cloud_event,
)
from tests.monitoring_files import (
    MONITORING,
    SAMPLE_VALUES,
    LogFilter,
    cloud_run_log_entry,
    extract_label,
    rendered_json,
)
from tests.test_refresh import FakeClock, FakeRegistry, FakeStore, make_loader, refreshed_once_more
from tests.test_telemetry import points

MAIN_PY = str(Path(main.__file__))
SERVICE = SAMPLE_VALUES["SERVICE"]
RIDE = {"PULocationID": 130, "DOLocationID": 205, "trip_distance": 3.66}


def log_metric(name: str) -> dict[str, Any]:
    return rendered_json(MONITORING / "log-metrics" / f"{name}.json")


def counted(metric: dict[str, Any], lines: list[dict[str, Any]]) -> list[dict[str, str | None]]:
    """The label values of each log line the log-based metric counts, as Cloud Logging would."""
    log_filter = LogFilter(metric["filter"])
    counted_labels = []
    for line in lines:
        entry = cloud_run_log_entry(line, SERVICE)
        if log_filter.matches(entry):
            counted_labels.append(
                {
                    key: extract_label(extractor, entry)
                    for key, extractor in metric.get("labelExtractors", {}).items()
                }
            )
    return counted_labels


@pytest.fixture(params=["INFO", "DEBUG"], ids=["message lines on", "message lines off"])
def served(
    request: pytest.FixtureRequest,
    test_model: ModelFixture,
    recording_publisher: RecordingPublisher,
    monkeypatch: pytest.MonkeyPatch,
) -> tuple[Any, telemetry.PredictionTelemetry]:
    """The framework's app for main.py, its telemetry counting without exporting."""
    app = create_app(target="predict_duration", source=MAIN_PY, signature_type="cloudevent")
    served_main = sys.modules["main"]
    settings = served_main.Settings(
        model_uri=test_model.path,
        project_id=PROJECT_ID,
        dead_letter_stream="dead-letters",
        message_log_level=request.param,
    )
    counts = telemetry.PredictionTelemetry()
    service = served_main.PredictionService(
        settings,
        ModelHolder(settings.model_uri, settings.model_name),
        recording_publisher,
        counts,
    )
    monkeypatch.setattr(served_main, "_service", service)
    return app.test_client(), counts


def _push(client: Any, data: bytes, message_id: str) -> None:
    event = pubsub_cloud_event(base64.b64encode(data).decode(), message_id=message_id)
    headers, body = to_binary(event)
    assert client.post("/", headers=headers, data=body).status_code == 200


def test_every_metric_source_is_emitted_by_the_running_function(
    served: tuple[Any, telemetry.PredictionTelemetry],
    recording_publisher: RecordingPublisher,
    json_logs: list[dict[str, Any]],
    test_model: ModelFixture,
) -> None:
    client, counts = served
    _push(client, json.dumps({"ride": RIDE, "ride_id": 1}).encode(), "single")
    batch = [{"ride": RIDE, "ride_id": 2}, {"ride": RIDE, "ride_id": "x"}, {"ride_id": 3}]
    _push(client, json.dumps(batch).encode(), "batch")
    _push(client, b"{not json", "bad")

    published = recording_publisher.json_to(f"projects/{PROJECT_ID}/topics/ride-predictions")
    durations = [message["prediction"]["ride_duration"] for message in published]
    assert len(durations) == 3
    assert durations[0] == test_model.expected_duration(SAMPLE_FEATURES)

    # In process: every published ride counted once, batch elements included, by version.
    found = points(counts.snapshot())
    assert set(found) == {telemetry.PREDICTIONS_METRIC, telemetry.DURATION_METRIC}
    version = published[0]["version"]
    (count,) = found[telemetry.PREDICTIONS_METRIC].items()
    assert count[0] == version
    assert count[1].value == 3
    histogram = found[telemetry.DURATION_METRIC][version]
    assert histogram.count == 3
    assert histogram.sum == sum(durations)
    assert set(count[1].attributes) == {telemetry.MODEL_VERSION_LABEL}
    # ... under the names and label the dashboard reads.
    dashboard = json.dumps(rendered_json(MONITORING / "dashboard.json"))
    for name, kind in (
        (telemetry.PREDICTIONS_METRIC, "counter"),
        (telemetry.DURATION_METRIC, "histogram"),
    ):
        assert f"prometheus.googleapis.com/{name}/{kind}" in dashboard
    assert f"metric.label.{telemetry.MODEL_VERSION_LABEL}" in dashboard

    # From the logs: one rejected ride per ERROR line, by reason class (the batch's invalid
    # element, the message that is not JSON); no other line is counted.
    rejected = counted(log_metric("rejected-rides"), json_logs)
    assert sorted(label["reason_class"] or "" for label in rejected) == ["json", "schema"]
    assert all(label["reason_class"] in REASON_CLASSES for label in rejected)
    assert counted(log_metric("model-swaps"), json_logs) == []
    assert counted(log_metric("model-load-failures"), json_logs) == []


def test_model_swaps_and_load_failures_are_counted_from_the_loaders_lines(
    json_logs: list[dict[str, Any]],
) -> None:
    registry, store, clock = FakeRegistry("1"), FakeStore(), FakeClock()
    store.broken.add("1")
    loader = make_loader(registry, store, clock, load_timeout_seconds=30)
    with pytest.raises(ModelLoadError):
        loader.get()  # the first load fails
    store.broken.clear()
    assert loader.get().version == "1"
    registry.version = "2"
    refreshed_once_more(loader, registry, clock)  # swaps to 2
    store.broken.add("3")
    registry.version = "3"
    refreshed_once_more(loader, registry, clock)  # fails: 2 keeps serving
    assert loader.get().version == "2"

    assert counted(log_metric("model-swaps"), json_logs) == [
        {"model_version": "2", "from_version": "1"}
    ]
    failures = counted(log_metric("model-load-failures"), json_logs)
    assert failures == [{"stage": "load"}, {"stage": "refresh"}]
    assert counted(log_metric("rejected-rides"), json_logs) == []


def test_the_log_filters_are_the_ones_deployed() -> None:
    """The filters the tests above evaluate are the rendered files' (no looser copy)."""
    for name in ("rejected-rides", "model-swaps", "model-load-failures"):
        metric = log_metric(name)
        assert metric["name"] == f"{SERVICE}-{name}"
        assert f'resource.labels.service_name = "{SERVICE}"' in metric["filter"]
        assert re.search(r'resource\.type = "cloud_run_revision"', metric["filter"])
        LogFilter(metric["filter"])  # every term is one the evaluator understands
