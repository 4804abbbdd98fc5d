"""Point a registry alias at a model version: what rolls a new model out to running functions.

    python -m training.promote --name ride-duration --alias champion --version 2
    python -m training.promote --name ride-duration --alias champion --model-uri runs:/<run>/model
    python -m training.promote --name ride-duration --alias champion --model-dir path/to/model

``--version`` moves the alias to an existing version (a rollback is the same command with the
old version). ``--model-uri`` registers a model already in MLflow (e.g. the run
``python -m training.train`` just logged) as a new version first; ``--model-dir`` logs an MLflow
model directory as a new run's artifacts (in the experiment's artifact root, e.g. a bucket)
and registers that. It prints the version the alias named before and the one it names now.
Functions serving ``models:/<name>@<alias>`` pick the new version up within
``MODEL_REFRESH_SECONDS`` (docs/models.md).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_EXPERIMENT = "ride-duration"


@dataclass(frozen=True)
class Promotion:
    """The alias move that was made."""

    name: str
    alias: str
    old_version: str | None
    new_version: str

    def describe(self) -> str:
        """One line for people: ``ride-duration@champion: version 1 -> 2``."""
        old = f"version {self.old_version}" if self.old_version else "(unset)"
        return f"{self.name}@{self.alias}: {old} -> version {self.new_version}"


def alias_version(client: Any, name: str, alias: str) -> str | None:
    """The version ``alias`` names now, or None if the alias (or the model) does not exist."""
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException as error:
        if error.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise


def log_model_dir(model_dir: Path, experiment: str) -> tuple[str, str]:
    """Log ``model_dir`` (an MLflow model directory) as the artifacts ``model`` of a new run of
    ``experiment``; return the run's id and the artifacts' URI (e.g. ``gs://…/model``)."""
    import mlflow

    if not (model_dir / "MLmodel").exists():
        raise ValueError(f"{model_dir} is not an MLflow model directory (no MLmodel)")
    existing = mlflow.get_experiment_by_name(experiment)
    experiment_id = (
        existing.experiment_id if existing is not None else mlflow.create_experiment(experiment)
    )
    with mlflow.start_run(experiment_id=experiment_id) as run:
        mlflow.set_tag("source_model_dir", str(model_dir))
        mlflow.log_artifacts(str(model_dir), artifact_path="model")
        return run.info.run_id, mlflow.get_artifact_uri("model")


def register(client: Any, name: str, source: str, run_id: str | None = None) -> str:
    """Register ``source`` (an artifact URI or a ``runs:/``, ``models:/`` URI) as a new version
    of ``name``, creating the registered model if needed; return the new version."""
    import mlflow

    if source.startswith(("runs:/", "models:/")):
        return str(mlflow.register_model(source, name).version)
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(name)
    except MlflowException as error:
        if error.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    return str(client.create_model_version(name, source, run_id=run_id).version)


def promote(
    client: Any,
    name: str,
    alias: str,
    version: str | None = None,
    model_uri: str | None = None,
    model_dir: Path | None = None,
    experiment: str = DEFAULT_EXPERIMENT,
) -> Promotion:
    """Move ``alias`` of ``name`` to ``version``, or to a new version registered from
    ``model_uri`` or ``model_dir`` (exactly one of the three)."""
    if sum(option is not None for option in (version, model_uri, model_dir)) != 1:
        raise ValueError("give exactly one of version, model_uri, model_dir")
    old = alias_version(client, name, alias)
    if model_dir is not None:
        run_id, source = log_model_dir(model_dir, experiment)
        version = register(client, name, source, run_id)
    elif model_uri is not None:
        version = register(client, name, model_uri)
    assert version is not None
    client.get_model_version(name, version)  # a clear error for a version that does not exist
    client.set_registered_model_alias(name, alias, version)
    return Promotion(name, alias, old, str(version))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m training.promote",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--name", required=True, help="registered model name")
    parser.add_argument("--alias", required=True, help="the alias to move, e.g. champion")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--version", help="an existing version of the model")
    target.add_argument("--model-uri", help="register this model (runs:/…, models:/m-…, gs://…)")
    target.add_argument("--model-dir", type=Path, help="log and register this model directory")
    parser.add_argument("--experiment", default=DEFAULT_EXPERIMENT, help="for --model-dir")
    parser.add_argument("--tracking-uri", default=None, help="default: $MLFLOW_TRACKING_URI")
    return parser


def main(argv: Sequence[str] | None = None) -> Promotion:
    """Run the command line; print the old and new version."""
    args = _parser().parse_args(argv)
    tracking_uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not tracking_uri:
        _parser().error("set --tracking-uri or MLFLOW_TRACKING_URI (the registry to change)")
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    promotion = promote(
        mlflow.MlflowClient(),
        args.name,
        args.alias,
        version=args.version,
        model_uri=args.model_uri,
        model_dir=args.model_dir,
        experiment=args.experiment,
    )
    print(promotion.describe())
    print(f"old_version={promotion.old_version or ''}")
    print(f"new_version={promotion.new_version}")
    return promotion


if __name__ == "__main__":
    main()
    sys.exit(0)
