"""The failures the function tells apart (docs/design.md, "Errors: nothing lost, nothing stuck").

* ``InvalidRideError``: **permanent**, the message (or one ride of a batch) can never succeed:
  logged, dead-lettered and acked. It carries its ``reason_class``, set where it is raised, the
  label of the rejected-rides metric (one of ``REASON_CLASSES``).
* ``ModelLoadError`` and ``PublishError``: **transient**, the input is retried (the function
  raises, Pub/Sub redelivers; the Lambda reports the record as failed).
"""

from __future__ import annotations

from typing import Literal, get_args

# The classes of a rejection, the ``reason_class`` of its ERROR line and of the log-based metric
# (docs/design.md, "Signals"); the reasons themselves name JSON paths and values, too many
# distinct texts for a metric label.
ReasonClass = Literal[
    "envelope",  # no Pub/Sub message, or no data
    "base64",
    "too_large",
    "empty",
    "utf8",
    "json",  # also NaN, Infinity and lone surrogates
    "too_deep",
    "batch_too_large",
    "prediction",  # the model's output for the ride is not a valid ride_duration
    "event_type",  # a CloudEvent of another type than Pub/Sub's
    "schema",  # a field's type, value or presence (msgspec's validation)
    "other",  # raised without a class: tests/test_telemetry.py finds no such raise
]
REASON_CLASSES: tuple[str, ...] = get_args(ReasonClass)


class InvalidRideError(ValueError):
    """A message or ride event that can never be predicted (a permanent failure).

    ``reason`` is a human-readable explanation, safe to log and to send to a dead-letter topic;
    ``reason_class`` its class (``REASON_CLASSES``). ``ride_index`` is the element's position
    when the message held a JSON array of rides; ``ride_id`` the event's id when it still has a
    usable one (for the log line and the dead letter).
    """

    def __init__(
        self,
        reason: str,
        ride_index: int | None = None,
        ride_id: int | str | None = None,
        *,
        reason_class: ReasonClass = "other",
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.reason_class: ReasonClass = reason_class
        self.ride_index = ride_index
        self.ride_id = ride_id


class ModelLoadError(RuntimeError):
    """The model could not be loaded yet (a transient failure: the caller should retry)."""


class PublishError(RuntimeError):
    """A publish did not reach the server in time (a transient failure: retry the input)."""
