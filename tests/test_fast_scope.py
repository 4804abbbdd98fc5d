"""`make test-fast`'s scope (tests/fast_scope.py): what it leaves out, and that a test which
slips through while starting what it leaves out fails instead of running slow."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from devstack.processes import ManagedProcess
from tests.fast_scope import (
    STAND_IN_EXIT_STATUS,
    NotInTheFastRunError,
    guard_the_fast_run,
)

REPO_ROOT = Path(__file__).resolve().parent.parent


def _selected(*args: str) -> set[str]:
    """The names of the tests ``pytest --collect-only args`` selects."""
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return {line.split("::")[1] for line in result.stdout.splitlines() if "::" in line}


@pytest.mark.slow  # collects in another pytest process: seconds
def test_the_fast_run_leaves_out_the_tests_on_emulator_fixtures_and_the_marked_ones() -> None:
    selected = _selected(
        "--fast",
        "tests/test_publisher.py",
        "tests/test_stack.py",
        "tests/test_requirements.py",
        "tests/test_publisher_limits.py",
    )

    # test_publisher: 4 of its 5 tests reach the emulator through the `pubsub` fixture and
    # carry no mark; test_stack starts the stack itself; test_requirements asks PyPI once.
    assert "test_requests_stay_under_the_byte_limit" in selected
    assert "test_bytes_and_attributes_arrive" not in selected
    assert "test_the_client_is_created_once_and_lazily" not in selected
    assert not any("ctrl_c" in name or "200_rides" in name for name in selected)
    assert "test_runtime_requirements_are_pinned_and_hold_only_what_the_function_needs" in selected
    assert not any("resolve_to_wheels" in name for name in selected)
    # The publisher's tests that wait out a timeout of seconds are slow; the others stay.
    assert "test_a_call_that_waited_in_the_queue_still_returns_within_its_own_timeout" not in (
        selected
    )
    assert "test_max_rpcs_in_flight_must_be_positive" in selected


@pytest.mark.slow  # collects in another pytest process: seconds
def test_the_emulator_mark_set_from_fixtures_is_there_for_m_too() -> None:
    # Set before pytest's own -m selection, so `pytest -m emulator` runs the integration tests.
    assert _selected("-m", "emulator", "tests/test_publisher.py") == {
        "test_bytes_and_attributes_arrive",
        "test_many_messages_in_one_call_all_arrive_in_any_order",
        "test_a_missing_topic_raises_publish_error",
        "test_the_client_is_created_once_and_lazily",
    }


def test_under_the_guard_gcloud_java_and_devstack_processes_fail_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    guard_the_fast_run(monkeypatch, tmp_path)

    for tool in ("gcloud", "java"):
        result = subprocess.run([tool, "--version"], capture_output=True, text=True, timeout=30)
        assert result.returncode == STAND_IN_EXIT_STATUS
        assert f"make test-fast runs no {tool}" in result.stderr
    with pytest.raises(NotInTheFastRunError, match="make test-fast starts no moto-server"):
        ManagedProcess("moto-server", [sys.executable, "-c", "pass"], tmp_path / "moto.log")
    assert os.environ["PIP_NO_INDEX"] == "1"
