"""The benchmark harness runs end to end (tiny sizes; it measures nothing here) and cleans up.

Speed itself is measured by ``make bench``, never asserted in tests.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from devstack.stack import stack_processes

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.emulator
def test_one_quick_round_writes_the_table_the_plot_and_the_raw_results(tmp_path: Path) -> None:
    out, work = tmp_path / "results", tmp_path / "work"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "--quick",
            "--rounds=1",
            "--rides=2000",
            "--zones=10",
            "--skip-levers",
            "--variants",
            "floor",
            "project",
            f"--out={out}",
            f"--work-dir={work}",
        ],
        check=True,
        cwd=REPO_ROOT,
        capture_output=True,
        timeout=240,
    )

    results = json.loads((out / "results.json").read_text())
    assert {r["variant"] for r in results["rounds"]} == {"floor", "project"}
    project = next(r for r in results["rounds"] if r["variant"] == "project")
    assert project["warm_errors"] == 0
    assert project["cpu_ms"]
    assert project["batch_e2e_ms"]
    assert project["pss_bytes"] > 0
    assert results["swap"]["variants"][0]["swaps"] > 0
    assert results["swap"]["variants"][0]["failed_requests"] == 0
    assert "| cold start" in (out / "results.md").read_text()
    assert (out / "bench.png").read_bytes().startswith(b"\x89PNG")
    assert stack_processes(work) == []
