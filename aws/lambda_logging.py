"""JSON log lines for CloudWatch Logs, one object per line.

The same shape as the Cloud Function's ``main.CloudLoggingFormatter`` (``severity``, ``message``,
``time``, ``logger`` and the record's ``extra={"fields": {...}}`` merged in, URI credentials
redacted), so one log query
style works on both clouds. A copy rather than an import: ``main`` imports functions-framework and
the Pub/Sub client, which the Lambda neither ships nor needs. CloudWatch Logs Insights discovers
the fields of JSON lines by itself (``filter ride_id = "123"``), so no labels object is added.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

from model_loader import redact_credentials

HANDLER_NAME = "ride_predictor_lambda_json"


class JsonLineFormatter(logging.Formatter):
    """Formats a record as one JSON object: severity, message, time, logger, then its fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "severity": record.levelname,
            "message": record.getMessage(),
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "logger": record.name,
        }
        entry.update(getattr(record, "fields", None) or {})
        if record.exc_info:
            entry["message"] += "\n" + self.formatException(record.exc_info)
        # A net under the redaction at the source: no line carries a URI's credentials.
        return redact_credentials(json.dumps(entry, default=str))


def install_log_handler(logger: logging.Logger, level: str) -> None:
    """Write ``logger``'s records to stdout as JSON lines, at ``level``; idempotent.

    Adds nothing when the logger already has a handler: in a process that also imported the
    Cloud Function (the test suite), that one already writes the same lines. ``propagate`` is
    turned off because the Lambda runtime's own root handler would print every line again in
    its plain-text format.
    """
    logger.setLevel(level)
    if logger.handlers:
        return
    handler = logging.StreamHandler(sys.stdout)
    handler.set_name(HANDLER_NAME)
    handler.setFormatter(JsonLineFormatter())
    logger.addHandler(handler)
    logger.propagate = False
