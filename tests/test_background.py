"""ride_predictor.background: periodic work started by the caller when due, never on its thread.

And who starts it: the service after each message (whatever its outcome), never a read of the
model.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest

import main
from devstack.processes import wait_until
from ride_predictor.background import PeriodicWork
from ride_predictor.errors import ModelLoadError
from ride_predictor.model_holder import ModelHolder
from ride_predictor.telemetry import PredictionTelemetry
from tests.conftest import RecordingPublisher, pubsub_event_data
from tests.test_refresh import ALIAS_URI, FakeClock, FakeRegistry, FakeStore, make_loader

WAIT_SECONDS = 30.0


class Work:
    """Counts its runs and the threads they ran on; can be held by the test or made to fail."""

    def __init__(self) -> None:
        self.threads: list[str] = []
        self.gate: threading.Event | None = None
        self.failure: Exception | None = None

    def __call__(self) -> None:
        self.threads.append(threading.current_thread().name)
        if self.gate is not None:
            assert self.gate.wait(WAIT_SECONDS)
        if self.failure is not None:
            raise self.failure


def test_nothing_is_due_until_scheduled_then_one_run_per_period_on_its_own_thread() -> None:
    clock, work = FakeClock(), Work()
    periodic = PeriodicWork("test-work", work, 60.0, clock)
    clock.advance(3600)
    assert periodic.start_if_due() is False  # never scheduled

    periodic.schedule()
    clock.advance(59)
    assert periodic.start_if_due() is False
    clock.advance(1)
    work.gate = threading.Event()
    assert periodic.start_if_due() is True
    assert periodic.running
    clock.advance(600)  # however late, one run at a time
    assert [periodic.start_if_due() for _ in range(20)] == [False] * 20
    work.gate.set()
    wait_until(lambda: not periodic.running, "the run", WAIT_SECONDS)

    assert work.threads == ["test-work"]
    assert periodic.start_if_due() is False  # the next period starts when the run ends
    clock.advance(60)
    assert periodic.start_if_due() is True
    wait_until(lambda: len(work.threads) == 2 and not periodic.running, "the run", WAIT_SECONDS)


def test_a_failing_run_is_logged_never_raised_and_the_next_period_runs_again(
    json_logs: list[dict[str, Any]],
) -> None:
    clock, work = FakeClock(), Work()
    work.failure = OSError("the store is gone")
    periodic = PeriodicWork("test-work", work, 1.0, clock)
    periodic.schedule()
    clock.advance(1)

    assert periodic.start_if_due() is True
    wait_until(lambda: not periodic.running, "the failed run", WAIT_SECONDS)
    (line,) = [entry for entry in json_logs if entry["message"] == "background work failed"]
    assert line["severity"] == "ERROR"
    assert line["work"] == "test-work"
    assert "the store is gone" in line["reason"]

    work.failure = None
    clock.advance(1)
    assert periodic.start_if_due() is True
    wait_until(lambda: len(work.threads) == 2 and not periodic.running, "the run", WAIT_SECONDS)


def test_stopped_work_never_starts_again() -> None:
    clock, work = FakeClock(), Work()
    periodic = PeriodicWork("test-work", work, 1.0, clock)
    periodic.schedule()
    periodic.stop()
    periodic.schedule()
    clock.advance(100)
    assert periodic.start_if_due() is False
    assert work.threads == []


def test_reading_the_model_starts_no_refresh() -> None:
    registry, store, clock = FakeRegistry("1"), FakeStore(), FakeClock()
    holder = make_loader(registry, store, clock)
    holder.get()
    clock.advance(3600)

    for _ in range(20):
        assert holder.get().version == "1"

    assert not holder.refreshing
    assert registry.resolutions == [ALIAS_URI]


@pytest.mark.parametrize("outcome", ["predicted", "rejected", "failed"])
def test_the_service_starts_the_due_work_after_each_message_whatever_its_outcome(
    outcome: str,
) -> None:
    registry, store, clock = FakeRegistry("1"), FakeStore(), FakeClock()
    holder = make_loader(registry, store, clock)
    holder.get()
    if outcome == "failed":  # a transient failure: the model is not loaded in time
        holder = ModelHolder("memory://", "m", load_timeout_seconds=0.01, load=hang)
    exports = Work()
    telemetry = PredictionTelemetry(clock=clock)
    telemetry.export_work = PeriodicWork("metrics-export", exports, 60.0, clock)
    telemetry.export_work.schedule()
    settings = main.Settings(model_uri=ALIAS_URI, project_id="p", model_name="m")
    service = main.PredictionService(settings, holder, RecordingPublisher(), telemetry)
    registry.version = "2"
    clock.advance(60)

    ride = {"ride": {"PULocationID": 1, "DOLocationID": 2, "trip_distance": 1.0}, "ride_id": 1}
    if outcome == "predicted":
        assert service.handle(pubsub_event_data(ride)) is not None
    elif outcome == "rejected":
        assert service.handle(pubsub_event_data(b"{")) is None
    else:
        with pytest.raises(ModelLoadError):
            service.handle(pubsub_event_data(ride))

    wait_until(lambda: exports.threads == ["metrics-export"], "the export", WAIT_SECONDS)
    if outcome != "failed":  # a holder with no model has no refresh to do
        wait_until(lambda: not holder.refreshing, "the refresh", WAIT_SECONDS)
        assert holder.get().version == "2"


def hang(uri: str, name: str, override: str | None) -> Any:
    """A load that never finishes in a test's time."""
    threading.Event().wait(WAIT_SECONDS)
    raise OSError("gave up")
