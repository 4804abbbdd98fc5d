"""The benchmark harness runs end to end (tiny sizes; it measures nothing here) and cleans up.

Speed itself is measured by ``make bench``, never asserted in tests; the cost arithmetic it
reports is tested in test_cost.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from devstack.stack import stack_processes
from ride_predictor.publisher import DEFAULT_MAX_RPCS_IN_FLIGHT

REPO_ROOT = Path(__file__).resolve().parent.parent


def run_bench(module: str, *options: str, out: Path, work: Path) -> None:
    """``python -m <module>`` with one round on a tiny model, writing to ``out`` and ``work``."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            module,
            "--rounds=1",
            "--rides=2000",
            "--zones=10",
            *options,
            f"--out={out}",
            f"--work-dir={work}",
        ],
        check=True,
        cwd=REPO_ROOT,
        capture_output=True,
        timeout=240,
    )


@pytest.mark.emulator
def test_one_quick_round_writes_the_table_the_plot_and_the_raw_results(tmp_path: Path) -> None:
    out, work = tmp_path / "results", tmp_path / "work"
    run_bench(
        "bench", "--quick", "--skip-levers", "--variants", "floor", "project", out=out, work=work
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
    markdown = (out / "results.md").read_text()
    assert "| cold start" in markdown
    assert (out / "bench.png").read_bytes().startswith(b"\x89PNG")

    # The concurrency phase: both variants at each quick level, publishing through the proxy,
    # and the project with one RPC in flight at one level (to keep this cheap).
    levels = {(r["variant"], r["concurrency"]) for r in results["concurrency"]}
    assert levels == {(v, c) for v in ("framework", "project") for c in (1, 2)} | {
        ("project-1rpc", 2)
    }
    for level in results["concurrency"]:
        assert level["single"]["ok"] > 0
        assert level["single"]["failed"] == 0
        is_project = level["variant"] in ("project", "project-1rpc")
        assert (level["batch"] is not None) == is_project
        if is_project:  # its publishes went through the delaying proxy
            rtt_ms = results["meta"]["concurrency_sizes"]["rtt_ms"]
            assert level["single"]["latency_p50_ms"] >= rtt_ms
    caps = {r["variant"]: r["max_rpcs_in_flight"] for r in results["concurrency"]}
    assert caps == {"framework": None, "project": DEFAULT_MAX_RPCS_IN_FLIGHT, "project-1rpc": 1}
    assert results["summary"]["cost"]["default_concurrency"] in (1, 2)
    # What the cost model bills was measured: the Publish RPCs the project sent in each phase,
    # its per-message log lines, the pushed messages' sizes.
    for level in results["concurrency"]:
        if level["variant"] == "project":
            single = level["publish_single"]
            assert sum(int(n) * b["rpcs"] for n, b in single.items()) >= level["single"]["ok"]
            assert all(b["payload_bytes"] > 0 for b in single.values())
            assert set(level["publish_batch"]) == {"50"}  # a batch's outputs in one RPC each
            assert level["log_lines"]["single"]["lines"] >= level["single"]["ok"]
    sizes = results["message_sizes"]
    assert 100 < sizes["single"]["message_bytes"] < sizes["batch"]["message_bytes"]
    assert "## Concurrency" in markdown
    assert "## Cost per million rides" in markdown
    assert "## All in: what a million predictions cost" in markdown
    assert "### Break-even volumes" in markdown
    assert "### Several Publish RPCs in flight against one" in markdown
    assert stack_processes(work) == []


@pytest.mark.emulator
def test_the_fast_path_measurement_runs_both_variants_and_prices_them(tmp_path: Path) -> None:
    out, work = tmp_path / "results", tmp_path / "work"
    run_bench("bench.fast_path", "--calls=5", "--concurrency=2", out=out, work=work)

    results = json.loads((out / "results.json").read_text())
    levels = {(r["variant"], r["concurrency"]) for r in results["levels"]}
    assert levels == {(v, c) for v in ("project", "pipeline") for c in (1, 2)}
    assert all(r["single"]["ok"] > 0 and r["single"]["failed"] == 0 for r in results["levels"])
    summary = results["summary"]
    fast, pipeline = (
        summary["in_process_us"][f"{v}: 1 ride, CPU µs"] for v in ("project", "pipeline")
    )
    assert fast < pipeline  # the pipeline's predict really ran in the second variant
    assert set(summary["compute_per_million"]) == {"project", "pipeline"}
    assert (
        "| figure | project | pipeline | project ÷ pipeline |" in (out / "results.md").read_text()
    )
    assert stack_processes(work) == []
