"""End to end on the local stack: Stream A → push → functions-framework → Stream B."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devstack.processes import group_members, http_status
from devstack.push_subscription import load_push_settings
from devstack.stack import LocalStack, StackConfig, stack_processes
from tests.conftest import ModelFixture, load_json, ride_features, unique

REPO_ROOT = Path(__file__).resolve().parent.parent
# Every test runs the stack (some start it themselves, as `make demo` does).
pytestmark = pytest.mark.emulator


@pytest.fixture(scope="module")
def local_stack(
    test_model: ModelFixture, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalStack]:
    """The whole stack, serving the session's test model from the GCS emulator."""
    config = StackConfig(work_dir=tmp_path_factory.mktemp("stack"), model_dir=Path(test_model.path))
    with LocalStack(config) as stack:
        yield stack


def _fresh_output_subscription(stack: LocalStack) -> str:
    """A pull subscription on Stream B that sees only what is published from now on."""
    subscription = unique("predictions-check")
    stack.admin.create_subscription(subscription, stack.config.output_topic)
    return subscription


def test_200_rides_each_predicted_exactly_once(
    local_stack: LocalStack, test_model: ModelFixture
) -> None:
    subscription = _fresh_output_subscription(local_stack)
    batch = uuid.uuid4().hex[:8]
    rides = {
        f"{batch}-{i}": {
            "PULocationID": 1 + i % 37,
            "DOLocationID": 1 + (i * 7) % 41,
            "trip_distance": round(0.3 + (i % 25) * 0.9, 2),
        }
        for i in range(200)
    }
    for ride_id, ride in rides.items():
        local_stack.admin.publish(
            local_stack.config.input_topic,
            json.dumps({"ride": ride, "ride_id": ride_id}).encode(),
        )

    received = local_stack.admin.pull(subscription, expected=200, timeout_seconds=120)
    received += local_stack.admin.drain(subscription, quiet_seconds=2)  # anything extra?

    ride_ids = [json.loads(m.data)["prediction"]["ride_id"] for m in received]
    assert sorted(ride_ids) == sorted(rides)  # all 200, none twice
    for message in received:
        prediction = json.loads(message.data)
        ride_id = prediction["prediction"]["ride_id"]
        # Served as models:/ride-duration@champion: labelled with the registry version.
        expected = test_model.expected_message(ride_id, ride_features(rides[ride_id]))
        assert prediction == {**expected, "version": "1"}
        assert message.attributes["ride_id"] == ride_id
        assert message.attributes["model_version"] == "1"
        assert message.attributes["source_message_id"]


def test_stream_a_is_pushed_with_productions_subscription_settings(
    local_stack: LocalStack,
) -> None:
    config = local_stack.config
    path = local_stack.admin.subscription_path(config.push_subscription)
    live = local_stack.admin.subscriber.get_subscription(subscription=path)

    settings = load_push_settings()  # push-subscription.env, which deploy.sh reads too
    assert live.ack_deadline_seconds == settings.ack_deadline_seconds
    assert live.retry_policy.minimum_backoff.seconds == settings.min_retry_delay_seconds
    assert live.retry_policy.maximum_backoff.seconds == settings.max_retry_delay_seconds
    assert live.dead_letter_policy.max_delivery_attempts == settings.max_delivery_attempts
    assert live.dead_letter_policy.dead_letter_topic.endswith(f"/{config.dead_letter_topic}")
    assert not live.expiration_policy.ttl  # never expires
    assert live.push_config.push_endpoint.endswith(f"/topics/{config.input_topic}")
    # The raw push's `subscription` does not survive functions-framework's conversion.
    assert local_stack.function is not None
    assert local_stack.function.env["SOURCE_SUBSCRIPTION"] == path


def _gcloud(stack: LocalStack, config_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        **stack.state.gcloud_env(),
        "CLOUDSDK_CONFIG": str(config_dir),
        "CLOUDSDK_CORE_DISABLE_PROMPTS": "1",
    }
    return subprocess.run(
        ["gcloud", *args], env=env, capture_output=True, text=True, timeout=120, check=True
    )


def test_tutorial_gcloud_commands_carry_a_ride_to_its_prediction(
    local_stack: LocalStack, test_model: ModelFixture, tmp_path: Path
) -> None:
    config = local_stack.config
    local_stack.admin.drain(config.output_subscription, quiet_seconds=0.5)
    message = (REPO_ROOT / "tests" / "data" / "sample_ride.json").read_text()

    published = _gcloud(
        local_stack, tmp_path, "pubsub", "topics", "publish", config.input_topic,
        "--message", message,
    )  # fmt: skip
    assert "messageIds" in published.stdout

    # The tutorial's step 06, polled until the prediction is there (gcloud returns at once).
    predictions: list[Any] = []
    deadline = time.monotonic() + 60
    while not predictions and time.monotonic() < deadline:
        pulled = _gcloud(
            local_stack, tmp_path, "pubsub", "subscriptions", "pull",
            config.output_subscription, "--auto-ack", "--format=json", "--limit=10",
        )  # fmt: skip
        predictions = [json.loads(item["message"]["data_decoded"]) for item in _decoded(pulled)]
    sample = load_json("sample_ride.json")
    expected = test_model.expected_message(123, ride_features(sample["ride"]))
    assert predictions == [{**expected, "version": "1"}]


def _decoded(pulled: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    """``jq -r '.[].message.data' | base64 --decode``, in Python."""
    import base64

    items = json.loads(pulled.stdout or "[]")
    for item in items:
        item["message"]["data_decoded"] = base64.b64decode(item["message"]["data"])
    return items


def test_after_the_stack_stops_no_process_of_it_is_left(
    test_model: ModelFixture, tmp_path: Path
) -> None:
    stack = LocalStack(StackConfig(work_dir=tmp_path, model_dir=Path(test_model.path)))
    with stack:
        groups = dict(stack.state.process_groups)
        urls = [stack.state.function_url, stack.state.storage_url]
        tagged = stack_processes(tmp_path)
        stack.save_state()
        env_sh = (tmp_path / "env.sh").read_text()
        assert f"export MLFLOW_TRACKING_URI={stack.state.mlflow_url}\n" in env_sh
        # gcloud + java, storage emulator, mlflow server + uvicorn, functions-framework
        assert len(tagged) >= 6
    assert set(groups) == {"pubsub-emulator", "storage-emulator", "mlflow-server", "function"}
    assert all(group_members(group) == [] for group in groups.values())
    assert stack_processes(tmp_path) == []
    assert [http_status(url) for url in urls] == [None, None]


def test_demo_command_prints_ride_123_and_leaves_nothing(
    test_model: ModelFixture, second_model: ModelFixture, tmp_path: Path
) -> None:
    # The demo's version 2, as a previous run would have cached it (saves training it here).
    shutil.copytree(second_model.path, tmp_path / "model-v2")
    result = subprocess.run(
        [sys.executable, "-m", "devstack", "demo", f"--work-dir={tmp_path}",
         f"--model-dir={test_model.path}"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    assert '"ride_id": 123' in result.stdout
    assert '"version": "1"' in result.stdout
    assert "4/4 predictions received" in result.stdout
    assert "Promoted ride-duration@champion: version 1 -> 2" in result.stdout
    assert '"version": "2", "prediction": {"ride_duration":' in result.stdout
    assert " 0 lost" in result.stdout
    assert stack_processes(tmp_path) == []


def test_ctrl_c_tears_everything_down(test_model: ModelFixture, tmp_path: Path) -> None:
    serve = subprocess.Popen(
        [sys.executable, "-m", "devstack", "serve", f"--work-dir={tmp_path}",
         f"--model-dir={test_model.path}"],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        start_new_session=True,
    )  # fmt: skip
    assert serve.stdout is not None
    for line in serve.stdout:  # wait until the stack says it is running
        if "Ctrl-C stops it" in line:
            break
    assert len(stack_processes(tmp_path)) >= 6

    serve.send_signal(signal.SIGINT)  # what Ctrl-C sends to the foreground process
    serve.communicate(timeout=120)

    assert serve.returncode == 0
    assert stack_processes(tmp_path) == []
