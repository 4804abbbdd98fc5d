"""tools/python_env.py: `make` takes the deploy runtime's Python when one really runs here, and
its venv follows the interpreter and the requirements files.

Interpreters are stand-ins (shell scripts answering the probe as a Python would, or failing as
a pyenv shim of an unselected version does); venvs are real, built without pip, and the pip
installs are recorded instead of run.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tools import python_env

REPO_ROOT = Path(__file__).resolve().parent.parent
# What `pyenv` shims print when the command's version is installed but not selected.
SHIM_REFUSAL = """pyenv: python3.12: command not found

The `python3.12' command exists in these Python versions:
  3.12.1
"""


def stand_in(path: Path, answer: str = "", status: int = 0, stderr: str = "") -> Path:
    """An executable at ``path`` that prints ``answer`` (and ``stderr``) and exits ``status``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        f"#!/bin/sh\nprintf '%s' '{answer}'\nprintf '%s' '{stderr}' >&2\nexit {status}\n"
    )
    path.chmod(0o755)
    return path


def python312(path: Path) -> Path:
    """A stand-in that answers the probe as a working Python 3.12 would."""
    return stand_in(path, "3 12\n")


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """An environment with an empty PATH folder and an empty pyenv root, nothing else."""
    (tmp_path / "bin").mkdir()
    (tmp_path / "pyenv" / "versions").mkdir(parents=True)
    return {"PATH": str(tmp_path / "bin"), "PYENV_ROOT": str(tmp_path / "pyenv")}


def test_a_pyenv_shim_that_fails_is_passed_over_for_pyenvs_newest_312(
    env: dict[str, str], tmp_path: Path
) -> None:
    stand_in(tmp_path / "bin" / "python3.12", status=127, stderr=SHIM_REFUSAL)
    versions = tmp_path / "pyenv" / "versions"
    python312(versions / "3.12.1" / "bin" / "python3.12")
    python312(versions / "3.12.9" / "bin" / "python3.12")
    newest = python312(versions / "3.12.10" / "bin" / "python3.12")  # newer, though not by text
    python312(versions / "3.13.0" / "bin" / "python3.12")  # not a 3.12 installation

    assert python_env.choose(env) == str(newest)


def test_a_broken_installation_is_passed_over_for_the_next(
    env: dict[str, str], tmp_path: Path
) -> None:
    versions = tmp_path / "pyenv" / "versions"
    stand_in(versions / "3.12.5" / "bin" / "python3.12", status=1)  # e.g. a missing libpython
    working = python312(versions / "3.12.1" / "bin" / "python3.12")

    assert python_env.choose(env) == str(working)


def test_a_working_python312_on_path_comes_first(env: dict[str, str], tmp_path: Path) -> None:
    on_path = python312(tmp_path / "bin" / "python3.12")
    python312(tmp_path / "pyenv" / "versions" / "3.12.10" / "bin" / "python3.12")

    assert python_env.choose(env) == str(on_path)


@pytest.mark.parametrize("answer", ["3 11\n", "3 13\n"], ids=["older", "newer"])
def test_another_version_under_the_name_python312_is_passed_over(
    env: dict[str, str], tmp_path: Path, answer: str
) -> None:
    stand_in(tmp_path / "bin" / "python3.12", answer)

    assert python_env.choose(env) == "python3"


def test_a_python312_without_ensurepip_is_passed_over(env: dict[str, str], tmp_path: Path) -> None:
    # As Debian's python3.12 without python3.12-venv: it runs, but cannot make a venv with pip.
    without_ensurepip = tmp_path / "bin" / "python3.12"
    without_ensurepip.write_text(
        "#!/bin/sh\n"
        'case "$*" in *ensurepip*) echo "No module named ensurepip" >&2; exit 1;; esac\n'
        "echo 3 12\n"
    )
    without_ensurepip.chmod(0o755)

    assert python_env.choose(env) == "python3"


def test_without_python312_the_default_python3_is_used(env: dict[str, str]) -> None:
    assert python_env.choose(env) == "python3"


def test_pyenvs_root_comes_from_pyenv_itself_when_the_variable_is_unset(
    env: dict[str, str], tmp_path: Path
) -> None:
    root = tmp_path / "elsewhere"
    installed = python312(root / "versions" / "3.12.1" / "bin" / "python3.12")
    stand_in(tmp_path / "bin" / "pyenv", f"{root}\n")
    del env["PYENV_ROOT"]

    assert python_env.choose(env) == str(installed)


def test_the_probe_is_a_real_interpreters_version() -> None:
    this = sys.version_info[:2]
    assert python_env.runs_as(sys.executable, (this[0], this[1]))
    assert not python_env.runs_as(sys.executable, (2, 7))
    assert not python_env.runs_as("/nonexistent/python3.12", (3, 12))


class RecordedPip:
    """Runs every command but pip installs, which it records (no package index in tests)."""

    def __init__(self) -> None:
        self.installs: list[list[str]] = []

    def __call__(self, command: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        if command[1:4] == ["-m", "pip", "install"]:
            self.installs.append(command)
            return subprocess.CompletedProcess(command, 0, "", "")
        return subprocess.run(command, **kwargs)


# The real builder (clear, symlinks) without pip, which tests do not need: seconds saved.
CREATE_WITHOUT_PIP = functools.partial(python_env.create_venv, with_pip=False)


@pytest.fixture
def requirements(tmp_path: Path) -> list[Path]:
    dev, runtime = tmp_path / "requirements-dev.txt", tmp_path / "requirements.txt"
    dev.write_text("-r requirements.txt\n")
    runtime.write_text("")
    past = dev.stat().st_mtime - 60  # so that a stamp written now is newer
    for path in (dev, runtime):
        os.utime(path, (past, past))
    return [dev, runtime]


def ensure(venv: Path, requirements: list[Path], pip: RecordedPip) -> bool:
    return python_env.ensure_venv(venv, requirements, run=pip, create=CREATE_WITHOUT_PIP)


def test_a_new_venv_is_built_with_this_interpreter_and_its_stamp_names_it(
    tmp_path: Path, requirements: list[Path]
) -> None:
    venv, pip = tmp_path / "venv", RecordedPip()

    assert ensure(venv, requirements, pip)

    assert python_env.venv_identity(venv) == python_env.identity()
    assert (venv / python_env.STAMP_NAME).read_text() == python_env.identity()
    assert [command[-2:] for command in pip.installs] == [
        ["--upgrade", "pip"],
        ["-r", str(requirements[0])],
    ]
    assert all(command[0] == str(venv / "bin" / "python") for command in pip.installs)


def test_a_current_venv_is_left_alone(tmp_path: Path, requirements: list[Path]) -> None:
    venv = tmp_path / "venv"
    ensure(venv, requirements, RecordedPip())
    again = RecordedPip()

    assert not ensure(venv, requirements, again)

    assert again.installs == []


@pytest.mark.parametrize("changed", [0, 1], ids=["requirements-dev.txt", "requirements.txt"])
def test_a_changed_requirements_file_is_installed_into_the_same_venv(
    tmp_path: Path, requirements: list[Path], changed: int
) -> None:
    venv = tmp_path / "venv"
    ensure(venv, requirements, RecordedPip())
    kept = venv / "kept"
    kept.write_text("the venv is not rebuilt")
    later = (venv / python_env.STAMP_NAME).stat().st_mtime + 10
    os.utime(requirements[changed], (later, later))
    again = RecordedPip()

    assert ensure(venv, requirements, again)

    assert [command[-1] for command in again.installs] == ["pip", str(requirements[0])]
    assert kept.exists()


def venv_of_another_interpreter(venv: Path, runs: bool = True) -> None:
    """A venv whose python reports another interpreter (or does not run), with its stamp."""
    other = "CPython 3.11.7 /somewhere/else"
    stand_in(venv / "bin" / "python", f"{other}\n", status=0 if runs else 1)
    (venv / "pyvenv.cfg").write_text("home = /somewhere/else/bin\nversion = 3.11.7\n")
    (venv / python_env.STAMP_NAME).write_text(other)
    (venv / "left-over").write_text("from the old venv")


@pytest.mark.parametrize("runs", [True, False], ids=["another interpreter", "python broken"])
def test_a_venv_of_another_interpreter_is_built_anew(
    tmp_path: Path, requirements: list[Path], runs: bool
) -> None:
    venv = tmp_path / "venv"
    venv_of_another_interpreter(venv, runs)

    assert ensure(venv, requirements, RecordedPip())

    assert python_env.venv_identity(venv) == python_env.identity()
    assert (venv / python_env.STAMP_NAME).read_text() == python_env.identity()
    assert not (venv / "left-over").exists()


def test_a_stamp_of_another_interpreter_over_this_ones_venv_only_reinstalls(
    tmp_path: Path, requirements: list[Path]
) -> None:
    # As after the Makefile that wrote an empty stamp: the venv itself is fine.
    venv = tmp_path / "venv"
    ensure(venv, requirements, RecordedPip())
    (venv / python_env.STAMP_NAME).write_text("")
    (venv / "kept").write_text("the venv is not rebuilt")
    again = RecordedPip()

    assert ensure(venv, requirements, again)

    assert len(again.installs) == 2
    assert (venv / "kept").exists()
    assert (venv / python_env.STAMP_NAME).read_text() == python_env.identity()


def test_a_folder_that_is_not_a_venv_is_never_replaced(
    tmp_path: Path, requirements: list[Path]
) -> None:
    folder = tmp_path / "not-a-venv"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")

    with pytest.raises(SystemExit, match="is not a virtual environment"):
        ensure(folder, requirements, RecordedPip())

    assert (folder / "notes.txt").read_text() == "mine"


def test_describe_says_whether_this_is_the_deploy_runtime() -> None:
    line = python_env.describe()
    assert line.startswith(f"Python {sys.version.split()[0]} from {sys.base_prefix}")
    deploy_runtime = sys.version_info[:2] == python_env.DEPLOY_RUNTIME
    assert ("the deploy runtime (python312)" in line) == deploy_runtime


def _make_dry_run(*args: str) -> list[str]:
    # Not the outer make's variables: `make test PYTHON=... VENV=...` passes them down, in
    # MAKEFLAGS and in the environment.
    outer = {"MAKEFLAGS", "MFLAGS", "MAKELEVEL", "PYTHON", "VENV"}
    result = subprocess.run(
        ["make", "--no-print-directory", "-n", *args],
        cwd=REPO_ROOT,
        env={name: value for name, value in os.environ.items() if name not in outer},
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout.splitlines()


def test_make_builds_its_venv_with_the_chosen_interpreter_or_the_one_given() -> None:
    chosen = python_env.choose(os.environ)
    venv_step = "tools/python_env.py venv .venv requirements-dev.txt requirements.txt"

    assert _make_dry_run("venv") == [f"{chosen} {venv_step}"]
    assert _make_dry_run("venv", "PYTHON=/opt/python3.11")[0] == f"/opt/python3.11 {venv_step}"
    assert ".venv/bin/python tools/python_env.py describe" in _make_dry_run("test")
