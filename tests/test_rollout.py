"""Rollout on the local stack: the function follows models:/ride-duration@champion as the alias
moves, through a real MLflow tracking server, while rides keep flowing.

One stack for the module, with ``MODEL_REFRESH_SECONDS=0.3``; every test starts and ends with
the alias on version 1 and the function serving it.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devstack.processes import wait_until
from devstack.stack import LocalStack, StackConfig
from devstack.storage import delete_prefix, storage_client, upload_directory
from tests.conftest import ModelFixture, unique

REFRESH_SECONDS = 0.3
# Generous bounds on conditions that normally hold within a second or two.
SWAP_TIMEOUT_SECONDS = 60.0
MAX_RIDES = 6000
# Between two rides a stream publishes: ~100 rides/s keeps the function busy without flooding
# the emulator (pacing the load, not waiting for a condition).
PUBLISH_INTERVAL_SECONDS = 0.01
pytestmark = pytest.mark.emulator


@pytest.fixture(scope="module")
def rollout_stack(
    test_model: ModelFixture, second_model: ModelFixture, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalStack]:
    """The stack serving ``test_model`` as version 1, with ``second_model`` registered as 2."""
    config = StackConfig(
        work_dir=tmp_path_factory.mktemp("rollout-stack"),
        model_dir=Path(test_model.path),
        model_refresh_seconds=REFRESH_SECONDS,
    )
    with LocalStack(config) as stack:
        assert stack.promote(model_dir=Path(second_model.path)) == ("1", "2")
        move_alias(stack, "1")
        yield stack


def registry(stack: LocalStack) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=stack.mlflow_server.url, registry_uri=stack.mlflow_server.url)


def move_alias(stack: LocalStack, version: str) -> None:
    registry(stack).set_registered_model_alias(
        stack.config.registered_model, stack.config.alias, version
    )


def features(ride: dict[str, Any]) -> dict[str, Any]:
    """The course's features, written out here so the check does not reuse the code it checks."""
    return {
        "PU_DO": f"{ride['PULocationID']}_{ride['DOLocationID']}",
        "trip_distance": ride["trip_distance"],
    }


def distinguishing_rides(models: dict[str, ModelFixture], count: int) -> list[dict[str, Any]]:
    """Rides on which every version predicts a different whole number of minutes."""
    rides = []
    for i in range(count * 20):
        ride = {
            "PULocationID": 1 + i % 97,
            "DOLocationID": 1 + (i * 7) % 89,
            "trip_distance": round(0.5 + (i % 31) * 0.7, 2),
        }
        predictions = {model.expected_duration(features(ride)) for model in models.values()}
        if len(predictions) == len(models):
            rides.append(ride)
        if len(rides) == count:
            return rides
    raise AssertionError("no rides tell the versions apart")


class RideStream:
    """Publishes rides to Stream A on a thread until stopped, and pulls every prediction."""

    def __init__(self, stack: LocalStack, rides: list[dict[str, Any]]) -> None:
        self.stack = stack
        self.rides = rides
        self.subscription = unique("rollout")
        stack.admin.create_subscription(self.subscription, stack.config.output_topic)
        self.sent: dict[str, dict[str, Any]] = {}
        self.received: list[tuple[dict[str, Any], dict[str, str]]] = []
        self._stop = threading.Event()
        self._prefix = uuid.uuid4().hex[:6]
        self._publisher = threading.Thread(target=self._publish, daemon=True)
        self._puller = threading.Thread(target=self._pull, daemon=True)
        self._pulling = True

    def __enter__(self) -> RideStream:
        self._publisher.start()
        self._puller.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._publisher.join()
        self._pulling = False
        self._puller.join()

    def _publish(self) -> None:
        while not self._stop.is_set() and len(self.sent) < MAX_RIDES:
            ride = self.rides[len(self.sent) % len(self.rides)]
            ride_id = f"{self._prefix}-{len(self.sent)}"
            self.sent[ride_id] = ride
            self.stack.admin.publish(
                self.stack.config.input_topic,
                json.dumps({"ride": ride, "ride_id": ride_id}).encode(),
            )
            self._stop.wait(PUBLISH_INTERVAL_SECONDS)

    def _pull(self) -> None:
        while self._pulling:
            for message in self.stack.admin.pull(self.subscription, 100, timeout_seconds=0.5):
                self.received.append((json.loads(message.data), message.attributes))

    def published(self) -> int:
        return len(self.sent)

    def latest_versions(self, after: int, count: int = 10) -> set[str] | None:
        """Versions of the ``count`` last-published rides predicted so far among those published
        after the ``after``-th; None while fewer have a prediction."""
        latest = sorted(
            (int(str(body["prediction"]["ride_id"]).rsplit("-", 1)[1]), body["version"])
            for body, _ in list(self.received)
        )
        latest = [item for item in latest if item[0] >= after][-count:]
        return {version for _, version in latest} if len(latest) == count else None

    def stop_and_collect(self) -> None:
        """Stop publishing and wait until every published ride has a prediction."""
        self._stop.set()
        self._publisher.join()
        wait_until(
            lambda: (
                len({body["prediction"]["ride_id"] for body, _ in self.received}) >= len(self.sent)
            ),
            "a prediction for every ride",
            SWAP_TIMEOUT_SECONDS,
        )
        remaining = self.stack.admin.drain(self.subscription, quiet_seconds=1.0)
        self.received += [(json.loads(m.data), m.attributes) for m in remaining]


def wait_for_version(stream: RideStream, version: str) -> None:
    """Wait until rides published from now on are predicted by ``version`` only."""
    start = stream.published()
    wait_until(
        lambda: stream.latest_versions(after=start) == {version},
        f"predictions by version {version}",
        SWAP_TIMEOUT_SECONDS,
    )


def function_log(stack: LocalStack, since: int = 0) -> list[dict[str, Any]]:
    """The function's JSON log lines, from line ``since`` on."""
    assert stack.function is not None
    lines = stack.function.log_path.read_text().splitlines()[since:]
    return [json.loads(line) for line in lines if line.startswith("{")]


def log_length(stack: LocalStack) -> int:
    assert stack.function is not None
    return len(stack.function.log_path.read_text().splitlines())


def assert_each_ride_once_by_the_version_named(
    stream: RideStream, models: dict[str, ModelFixture]
) -> None:
    ride_ids = [body["prediction"]["ride_id"] for body, _ in stream.received]
    assert sorted(ride_ids) == sorted(stream.sent)  # every ride, none twice
    for body, attributes in stream.received:
        ride = stream.sent[body["prediction"]["ride_id"]]
        assert attributes["model_version"] == body["version"]
        expected = models[body["version"]].expected_duration(features(ride))
        assert body["prediction"]["ride_duration"] == expected, body


def assert_every_push_answered_2xx(
    stack: LocalStack, log: list[dict[str, Any]], stream: RideStream
) -> None:
    """A push answered otherwise is redelivered (so handled twice), and a raise leaves a
    traceback: each message handled once, no traceback."""
    handled = [line["message_id"] for line in log if line["message"] == "prediction published"]
    assert len(handled) == len(set(handled)) == len(stream.sent)
    assert stack.function is not None
    assert "Traceback" not in stack.function.log_path.read_text()


def test_alias_moves_v1_v2_v1_while_rides_flow(
    rollout_stack: LocalStack, test_model: ModelFixture, second_model: ModelFixture
) -> None:
    models = {"1": test_model, "2": second_model}
    since = log_length(rollout_stack)
    with RideStream(rollout_stack, distinguishing_rides(models, 50)) as stream:
        wait_for_version(stream, "1")
        assert rollout_stack.promote(version="2") == ("1", "2")  # python -m training.promote
        wait_for_version(stream, "2")
        assert rollout_stack.promote(version="1") == ("2", "1")
        wait_for_version(stream, "1")
        stream.stop_and_collect()

    assert_each_ride_once_by_the_version_named(stream, models)
    assert {body["version"] for body, _ in stream.received} == {"1", "2"}
    log = function_log(rollout_stack, since)
    swaps = [
        (line["from_version"], line["model_version"])
        for line in log
        if line["message"] == "model swapped"
    ]
    assert swaps == [("1", "2"), ("2", "1")]  # one instance, one switch per move: no flapping
    assert_every_push_answered_2xx(rollout_stack, log, stream)
    assert [line for line in log if line["severity"] == "ERROR"] == []


def test_tracking_server_down_then_back_the_next_move_is_picked_up(
    rollout_stack: LocalStack, test_model: ModelFixture, second_model: ModelFixture
) -> None:
    models = {"1": test_model, "2": second_model}
    since = log_length(rollout_stack)
    with RideStream(rollout_stack, distinguishing_rides(models, 50)) as stream:
        wait_for_version(stream, "1")
        rollout_stack.mlflow_server.stop()
        try:
            wait_until(
                lambda: any(
                    line["severity"] == "ERROR" for line in function_log(rollout_stack, since)
                ),
                "a failed refresh",
                SWAP_TIMEOUT_SECONDS,
            )
            wait_for_version(stream, "1")  # still answering, with the version it has
        finally:
            rollout_stack.mlflow_server.start()
        move_alias(rollout_stack, "2")
        wait_for_version(stream, "2")
        move_alias(rollout_stack, "1")
        wait_for_version(stream, "1")
        stream.stop_and_collect()

    assert_each_ride_once_by_the_version_named(stream, models)
    log = function_log(rollout_stack, since)
    errors = [line for line in log if line["severity"] == "ERROR"]
    assert errors
    assert all(line["message"].startswith("model refresh failed") for line in errors)
    assert_every_push_answered_2xx(rollout_stack, log, stream)


def test_alias_on_a_version_whose_artifacts_were_deleted_keeps_serving(
    rollout_stack: LocalStack, test_model: ModelFixture, second_model: ModelFixture
) -> None:
    config = rollout_stack.config
    gcs = storage_client(rollout_stack.storage_emulator.url, config.project_id)
    source = f"{config.artifact_root}/{unique('deleted')}/artifacts/model"
    upload_directory(gcs, Path(second_model.path), source)
    version = registry(rollout_stack).create_model_version(config.registered_model, source).version
    delete_prefix(gcs, source)
    models = {"1": test_model}
    since = log_length(rollout_stack)
    with RideStream(rollout_stack, distinguishing_rides(models, 50)) as stream:
        wait_for_version(stream, "1")
        move_alias(rollout_stack, str(version))
        wait_until(
            lambda: (
                len(
                    [
                        line
                        for line in function_log(rollout_stack, since)
                        if line["severity"] == "ERROR"
                    ]
                )
                >= 3
            ),
            "three failed refreshes",
            SWAP_TIMEOUT_SECONDS,
        )
        wait_for_version(stream, "1")
        move_alias(rollout_stack, "1")
        stream.stop_and_collect()

    assert_each_ride_once_by_the_version_named(stream, models)
    log = function_log(rollout_stack, since)
    errors = [line for line in log if line["severity"] == "ERROR"]
    assert all(line["message"].startswith("model refresh failed") for line in errors)
    assert all(line["model_version"] == "1" for line in errors)
    assert_every_push_answered_2xx(rollout_stack, log, stream)
    # One ERROR per refresh, not per message: far fewer errors than rides handled while the
    # alias named the broken version, and one per refresh attempt at most.
    handled = [line for line in log if line["message"] == "prediction published"]
    assert len(errors) < len(handled) / 5
    failed_refreshes = {line["time"] for line in errors}
    assert len(failed_refreshes) == len(errors)
