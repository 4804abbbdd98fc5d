"""Logs as one JSON object per line on stdout, the shape both clouds' log services parse.

``JsonLineFormatter`` writes ``severity``, ``message``, ``time``, ``logger`` and the record's
``extra={"fields": {...}}`` merged in (CloudWatch Logs Insights discovers such fields by itself);
``CloudLoggingFormatter`` adds the ids as Cloud Logging labels. Both pass every line through
``redact_credentials``, a net under the redaction at the source: no line carries a URI's
credentials. ``install_json_handler`` attaches one of them to a logger, once per process.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

from ride_predictor.redaction import redact_credentials

# The handler's name: installing it again (functions-framework may execute main.py more than
# once in a process; the test suite imports both clouds) adds nothing.
HANDLER_NAME = "ride_predictor_stdout_json"


class JsonLineFormatter(logging.Formatter):
    """Formats a record as one JSON object: severity, message, time, logger, then its fields."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line of JSON, credentials redacted."""
        entry: dict[str, Any] = {
            "severity": record.levelname,
            "message": record.getMessage(),
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "logger": record.name,
        }
        fields = getattr(record, "fields", None) or {}
        entry.update(fields)
        self.add_labels(entry, fields)
        if record.exc_info:
            # A stack trace in the message is what Error Reporting picks up.
            entry["message"] += "\n" + self.formatException(record.exc_info)
        return redact_credentials(json.dumps(entry, default=str))

    def add_labels(self, entry: dict[str, Any], fields: dict[str, Any]) -> None:
        """Add what the log service indexes besides the fields (nothing here)."""


class CloudLoggingFormatter(JsonLineFormatter):
    """The field names Cloud Logging's structured logging reads, with the ids as labels.

    ``severity`` and ``message`` become the entry's severity and summary; the other fields land
    in ``jsonPayload``; the ids also go to the entry's labels (``logging.googleapis.com/labels``)
    so an operator can filter one ride or one message.
    """

    _LABEL_FIELDS = ("ride_id", "message_id", "model_version")

    def add_labels(self, entry: dict[str, Any], fields: dict[str, Any]) -> None:
        """The known ids as labels: ride_id 0 too; an unknown one (None, "") is no label."""
        labels = {
            key: str(fields[key])
            for key in self._LABEL_FIELDS
            if fields.get(key) is not None and fields[key] != ""
        }
        if labels:
            entry["logging.googleapis.com/labels"] = labels


def install_json_handler(logger: logging.Logger, formatter: logging.Formatter) -> bool:
    """Write ``logger``'s records to stdout with ``formatter``, once: a logger that already has
    this handler keeps it (and its formatter). Returns whether it was installed now.

    ``propagate`` is turned off: a runtime's own root handler (the Lambda's) would print every
    line again in its plain-text format.
    """
    if any(handler.name == HANDLER_NAME for handler in logger.handlers):
        return False
    handler = logging.StreamHandler(sys.stdout)
    handler.set_name(HANDLER_NAME)
    handler.setFormatter(formatter)
    logger.addHandler(handler)
    logger.propagate = False
    return True
