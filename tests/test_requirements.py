"""requirements.txt: pinned runtime dependencies that install on Cloud Functions' python312."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
RUNTIME_REQUIREMENTS = REPO_ROOT / "requirements.txt"
# The python312 runtime runs on Ubuntu 22.04 (glibc 2.35): any manylinux wheel up to 2.35 works.
CLOUD_FUNCTIONS_PLATFORMS = [
    *(f"manylinux_2_{glibc}_x86_64" for glibc in (35, 34, 31, 28, 27, 24, 17, 12, 5)),
    "manylinux2014_x86_64",
    "linux_x86_64",
]


def _requirements() -> dict[str, str]:
    pins = {}
    for line in RUNTIME_REQUIREMENTS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            match = re.fullmatch(r"([A-Za-z0-9_.-]+)==([A-Za-z0-9_.+-]+)", line)
            assert match, f"not pinned with ==: {line!r}"
            pins[match[1].lower()] = match[2]
    return pins


def test_runtime_requirements_are_pinned_and_hold_only_what_the_function_needs() -> None:
    pins = _requirements()
    assert {
        "functions-framework",
        "google-cloud-pubsub",
        "google-cloud-storage",
        "mlflow-skinny",
        "scikit-learn",
        "pandas",
        "skops",
    } <= set(pins)
    assert not {"mlflow", "pytest", "ruff", "cloudevents", "gcp-storage-emulator"} & set(pins)


@pytest.mark.network
def test_runtime_requirements_resolve_to_wheels_for_python312_on_cloud_functions(
    tmp_path: Path,
) -> None:
    platforms = [
        flag for platform in CLOUD_FUNCTIONS_PLATFORMS for flag in ("--platform", platform)
    ]
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed",
         "--disable-pip-version-check", "--python-version=3.12", *platforms,
         "--only-binary=:all:", f"--target={tmp_path}", "-r", str(RUNTIME_REQUIREMENTS)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    for name, version in _requirements().items():
        assert re.search(rf"{re.escape(name)}-{re.escape(version)}\b", result.stdout, re.I), name
