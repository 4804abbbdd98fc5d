"""Helpers of the monitoring/ tests: render a file as deploy.sh would, and apply a log filter.

``render`` runs ``monitoring/render.bash`` itself (the bash that deploy.sh uses), not a Python
copy of it. ``LogFilter`` evaluates the small part of the Logging query language that the
log-based metrics use (``AND`` of comparisons), and refuses anything else, so a filter that the
test cannot evaluate fails the test rather than passing it unchecked.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
MONITORING = REPO / "monitoring"
RENDER_SCRIPT = MONITORING / "render.bash"

# What deploy.sh would pass; the names differ from each other so a wrong placeholder shows.
SAMPLE_VALUES: dict[str, str] = {
    "PROJECT_ID": "sample-project",
    "SERVICE": "sample-fn",
    "INPUT_TOPIC": "sample-rides",
    "INPUT_SUBSCRIPTION": "sample-rides-push",
    "OUTPUT_TOPIC": "sample-predictions",
    "DEAD_LETTER_TOPIC": "sample-fn-dead-letter",
    "DEAD_LETTER_SUBSCRIPTION": "sample-fn-dead-letter-sub",
    "PREDICTION_LOG_SUBSCRIPTION": "sample-predictions-bigquery",
    "ALERT_EMAIL": "oncall@example.com",
    "BACKLOG_AGE_SECONDS": "300",
    "ERROR_RATIO": "0.05",
    "NO_PREDICTIONS_SECONDS": "600",
    "DEFINITION": "0123456789abcdef",
}
PLACEHOLDER = re.compile(r"\{\{([A-Z][A-Z0-9_]*)\}\}")


def render(path: Path, values: Mapping[str, str] = SAMPLE_VALUES) -> str:
    """``render_template path NAME=VALUE...`` in bash; raises with bash's stderr if it fails."""
    result = subprocess.run(
        ["bash", "-c", 'source "$0" && render_template "$@"', str(RENDER_SCRIPT), str(path)]
        + [f"{name}={value}" for name, value in values.items()],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(result.stderr.strip())
    return result.stdout


def rendered_json(path: Path, values: Mapping[str, str] = SAMPLE_VALUES) -> Any:
    """The rendered file, parsed as JSON."""
    return json.loads(render(path, values))


def placeholders(path: Path) -> set[str]:
    """The placeholder names a file uses."""
    return set(PLACEHOLDER.findall(path.read_text()))


def _split_and(expression: str) -> list[str]:
    """``A AND B AND C`` into its terms, ignoring AND inside quotes."""
    terms, current, quoted, index = [], [], False, 0
    while index < len(expression):
        char = expression[index]
        if char == '"' and (index == 0 or expression[index - 1] != "\\"):
            quoted = not quoted
        if not quoted and expression.startswith(" AND ", index):
            terms.append("".join(current).strip())
            current, index = [], index + 5
            continue
        current.append(char)
        index += 1
    terms.append("".join(current).strip())
    return terms


_TERM = re.compile(
    r'^(?P<field>[A-Za-z_][A-Za-z0-9_.]*)\s*(?P<op>=~|!=|=|:)\s*(?P<value>"(?:[^"\\]|\\.)*"|\*|[A-Z]+)$'
)
_SEVERITIES = ["DEFAULT", "DEBUG", "INFO", "NOTICE", "WARNING", "ERROR", "CRITICAL", "ALERT"]


class LogFilter:
    """A conjunction of ``field = "v"``, ``field != "v"``, ``field =~ "regex"``, ``field:*``
    and ``severity = LEVEL``, the Logging query language's meaning for each, on a LogEntry."""

    def __init__(self, expression: str) -> None:
        self.terms: list[tuple[str, str, str]] = []
        for term in _split_and(expression):
            match = _TERM.match(term)
            if match is None:
                raise ValueError(f"the test cannot evaluate the filter term {term!r}")
            value = match["value"]
            if value.startswith('"'):
                value = json.loads(value)
            elif value != "*" and value not in _SEVERITIES:
                raise ValueError(f"unquoted value in {term!r}")
            self.terms.append((match["field"], match["op"], value))

    def matches(self, entry: Mapping[str, Any]) -> bool:
        """Whether the LogEntry (a dict in the API's JSON shape) passes every term."""
        return all(self._term(entry, *term) for term in self.terms)

    @staticmethod
    def _term(entry: Mapping[str, Any], field: str, op: str, value: str) -> bool:
        found = field_value(entry, field)
        if op == ":":
            if value != "*":
                raise ValueError("only the presence test field:* is supported")
            return found is not None
        if found is None:
            return op == "!="
        text = str(found)
        if op == "=~":
            return re.search(value, text) is not None
        if field == "severity":
            return (text == value) if op == "=" else (text != value)
        return (text == value) if op == "=" else (text != value)


def field_value(entry: Mapping[str, Any], path: str) -> Any:
    """The value at a dotted path of a LogEntry (``jsonPayload.reason_class``), or None."""
    node: Any = entry
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


_EXTRACT = re.compile(r"^EXTRACT\((?P<field>[A-Za-z_.]+)\)$")
_REGEXP_EXTRACT = re.compile(
    r'^REGEXP_EXTRACT\((?P<field>[A-Za-z_.]+),\s*(?P<regex>"(?:[^"\\]|\\.)*")\)$'
)


def extract_label(extractor: str, entry: Mapping[str, Any]) -> str | None:
    """A LogMetric label extractor (``EXTRACT`` or ``REGEXP_EXTRACT`` with one group) applied."""
    if match := _EXTRACT.match(extractor):
        found = field_value(entry, match["field"])
        return None if found is None else str(found)
    if match := _REGEXP_EXTRACT.match(extractor):
        regex = re.compile(json.loads(match["regex"]))
        if regex.groups != 1:
            raise ValueError(f"{extractor}: REGEXP_EXTRACT takes exactly one capture group")
        found = field_value(entry, match["field"])
        hit = regex.search(str(found)) if found is not None else None
        return hit.group(1) if hit else None
    raise ValueError(f"the test cannot evaluate the label extractor {extractor!r}")


# Fields of a structured JSON line that Cloud Logging moves out of jsonPayload
# (https://cloud.google.com/logging/docs/structured-logging, "Special JSON fields").
_SPECIAL_FIELDS = ("severity", "time", "logging.googleapis.com/labels")


def cloud_run_log_entry(line: Mapping[str, Any], service: str) -> dict[str, Any]:
    """The LogEntry Cloud Logging makes of one JSON line a Cloud Run service wrote to stdout."""
    return {
        "resource": {"type": "cloud_run_revision", "labels": {"service_name": service}},
        "severity": line.get("severity", "DEFAULT"),
        "labels": dict(line.get("logging.googleapis.com/labels") or {}),
        "jsonPayload": {key: value for key, value in line.items() if key not in _SPECIAL_FIELDS},
    }
