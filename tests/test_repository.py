"""The repository as a newcomer clones it: docs whose links resolve, no path outside it, and
pre-commit hooks that run exactly what ``make lint`` runs."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
# The steering folder beside the clone: spelled in two parts so this file does not name it.
_OUTSIDE = ".." + "/shared"
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# [text](target) and ![alt](target), outside code spans; the target stops at ")" or a space.
_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
_FENCE = re.compile(r"^(```|~~~).*?^\1", re.DOTALL | re.MULTILINE)
_CODE_SPAN = re.compile(r"`[^`\n]*`")


def _links(markdown: str) -> list[str]:
    prose = _CODE_SPAN.sub("", _FENCE.sub("", markdown))
    return _LINK.findall(prose)


def _anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = _CODE_SPAN.sub(lambda m: m.group(0).strip("`"), heading.strip()).lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    markdown = _FENCE.sub("", path.read_text())
    return {_anchor(line.lstrip("#")) for line in markdown.splitlines() if line.startswith("#")}


def _relative_links() -> list[tuple[Path, str]]:
    return [
        (doc, link)
        for doc in DOCS
        for link in _links(doc.read_text())
        if not re.match(r"[a-z][a-z0-9+.-]*:", link)  # http:, https:, mailto: are public pages
    ]


def test_the_docs_exist_and_open_with_what_they_cover() -> None:
    names = {doc.name for doc in DOCS}
    for name in (
        "design.md",
        "deploy.md",
        "aws.md",
        "failures.md",
        "models.md",
        "local-stack.md",
        "speed.md",
        "cost.md",
    ):
        assert name in names, f"docs/{name} is missing"
    for doc in DOCS[1:]:
        lines = doc.read_text().splitlines()
        assert lines[0].startswith("# "), f"{doc.name} does not open with a title"
        intro = next((line for line in lines[1:] if line.strip()), "")
        assert intro, f"{doc.name} has no opening lines"
        assert not intro.startswith("#"), f"{doc.name} has no opening lines"


def test_the_readme_is_a_front_door() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 210  # about 200
    headings = [line for line in readme.splitlines() if line.startswith("## ")]
    assert headings[0] == "## The two commands"
    for doc in DOCS[1:]:
        assert f"(docs/{doc.name})" in readme, f"README does not link docs/{doc.name}"


@pytest.mark.parametrize(
    ("doc", "link"), _relative_links(), ids=lambda v: v.name if isinstance(v, Path) else v
)
def test_every_relative_link_resolves_inside_the_repository(doc: Path, link: str) -> None:
    target, _, fragment = link.partition("#")
    path = (doc.parent / target).resolve() if target else doc
    assert path.is_relative_to(ROOT), f"{doc.name}: {link} points outside the repository"
    assert path.exists(), f"{doc.name}: {link} does not exist"
    if fragment and path.suffix == ".md":
        assert fragment in _anchors(path), f"{doc.name}: no heading #{fragment} in {path.name}"


def test_link_checker_sees_a_broken_link(tmp_path: Path) -> None:
    # The parametrised test above must not pass by finding no links at all.
    assert len(_relative_links()) > 20
    assert _links("see [x](nowhere.md) and `[y](code.md)`") == ["nowhere.md"]
    assert _anchor("Failures: nothing lost, nothing stuck") == "failures-nothing-lost-nothing-stuck"


def test_nothing_refers_to_paths_outside_the_repository() -> None:
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    offenders = []
    for name in tracked:
        path = ROOT / name
        if path.suffix in {".png", ".json"} or not path.is_file():
            continue
        text = path.read_text(errors="replace")
        if _OUTSIDE in text or re.search(r"(?<![\w/])DESIGN\.md", text):
            offenders.append(name)
    assert offenders == []


def _lint_recipe() -> list[str]:
    makefile = (ROOT / "Makefile").read_text()
    recipe = makefile.split("\nlint: ", 1)[1].split("\n\n", 1)[0].splitlines()[1:]
    return [line.strip().replace("$(VENV)", ".venv") for line in recipe]


def test_pre_commit_runs_what_make_lint_runs() -> None:
    config = yaml.safe_load((ROOT / ".pre-commit-config.yaml").read_text())
    (repo,) = config["repos"]
    assert repo["repo"] == "local"
    entries = [hook["entry"] for hook in repo["hooks"]]
    assert entries == _lint_recipe()
    assert len(entries) >= 4


def test_pre_commit_config_is_valid() -> None:
    pre_commit = Path(sys.executable).parent / "pre-commit"
    subprocess.run(
        [str(pre_commit), "validate-config", ".pre-commit-config.yaml"], cwd=ROOT, check=True
    )


def test_ci_workflow_runs_make_test_with_the_emulator_on_311_and_312() -> None:
    workflow = yaml.safe_load((ROOT / ".github/workflows/ci.yml").read_text())
    triggers = workflow[True] if True in workflow else workflow["on"]  # YAML 1.1 reads on: as True
    assert {"push", "pull_request"} <= set(triggers)
    (job,) = workflow["jobs"].values()
    assert job["runs-on"] == "ubuntu-latest"
    assert job["strategy"]["matrix"]["python-version"] == ["3.11", "3.12"]
    assert job["strategy"]["fail-fast"] is False  # one version's failure hides no other's
    steps = job["steps"]
    python = next(s for s in steps if s.get("uses", "").startswith("actions/setup-python"))
    assert python["with"]["python-version"] == "${{ matrix.python-version }}"
    gcloud = next(s for s in steps if s.get("uses", "").startswith("google-github-actions/setup"))
    # The emulator, and what the parser checks of deploy.sh's commands call (alpha: alert policies).
    components = set(gcloud["with"]["install_components"].split(","))
    assert {"alpha", "beta", "bq", "pubsub-emulator"} <= components
    assert re.fullmatch(r"\d+\.\d+\.\d+", gcloud["with"]["version"]), "pin the gcloud version"
    assert any(s.get("uses", "").startswith("actions/setup-java") for s in steps)
    # make test on the interpreter setup-python installed, not the one make would choose.
    python_path = "${{ steps." + python["id"] + ".outputs.python-path }}"
    assert steps[-1]["run"] == f'make test PYTHON="{python_path}"'
    assert (ROOT / ".ci/run").read_text().rstrip().endswith("make test")
