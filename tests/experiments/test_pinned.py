"""A full experiment runs from a git worktree of its commit (experiments.pinned_checkout): later
commits in the checkout do not reach it, and Ray's workers import the worktree's code."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from experiments import pinned_checkout
from tests.conftest import REPO


def git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True,
                          text=True).stdout.strip()


def test_the_worktree_holds_its_commit_whatever_the_checkout_does(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    git("init", "-q", cwd=repo)
    (repo / "code.py").write_text("X = 1\n")
    (repo / ".gitignore").write_text("/.cache\n")  # as the project's: the link too
    git("add", "code.py", ".gitignore", cwd=repo)
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one", cwd=repo)
    first = git("rev-parse", "HEAD", cwd=repo)

    tree = pinned_checkout(first, repo=repo)
    (repo / "code.py").write_text("X = 2\n")  # an edit, then a commit, while it "runs"
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "two", cwd=repo)

    assert tree == repo / ".cache" / "worktrees" / first
    assert (tree / "code.py").read_text() == "X = 1\n"
    assert git("rev-parse", "HEAD", cwd=tree) == first
    assert (tree / ".cache").resolve() == (repo / ".cache").resolve()  # the worlds are shared
    assert git("status", "--porcelain", cwd=tree) == ""  # the link is ignored: a clean tree
    assert pinned_checkout(first, repo=repo) == tree  # made once, reused


PROBE = """
import ray, actors, learner
ray.init(address="local", num_cpus=1, _node_ip_address="127.0.0.1", include_dashboard=False)

@ray.remote
def where():
    import actors, learner
    return actors.__file__, learner.__file__

print("DRIVER", actors.__file__)
print("WORKER", *ray.get(where.remote()))
"""


def test_the_driver_and_rays_workers_import_the_worktrees_code(tmp_path):
    clone = tmp_path / "clone"
    git("clone", "-q", "--shared", str(REPO), str(clone), cwd=tmp_path)
    tree = pinned_checkout(git("rev-parse", "HEAD", cwd=clone), repo=clone)
    env = {**os.environ, "PYTHONPATH": str(tree), "RAY_USAGE_STATS_ENABLED": "0"}
    proc = subprocess.run([sys.executable, "-c", PROBE], cwd=tree, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert git("status", "--porcelain", cwd=tree) == ""  # the project ignores the .cache link
    paths = [p for line in proc.stdout.splitlines() if line.startswith(("DRIVER", "WORKER"))
             for p in line.split()[1:]]
    assert len(paths) == 3
    assert all(Path(p).resolve().is_relative_to(tree.resolve()) for p in paths), paths
