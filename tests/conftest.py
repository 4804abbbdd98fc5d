"""Shared fixtures: a real MLflow model trained once per session, the emulators, fakes."""

from __future__ import annotations

import base64
import json
import logging
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cloudevents.http import CloudEvent

from devstack.emulators import PubSubEmulator, StorageEmulator
from devstack.function_server import FunctionServer
from devstack.moto_server import MotoServer
from devstack.pubsub_admin import PubSubAdmin
from devstack.storage import storage_client
from ride_predictor.json_logging import CloudLoggingFormatter
from ride_predictor.publisher import OutgoingMessage
from training.dataset import generate_rides
from training.train import LoggedModel, log_model, split_rides, train

DATA_DIR = Path(__file__).parent / "data"
# The features of the tutorial's sample ride (tests/data/sample_ride.json).
SAMPLE_FEATURES = {"PU_DO": "130_205", "trip_distance": 3.66}


def ride_features(ride: Mapping[str, Any]) -> dict[str, Any]:
    """The course model's features for ``ride``, built by the test, not by ``features.py``.

    Expected outputs never come from the code under test: built with production
    ``prepare_features``, a bug in it would move the expected and the actual values together.
    These are the tutorial's own two lines, written out again.
    """
    return {
        "PU_DO": f"{ride['PULocationID']}_{ride['DOLocationID']}",
        "trip_distance": ride["trip_distance"],
    }


PROJECT_ID = "test-project"
REGISTERED_NAME = "ride-duration-test"


def load_json(name: str) -> Any:
    """A JSON file from ``tests/data``."""
    return json.loads((DATA_DIR / name).read_text())


def pubsub_event_data(
    payload: bytes | str | Any, message_id: str = "msg-1", attributes: dict | None = None
) -> dict[str, Any]:
    """The ``data`` of a Pub/Sub CloudEvent carrying ``payload`` (JSON-encoded unless bytes)."""
    if isinstance(payload, str):
        encoded = payload  # already base64 (or deliberately not)
    else:
        raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        encoded = base64.b64encode(raw).decode()
    return {
        "message": {
            "data": encoded,
            "messageId": message_id,
            "publishTime": "2024-01-08T08:22:49.792Z",
            "attributes": attributes or {},
        },
        "subscription": f"projects/{PROJECT_ID}/subscriptions/taxi-ride-sub",
    }


def pubsub_cloud_event(payload: Any, message_id: str = "msg-1") -> CloudEvent:
    """A CloudEvent as Eventarc delivers a Pub/Sub message."""
    return CloudEvent(
        {
            "type": "google.cloud.pubsub.topic.v1.messagePublished",
            "source": f"//pubsub.googleapis.com/projects/{PROJECT_ID}/topics/taxi-ride-streaming",
            "id": message_id,
        },
        pubsub_event_data(payload, message_id),
    )


class RecordingPublisher:
    """An in-memory publisher that records what it got; can be told to fail."""

    def __init__(self) -> None:
        self.published: list[tuple[str, OutgoingMessage]] = []
        self.failure: Exception | None = None

    def publish(self, topic: str, messages: Sequence[OutgoingMessage]) -> list[str]:
        if self.failure is not None:
            raise self.failure
        self.published.extend((topic, message) for message in messages)
        return [str(len(self.published) - i) for i in range(len(messages))]

    def to(self, topic: str) -> list[OutgoingMessage]:
        """Messages published to ``topic``."""
        return [message for published_topic, message in self.published if published_topic == topic]

    def json_to(self, topic: str) -> list[Any]:
        """Decoded JSON bodies published to ``topic``."""
        return [json.loads(message.data) for message in self.to(topic)]


@dataclass(frozen=True)
class ModelFixture:
    """A model logged to the session's MLflow store, plus the fitted pipeline to compare with."""

    logged: LoggedModel
    pipeline: Any

    @property
    def path(self) -> str:
        """The logged model's local artifact directory (a ``MODEL_URI``)."""
        return self.logged.artifact_location

    def expected_duration(self, features: dict[str, Any]) -> int:
        """The pipeline's own prediction for one ride, rounded as the function rounds.

        ``features``: literal, or from ``ride_features``; never from ``features.py``.
        """
        return round(float(self.pipeline.predict([features])[0]))

    def expected_message(self, ride_id: int | str, features: dict[str, Any]) -> dict[str, Any]:
        """The output message of docs/design.md for one ride, from the pipeline itself."""
        return {
            "model": "ride_duration_prediction_model",
            "version": self.logged.run_id,
            "prediction": {"ride_duration": self.expected_duration(features), "ride_id": ride_id},
        }


@pytest.fixture(scope="session")
def mlflow_tracking_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A private SQLite MLflow store for the whole session (never the repo's own)."""
    store = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{store / 'mlflow.db'}"
    import mlflow

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        mlflow.set_tracking_uri(uri)
        yield uri
    mlflow.set_tracking_uri("")


@pytest.fixture(scope="session")
def trained(mlflow_tracking_uri: str) -> Any:
    """A small course pipeline fitted on synthetic rides."""
    rides = generate_rides(n_rides=3000, n_zones=20, seed=7)
    train_rides, validation_rides = split_rides([rides], seed=7)
    return train(train_rides, validation_rides)


@pytest.fixture(scope="session")
def test_model(trained: Any, tmp_path_factory: pytest.TempPathFactory) -> ModelFixture:
    """The pipeline logged as cloudpickle and registered with the alias ``champion``."""
    logged = log_model(
        trained,
        experiment="tests",
        artifact_location=str(tmp_path_factory.mktemp("artifacts")),
        register_name=REGISTERED_NAME,
        alias="champion",
    )
    return ModelFixture(logged, trained.pipeline)


@pytest.fixture(scope="session")
def skops_model(trained: Any, test_model: ModelFixture) -> ModelFixture:
    """The same pipeline logged in the skops format (MLflow 3's default)."""
    logged = log_model(trained, experiment="tests", serialization_format="skops")
    return ModelFixture(logged, trained.pipeline)


@pytest.fixture
def recording_publisher() -> RecordingPublisher:
    return RecordingPublisher()


@pytest.fixture
def json_logs() -> Iterator[list[dict[str, Any]]]:
    """Every log line of the function, as the JSON objects written to stdout."""
    lines: list[dict[str, Any]] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(json.loads(self.format(record)))

    handler = Collect()
    handler.setFormatter(CloudLoggingFormatter())
    logger = logging.getLogger("ride_predictor")
    logger.addHandler(handler)
    yield lines
    logger.removeHandler(handler)


@pytest.fixture(scope="session")
def emulator_logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("emulator-logs")


@pytest.fixture(scope="session")
def pubsub_emulator(emulator_logs: Path) -> Iterator[PubSubEmulator]:
    """The real Pub/Sub emulator, on a free port, for the session."""
    emulator = PubSubEmulator(PROJECT_ID, emulator_logs).start()
    yield emulator
    emulator.stop()


@pytest.fixture(scope="session")
def storage_emulator(emulator_logs: Path) -> Iterator[StorageEmulator]:
    """gcp-storage-emulator, on a free port, for the session."""
    emulator = StorageEmulator(emulator_logs).start()
    yield emulator
    emulator.stop()


@pytest.fixture
def pubsub(
    pubsub_emulator: PubSubEmulator, monkeypatch: pytest.MonkeyPatch
) -> Iterator[PubSubAdmin]:
    """Admin access to the emulator; the code under test reaches it via PUBSUB_EMULATOR_HOST."""
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", pubsub_emulator.host)
    admin = PubSubAdmin(pubsub_emulator.host, PROJECT_ID)
    yield admin
    admin.close()


@pytest.fixture
def streams(pubsub: PubSubAdmin) -> dict[str, str]:
    """Fresh output and dead-letter topics on the emulator, each with a pull subscription
    (``<topic>-sub``)."""
    names = {"output": unique("ride-predictions"), "dead_letter": unique("ride-dead-letter")}
    for topic in names.values():
        pubsub.create_topic(topic)
        pubsub.create_subscription(f"{topic}-sub", topic)
    return names


@pytest.fixture
def gcs(storage_emulator: StorageEmulator, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A storage client on the emulator; MLflow reaches it via STORAGE_EMULATOR_HOST."""
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", storage_emulator.url)
    return storage_client(storage_emulator.url, PROJECT_ID)


@pytest.fixture(scope="session")
def moto_server(emulator_logs: Path) -> Iterator[MotoServer]:
    """moto's standalone AWS API server (Kinesis, S3), on a free port, for the session."""
    server = MotoServer(emulator_logs).start()
    yield server
    server.stop()


@pytest.fixture
def aws_env(moto_server: MotoServer, monkeypatch: pytest.MonkeyPatch) -> MotoServer:
    """Point boto3 and MLflow at the moto server, with test credentials and nothing else.

    The developer's own AWS profile, config and credentials files are hidden, so no test can
    reach a real account.
    """
    for name, value in moto_server.client_environment().items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(DATA_DIR / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(DATA_DIR / "no-aws-credentials"))
    return moto_server


def unique(prefix: str) -> str:
    """A resource name no other test uses."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="session")
def second_model(
    test_model: ModelFixture, tmp_path_factory: pytest.TempPathFactory
) -> ModelFixture:
    """A model trained on other rides (other zones, seed and size), so that its predictions
    differ from ``test_model``'s: the version 2 that rollout tests promote."""
    rides = generate_rides(n_rides=2000, n_zones=15, seed=99)
    train_rides, validation_rides = split_rides([rides], seed=99)
    trained_v2 = train(train_rides, validation_rides)
    logged = log_model(
        trained_v2,
        experiment="tests",
        artifact_location=str(tmp_path_factory.mktemp("artifacts-v2")),
    )
    return ModelFixture(logged, trained_v2.pipeline)


def push_body(data: bytes | str, message_id: str, attributes: dict | None = None) -> bytes:
    """The body of a Pub/Sub push request (``data`` is base64-encoded unless already a str)."""
    encoded = data if isinstance(data, str) else base64.b64encode(data).decode()
    return json.dumps(
        {
            "message": {
                "data": encoded,
                "messageId": message_id,
                "publishTime": "2024-01-08T08:22:49.792Z",
                "attributes": attributes or {},
            },
            "subscription": f"projects/{PROJECT_ID}/subscriptions/taxi-ride-streaming-push",
        }
    ).encode()


def push(server: FunctionServer, body: bytes) -> tuple[int, str]:
    """POST one push request to the function, as the emulator does; return the HTTP status and
    the answer's text."""
    request = urllib.request.Request(  # noqa: S310 - a local URL
        server.push_endpoint(PROJECT_ID, "taxi-ride-streaming"),
        data=body,
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as response:  # noqa: S310
            return response.status, response.read().decode(errors="replace")
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(errors="replace")


def deliver(server: FunctionServer, body: bytes) -> int:
    """POST one push request to the function, as the emulator does; return the HTTP status."""
    return push(server, body)[0]


def function_log(server: FunctionServer) -> list[dict[str, Any]]:
    """The function's JSON log lines (other lines, e.g. gunicorn's, are skipped)."""
    lines = []
    for line in server.log_path.read_text().splitlines():
        if line.startswith("{"):
            lines.append(json.loads(line))
    return lines


ServeFunction = Callable[..., FunctionServer]


@pytest.fixture
def serve_function(
    pubsub_emulator: PubSubEmulator, storage_emulator: StorageEmulator, tmp_path: Path
) -> Iterator[ServeFunction]:
    """Start functions-framework processes wired to the emulators; all stopped afterwards."""
    servers: list[FunctionServer] = []

    def start(**env: str) -> FunctionServer:
        server = FunctionServer(
            {
                "PROJECT_ID": PROJECT_ID,
                "PUBSUB_EMULATOR_HOST": pubsub_emulator.host,
                "STORAGE_EMULATOR_HOST": storage_emulator.url,
                **env,
            },
            tmp_path,
            log_name=f"function-{len(servers)}.log",
        )
        servers.append(server)
        return server.start()

    yield start
    for server in servers:
        server.stop()
