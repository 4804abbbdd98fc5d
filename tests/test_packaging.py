"""The deployable package: what gcloud uploads, what `make package` zips, and that it runs alone.

The last test installs the zip's own requirements.txt into a fresh virtual environment and serves
the unzipped files with functions-framework, as the Cloud Functions build does: nothing from
this repository (tests, devstack, the dev requirements) is importable there.
"""

from __future__ import annotations

import json
import os
import py_compile
import shutil
import subprocess
import sys
import urllib.request
import zipfile
from pathlib import Path

import pytest
from cloudevents.conversion import to_binary

from devstack.processes import ManagedProcess, free_port, http_status, wait_until
from devstack.pubsub_admin import PubSubAdmin
from tests.conftest import (
    PROJECT_ID,
    SAMPLE_FEATURES,
    ModelFixture,
    load_json,
    pubsub_cloud_event,
    unique,
)

REPO = Path(__file__).resolve().parent.parent
# Every file the function runs from: the entry point, the pins, the package's modules.
RUNTIME_FILES = sorted(
    [
        "main.py",
        "requirements.txt",
        *(f"ride_predictor/{path.name}" for path in (REPO / "ride_predictor").glob("*.py")),
    ]
)
SAMPLE_B64 = load_json("tutorial_event.json")["data"]["message"]["data"]
PIP_INSTALL_TIMEOUT_SECONDS = 900
SERVER_START_TIMEOUT_SECONDS = 120


@pytest.mark.skipif(shutil.which("gcloud") is None, reason="needs the gcloud CLI")
def test_gcloud_would_upload_only_the_runtime_files(tmp_path: Path) -> None:
    config = tmp_path / "gcloud-config"
    config.mkdir()
    # Compiled modules, as any run leaves them beside the package's sources: never uploaded.
    py_compile.compile(str(REPO / "ride_predictor" / "errors.py"), doraise=True)
    result = subprocess.run(
        ["gcloud", "meta", "list-files-for-upload"],
        cwd=REPO,
        env={**os.environ, "CLOUDSDK_CONFIG": str(config), "CLOUDSDK_CORE_DISABLE_PROMPTS": "1"},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert sorted(result.stdout.split()) == RUNTIME_FILES


@pytest.fixture(scope="module")
def package_zip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``make package``, built into a temporary directory instead of dist/."""
    dist = tmp_path_factory.mktemp("dist")
    subprocess.run(
        ["make", "--no-print-directory", "package", f"DIST={dist}"],
        cwd=REPO,
        capture_output=True,
        timeout=120,
        check=True,
    )
    return dist / "ride-prediction.zip"


def test_make_package_holds_exactly_the_runtime_files(package_zip: Path) -> None:
    with zipfile.ZipFile(package_zip) as archive:
        assert sorted(archive.namelist()) == RUNTIME_FILES
        for name in RUNTIME_FILES:
            assert archive.read(name) == (REPO / name).read_bytes(), name


@pytest.fixture(scope="module")
def installed_package(
    package_zip: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Path]:
    """The unzipped package and a fresh venv holding only its requirements.txt (about 40 s)."""
    root = tmp_path_factory.mktemp("package")
    source = root / "source"
    with zipfile.ZipFile(package_zip) as archive:
        archive.extractall(source)
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "-q",
            "-r",
            str(source / "requirements.txt"),
        ],
        check=True,
        timeout=PIP_INSTALL_TIMEOUT_SECONDS,
    )
    return source, venv


@pytest.mark.emulator
def test_the_package_alone_serves_a_prediction(
    installed_package: tuple[Path, Path],
    test_model: ModelFixture,
    pubsub: PubSubAdmin,
    tmp_path: Path,
) -> None:
    source, venv = installed_package
    output_topic, subscription = unique("ride-predictions"), unique("ride-predictions-sub")
    pubsub.create_topic(output_topic)
    pubsub.create_subscription(subscription, output_topic)
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    # A minimal environment: no PYTHONPATH, no MLflow store, nothing from this repository.
    env = {
        "PATH": f"{venv / 'bin'}{os.pathsep}/usr/bin{os.pathsep}/bin",
        "HOME": str(tmp_path),
        "LANG": "C.UTF-8",
        "MODEL_URI": test_model.path,
        "PROJECT_ID": PROJECT_ID,
        "PUBLISH_STREAM": output_topic,
        "PUBSUB_EMULATOR_HOST": pubsub.host,
        # This machine may be busy; the default 30 s bound is for the cloud's cold start.
        "MODEL_LOAD_TIMEOUT_SECONDS": "120",
    }
    log_path = tmp_path / "packaged-function.log"
    server = ManagedProcess(
        "packaged-function",
        [
            str(venv / "bin" / "functions-framework"),
            "--target=predict_duration",
            "--signature-type=cloudevent",
            "--host=127.0.0.1",
            f"--port={port}",
            "--source=main.py",
        ],
        log_path,
        env=env,
        cwd=source,
    )
    try:
        wait_until(
            lambda: http_status(url) is not None,
            "the packaged function",
            SERVER_START_TIMEOUT_SECONDS,
            alive=server.is_running,
        )
        headers, body = to_binary(pubsub_cloud_event(SAMPLE_B64, message_id="package-1"))
        request = urllib.request.Request(url, data=body, headers=headers, method="POST")
        with urllib.request.urlopen(request, timeout=180) as response:  # noqa: S310
            status = response.status
        received = pubsub.pull(subscription, expected=1)
    finally:
        server.stop()
    log = log_path.read_text(errors="replace")
    assert status == 200, log
    assert len(received) == 1, log
    assert json.loads(received[0].data) == test_model.expected_message(123, SAMPLE_FEATURES)
    assert received[0].attributes["source_message_id"] == "package-1"
