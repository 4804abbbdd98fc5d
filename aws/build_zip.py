"""Build the Lambda deployment zip: the handler at the root, the core package it imports beside it.

``python aws/build_zip.py [dist/aws-lambda.zip]`` (what ``make package-aws`` runs). The zip holds
code only; the dependencies in ``aws/requirements.txt`` come from a Lambda layer or the container
image (see docs/aws.md). The archive is reproducible: fixed order,
timestamps and modes, so the same sources always give the same bytes (and the same CodeSha256 on
AWS).

This file is a build tool and is not itself part of the zip.
"""

from __future__ import annotations

import sys
import zipfile
from pathlib import Path

AWS_DIR = Path(__file__).resolve().parent
REPO_ROOT = AWS_DIR.parent
DEFAULT_OUTPUT = REPO_ROOT / "dist" / "aws-lambda.zip"

# The core modules the Lambda imports, directly or through each other: not the Cloud Function's
# Pub/Sub side (envelope, dead_letters, publisher, service, telemetry).
CORE_MODULES = (
    "__init__",
    "background",
    "errors",
    "fast_path",
    "inference",
    "json_logging",
    "loaders",
    "messages",
    "model_holder",
    "redaction",
    "registry",
    "settings",
)

# (source, name in the zip). Listed, not globbed, so nothing unintended ships; the packaging
# test imports the handler from the unzipped archive, which fails if a module is missing here.
CONTENTS: tuple[tuple[Path, str], ...] = (
    (AWS_DIR / "lambda_function.py", "lambda_function.py"),
    (AWS_DIR / "lambda_settings.py", "lambda_settings.py"),
    (AWS_DIR / "kinesis_event.py", "kinesis_event.py"),
    (AWS_DIR / "kinesis_writer.py", "kinesis_writer.py"),
    *(
        (REPO_ROOT / "ride_predictor" / f"{name}.py", f"ride_predictor/{name}.py")
        for name in CORE_MODULES
    ),
    (AWS_DIR / "requirements.txt", "requirements.txt"),
)

# The earliest time a zip entry can hold; any fixed value makes the archive reproducible.
_FIXED_DATE_TIME = (1980, 1, 1, 0, 0, 0)
_FILE_MODE = 0o644


def build_zip(output: Path = DEFAULT_OUTPUT) -> Path:
    """Write the Lambda zip to ``output`` (its folder is created) and return its path."""
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(output.name + ".partial")
    with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for source, name in sorted(CONTENTS, key=lambda item: item[1]):
            entry = zipfile.ZipInfo(name, date_time=_FIXED_DATE_TIME)
            entry.external_attr = (0o100000 | _FILE_MODE) << 16  # a regular file, rw-r--r--
            entry.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(entry, source.read_bytes())
    # Only a complete archive ever appears under the output name.
    partial.replace(output)
    return output


def main(argv: list[str]) -> int:
    """Command line: build the zip at ``argv[0]`` or ``dist/aws-lambda.zip``."""
    output = Path(argv[0]) if argv else DEFAULT_OUTPUT
    built = build_zip(output)
    with zipfile.ZipFile(built) as archive:
        names = archive.namelist()
    print(f"built {built} ({built.stat().st_size} bytes): {', '.join(names)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
