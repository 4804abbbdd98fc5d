"""The Lambda zip: what ``make package-aws`` builds, and that the handler runs from it alone."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import boto3
import pytest

import build_zip
from devstack.aws_admin import create_stream, read_stream
from devstack.moto_server import MotoServer
from tests.aws_events import SAMPLE_RIDE, kinesis_event
from tests.conftest import SAMPLE_FEATURES, ModelFixture, unique

REPO_ROOT = Path(__file__).resolve().parent.parent
EXPECTED_NAMES = sorted(
    [
        "kinesis_event.py",
        "kinesis_writer.py",
        "lambda_function.py",
        "lambda_settings.py",
        "requirements.txt",
        *(f"ride_predictor/{name}.py" for name in build_zip.CORE_MODULES),
    ]
)

# Run in a fresh interpreter with only the unzipped folder added to the path (-I drops the
# working directory and PYTHONPATH), as Lambda runs the zip from its task root.
SMOKE = """
import json, sys
sys.path.insert(0, sys.argv[1])
import lambda_function, ride_predictor.messages, ride_predictor.model_holder
modules = {
    m.__name__: m.__file__
    for m in (lambda_function, ride_predictor.messages, ride_predictor.model_holder)
}
response = lambda_function.lambda_handler({"Records": []}, None)
print(json.dumps({"modules": modules, "response": response}))
"""
INVOKE = """
import json, os, sys
sys.path.insert(0, sys.argv[1])
import lambda_function
print(json.dumps(lambda_function.lambda_handler(json.loads(os.environ["EVENT"]), None)))
"""


@pytest.fixture(scope="module")
def built_zip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_zip.build_zip(tmp_path_factory.mktemp("dist") / "aws-lambda.zip")


def test_zip_holds_the_handler_at_its_root_and_the_core_package_beside_it(built_zip: Path) -> None:
    with zipfile.ZipFile(built_zip) as archive:
        assert sorted(archive.namelist()) == EXPECTED_NAMES
        for name in build_zip.CORE_MODULES:
            path = f"ride_predictor/{name}.py"
            assert archive.read(path) == (REPO_ROOT / path).read_bytes(), path
        assert (
            archive.read("lambda_function.py")
            == (REPO_ROOT / "aws" / "lambda_function.py").read_bytes()
        )
        assert (
            archive.read("requirements.txt")
            == (REPO_ROOT / "aws" / "requirements.txt").read_bytes()
        )
        # No GCP wiring and no build tooling in the Lambda.
        assert not {"main.py", "ride_predictor/publisher.py", "build_zip.py"} & set(
            archive.namelist()
        )


def test_handler_imports_and_answers_from_the_unzipped_folder(
    built_zip: Path, tmp_path: Path
) -> None:
    unzipped = tmp_path / "task"
    with zipfile.ZipFile(built_zip) as archive:
        archive.extractall(unzipped)
    env = {key: value for key, value in os.environ.items() if not key.startswith("AWS_")}
    env["MODEL_URI"] = "s3://not-read/for/an/empty/batch"

    result = subprocess.run(
        [sys.executable, "-I", "-c", SMOKE, str(unzipped)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=120,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    # The last line is ours; the handler's own JSON log line comes before it.
    output = json.loads(result.stdout.strip().splitlines()[-1])
    assert output["response"] == {"batchItemFailures": []}
    for name, path in output["modules"].items():
        folder = unzipped if "." not in name else unzipped / "ride_predictor"
        assert Path(path).parent == folder, f"{name} was imported from {path}"


def test_the_zip_is_reproducible(built_zip: Path, tmp_path: Path) -> None:
    again = build_zip.build_zip(tmp_path / "again.zip")

    assert again.read_bytes() == built_zip.read_bytes()


def test_make_package_aws_builds_the_zip(tmp_path: Path) -> None:
    output = tmp_path / "dist" / "aws-lambda.zip"

    result = subprocess.run(
        [
            "make",
            "--no-print-directory",
            "package-aws",
            f"PYTHON={sys.executable}",
            f"AWS_ZIP={output}",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    with zipfile.ZipFile(output) as archive:
        assert sorted(archive.namelist()) == EXPECTED_NAMES
    assert not output.with_name("aws-lambda.zip.partial").exists()
    # Without AWS_ZIP the target writes dist/aws-lambda.zip, the path the docs give.
    assert "AWS_ZIP ?= dist/aws-lambda.zip" in (REPO_ROOT / "Makefile").read_text()


def test_unzipped_handler_predicts_and_writes_to_kinesis(
    built_zip: Path, tmp_path: Path, aws_env: MotoServer, test_model: ModelFixture
) -> None:
    """The whole path from the zip alone: model load, prediction, put_records to moto."""
    unzipped = tmp_path / "task"
    with zipfile.ZipFile(built_zip) as archive:
        archive.extractall(unzipped)
    kinesis = boto3.client("kinesis")
    predictions = unique("preds")
    create_stream(kinesis, predictions)
    env = {
        **os.environ,
        "MODEL_URI": test_model.path,
        "PREDICTIONS_STREAM_NAME": predictions,
        "EVENT": json.dumps(kinesis_event(SAMPLE_RIDE)),
    }

    result = subprocess.run(
        [sys.executable, "-I", "-c", INVOKE, str(unzipped)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=180,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {"batchItemFailures": []}
    (record,) = read_stream(kinesis, predictions)
    assert json.loads(record["Data"])["prediction"] == {
        "ride_duration": test_model.expected_duration(SAMPLE_FEATURES),
        "ride_id": 123,
    }


def _pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.\[\]-]+)==(\S+)", line.strip())
        if match:
            pins[match[1].lower()] = match[2]
    return pins


def test_lambda_requirements_pin_the_same_versions_as_the_function_and_the_tests() -> None:
    aws = _pins(REPO_ROOT / "aws" / "requirements.txt")
    gcp = _pins(REPO_ROOT / "requirements.txt")
    dev = _pins(REPO_ROOT / "requirements-dev.txt")

    assert {"boto3", "mlflow-skinny", "scikit-learn"} <= set(aws)
    for name, version in aws.items():
        assert version == gcp.get(name, dev.get(name, version)), name
    # The GCP-only clients stay out of the Lambda.
    assert not {"functions-framework", "google-cloud-pubsub", "google-cloud-storage"} & set(aws)
