"""Which Python `make` uses, and the virtual environment built with it (standard library only).

``python3 tools/python_env.py choose`` prints the interpreter for the venv: Python 3.12, the
deploy runtime (Cloud Run functions' ``python312``), when one actually runs here, else
``python3``. ``<python> tools/python_env.py venv DIR REQUIREMENTS...`` builds ``DIR`` with that
interpreter, or rebuilds it when it was built with another one or a requirements file changed;
its stamp records the interpreter. ``<python> tools/python_env.py describe`` says which Python
the tests run on. docs/testing.md, "Which Python".
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import sys
import venv
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

# Cloud Run functions' python312 runtime: what deploy.sh deploys on.
DEPLOY_RUNTIME = (3, 12)
FALLBACK = "python3"
STAMP_NAME = ".installed"
# A candidate must run, be the deploy runtime and be able to make a venv with pip (Debian's
# system Pythons lack ensurepip without their -venv package).
_PROBE = "import ensurepip, sys; print(*sys.version_info[:2])"
_PROBE_TIMEOUT_SECONDS = 30

Run = Callable[..., subprocess.CompletedProcess[str]]


def _version_key(name: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", name))


def pyenv_root(env: Mapping[str, str], run: Run = subprocess.run) -> Path | None:
    """pyenv's root: ``$PYENV_ROOT``, else what ``pyenv root`` says, else ``~/.pyenv``."""
    if env.get("PYENV_ROOT"):
        return Path(env["PYENV_ROOT"])
    pyenv = shutil.which("pyenv", path=env.get("PATH"))
    if pyenv is not None:
        try:
            answer = run([pyenv, "root"], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            answer = None
        if answer is not None and answer.returncode == 0 and answer.stdout.strip():
            return Path(answer.stdout.strip())
    home = env.get("HOME")
    return Path(home) / ".pyenv" if home else None


def candidates(env: Mapping[str, str], run: Run = subprocess.run) -> list[str]:
    """Interpreters that may be the deploy runtime, best first.

    ``python3.12`` on ``PATH`` first. With pyenv, that is a shim that fails unless 3.12 is a
    selected version, so pyenv's own 3.12 installations follow, newest first.
    """
    name = "python{}.{}".format(*DEPLOY_RUNTIME)
    found: list[str] = []
    on_path = shutil.which(name, path=env.get("PATH"))
    if on_path is not None:
        found.append(on_path)
    root = pyenv_root(env, run)
    if root is not None:
        installed = [
            path
            for path in (root / "versions").glob("{}.{}*".format(*DEPLOY_RUNTIME))
            if _version_key(path.name)[:2] == DEPLOY_RUNTIME
        ]
        for version_dir in sorted(installed, key=lambda p: _version_key(p.name), reverse=True):
            found.append(str(version_dir / "bin" / name))
    return list(dict.fromkeys(found))  # the shim may already have led to one of them


def runs_as(interpreter: str, version: tuple[int, int], run: Run = subprocess.run) -> bool:
    """Whether ``interpreter`` starts, is Python ``version`` and can make a venv with pip."""
    try:
        answer = run(
            [interpreter, "-c", _PROBE],
            capture_output=True,
            text=True,
            timeout=_PROBE_TIMEOUT_SECONDS,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return answer.returncode == 0 and answer.stdout.split() == [str(n) for n in version]


def choose(env: Mapping[str, str], run: Run = subprocess.run) -> str:
    """The deploy runtime's interpreter if one runs here, else ``python3``."""
    for candidate in candidates(env, run):
        if runs_as(candidate, DEPLOY_RUNTIME, run):
            return candidate
    return FALLBACK


def identity() -> str:
    """The running interpreter as the stamp records it: version and installation."""
    return f"{platform.python_implementation()} {platform.python_version()} {sys.base_prefix}"


def describe() -> str:
    """A line saying which Python runs, and whether it is the deploy runtime."""
    runtime = "{}.{}".format(*DEPLOY_RUNTIME)
    if sys.version_info[:2] == DEPLOY_RUNTIME:
        verdict = f"the deploy runtime (python{runtime.replace('.', '')})"
    else:
        verdict = f"not the deploy runtime {runtime}: see docs/testing.md, Which Python"
    return f"Python {platform.python_version()} from {sys.base_prefix}, {verdict}"


def venv_identity(venv_dir: Path, run: Run = subprocess.run) -> str | None:
    """The identity of the interpreter ``venv_dir`` was built with, or None if it does not run."""
    python = venv_dir / "bin" / "python"
    if not python.exists():
        return None
    try:
        answer = run(
            [str(python), str(Path(__file__).resolve()), "identity"],
            capture_output=True,
            text=True,
            timeout=_PROBE_TIMEOUT_SECONDS,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return answer.stdout.strip() if answer.returncode == 0 else None


def is_current(venv_dir: Path, requirements: Sequence[Path]) -> bool:
    """Whether the stamp says this interpreter installed ``requirements`` as they are now."""
    stamp = venv_dir / STAMP_NAME
    if not stamp.is_file() or stamp.read_text() != identity():
        return False
    return all(stamp.stat().st_mtime >= path.stat().st_mtime for path in requirements)


def create_venv(venv_dir: Path, with_pip: bool = True) -> None:
    """Make ``venv_dir`` a new venv of this interpreter, emptied first if it was one already.

    As ``python -m venv --clear`` does: symlinks to the interpreter on POSIX.
    """
    venv.EnvBuilder(clear=True, symlinks=os.name != "nt", with_pip=with_pip).create(venv_dir)


def ensure_venv(
    venv_dir: Path,
    requirements: Sequence[Path],
    run: Run = subprocess.run,
    create: Callable[[Path], None] = create_venv,
) -> bool:
    """Build ``venv_dir`` with this interpreter and install ``requirements[0]`` into it.

    Nothing is done when the stamp is current. The venv is made anew when it does not run or
    was built with another interpreter; otherwise the requirements are installed over it.
    Returns whether anything was done.
    """
    if is_current(venv_dir, requirements):
        return False
    me = identity()
    if venv_identity(venv_dir, run) != me:
        if venv_dir.exists() and any(venv_dir.iterdir()) and not (venv_dir / "pyvenv.cfg").exists():
            raise SystemExit(f"{venv_dir} is not a virtual environment: not replacing it")
        print(f"… building {venv_dir} with {describe()}", flush=True)
        print("  (the first run installs the dependencies, about two minutes)", flush=True)
        create(venv_dir)
    else:
        print(f"… installing {requirements[0]} into {venv_dir} ({describe()})", flush=True)
    python = str(venv_dir / "bin" / "python")
    pip = [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    run([*pip, "--upgrade", "pip"], check=True)
    run([*pip, "-r", str(requirements[0])], check=True)
    (venv_dir / STAMP_NAME).write_text(me)
    return True


def main(argv: Sequence[str]) -> int:
    """The command line (see the module's docstring)."""
    match list(argv):
        case ["choose"]:
            print(choose(os.environ))
        case ["identity"]:
            print(identity())
        case ["describe"]:
            print(describe())
        case ["venv", venv_dir, first, *others]:
            ensure_venv(Path(venv_dir), [Path(first), *map(Path, others)])
        case _:
            print(__doc__, file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
