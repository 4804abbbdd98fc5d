"""The benchmark harness runs end to end (tiny sizes; it measures nothing here) and cleans up;
the cost arithmetic and the default-concurrency rule it reports.

Speed itself is measured by ``make bench``, never asserted in tests.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.cost import Instance, Prices, choose_default, per_million_rides
from devstack.stack import stack_processes
from publisher import DEFAULT_MAX_RPCS_IN_FLIGHT

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
    assert "## Concurrency" in markdown
    assert "## Cost per million rides" in markdown
    assert "### Several Publish RPCs in flight against one" in markdown
    assert stack_processes(work) == []


def test_cost_per_million_rides_is_billed_instance_time_at_allocated_size_plus_requests() -> None:
    prices = Prices(per_vcpu_second=0.00002, per_gib_second=0.000002, per_million_requests=0.5)

    single = per_million_rides(500.0, 1, Instance(vcpu=1, memory_gib=0.5), prices)
    # 1,000,000 rides at 500 rides/s keep one instance billed for 2,000 s.
    assert single["instance_seconds"] == pytest.approx(2000)
    assert single["compute"] == pytest.approx(2000 * (0.00002 + 0.5 * 0.000002))
    assert single["requests"] == pytest.approx(0.5)
    assert single["total"] == pytest.approx(single["compute"] + single["requests"])

    batched = per_million_rides(20_000.0, 1000, Instance(vcpu=2, memory_gib=1), prices)
    assert batched["instance_seconds"] == pytest.approx(50)
    assert batched["compute"] == pytest.approx(50 * (2 * 0.00002 + 0.000002))
    assert batched["requests"] == pytest.approx(1000 * 0.5 / 1_000_000)


def test_the_default_concurrency_is_the_smallest_within_tolerance_of_the_cheapest() -> None:
    totals = {1: 1.02, 8: 0.494, 16: 0.448, 32: 0.427, 80: 0.418}
    assert choose_default(totals, tolerance=0.05) == 32
    assert choose_default(totals, tolerance=0.10) == 16
    assert choose_default(totals, tolerance=0.0) == 80
    assert choose_default({1: float("nan"), 4: 0.0}) is None
