"""Stream A's push subscription settings, read from ``push-subscription.env``.

deploy.sh reads the same file, so the local stack's push subscription has production's ack
deadline, backoff and dead-letter policy (docs/deploy.md, "Stream A's push subscription").
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

SETTINGS_FILE = Path(__file__).resolve().parent.parent / "push-subscription.env"


@dataclass(frozen=True)
class PushSettings:
    """The subscription's settings, in whole seconds and attempts."""

    ack_deadline_seconds: int
    min_retry_delay_seconds: int
    max_retry_delay_seconds: int
    max_delivery_attempts: int


def load_push_settings(path: Path = SETTINGS_FILE) -> PushSettings:
    """Parse ``KEY=VALUE`` lines (``#`` comment lines, blank lines); every key once, whole numbers.

    Raises ``ValueError`` naming the file and the line for anything else, as deploy.sh refuses it.
    """
    fields = {field.name.upper(): field.name for field in dataclasses.fields(PushSettings)}
    values: dict[str, int] = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        key, separator, value = line.partition("=")
        if not separator or key not in fields or key.lower() in values:
            raise ValueError(
                f"{path}:{number}: expected one KEY=VALUE of {sorted(fields)}: {line!r}"
            )
        if not value.isdigit():
            raise ValueError(f"{path}:{number}: {key} must be a whole number, got {value!r}")
        values[fields[key]] = int(value)
    missing = sorted(set(fields.values()) - set(values))
    if missing:
        raise ValueError(f"{path}: missing {', '.join(name.upper() for name in missing)}")
    return PushSettings(**values)
