"""monitoring/: every file renders with deploy.sh's bash, parses as the real API's message type,
and names metrics that exist, with aggregations that their kind allows.

The message types come from Google's client libraries (google-cloud-monitoring,
google-cloud-monitoring-dashboards, google-cloud-logging, google-cloud-bigquery), parsed with
``json_format.Parse(..., ignore_unknown_fields=False)``: a misspelt field fails.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from google.cloud import bigquery, logging_v2, monitoring_dashboard_v1, monitoring_v3
from google.protobuf import json_format
from google.protobuf.message import Message

from ride_predictor import messages, telemetry
from schemas.generate import (
    MONITORING_DIR,
    PREDICTION_LOG_OMITTED,
    PREDICTION_LOG_SCHEMA,
    monitoring_files,
)
from tests.monitoring_files import (
    MONITORING,
    REPO,
    SAMPLE_VALUES,
    placeholders,
    render,
    rendered_json,
)

POLICIES = sorted((MONITORING / "policies").glob("*.json"))
LOG_METRICS = sorted((MONITORING / "log-metrics").glob("*.json"))
DASHBOARD = MONITORING / "dashboard.json"
CHANNEL = MONITORING / "notification-channel.json"
BIGQUERY_SCHEMA = MONITORING / PREDICTION_LOG_SCHEMA
TEMPLATES = [*POLICIES, *LOG_METRICS, DASHBOARD, CHANNEL]
MANAGED_BY = "ride-prediction-deploy"


def _message_type(path: Path) -> type[Message]:
    """The protobuf class of the API message a file is."""
    if path in POLICIES:
        return monitoring_v3.AlertPolicy.pb()
    if path in LOG_METRICS:
        return logging_v2.types.LogMetric.pb()
    if path == DASHBOARD:
        return monitoring_dashboard_v1.Dashboard.pb()
    if path == CHANNEL:
        return monitoring_v3.NotificationChannel.pb()
    raise AssertionError(f"no message type for {path}")


def _parse(path: Path, text: str) -> Message:
    return json_format.Parse(text, _message_type(path)(), ignore_unknown_fields=False)


def test_the_expected_files_are_there() -> None:
    assert [p.stem for p in POLICIES] == [
        "dead-letters",
        "error-rate",
        "input-backlog-age",
        "no-predictions",
    ]
    assert [p.stem for p in LOG_METRICS] == [
        "model-load-failures",
        "model-swaps",
        "rejected-rides",
    ]


@pytest.mark.parametrize("path", TEMPLATES, ids=lambda p: str(p.relative_to(MONITORING)))
def test_each_file_renders_and_parses_as_its_api_message(path: Path) -> None:
    text = render(path)
    assert "{{" not in text
    message = _parse(path, text)
    # Nothing was dropped on the way: every field the file sets is a field of the message.
    _assert_same_shape(
        json.loads(text),
        json_format.MessageToDict(message, always_print_fields_with_no_presence=True),
        path.name,
    )


def _assert_same_shape(written: Any, parsed: Any, where: str) -> None:
    if isinstance(written, dict):
        assert isinstance(parsed, dict), where
        for key, value in written.items():
            assert key in parsed, f"{where}.{key}"
            _assert_same_shape(value, parsed[key], f"{where}.{key}")
    elif isinstance(written, list):
        assert isinstance(parsed, list), where
        assert len(parsed) == len(written), where
        for index, (item, parsed_item) in enumerate(zip(written, parsed, strict=True)):
            _assert_same_shape(item, parsed_item, f"{where}[{index}]")
    elif isinstance(written, str) and not isinstance(parsed, str):
        raise AssertionError(f"{where}: {written!r} became {parsed!r}")


def test_a_misspelt_field_fails_the_parse() -> None:
    policy = rendered_json(POLICIES[0])
    policy["conditions"][0]["conditionThreshold"]["tresholdValue"] = 1
    with pytest.raises(json_format.ParseError, match="tresholdValue"):
        _parse(POLICIES[0], json.dumps(policy))


def test_every_placeholder_is_given_by_the_samples_and_documented() -> None:
    used = set().union(*(placeholders(path) for path in TEMPLATES))
    assert used == set(SAMPLE_VALUES)
    readme = (MONITORING / "README.md").read_text()
    documented = set(re.findall(r"`([A-Z][A-Z0-9_]+)`", readme))
    assert used <= documented, sorted(used - documented)


def test_rendering_fails_without_a_value_or_with_one_that_breaks_json() -> None:
    missing = {name: v for name, v in SAMPLE_VALUES.items() if name != "ERROR_RATIO"}
    with pytest.raises(RuntimeError, match=r"no value for \{\{ERROR_RATIO\}\}"):
        render(MONITORING / "policies" / "error-rate.json", missing)
    with pytest.raises(RuntimeError, match="quote"):
        render(DASHBOARD, {**SAMPLE_VALUES, "SERVICE": 'fn" , "x": "y'})
    # bash 5.2 expands & in a replacement unless it is quoted: the value must stay literal.
    rendered = rendered_json(CHANNEL, {**SAMPLE_VALUES, "ALERT_EMAIL": "a&b@example.com"})
    assert rendered["labels"]["email_address"] == "a&b@example.com"


def test_the_thresholds_are_parameters() -> None:
    values = {
        **SAMPLE_VALUES,
        "BACKLOG_AGE_SECONDS": "900",
        "ERROR_RATIO": "0.2",
        "NO_PREDICTIONS_SECONDS": "1800",
    }
    backlog = rendered_json(MONITORING / "policies" / "input-backlog-age.json", values)
    assert backlog["conditions"][0]["conditionThreshold"]["thresholdValue"] == 900
    errors = rendered_json(MONITORING / "policies" / "error-rate.json", values)
    assert errors["conditions"][0]["conditionThreshold"]["thresholdValue"] == 0.2
    silent = rendered_json(MONITORING / "policies" / "no-predictions.json", values)
    absent, arriving = silent["conditions"]
    assert absent["conditionAbsent"]["duration"] == "1800s"
    assert arriving["conditionThreshold"]["aggregations"][0]["alignmentPeriod"] == "1800s"


def test_policies_channel_and_dashboard_carry_the_labels_a_rerun_finds_them_by() -> None:
    service, definition = SAMPLE_VALUES["SERVICE"], SAMPLE_VALUES["DEFINITION"]
    ours = {"managed_by": MANAGED_BY, "service": service, "definition": definition}
    for path in POLICIES:
        assert rendered_json(path)["userLabels"] == {**ours, "policy": path.stem}
    assert rendered_json(CHANNEL)["userLabels"] == ours
    dashboard = rendered_json(DASHBOARD)
    assert dashboard["labels"] == ours
    # Log-based metrics have no labels: deploy.sh finds its hash in their description.
    for path in LOG_METRICS:
        assert rendered_json(path)["description"].endswith(f"(deploy.sh definition {definition})")
    assert (
        dashboard["name"]
        == f"projects/{SAMPLE_VALUES['PROJECT_ID']}/dashboards/{service}-operations"
    )
    # Label values: at most 63 lowercase letters, digits, underscores and dashes.
    for value in (MANAGED_BY, service, definition, *(p.stem for p in POLICIES)):
        assert re.fullmatch(r"[a-z0-9_-]{1,63}", value), value


# The built-in metrics the files use: kind, value type, monitored resource and the metric
# labels the files group by. From Google Cloud's metrics lists
# (https://cloud.google.com/monitoring/api/metrics_gcp_p_z, run and pubsub sections).
BUILT_IN_METRICS: dict[str, tuple[str, str, str, set[str]]] = {
    "run.googleapis.com/request_count": (
        "DELTA", "INT64", "cloud_run_revision", {"response_code", "response_code_class"},
    ),
    "run.googleapis.com/request_latencies": ("DELTA", "DISTRIBUTION", "cloud_run_revision", set()),
    "run.googleapis.com/container/instance_count": (
        "GAUGE", "INT64", "cloud_run_revision", {"state"},
    ),
    "run.googleapis.com/container/billable_instance_time": (
        "DELTA", "DOUBLE", "cloud_run_revision", set(),
    ),
    "run.googleapis.com/container/cpu/utilizations": (
        "DELTA", "DISTRIBUTION", "cloud_run_revision", set(),
    ),
    "pubsub.googleapis.com/topic/send_message_operation_count": (
        "DELTA", "INT64", "pubsub_topic", set(),
    ),
    "pubsub.googleapis.com/subscription/num_undelivered_messages": (
        "GAUGE", "INT64", "pubsub_subscription", set(),
    ),
    "pubsub.googleapis.com/subscription/oldest_unacked_message_age": (
        "GAUGE", "INT64", "pubsub_subscription", set(),
    ),
    "pubsub.googleapis.com/subscription/dead_letter_message_count": (
        "DELTA", "INT64", "pubsub_subscription", set(),
    ),
}  # fmt: skip


def _own_metrics() -> dict[str, tuple[str, str, str, set[str]]]:
    """The function's metrics as Cloud Monitoring will hold them: the log-based metrics of
    monitoring/log-metrics/ and telemetry.py's instruments through the Telemetry API (Managed
    Service for Prometheus: /counter, /histogram; cumulative; numbers as doubles)."""
    own: dict[str, tuple[str, str, str, set[str]]] = {}
    for path in LOG_METRICS:
        metric = rendered_json(path)
        descriptor = metric["metricDescriptor"]
        labels = {label["key"] for label in descriptor.get("labels", [])}
        own[f"logging.googleapis.com/user/{metric['name']}"] = (
            descriptor["metricKind"],
            descriptor["valueType"],
            "cloud_run_revision",
            labels,
        )
    prometheus = "prometheus.googleapis.com"
    own[f"{prometheus}/{telemetry.PREDICTIONS_METRIC}/counter"] = (
        "CUMULATIVE",
        "DOUBLE",
        "prometheus_target",
        {telemetry.MODEL_VERSION_LABEL},
    )
    own[f"{prometheus}/{telemetry.DURATION_METRIC}/histogram"] = (
        "CUMULATIVE",
        "DISTRIBUTION",
        "prometheus_target",
        {telemetry.MODEL_VERSION_LABEL},
    )
    return own


# Which aligner takes which kind and value type, and what it makes of them
# (https://cloud.google.com/monitoring/api/ref_v3/rest/v3/projects.alertPolicies#aligner).
def _aligned(aligner: str, kind: str, value_type: str) -> tuple[str, str]:
    numeric = value_type in ("INT64", "DOUBLE")
    if aligner == "ALIGN_RATE" and kind in ("DELTA", "CUMULATIVE") and numeric:
        return "GAUGE", "DOUBLE"
    if aligner == "ALIGN_DELTA" and kind in ("DELTA", "CUMULATIVE"):
        return "DELTA", value_type
    if (
        aligner in ("ALIGN_MAX", "ALIGN_MIN", "ALIGN_MEAN")
        and kind in ("GAUGE", "DELTA")
        and numeric
    ):
        return "GAUGE", "DOUBLE" if aligner == "ALIGN_MEAN" else value_type
    if aligner == "ALIGN_SUM" and kind in ("GAUGE", "DELTA"):
        return kind, value_type
    raise AssertionError(f"{aligner} does not take a {kind} {value_type} metric")


def _reduced(reducer: str | None, kind: str, value_type: str) -> None:
    if reducer is None or reducer == "REDUCE_SUM":
        assert value_type in ("INT64", "DOUBLE", "DISTRIBUTION"), (reducer, value_type)
    elif reducer.startswith("REDUCE_PERCENTILE_"):
        assert kind in ("GAUGE", "DELTA"), (reducer, kind)
        assert value_type in ("INT64", "DOUBLE", "DISTRIBUTION"), (reducer, value_type)
    else:
        raise AssertionError(f"unexpected reducer {reducer}")


def _queries() -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(where, filter, aggregation) of every time-series query in the policies and dashboard."""
    for path in POLICIES:
        for condition in rendered_json(path)["conditions"]:
            for key in ("conditionThreshold", "conditionAbsent"):
                if key in condition:
                    spec = condition[key]
                    (aggregation,) = spec.get("aggregations") or [{}]
                    yield path.name, spec["filter"], aggregation
                    if "denominatorFilter" in spec:
                        (denominator,) = spec["denominatorAggregations"]
                        yield path.name, spec["denominatorFilter"], denominator
    for tile in rendered_json(DASHBOARD)["mosaicLayout"]["tiles"]:
        widget = tile["widget"]
        for data_set in widget.get("xyChart", {}).get("dataSets", []):
            query = data_set["timeSeriesQuery"]["timeSeriesFilter"]
            yield widget["title"], query["filter"], query["aggregation"]


def test_the_queries_name_metrics_that_exist_and_aggregate_them_as_their_kind_allows() -> None:
    known = {**BUILT_IN_METRICS, **_own_metrics()}
    used: set[str] = set()
    queries = list(_queries())
    assert len(queries) >= 25
    for where, filter_, aggregation in queries:
        (metric_type,) = re.findall(r'metric\.type = "([^"]+)"', filter_)
        assert metric_type in known, f"{where}: unknown metric {metric_type}"
        kind, value_type, resource_type, labels = known[metric_type]
        used.add(metric_type)
        resource_types = re.findall(r'resource\.type = "([^"]+)"', filter_)
        assert resource_types in ([resource_type], []), f"{where}: {resource_types}"
        if not metric_type.startswith("logging.googleapis.com/user/"):
            assert resource_types, f"{where}: the filter names no resource type"
        for label in re.findall(r"metric\.labels\.([a-z_]+)", filter_):
            assert label in labels, f"{where}: {metric_type} has no label {label}"
        if aggregation:
            aligned_kind, aligned_type = _aligned(aggregation["perSeriesAligner"], kind, value_type)
            _reduced(aggregation.get("crossSeriesReducer"), aligned_kind, aligned_type)
            for field in aggregation.get("groupByFields", []):
                scope, _, name = field.partition(".label.")
                if scope == "metric":
                    assert name in labels, f"{where}: {metric_type} has no label {name}"
                else:
                    assert field == "resource.label.service_name", field
    # Every metric the function produces is on the dashboard.
    assert set(_own_metrics()) <= used


def test_each_alert_watches_the_resource_it_is_about() -> None:
    def resources(path: Path) -> list[tuple[str, str]]:
        found = []
        for condition in rendered_json(path)["conditions"]:
            spec = condition.get("conditionThreshold") or condition["conditionAbsent"]
            found.append(
                (
                    re.findall(r'metric\.type = "[^"]+/([a-z_]+)"', spec["filter"])[0],
                    re.findall(r'resource\.labels\.[a-z_]+ = "([^"]+)"', spec["filter"])[0],
                )
            )
        return found

    policies = MONITORING / "policies"
    values = SAMPLE_VALUES
    assert resources(policies / "dead-letters.json") == [
        ("num_undelivered_messages", values["DEAD_LETTER_SUBSCRIPTION"])
    ]
    assert resources(policies / "input-backlog-age.json") == [
        ("oldest_unacked_message_age", values["INPUT_SUBSCRIPTION"])
    ]
    assert resources(policies / "error-rate.json") == [("request_count", values["SERVICE"])]
    assert resources(policies / "no-predictions.json") == [
        ("send_message_operation_count", values["OUTPUT_TOPIC"]),
        ("send_message_operation_count", values["INPUT_TOPIC"]),
    ]
    silent = rendered_json(policies / "no-predictions.json")
    assert silent["combiner"] == "AND"
    assert "conditionAbsent" in silent["conditions"][0]
    errors = rendered_json(policies / "error-rate.json")["conditions"][0]["conditionThreshold"]
    assert 'response_code_class != "2xx"' in errors["filter"]
    assert "response_code_class" not in errors["denominatorFilter"]


# --- the prediction log's BigQuery table -------------------------------------------------


def test_the_prediction_log_schema_is_what_make_schemas_generates() -> None:
    assert MONITORING_DIR == MONITORING
    committed = BIGQUERY_SCHEMA.read_text(encoding="utf-8")
    assert committed == monitoring_files()[PREDICTION_LOG_SCHEMA], "run `make schemas`"


def _check_bigquery_fields(fields: list[dict[str, Any]]) -> None:
    """The API's TableFieldSchema JSON shape, which SchemaField reads without complaint."""
    for field in fields:
        assert set(field) <= {"name", "type", "mode", "description", "fields"}, field
        assert field["mode"] in ("NULLABLE", "REQUIRED", "REPEATED")
        assert field["type"] in (
            "STRING", "INTEGER", "FLOAT", "BOOLEAN", "TIMESTAMP", "JSON", "RECORD",
        )  # fmt: skip
        assert ("fields" in field) == (field["type"] == "RECORD")
        if "fields" in field:
            _check_bigquery_fields(field["fields"])


def test_the_prediction_log_schema_parses_and_has_pubsubs_metadata_columns() -> None:
    fields = json.loads(BIGQUERY_SCHEMA.read_text())
    _check_bigquery_fields(fields)
    schema = [bigquery.SchemaField.from_api_repr(field) for field in fields]
    types = {field.name: field.field_type for field in schema}
    # What --write-metadata writes (https://cloud.google.com/pubsub/docs/bigquery).
    assert types["subscription_name"] == "STRING"
    assert types["message_id"] == "STRING"
    assert types["publish_time"] == "TIMESTAMP"
    assert types["attributes"] in ("JSON", "STRING")
    assert "data" not in types  # with --use-table-schema the message's fields are the columns


def _column_accepts(column: bigquery.SchemaField, value: Any) -> bool:
    if column.field_type == "RECORD":
        return isinstance(value, dict)
    if column.field_type == "INTEGER":
        return isinstance(value, int) and not isinstance(value, bool)
    if column.field_type == "STRING":
        return isinstance(value, str)
    raise AssertionError(column.field_type)


def _unwritten(record: dict[str, Any], columns: list[bigquery.SchemaField], prefix: str) -> list:
    """The message's fields that have no column of a type that takes their value."""
    by_name = {column.name: column for column in columns}
    missing = []
    for name, value in record.items():
        column = by_name.get(name)
        if column is None or not _column_accepts(column, value):
            missing.append(prefix + name)
        elif column.field_type == "RECORD":
            missing += _unwritten(value, list(column.fields), f"{prefix}{name}.")
    return missing


@pytest.mark.parametrize("ride_id", [123, "ride-123"], ids=["integer id", "string id"])
def test_a_published_prediction_fits_the_table_but_for_the_ride_id_in_the_attribute(
    ride_id: int | str,
) -> None:
    columns = [
        bigquery.SchemaField.from_api_repr(f) for f in json.loads(BIGQUERY_SCHEMA.read_text())
    ]
    message = json.loads(
        messages.encode_message(messages.build_prediction_message("m", "3", ride_id, 12.4))
    )
    # --drop-unknown-fields drops exactly these; the attribute ride_id carries the id.
    assert _unwritten(message, columns, "") == list(PREDICTION_LOG_OMITTED)
    required = [c.name for c in columns if c.mode == "REQUIRED"]
    assert set(required) <= set(message)


def test_the_sql_in_the_docs_names_the_tables_columns() -> None:
    operations = (REPO / "docs" / "operations.md").read_text()
    sql = "\n".join(re.findall(r"```sql\n(.*?)```", operations, re.S))
    assert sql.count("SELECT") >= 3
    for column in ("publish_time", "version", "prediction.ride_duration", "attributes"):
        assert column in sql
    assert "JSON_VALUE(attributes, '$.ride_id')" in sql
