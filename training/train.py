"""Train the course's ride-duration model and log it to MLflow.

    python -m training.train                      # synthetic rides, local MLflow store
    python -m training.train yellow_2024-01.parquet yellow_2024-02.parquet
    python -m training.train --register-name ride-duration --alias champion

The model is a ``DictVectorizer`` + ``LinearRegression`` pipeline over ``PU_DO`` and
``trip_distance``. With two or more files, the last one is the validation set (the course
trains on January and validates on February); otherwise 20% of the rides are held out.
It prints the validation RMSE and the ``MODEL_URI`` to deploy.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.feature_extraction import DictVectorizer
from sklearn.linear_model import LinearRegression
from sklearn.pipeline import Pipeline, make_pipeline

from training.dataset import feature_dicts, generate_rides, read_trip_records

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_TRACKING_URI = f"sqlite:///{REPO_ROOT / 'mlflow.db'}"
DEFAULT_ARTIFACT_LOCATION = str(REPO_ROOT / "mlruns")
DEFAULT_EXPERIMENT = "ride-duration"
# cloudpickle loads a DictVectorizer with tens of thousands of zone pairs in milliseconds where
# skops takes seconds (see docs/models.md, "Model format"); skops remains one flag away.
DEFAULT_SERIALIZATION_FORMAT = "cloudpickle"


@contextmanager
def progress(step: str) -> Iterator[None]:
    """Print a slow step as it starts and how long it took (to stderr)."""
    print(f"… {step}", file=sys.stderr, flush=True)
    started = time.perf_counter()
    yield
    print(f"  done in {time.perf_counter() - started:.1f}s", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class TrainedModel:
    """A fitted pipeline with its validation score and the data to describe it in MLflow."""

    pipeline: Pipeline
    rmse: float
    n_train: int
    n_validation: int
    example: list[dict[str, object]]


def split_rides(rides: Sequence[pd.DataFrame], seed: int = 42) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Train on all files but the last and validate on the last; or hold out 20% of one."""
    if len(rides) > 1:
        return pd.concat(rides[:-1], ignore_index=True), rides[-1]
    shuffled = rides[0].sample(frac=1.0, random_state=seed).reset_index(drop=True)
    cut = int(len(shuffled) * 0.8)
    return shuffled.iloc[:cut], shuffled.iloc[cut:]


def train(train_rides: pd.DataFrame, validation_rides: pd.DataFrame) -> TrainedModel:
    """Fit the course's pipeline and score it on the validation rides."""
    train_features = feature_dicts(train_rides)
    pipeline = make_pipeline(DictVectorizer(), LinearRegression())
    pipeline.fit(train_features, train_rides["duration"].to_numpy())
    predicted = pipeline.predict(feature_dicts(validation_rides))
    rmse = float(np.sqrt(np.mean((predicted - validation_rides["duration"].to_numpy()) ** 2)))
    return TrainedModel(pipeline, rmse, len(train_rides), len(validation_rides), train_features[:5])


@dataclass(frozen=True)
class LoggedModel:
    """Where MLflow put the model, and the URI to give the function as ``MODEL_URI``."""

    experiment_id: str
    run_id: str
    model_id: str
    artifact_location: str
    registered_version: str | None
    model_uri: str


def _experiment_id(name: str, artifact_location: str | None) -> str:
    import mlflow

    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    return mlflow.create_experiment(name, artifact_location=artifact_location)


def log_model(
    trained: TrainedModel,
    *,
    experiment: str = DEFAULT_EXPERIMENT,
    artifact_location: str | None = None,
    serialization_format: str = DEFAULT_SERIALIZATION_FORMAT,
    register_name: str | None = None,
    alias: str | None = None,
    data_source: str = "synthetic",
    pip_requirements: Sequence[str] | None = None,
) -> LoggedModel:
    """Log the pipeline to the current MLflow tracking URI with a signature and an input example.

    Registers it as ``register_name`` (and points ``alias`` at the new version) when asked.
    ``pip_requirements``: what the model needs to load; None lets MLflow infer them, which
    loads the model in a subprocess (about 5 s).
    """
    import mlflow
    import mlflow.sklearn
    from mlflow.models import infer_signature

    example = pd.DataFrame(trained.example)
    signature = infer_signature(example, trained.pipeline.predict(trained.example))
    experiment_id = _experiment_id(experiment, artifact_location)
    # MLflow checks the input example through pyfunc, whose DataFrame conversion a
    # DictVectorizer pipeline cannot take, and warns at length; the function calls the sklearn
    # flavour with feature dicts instead (see model_loader), so the warning is noise here.
    logging.getLogger("mlflow.models.model").setLevel(logging.ERROR)
    with mlflow.start_run(experiment_id=experiment_id) as run:
        mlflow.log_params(
            {
                "model": "DictVectorizer+LinearRegression",
                "features": "PU_DO,trip_distance",
                "data": data_source,
                "n_train": trained.n_train,
                "n_validation": trained.n_validation,
                "serialization_format": serialization_format,
            }
        )
        mlflow.log_metric("rmse", trained.rmse)
        info = mlflow.sklearn.log_model(
            trained.pipeline,
            name="model",
            signature=signature,
            input_example=example,
            serialization_format=serialization_format,
            registered_model_name=register_name,
            pip_requirements=None if pip_requirements is None else list(pip_requirements),
        )
    artifact_uri = mlflow.get_logged_model(info.model_id).artifact_location
    registered_version = (
        str(info.registered_model_version) if info.registered_model_version else None
    )
    model_uri = artifact_uri
    if register_name and registered_version:
        model_uri = f"models:/{register_name}/{registered_version}"
        if alias:
            mlflow.MlflowClient().set_registered_model_alias(
                register_name, alias, registered_version
            )
            model_uri = f"models:/{register_name}@{alias}"
    return LoggedModel(
        experiment_id, run.info.run_id, info.model_id, artifact_uri, registered_version, model_uri
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m training.train",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "files",
        nargs="*",
        type=Path,
        help="NYC TLC trip-record files (.parquet or .csv); none: synthetic rides",
    )
    parser.add_argument("--rides", type=int, default=30_000, help="synthetic rides to generate")
    parser.add_argument("--zones", type=int, default=60, help="taxi zones in the synthetic rides")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument(
        "--tracking-uri",
        default=None,
        help=f"default: $MLFLOW_TRACKING_URI, else {DEFAULT_TRACKING_URI}",
    )
    parser.add_argument("--experiment", default=DEFAULT_EXPERIMENT)
    parser.add_argument(
        "--artifact-location",
        default=None,
        help="for a new experiment, e.g. gs://bucket/path "
        f"(default: {DEFAULT_ARTIFACT_LOCATION} with the default tracking URI)",
    )
    parser.add_argument(
        "--serialization-format",
        default=DEFAULT_SERIALIZATION_FORMAT,
        choices=("cloudpickle", "pickle", "skops"),
    )
    parser.add_argument("--register-name", default=None, help="register the model under this name")
    parser.add_argument("--alias", default=None, help="point this registry alias at the version")
    return parser


def main(argv: Sequence[str] | None = None) -> LoggedModel:
    """Run the command line: read or generate rides, train, log, print the result."""
    args = _parser().parse_args(argv)
    if args.alias and not args.register_name:
        _parser().error("--alias needs --register-name")
    tracking_uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    artifact_location = args.artifact_location
    if not tracking_uri:
        tracking_uri = DEFAULT_TRACKING_URI
        artifact_location = artifact_location or f"{DEFAULT_ARTIFACT_LOCATION}/{args.experiment}"

    if args.files:
        with progress(f"reading {len(args.files)} trip-record file(s)"):
            rides = [read_trip_records(path) for path in args.files]
        data_source = ",".join(path.name for path in args.files)
    else:
        with progress(f"generating {args.rides} synthetic rides (seed {args.seed})"):
            rides = [generate_rides(args.rides, args.zones, args.seed)]
        data_source = f"synthetic(rides={args.rides},zones={args.zones},seed={args.seed})"
    train_rides, validation_rides = split_rides(rides, args.seed)
    with progress(f"training on {len(train_rides)} rides"):
        trained = train(train_rides, validation_rides)

    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    with progress(f"logging to MLflow at {tracking_uri}"):
        logged = log_model(
            trained,
            experiment=args.experiment,
            artifact_location=artifact_location,
            serialization_format=args.serialization_format,
            register_name=args.register_name,
            alias=args.alias,
            data_source=data_source,
        )
    print(f"validation RMSE: {trained.rmse:.3f} minutes ({trained.n_validation} rides)")
    print(f"run_id: {logged.run_id}")
    print(f"artifacts: {logged.artifact_location}")
    if logged.registered_version:
        print(f"registered: {args.register_name} version {logged.registered_version}")
    print(f"MODEL_URI={logged.model_uri}")
    return logged


if __name__ == "__main__":
    main()
