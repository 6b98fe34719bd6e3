"""`python -m benchmarks.shards --quick`: real learner groups of world size 1 and 2 on the
`test` shape; the run completes and writes finite figures and its table (no timing checks)."""

from __future__ import annotations

import json
import math
import subprocess
import sys

from tests.conftest import REPO, numbers


def test_quick_shards_benchmark(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "benchmarks.shards", "--quick", "--out",
                           str(tmp_path)], cwd=REPO, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    [path] = tmp_path.glob("*-shards-quick.json")
    res = json.loads(path.read_text())
    assert [(r["shape"], r["world_size"]) for r in res["rows"]] == [("test", 1), ("test", 2)]
    assert [len(r["rank_growth_bytes"]) for r in res["rows"]] == [1, 2]
    assert all(math.isfinite(x) for x in numbers(res["rows"]))
    [md] = tmp_path.glob("*-shards-quick.md")
    assert "| test | 0M | 2 |" in md.read_text()
