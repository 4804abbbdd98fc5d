"""push-subscription.env: the one source of Stream A's push subscription settings, strictly read."""

from __future__ import annotations

from pathlib import Path

import pytest

from devstack.push_subscription import SETTINGS_FILE, PushSettings, load_push_settings


def test_the_shared_file_holds_every_setting_within_pubsubs_limits() -> None:
    settings = load_push_settings()

    assert 10 <= settings.ack_deadline_seconds <= 600
    assert 0 <= settings.min_retry_delay_seconds <= settings.max_retry_delay_seconds <= 600
    assert 5 <= settings.max_delivery_attempts <= 100


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda text: text + "UNKNOWN=1\n", "expected one KEY=VALUE"),
        (
            lambda text: text.replace("MAX_DELIVERY_ATTEMPTS=10", "MAX_DELIVERY_ATTEMPTS=ten"),
            "whole",
        ),
        (lambda text: text.replace("ACK_DEADLINE_SECONDS=60", "ACK_DEADLINE_SECONDS=6.5"), "whole"),
        (lambda text: text + "ACK_DEADLINE_SECONDS=30\n", "expected one KEY=VALUE"),
        (lambda text: text.replace("MIN_RETRY_DELAY_SECONDS=10\n", ""), "missing MIN_RETRY"),
    ],
)
def test_anything_but_one_whole_number_per_setting_is_refused(
    tmp_path: Path, edit: object, message: str
) -> None:
    bad = tmp_path / "push-subscription.env"
    bad.write_text(edit(SETTINGS_FILE.read_text()))  # type: ignore[operator]

    with pytest.raises(ValueError, match=message):
        load_push_settings(bad)


def test_comments_and_blank_lines_are_skipped(tmp_path: Path) -> None:
    path = tmp_path / "push-subscription.env"
    path.write_text(
        "# a comment\n\nACK_DEADLINE_SECONDS=30\nMIN_RETRY_DELAY_SECONDS=0\n"
        "MAX_RETRY_DELAY_SECONDS=1\nMAX_DELIVERY_ATTEMPTS=5\n"
    )

    assert load_push_settings(path) == PushSettings(30, 0, 1, 5)
