"""model_loader.py on real MLflow models: versions, one load per process, no cached failures."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import textwrap
import threading
from pathlib import Path
from typing import Any

import cloudpickle
import pytest

from devstack.storage import upload_directory
from ride_predictor.errors import ModelLoadError
from ride_predictor.loaders import LoadedModel, load_model
from ride_predictor.model_holder import ModelHolder
from tests.conftest import REGISTERED_NAME, ModelFixture, unique

SAMPLE_FEATURES = {"PU_DO": "130_205", "trip_distance": 3.66}
RIDES = [
    SAMPLE_FEATURES,
    {"PU_DO": "1_2", "trip_distance": 0.0},
    {"PU_DO": "999_998", "trip_distance": 12.5},
]


def _assert_predicts_like(loaded: LoadedModel, test_model: ModelFixture) -> None:
    assert list(loaded.predict(RIDES)) == pytest.approx(list(test_model.pipeline.predict(RIDES)))


def test_version_is_the_run_id_for_a_plain_artifact_path(test_model: ModelFixture) -> None:
    loaded = ModelHolder(test_model.path, "ride_duration_prediction_model").get()

    assert loaded.version == test_model.logged.run_id
    assert loaded.name == "ride_duration_prediction_model"
    assert loaded.flavor == "sklearn"
    _assert_predicts_like(loaded, test_model)


def test_model_version_override_wins(test_model: ModelFixture) -> None:
    loaded = ModelHolder(test_model.path, "custom-name", version_override="2024-06-rc1").get()
    assert (loaded.name, loaded.version) == ("custom-name", "2024-06-rc1")


@pytest.mark.parametrize(
    "uri",
    [f"models:/{REGISTERED_NAME}/1", f"models:/{REGISTERED_NAME}@champion"],
)
def test_version_of_a_registry_uri_is_the_registered_version(
    test_model: ModelFixture, uri: str
) -> None:
    loaded = ModelHolder(uri, "ride_duration_prediction_model").get()
    assert loaded.version == test_model.logged.registered_version == "1"
    _assert_predicts_like(loaded, test_model)


def test_runs_uri_loads_with_the_run_id(test_model: ModelFixture) -> None:
    loaded = load_model(f"runs:/{test_model.logged.run_id}/model", "m", None)
    assert loaded.version == test_model.logged.run_id


def test_skops_model_loads(skops_model: ModelFixture) -> None:
    assert (Path(skops_model.path) / "model.skops").exists()
    loaded = load_model(skops_model.path, "m", None)
    assert loaded.version == skops_model.logged.run_id
    _assert_predicts_like(loaded, skops_model)


def _mlflow2_model_dir(root: Path, pipeline: Any, run_id: str | None) -> Path:
    """A model laid out as MLflow 2 logged it for the tutorial: cloudpickle, no model_id."""
    model_dir = root / "model"
    model_dir.mkdir()
    with (model_dir / "model.pkl").open("wb") as handle:
        cloudpickle.dump(pipeline, handle)
    run_line = f"run_id: {run_id}\n" if run_id else ""
    (model_dir / "MLmodel").write_text(
        textwrap.dedent(
            """\
            artifact_path: model
            flavors:
              python_function:
                env:
                  conda: conda.yaml
                  virtualenv: python_env.yaml
                loader_module: mlflow.sklearn
                model_path: model.pkl
                predict_fn: predict
                python_version: 3.9.18
              sklearn:
                code: null
                pickled_model: model.pkl
                serialization_format: cloudpickle
                sklearn_version: 1.3.2
            mlflow_version: 2.9.2
            model_uuid: 5e8c1b0a3f6d4b8e9a2c7d1f0e3b4a5c
            """
        )
        + run_line
    )
    return model_dir


def test_mlflow2_cloudpickle_model_loads_with_its_run_id(
    test_model: ModelFixture, tmp_path: Path
) -> None:
    model_dir = _mlflow2_model_dir(
        tmp_path, test_model.pipeline, "553def03f5224f649fe56bc1567daccc"
    )
    loaded = load_model(str(model_dir), "m", None)
    assert loaded.version == "553def03f5224f649fe56bc1567daccc"
    _assert_predicts_like(loaded, test_model)


def test_version_falls_back_to_model_uuid_without_a_run_id(
    test_model: ModelFixture, tmp_path: Path
) -> None:
    model_dir = _mlflow2_model_dir(tmp_path, test_model.pipeline, run_id=None)
    assert load_model(str(model_dir), "m", None).version == "5e8c1b0a3f6d4b8e9a2c7d1f0e3b4a5c"


def test_gs_uri_loads_from_the_storage_emulator(test_model: ModelFixture, gcs: Any) -> None:
    run_id = test_model.logged.run_id
    bucket = unique("models")
    model_uri = upload_directory(
        gcs, Path(test_model.path), f"gs://{bucket}/1/{run_id}/artifacts/model"
    )

    loaded = ModelHolder(model_uri, "ride_duration_prediction_model").get()

    assert loaded.version == run_id
    assert loaded.source_uri == model_uri
    _assert_predicts_like(loaded, test_model)


def test_downloaded_artifacts_are_deleted_after_loading(
    test_model: ModelFixture, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))

    load_model(test_model.path, "m", None)

    assert list(scratch.iterdir()) == []
    assert (Path(test_model.path) / "MLmodel").exists()  # a local source is never deleted


def test_sixteen_concurrent_first_requests_cause_one_load(test_model: ModelFixture) -> None:
    load_calls: list[str] = []

    def counting_load(uri: str, name: str, version: str | None) -> LoadedModel:
        load_calls.append(uri)
        return load_model(uri, name, version)

    loader = ModelHolder(test_model.path, "m", load=counting_load)
    start = threading.Barrier(16)
    results: list[LoadedModel] = []

    def first_request() -> None:
        start.wait()
        results.append(loader.get())

    threads = [threading.Thread(target=first_request) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert load_calls == [test_model.path]
    assert len(results) == 16
    assert all(result is results[0] for result in results)


def test_a_failed_load_is_not_cached(test_model: ModelFixture, tmp_path: Path) -> None:
    model_dir = tmp_path / "not-yet-there"
    loader = ModelHolder(str(model_dir), "m")

    with pytest.raises(ModelLoadError, match="not-yet-there"):
        loader.get()
    assert loader.loaded is None

    shutil.copytree(test_model.path, model_dir)
    assert loader.get().version == test_model.logged.run_id


def test_a_slow_load_times_out_the_request_and_completes_for_the_next(
    test_model: ModelFixture,
) -> None:
    release = threading.Event()

    def slow_load(uri: str, name: str, version: str | None) -> LoadedModel:
        release.wait(timeout=60)
        return load_model(uri, name, version)

    loader = ModelHolder(test_model.path, "m", load_timeout_seconds=0.2, load=slow_load)
    with pytest.raises(ModelLoadError, match="still loading"):
        loader.get()

    release.set()
    loader.load_timeout_seconds = 60
    assert loader.get().version == test_model.logged.run_id


def _stdout_of_fresh_python(code: str) -> str:
    """Run ``code`` in a new interpreter at the repository root (nothing imported yet)."""
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).parent.parent,
    )
    return result.stdout


def test_importing_the_function_loads_nothing_heavy() -> None:
    probe = (
        "import sys, main, ride_predictor.loaders, ride_predictor.publisher;"
        "print(sorted(m for m in ('mlflow', 'sklearn', 'pandas') if m in sys.modules))"
    )
    assert _stdout_of_fresh_python(probe).strip() == "[]"


def test_a_pickled_model_loads_without_importing_mlflow(test_model: ModelFixture) -> None:
    probe = (
        "import sys; from ride_predictor.loaders import load_model;"
        f"loaded = load_model({test_model.path!r}, 'm', None);"
        "print(loaded.version, 'mlflow' in sys.modules)"
    )
    assert _stdout_of_fresh_python(probe).split() == [test_model.logged.run_id, "False"]
