"""`python -m benchmarks [--quick] [--gpu] [--only FIG ...]`: every figure, one run.

Writes `<out>/<date>.json` (`<date>-quick.json` with --quick) and the generated tables into the
markdown file (BENCHMARKS.md for a full run; `<out>/<date>-quick.md` with --quick unless
--markdown says otherwise).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import sys
import time
import traceback
from pathlib import Path

from benchmarks.common import REPO, Settings, init_ray, load_cfg, machine

FIGURES = ("rollout", "broadcast", "learner", "overlap", "memory", "scaling", "peers")
NOT_QUICK = ("peers",)  # TRL is an optional extra; `python -m benchmarks.peers --quick` smokes it


def _finite(x) -> bool:
    if isinstance(x, float):
        return math.isfinite(x)
    if isinstance(x, dict):
        return all(_finite(v) for v in x.values())
    if isinstance(x, list):
        return all(_finite(v) for v in x)
    return True


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    p.add_argument("--quick", action="store_true", help="micro world, 2 repeats, N <= 2")
    p.add_argument("--gpu", action="store_true", help="only the GPU figure (vLLM, ~0.5B)")
    p.add_argument("--only", nargs="+", choices=FIGURES, help="a subset of the CPU figures")
    p.add_argument("--out", default=str(REPO / "benchmarks/results"), help="results directory")
    p.add_argument("--markdown", help="markdown file to write the tables into")
    p.add_argument("--repeats", type=int, help="override the repeats (>= 5 for real results)")
    args = p.parse_args(argv)

    settings = Settings.make(args.quick)
    if args.repeats:
        settings = Settings(**{**settings.__dict__, "repeats": args.repeats})
    from tasks.tiny_world import prepare

    cfg = load_cfg(settings)
    world = prepare(cfg.task)
    init_ray()
    t_start = time.perf_counter()
    figures = ("gpu",) if args.gpu else tuple(
        args.only or (f for f in FIGURES if not (settings.quick and f in NOT_QUICK)))
    date = datetime.datetime.now().strftime("%Y-%m-%d")
    suffix = ("-quick" if args.quick else "") + ("-gpu" if args.gpu else "")
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / f"{date}{suffix}.json"
    res: dict = {"date": date, "quick": settings.quick, "config": settings.config,
                 "repeats": settings.repeats, "machine": machine(), "figures": {},
                 "errors": {}, "json": str(json_path.relative_to(REPO)
                                           if json_path.is_relative_to(REPO) else json_path)}
    for name in figures:
        t0 = time.perf_counter()
        print(f"[bench] {name} ...", flush=True)
        try:
            if name == "memory":
                from benchmarks.overlap import memory

                fig = memory(settings, res["figures"].get("overlap"))
            else:
                module = __import__(f"benchmarks.{name}", fromlist=["run"])
                fig = module.run(settings, cfg, world)
        except Exception as e:  # one failed figure must not lose the others
            traceback.print_exc()
            res["errors"][name] = f"{type(e).__name__}: {e}"
            continue
        fig["seconds"] = time.perf_counter() - t0
        res["figures"][name] = fig
        print(f"[bench] {name}: {fig.get('goal', '')} ({fig['seconds']:.0f} s)", flush=True)
    res["wall_s"] = time.perf_counter() - t_start
    res["all_finite"] = _finite(res["figures"])
    json_path.write_text(json.dumps(res, indent=1) + "\n")

    from benchmarks.report import markdown, splice

    md_path = Path(args.markdown) if args.markdown else (
        REPO / "BENCHMARKS.md" if not (args.quick or args.gpu) else out_dir / f"{date}{suffix}.md")
    table = markdown(res)
    old = md_path.read_text() if md_path.exists() else ""
    md_path.write_text(splice(old, table))
    print(table)
    print(f"[bench] wrote {json_path} and {md_path}")
    return 1 if res["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
