"""``python -m training.promote`` on the session's SQLite registry, one model name per test."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ModelFixture, unique
from training.promote import Promotion, alias_version, main, promote


@pytest.fixture
def client(mlflow_tracking_uri: str) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=mlflow_tracking_uri, registry_uri=mlflow_tracking_uri)


def test_registering_runs_moves_the_alias_and_says_from_which_version(
    client: Any, test_model: ModelFixture, second_model: ModelFixture
) -> None:
    name = unique("promote")

    first = promote(client, name, "champion", model_uri=f"runs:/{test_model.logged.run_id}/model")
    second = promote(
        client, name, "champion", model_uri=f"runs:/{second_model.logged.run_id}/model"
    )

    assert first == Promotion(name, "champion", None, "1")
    assert second == Promotion(name, "champion", "1", "2")
    assert alias_version(client, name, "champion") == "2"
    assert client.get_model_version(name, "2").run_id == second_model.logged.run_id


def test_the_command_moves_the_alias_back_and_prints_old_and_new(
    client: Any,
    test_model: ModelFixture,
    mlflow_tracking_uri: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    name = unique("promote")
    for _ in range(2):
        promote(client, name, "champion", model_uri=f"models:/{test_model.logged.model_id}")
    capsys.readouterr()

    main(["--name", name, "--alias", "champion", "--version", "1",
          f"--tracking-uri={mlflow_tracking_uri}"])  # fmt: skip

    out = capsys.readouterr().out
    assert f"{name}@champion: version 2 -> version 1" in out
    assert "old_version=2\nnew_version=1\n" in out
    assert alias_version(client, name, "champion") == "1"


def test_a_model_directory_is_logged_then_registered(
    client: Any, second_model: ModelFixture
) -> None:
    name = unique("promote")

    promotion = promote(
        client, name, "champion", model_dir=Path(second_model.path), experiment="promote-tests"
    )

    assert promotion == Promotion(name, "champion", None, "1")
    version = client.get_model_version(name, "1")
    assert version.source.endswith("/model")
    import mlflow.artifacts

    files = mlflow.artifacts.list_artifacts(artifact_uri=version.source)
    assert "MLmodel" in {Path(entry.path).name for entry in files}


def test_an_unknown_version_leaves_the_alias_where_it_was(
    client: Any, test_model: ModelFixture
) -> None:
    from mlflow.exceptions import MlflowException

    name = unique("promote")
    promote(client, name, "champion", model_uri=f"models:/{test_model.logged.model_id}")

    with pytest.raises(MlflowException):
        promote(client, name, "champion", version="7")

    assert alias_version(client, name, "champion") == "1"
