"""MLflow's pickle switch holds on every loading path, on both clouds.

A crafted model (an sklearn-flavour MLmodel whose pickle writes a marker file when it is
unpickled) is served with ``MLFLOW_ALLOW_PICKLE_DESERIALIZATION=false`` from every kind of
``MODEL_URI``: ``gs://`` (the GCS emulator), a local path, ``runs:/`` and ``models:/`` (an MLflow
tracking server), through the function's public surface (its environment and HTTP, as a
functions-framework process), and through the Lambda's handler (a local path, ``s3://`` on moto).
Every time the load is refused as MLflow refuses it, the request fails as a model-load failure,
and the marker is never written. The first tests show that the crafted pickle does run when
the switch allows it, so that the refusals mean something.
"""

from __future__ import annotations

import json
import pickle
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

import lambda_function
from devstack.aws_admin import upload_directory as upload_to_s3
from devstack.mlflow_server import MlflowServer
from devstack.moto_server import MotoServer
from devstack.storage import upload_directory
from ride_predictor import loaders
from ride_predictor.errors import ModelLoadError
from ride_predictor.loaders import load_model
from ride_predictor.model_holder import ModelHolder
from tests.aws_events import SAMPLE_RIDE, kinesis_event
from tests.conftest import ServeFunction, deliver, function_log, push_body, unique

SWITCH = "MLFLOW_ALLOW_PICKLE_DESERIALIZATION"
RIDE = json.dumps(
    {"ride": {"PULocationID": 130, "DOLocationID": 205, "trip_distance": 3.66}, "ride_id": 1}
).encode()


class WritesMarker:
    """Unpickled, it writes ``marker``: the code a model bucket's writer could run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (exec, (f"open({str(self.marker)!r}, 'w').write('model code ran')",))


def crafted_model(directory: Path, marker: Path, serialization_format: str) -> Path:
    """An MLflow model directory (sklearn flavour) whose pickle writes ``marker``."""
    directory.mkdir(parents=True)
    (directory / "model.pkl").write_bytes(pickle.dumps(WritesMarker(marker)))
    (directory / "MLmodel").write_text(
        textwrap.dedent(
            f"""\
            artifact_path: model
            flavors:
              python_function:
                loader_module: mlflow.sklearn
                model_path: model.pkl
                python_version: 3.11.7
              sklearn:
                code: null
                pickled_model: model.pkl
                serialization_format: {serialization_format}
                sklearn_version: 1.9.1
            mlflow_version: 3.17.2
            model_uuid: {uuid.uuid4().hex}
            run_id: {uuid.uuid4().hex}
            """
        )
    )
    return directory


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    return tmp_path / "marker.txt"


@pytest.fixture
def crafted(tmp_path: Path, marker: Path) -> Path:
    return crafted_model(tmp_path / "model", marker, "cloudpickle")


def try_load(model_uri: str) -> Exception | None:
    try:
        load_model(model_uri, "m", None)
    except Exception as error:
        return error
    return None


def test_the_loader_reads_mlflows_own_switch_and_default() -> None:
    from mlflow.environment_variables import MLFLOW_ALLOW_PICKLE_DESERIALIZATION

    # The direct path skips MLflow only while the switch is unset, where MLflow allows pickles.
    assert loaders.PICKLE_SWITCH == MLFLOW_ALLOW_PICKLE_DESERIALIZATION.name == SWITCH
    assert MLFLOW_ALLOW_PICKLE_DESERIALIZATION.default is True


@pytest.mark.parametrize("serialization_format", ["cloudpickle", "pickle"])
def test_unset_the_crafted_pickle_runs_as_mlflow_would_run_it(
    tmp_path: Path, marker: Path, monkeypatch: pytest.MonkeyPatch, serialization_format: str
) -> None:
    monkeypatch.delenv(SWITCH, raising=False)
    model_dir = crafted_model(tmp_path / "model", marker, serialization_format)

    try_load(str(model_dir))

    assert marker.read_text() == "model code ran"


@pytest.mark.parametrize("allowed", ["true", "1", "TRUE"])
def test_set_to_allow_the_crafted_pickle_runs(
    crafted: Path, marker: Path, monkeypatch: pytest.MonkeyPatch, allowed: str
) -> None:
    monkeypatch.setenv(SWITCH, allowed)
    try_load(str(crafted))
    assert marker.exists()


@pytest.mark.parametrize("serialization_format", ["cloudpickle", "pickle"])
@pytest.mark.parametrize("refused", ["false", "0", "False"])
def test_set_to_refuse_a_local_pickle_is_refused_as_mlflow_refuses_it(
    tmp_path: Path,
    marker: Path,
    monkeypatch: pytest.MonkeyPatch,
    refused: str,
    serialization_format: str,
) -> None:
    monkeypatch.setenv(SWITCH, refused)
    model_dir = crafted_model(tmp_path / "model", marker, serialization_format)

    error = try_load(str(model_dir))

    assert error is not None
    assert f"Deserializing this model is disallowed because '{SWITCH}'" in str(error)
    assert not marker.exists()


def test_a_value_mlflow_does_not_know_fails_the_load_as_in_mlflow(
    crafted: Path, marker: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SWITCH, "no")
    error = try_load(str(crafted))
    assert isinstance(error, ValueError)
    assert f"{SWITCH} value must be one of" in str(error)
    assert not marker.exists()


def test_a_refused_model_is_a_model_load_failure_with_the_reason(
    crafted: Path, marker: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SWITCH, "false")
    loader = ModelHolder(str(crafted), "m")
    with pytest.raises(ModelLoadError, match=f"disallowed because '{SWITCH}'"):
        loader.get()
    assert not marker.exists()


# The public surface: a functions-framework process per kind of URI, configured only by its
# environment, reached over HTTP.


@pytest.fixture(scope="module")
def tracking_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """An MLflow tracking server whose artifacts sit in a local folder (clients read it)."""
    root = tmp_path_factory.mktemp("pickle-switch-registry")
    server = MlflowServer(
        root / "mlflow.db",
        str(root / "artifacts"),
        root,
        extra_env={"MLFLOW_DISABLE_TELEMETRY": "true"},
    ).start(fresh=True)
    yield server
    server.stop()


def register_crafted(server: MlflowServer, model_dir: Path) -> tuple[str, str]:
    """Log ``model_dir`` in a run and register it; return (its runs:/ URI, its models:/ name)."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=server.url, registry_uri=server.url)
    experiment_id = client.create_experiment(unique("crafted"))
    run = client.create_run(experiment_id)
    client.log_artifacts(run.info.run_id, str(model_dir), "model")
    client.set_terminated(run.info.run_id)
    name = unique("crafted-model")
    client.create_registered_model(name)
    source = f"runs:/{run.info.run_id}/model"
    version = client.create_model_version(name, source, run.info.run_id)
    client.set_registered_model_alias(name, "champion", version.version)
    return source, name


def assert_refused_over_http(serve_function: ServeFunction, marker: Path, **env: str) -> None:
    server = serve_function(**env, **{SWITCH: "false", "MODEL_LOAD_TIMEOUT_SECONDS": "60"})

    status = deliver(server, push_body(RIDE, "crafted-1"))

    assert status == 500  # a model-load failure: transient, Pub/Sub keeps the ride
    (failed,) = [line for line in function_log(server) if line["message"] == "model load failed"]
    assert f"Deserializing this model is disallowed because '{SWITCH}'" in failed["reason"]
    assert not marker.exists()


@pytest.mark.emulator
def test_refused_from_gs_over_http(
    serve_function: ServeFunction, crafted: Path, marker: Path, gcs: Any
) -> None:
    model_uri = upload_directory(gcs, crafted, f"gs://{unique('models')}/1/run/artifacts/model")
    assert_refused_over_http(serve_function, marker, MODEL_URI=model_uri)


@pytest.mark.emulator
def test_refused_from_a_local_path_over_http(
    serve_function: ServeFunction, crafted: Path, marker: Path
) -> None:
    assert_refused_over_http(serve_function, marker, MODEL_URI=str(crafted))


@pytest.mark.emulator
@pytest.mark.parametrize("kind", ["runs", "models-version", "models-alias"])
def test_refused_from_the_tracking_server_over_http(
    serve_function: ServeFunction,
    tracking_server: MlflowServer,
    crafted: Path,
    marker: Path,
    kind: str,
) -> None:
    runs_uri, name = register_crafted(tracking_server, crafted)
    model_uri = {
        "runs": runs_uri,
        "models-version": f"models:/{name}/1",
        "models-alias": f"models:/{name}@champion",
    }[kind]
    assert_refused_over_http(
        serve_function,
        marker,
        MODEL_URI=model_uri,
        MLFLOW_TRACKING_URI=tracking_server.url,
        MLFLOW_DISABLE_TELEMETRY="true",
    )


# The Lambda: its handler, configured by its environment.


@pytest.fixture
def cold_lambda(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    monkeypatch.setattr(lambda_function, "_service", None)
    monkeypatch.setenv(SWITCH, "false")
    monkeypatch.setenv("MODEL_LOAD_TIMEOUT_SECONDS", "60")
    for name in ("MODEL_VERSION", "DEAD_LETTER_STREAM_NAME", "MAX_MESSAGE_BYTES"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def assert_lambda_refuses(model_uri: str, marker: Path) -> None:
    event = kinesis_event(SAMPLE_RIDE)

    response = lambda_function.lambda_handler(event, None)

    # A model-load failure: the record is reported, so Lambda delivers it again.
    assert response == {
        "batchItemFailures": [{"itemIdentifier": event["Records"][0]["kinesis"]["sequenceNumber"]}]
    }
    assert lambda_function.get_service().model_holder.loaded is None
    assert not marker.exists()


def test_the_lambda_refuses_a_local_pickle(
    cold_lambda: pytest.MonkeyPatch, crafted: Path, marker: Path
) -> None:
    cold_lambda.setenv("MODEL_URI", str(crafted))
    assert_lambda_refuses(str(crafted), marker)


def test_the_lambda_refuses_an_s3_pickle(
    cold_lambda: pytest.MonkeyPatch, aws_env: MotoServer, crafted: Path, marker: Path
) -> None:
    model_uri = upload_to_s3(
        boto3.client("s3"), crafted, f"s3://{unique('models')}/1/run/artifacts/model"
    )
    cold_lambda.setenv("MODEL_URI", model_uri)
    assert_lambda_refuses(model_uri, marker)


def test_mlflow_refuses_a_skops_model_too_under_the_switch(
    skops_model: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # MLflow 3.17 gates every serialisation format of the sklearn flavour behind the switch:
    # skops reads its allow-list of types from the model itself (docs/models.md).
    monkeypatch.setenv(SWITCH, "false")
    error = try_load(skops_model.path)
    assert error is not None
    assert f"disallowed because '{SWITCH}'" in str(error)


@pytest.mark.parametrize(
    "raw", [None, "true", "1", "TRUE", "True", "false", "0", "FALSE", "yes", ""]
)
def test_the_direct_path_reads_the_switch_as_mlflow_reads_it(
    raw: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow.environment_variables import MLFLOW_ALLOW_PICKLE_DESERIALIZATION

    if raw is None:
        monkeypatch.delenv(SWITCH, raising=False)
    else:
        monkeypatch.setenv(SWITCH, raw)
    try:
        mlflow_allows = MLFLOW_ALLOW_PICKLE_DESERIALIZATION.get()
    except ValueError:  # a value MLflow does not know fails its loads
        mlflow_allows = False

    assert loaders._mlflow_allows_unpickling(raw) is mlflow_allows


@pytest.mark.parametrize(("raw", "direct"), [("true", True), ("1", True), ("false", False)])
def test_set_to_allow_the_model_is_still_read_without_mlflow(
    test_model: Any, monkeypatch: pytest.MonkeyPatch, raw: str, direct: bool
) -> None:
    # `true` allows what unset allows, so it keeps the fast path (about 1.3 s of a cold start:
    # deploy.sh sets it for every scikit-learn model, docs/deploy.md).
    monkeypatch.setenv(SWITCH, raw)
    assert (loaders._load_directly(test_model.path) is not None) is direct
