"""The commands of docs/real_models.md, run as written (plus the test world's cache dir and a
temporary run dir), with another Ray instance up on this machine: the embedded run starts a
private one instead of joining it."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys

from tests.conftest import REPO, TEST_WORLDS

DOC = REPO / "docs" / "real_models.md"


def doc_commands() -> list[list[str]]:
    blocks = re.findall(r"```bash\n(.*?)```", DOC.read_text(), re.S)
    lines = [line.split("#")[0].strip() for block in blocks for line in block.splitlines()]
    return [shlex.split(line) for line in lines if line.startswith("raylign train")]


def run(args: list[str], tmp_path) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAY_ADDRESS": "local"}  # as Ray reads it: a new local instance
    return subprocess.run([sys.executable, "-m", "services.cli", *args[1:],
                           f"task.cache_dir={TEST_WORLDS}", f"run_dir={tmp_path}"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=900)


def test_real_models_doc_commands(ray_session, micro_world, tmp_path):
    group, refused = doc_commands()
    assert "learner.world_size=2" in group and "learner.memory_gb=0.001" in refused
    done = run(refused, tmp_path / "refused")
    assert done.returncode == 2, done.stderr[-2000:]
    assert "learner memory plan, per rank (world_size 2)" in done.stdout
    assert "learner.memory_gb: the learner needs about" in done.stderr
    done = run(group, tmp_path / "group")  # ray_session is another Ray on this machine
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Found multiple active Ray instances" not in done.stderr
    summary = json.loads((tmp_path / "group" / "micro" / "summary.json").read_text())
    assert summary["steps"] == 4 and summary["ledger"]["trained"] == 4 * 16
