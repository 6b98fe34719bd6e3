"""`python -m benchmarks --quick` on the micro world: the run completes and writes well-formed
results (JSON with finite numbers, a markdown table). No timing assertions: on shared CPUs the
figures are whatever they are."""

from __future__ import annotations

import json
import math
import subprocess
import sys

from tests.conftest import REPO, numbers


def test_quick_benchmarks(micro_world, tmp_path):
    md = tmp_path / "bench.md"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--out", str(tmp_path),
         "--markdown", str(md)],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    [path] = tmp_path.glob("*-quick.json")
    res = json.loads(path.read_text())
    assert not res["errors"]
    assert set(res["figures"]) == {"rollout", "broadcast", "learner", "overlap", "memory",
                                   "scaling"}
    assert all(math.isfinite(x) for x in numbers(res["figures"]))
    assert res["figures"]["rollout"]["by_workers"]["1"]["ratio"]["n"] == 2
    cases = res["figures"]["broadcast"]["cases"]  # incl. the preallocated-store child session
    assert [c.get("preallocated", False) for c in cases] == [False, True, False]
    assert all(c["put_page_faults"]["n"] >= 2 for c in cases)
    live = res["figures"]["scaling"]["live"]  # scaled 1 -> 2 workers during one run
    assert set(live["by_workers"]) == {"1", "2"}
    assert all(x["steady"] > 0 for x in live["by_workers"].values())
    assert set(res["figures"]["memory"]["peak_rss_mib"]) >= {
        "rollout worker", "reward member", "learner", "driver"}
    text = md.read_text()
    assert "| figure | ratio" in text and "1. rollout efficiency, N=1" in text
    assert "4. overlap" in text and "5. Peak RSS" in text
