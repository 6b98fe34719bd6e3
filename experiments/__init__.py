"""Experiments that test the claims raylign is built on (`raylign experiment NAME`).

Each module has `TITLE`, `CLAIM` (claim and what the paper reported) and `run(ctx) -> dict`,
optionally `SEEDS` (the default number of seeds) and `WORLD` (task.* overrides: the world the
experiment needs, e.g. soup ingredients fine-tuned on disjoint data);
`run_experiment` trains through `services.bootstrap.train`, writes `<out>/<name>.json` and PNGs,
and re-renders `results.md` from every JSON in `<out>` (docs/results.md for the default out).
A research harness beside `benchmarks/`, not installed with the product: it runs from a source
checkout (the CLI adds the checkout to sys.path).
"""

from __future__ import annotations

import importlib
import json
import os
import time
from pathlib import Path

from experiments.common import BUDGET_HOURS
from learner.process_env import set_process_env

CHECKOUT = Path(__file__).resolve().parents[1]  # the source checkout this package is in
NAMES = ("overopt", "ensembles", "elastic", "soup", "together", "offpolicy", "alarm")
DEFAULT_OUT = CHECKOUT / "docs" / "results"


def module(name: str):
    if name not in NAMES:
        raise ValueError(f"unknown experiment '{name}'; valid: {', '.join(NAMES)}")
    return importlib.import_module(f"experiments.{name}")


def doc_path(out: Path) -> Path:
    """docs/results.md beside a checkout's docs/results/, else <out>/results.md."""
    out = Path(out).resolve()
    if out.parts[-2:] == ("docs", "results"):
        return out.parent / "results.md"
    return out / "results.md"


class DirtyTree(RuntimeError):
    """A full experiment from a working tree with uncommitted changes (exit code 2)."""


class Underpowered(RuntimeError):
    """A full experiment whose seeds give one of its claims less than 80% power at the
    claim's smallest effect of interest (exit code 2)."""


def power_plan(mod, seeds: int) -> list[dict]:
    """Each paired claim's power at `seeds` and the seeds (and hours) 80% power needs, from
    the module's POWER (experiments.common.Power); [] for a module without one."""
    return [{"claim": p.claim, "effect": p.effect, "sd": p.sd, "seeds": seeds,
             "power": round(p.at(seeds), 3), "seeds_for_80": p.seeds(),
             "hours_for_80": round(p.hours(p.seeds()), 1), "budget_hours": BUDGET_HOURS,
             "decidable_within_budget": p.decidable(), "text": p.plan(seeds)}
            for p in getattr(mod, "POWER", ())]


PINNED_ENV = "RAYLIGN_PINNED_COMMIT"  # set in the process that runs inside a pinned worktree


def run_experiment(name: str, *, quick: bool = False, seeds: int | None = None,
                   out: Path | None = None, runs: Path | None = None,
                   allow_dirty: bool = False, underpowered: bool = False) -> dict:
    """Run one experiment and write its JSON. A full run needs at least 80% power for each
    paired claim at its smallest effect of interest (`power_plan`; `underpowered` runs
    anyway, and the result records the power), a clean working tree, and runs from a git
    worktree of its commit (`pinned_checkout`), in a child process: commits or edits in this
    checkout while it runs cannot change it. `allow_dirty` runs in this checkout anyway and
    records the diff; so do quick runs (integration tests of the command)."""
    mod = module(name)
    seeds = seeds if seeds is not None else (1 if quick else getattr(mod, "SEEDS", 3))
    plan = power_plan(mod, seeds)
    weak = [p for p in plan if p["power"] < 0.8]
    if weak and not (quick or underpowered):
        lines = "\n".join(f"  {p['text']}" for p in weak)
        raise Underpowered(
            f"experiment {name}: {seeds} seeds give less than 80% power:\n{lines}\n"
            + ("not decidable within budget; " if not all(p["decidable_within_budget"]
                                                       for p in weak) else
               f"pass --seeds {max(p['seeds_for_80'] for p in weak)}, or ")
            + "--underpowered runs anyway (the result records its power)")
    code = provenance()
    if code["dirty"] and not (quick or allow_dirty):
        raise DirtyTree(f"experiment {name}: the working tree has uncommitted changes "
                        f"({code['commit']}); commit them, or pass --allow-dirty to run anyway "
                        "and record the diff in the result")
    out = Path(out) if out is not None else DEFAULT_OUT
    runs = Path(runs) if runs is not None else Path("runs") / "experiments" / (
        f"{name}-quick" if quick else name)
    if not (quick or code["dirty"] or os.environ.get(PINNED_ENV) == code["commit"]):
        return run_pinned(name, code["commit"], seeds=seeds, out=out, runs=runs,
                          underpowered=underpowered)
    set_process_env()
    import ray

    from experiments.common import Ctx, finite, world, world_digest
    from experiments.report import _world_facts, render

    ctx = Ctx(name=name, quick=quick, seeds=seeds, out=out, runs=runs.resolve(),
              world_overrides=list(getattr(mod, "WORLD", ())), commit=code["commit"])
    t0 = time.perf_counter()
    try:
        result = mod.run(ctx)  # starts Ray at its first run that is not cached
    finally:
        if ctx.ray_started:
            ray.shutdown()
    key = world(ctx).root.name
    result.update(experiment=name, quick=quick, seeds=seeds, power=plan, world=key,
                  world_digest=world_digest(ctx),
                  world_facts=_world_facts(key), **code,
                  seconds=round(time.perf_counter() - t0, 1), run_seconds=ctx.timings,
                  finished=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(finite(result), indent=1))
    render(out, doc_path(out))
    return result


def pinned_checkout(commit: str, repo: Path = CHECKOUT) -> Path:
    """A detached git worktree of `commit` at <repo>/.cache/worktrees/<commit> (made once,
    reused), whose .cache is the checkout's (built worlds, test worlds); returns its path."""
    import subprocess

    tree = repo / ".cache" / "worktrees" / commit
    if not (tree / ".git").exists():
        tree.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["git", "worktree", "add", "--detach", str(tree), commit], cwd=repo,
                       check=True, capture_output=True, text=True)
    cache = tree / ".cache"
    if not cache.exists():
        cache.symlink_to(repo / ".cache", target_is_directory=True)
    return tree


def run_pinned(name: str, commit: str, *, seeds: int | None, out: Path, runs: Path,
               underpowered: bool = False) -> dict:
    """`raylign experiment NAME` in a child process whose code is the worktree of `commit`
    (its cwd, first on sys.path, and Ray's workers'); the result is written to `out`."""
    import subprocess
    import sys

    tree = pinned_checkout(commit)
    out, runs = Path(out).resolve(), Path(runs).resolve()
    cmd = [sys.executable, "-m", "services.cli", "experiment", name, "--out", str(out),
           "--runs", str(runs), *([] if seeds is None else ["--seeds", str(seeds)]),
           *(["--underpowered"] if underpowered else [])]
    env = {**os.environ, PINNED_ENV: commit,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(tree), os.environ.get("PYTHONPATH")]))}
    print(f"experiment {name}: running commit {commit} from {tree}", flush=True)
    subprocess.run(cmd, cwd=tree, env=env, check=True)
    return json.loads((out / f"{name}.json").read_text())


def provenance(repo: Path | None = None) -> dict:
    """{"commit": HEAD's full hash ('+dirty' with uncommitted changes, untracked files
    included), "dirty": bool, and with a dirty tree "diff": `git diff HEAD` and "untracked":
    the untracked files' paths}."""
    import subprocess

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], capture_output=True, text=True,
                              cwd=repo or CHECKOUT).stdout.strip()

    dirty = bool(git("status", "--porcelain"))
    out = {"commit": git("rev-parse", "HEAD") + ("+dirty" if dirty else ""), "dirty": dirty}
    if dirty:
        out["diff"] = git("diff", "HEAD")
        out["untracked"] = git("ls-files", "--others", "--exclude-standard").splitlines()
    return out
