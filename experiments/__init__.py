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
import time
from pathlib import Path

from learner.process_env import set_process_env

NAMES = ("overopt", "ensembles", "elastic", "soup", "together", "offpolicy", "alarm")
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "docs" / "results"


def module(name: str):
    if name not in NAMES:
        raise ValueError(f"unknown experiment '{name}'; valid: {', '.join(NAMES)}")
    return importlib.import_module(f"experiments.{name}")


def doc_path(out: Path) -> Path:
    """docs/results.md beside docs/results/, else <out>/results.md."""
    out = Path(out)
    return out.parent / "results.md" if out.resolve() == DEFAULT_OUT else out / "results.md"


class DirtyTree(RuntimeError):
    """A full experiment from a working tree with uncommitted changes (exit code 2)."""


def run_experiment(name: str, *, quick: bool = False, seeds: int | None = None,
                   out: Path | None = None, runs: Path | None = None,
                   allow_dirty: bool = False) -> dict:
    """Run one experiment and write its JSON. A full run needs a clean working tree (its
    result names the commit it ran); `allow_dirty` runs anyway and records the diff. Quick runs
    (integration tests of the command) record the diff."""
    code = provenance()
    if code["dirty"] and not (quick or allow_dirty):
        raise DirtyTree(f"experiment {name}: the working tree has uncommitted changes "
                        f"({code['commit']}); commit them, or pass --allow-dirty to run anyway "
                        "and record the diff in the result")
    set_process_env()
    import ray

    from experiments.common import Ctx, finite, world, world_digest
    from experiments.report import _world_facts, render

    mod = module(name)
    out = Path(out) if out is not None else DEFAULT_OUT
    seeds = seeds if seeds is not None else (1 if quick else getattr(mod, "SEEDS", 3))
    runs = Path(runs) if runs is not None else Path("runs") / "experiments" / (
        f"{name}-quick" if quick else name)
    ctx = Ctx(name=name, quick=quick, seeds=seeds, out=out, runs=runs.resolve(),
              world_overrides=list(getattr(mod, "WORLD", ())), commit=code["commit"])
    t0 = time.perf_counter()
    try:
        result = mod.run(ctx)  # starts Ray at its first run that is not cached
    finally:
        if ctx.ray_started:
            ray.shutdown()
    key = world(ctx).root.name
    result.update(experiment=name, quick=quick, seeds=seeds, world=key,
                  world_digest=world_digest(ctx),
                  world_facts=_world_facts(key), **code,
                  seconds=round(time.perf_counter() - t0, 1), run_seconds=ctx.timings,
                  finished=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(finite(result), indent=1))
    render(out, doc_path(out))
    return result


def provenance(repo: Path | None = None) -> dict:
    """{"commit": HEAD's full hash ('+dirty' with uncommitted changes, untracked files
    included), "dirty": bool, and with a dirty tree "diff": `git diff HEAD` and "untracked":
    the untracked files' paths}."""
    import subprocess

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], capture_output=True, text=True,
                              cwd=repo or DEFAULT_OUT.parents[1]).stdout.strip()

    dirty = bool(git("status", "--porcelain"))
    out = {"commit": git("rev-parse", "HEAD") + ("+dirty" if dirty else ""), "dirty": dirty}
    if dirty:
        out["diff"] = git("diff", "HEAD")
        out["untracked"] = git("ls-files", "--others", "--exclude-standard").splitlines()
    return out
