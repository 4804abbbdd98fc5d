"""The sizes the cost model bills, measured on what the bench really sends and writes (bench only).

* ``push_sizes``: per push request the function received, the HTTP body's bytes and the bytes
  Pub/Sub's pricing counts for the pushed message: its data, its attribute keys and values, its
  message id (the 20 bytes Pub/Sub adds for the timestamp are the cost model's to add).
* ``log_line_sizes``: the function's own log, per kind of line it writes per message (a
  single-ride message's "prediction published" line, a batch's), counted in the function's log
  file after a run.
* ``dead_letter_payload_bytes``: the dead letter ``dead_letters.dead_letter_message`` builds for one
  rejected single-ride message (what the function publishes to the dead-letter topic).
* ``log_entry_envelope_bytes`` and ``request_log_entry_bytes``: *estimates*, not measurements
  (no GCP here): the JSON of a representative Cloud Logging entry as Cloud Run writes it around
  a stdout line, and of the request log entry Cloud Run writes for every request.
"""

from __future__ import annotations

import base64
import json
import statistics
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

PUBLISHED_LINE = "prediction published"


def push_sizes(bodies: Iterable[bytes]) -> dict[str, float]:
    """Mean HTTP body bytes and mean Pub/Sub data volume (data, attributes, message id) of
    push request bodies, and how many were measured."""
    http, billable = [], []
    for body in bodies:
        message = json.loads(body)["message"]
        data = base64.b64decode(message.get("data", ""))
        attributes = message.get("attributes") or {}
        http.append(len(body))
        billable.append(
            len(data)
            + sum(len(k.encode()) + len(v.encode()) for k, v in attributes.items())
            + len(str(message.get("messageId", "")).encode())
        )
    if not http:
        return {"count": 0, "http_body_bytes": float("nan"), "message_bytes": float("nan")}
    return {
        "count": len(http),
        "http_body_bytes": statistics.fmean(http),
        "message_bytes": statistics.fmean(billable),
    }


def log_line_sizes(log_path: Path) -> dict[str, dict[str, int]]:
    """Lines and bytes (newline included) of the function's per-message log lines in a log
    file, by kind: ``single`` (one ride) and ``batch`` (a message of many rides)."""
    sizes = {"single": {"lines": 0, "bytes": 0}, "batch": {"lines": 0, "bytes": 0}}
    try:
        text = log_path.read_bytes()
    except OSError:
        return sizes
    for line in text.splitlines(keepends=True):
        if b'"severity"' not in line:
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if not isinstance(entry, dict) or entry.get("message") != PUBLISHED_LINE:
            continue
        kind = sizes["batch" if "ride_count" in entry else "single"]
        kind["lines"] += 1
        kind["bytes"] += len(line)
    return sizes


def merge_log_sizes(runs: Iterable[Mapping[str, Mapping[str, int]]]) -> dict[str, dict[str, int]]:
    """The sum of several ``log_line_sizes``."""
    total = {"single": {"lines": 0, "bytes": 0}, "batch": {"lines": 0, "bytes": 0}}
    for run in runs:
        for kind, counts in run.items():
            for key in ("lines", "bytes"):
                total[kind][key] += counts.get(key, 0)
    return total


def dead_letter_payload_bytes(push_body: bytes) -> int:
    """Data plus attribute bytes of the dead letter the function publishes when it rejects the
    single-ride message of ``push_body`` with one ride field made invalid."""
    from ride_predictor.dead_letters import dead_letter_message
    from ride_predictor.envelope import pubsub_message
    from ride_predictor.errors import InvalidRideError
    from ride_predictor.messages import decode_message

    event = json.loads(push_body)
    message = pubsub_message(event, "")
    ride = json.loads(base64.b64decode(message.data))
    ride["ride"]["PULocationID"] = 0  # out of range: a typical rejection
    raw = json.dumps(ride).encode()
    try:
        decode_message(raw, len(raw) + 1)
    except InvalidRideError as error:
        letter = dead_letter_message(message, raw, error, len(raw) + 1)
    else:
        raise AssertionError("the invalid ride was accepted")
    return len(letter.data) + sum(
        len(k.encode()) + len(v.encode()) for k, v in letter.attributes.items()
    )


# A Cloud Run function's resource and labels as Cloud Logging shows them (lengths typical of
# a deployed function: a 15-character name, a generated revision name and instance id).
_RESOURCE: dict[str, Any] = {
    "type": "cloud_run_revision",
    "labels": {
        "project_id": "my-gcp-project-1",
        "service_name": "ride-prediction",
        "revision_name": "ride-prediction-00001-xyz",
        "configuration_name": "ride-prediction",
        "location": "europe-west1",
    },
}
_INSTANCE_ID = "00" + "f" * 126  # Cloud Run instance ids are long hex strings
_TIMESTAMP = "2026-12-07T10:00:00.123456Z"


def _envelope(log: str) -> dict[str, Any]:
    return {
        "insertId": "6750a1b2000c3d4e5f6a7b8c",
        "resource": _RESOURCE,
        "timestamp": _TIMESTAMP,
        "receiveTimestamp": _TIMESTAMP,
        "logName": f"projects/{_RESOURCE['labels']['project_id']}/logs/run.googleapis.com%2F{log}",
        "labels": {"instanceId": _INSTANCE_ID, "goog-managed-by": "cloudfunctions"},
    }


def log_entry_envelope_bytes() -> int:
    """Estimated bytes Cloud Logging's entry adds around one stdout line (not measured)."""
    return len(json.dumps(_envelope("stdout"), separators=(",", ":")))


def request_log_entry_bytes() -> int:
    """Estimated bytes of the request log entry Cloud Run writes per push (not measured)."""
    entry = _envelope("requests") | {
        "severity": "INFO",
        "trace": f"projects/{_RESOURCE['labels']['project_id']}/traces/" + "a" * 32,
        "spanId": "1" * 16,
        "traceSampled": False,
        "httpRequest": {
            "requestMethod": "POST",
            "requestUrl": "https://ride-prediction-abcdefghij-ew.a.run.app/?__GCP_CloudEventsMode="
            "CUSTOM_PUBSUB_projects%2Fmy-gcp-project-1%2Ftopics%2Ftaxi-ride-streaming",
            "requestSize": "1234",
            "status": 200,
            "responseSize": "345",
            "userAgent": "APIs-Google; (+https://developers.google.com/webmasters/APIs-Google.html)",
            "remoteIp": "66.102.6.200",
            "serverIp": "216.239.32.53",
            "latency": "0.031234567s",
            "protocol": "HTTP/1.1",
        },
    }
    return len(json.dumps(entry, separators=(",", ":")))


def measure(
    rides: Sequence[dict[str, Any]], batches: Sequence[list[dict[str, Any]]]
) -> dict[str, Any]:
    """Every size above for the push bodies the bench sends (single rides and batches)."""
    from bench.harness import push_body, ride_bodies

    single = ride_bodies(rides)
    return {
        "single": push_sizes(single),
        "batch": push_sizes(push_body(json.dumps(batch).encode()) for batch in batches),
        "dead_letter_bytes": dead_letter_payload_bytes(single[0]),
        "log_envelope_bytes": log_entry_envelope_bytes(),
        "request_log_bytes": request_log_entry_bytes(),
    }
