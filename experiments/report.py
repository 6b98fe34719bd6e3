"""Render results.md from the experiments' JSON files: the claims table, then one section each.

An experiment without a JSON is listed as "not run" (no results); a JSON from a `--quick`
run is marked as such (its numbers say nothing about the claim). `<out>/NOTES.md`, if present,
is a hand-written reading of the numbers placed after the table.
"""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path

HEADER = """# Results: do the claims raylign is built on hold in the tiny world?

Every number below comes from `raylign experiment NAME` (`make exp-NAME`), which trains each
arm through `raylign train` (`services.bootstrap.train`) on the tiny world
(`deploy/configs/tiny.yaml`, with the overrides listed per experiment) and writes
`docs/results/NAME.json` (all points, fits, per-run timings) and the plots beside it.
Each verdict rule was written into the experiment module before it ran. Experiments under the
pre-registered method (`experiments/common.py`) give `held | refuted | inconclusive`: held when
the 95% interval of the predicted effect lies above 0, refuted when it excludes the smallest
effect of interest, inconclusive otherwise; intervals are paired t-intervals over seeds or
bootstraps over prompts (or over seeds, for win rates), gold and KL are measured together on a
fixed held-out prompt set, and the JSON carries every seed's rows and the commit. Verdicts
marked "earlier method" come from runs before it (mean ± s.e., percentile bootstrap CIs,
"partly" for a point estimate in the predicted direction) and are to be re-run. Gold = the
tiny world's oracle reward (VADER compound × fluency); proxy = the learned reward model(s).
"""


def render(out: Path, doc: Path) -> None:
    from experiments import NAMES

    results = {}
    for name in NAMES:
        path = Path(out) / f"{name}.json"
        if path.is_file():
            results[name] = json.loads(path.read_text())
    rel = os.path.relpath(Path(out).resolve(), Path(doc).resolve().parent)
    lines = [HEADER, "| experiment | claim | setting | paper reported | we measured | verdict |",
             "|---|---|---|---|---|---|"]
    for name in NAMES:
        mod = importlib.import_module(f"experiments.{name}")
        res = results.get(name)
        if res is None:
            lines.append(f"| [{name}](#{name}) | {mod.CLAIM['claim']} | — | "
                         f"{mod.CLAIM['paper']} | no results | not run |")
            continue
        for c in res["claims"]:
            verdict = c["verdict"] + (" (quick run: no evidence)" if res.get("quick") else
                                      "" if res.get("method") == "preregistered" else
                                      " (earlier method: see below)")
            lines.append(f"| [{name}](#{name}) | {c['claim']} | {c['setting']} | {c['paper']} "
                         f"| {c['measured']} | **{verdict}** |")
    notes = Path(out) / "NOTES.md"  # hand-written reading of the numbers, if any
    if notes.is_file():
        lines += ["", notes.read_text().strip()]
    for name in NAMES:
        mod = importlib.import_module(f"experiments.{name}")
        res = results.get(name)
        lines += ["", f"## {name}", "", f"**{mod.TITLE}**: `raylign experiment {name}`", ""]
        if res is None:
            lines.append(f"Not run: no results (`{name}.json`). The command and its default "
                         "size are ready (see the module docstring of "
                         f"`experiments/{name}.py`).")
            continue
        if res.get("quick"):
            lines.append("*Quick run (micro world, a few steps): checks the command only.*\n")
        train_min = sum((res.get("run_seconds") or {}).values()) / 60
        lines.append(f"Seeds: {res['seeds']}; {len(res.get('run_seconds') or {})} training runs "
                     f"({train_min:.1f} min of training); this invocation "
                     f"{res['seconds'] / 60:.1f} min (finished {res.get('finished', '?')}; "
                     f"world `{res.get('world', '?')}`, "
                     f"commit `{res.get('commit', '?')}`).\n")
        lines.append(res["section"])
        facts = res.get("world_facts") or _world_facts(res.get("world"))
        if facts:
            lines += ["", facts]
        for p in res.get("plots", []):
            lines += ["", f"![{name}]({rel}/{p})"]
    Path(doc).parent.mkdir(parents=True, exist_ok=True)
    Path(doc).write_text("\n".join(lines) + "\n")


def _world_facts(key: str | None) -> str:
    """A line on the world the runs used (from its build summary, if it is in the cache).
    `run_experiment` records it in the result: a world rebuilt under the same key is not
    bit-identical (its reward models train in parallel processes)."""
    from experiments.common import QUICK_WORLDS, REPO

    if not key:
        return ""
    for root in (REPO / ".cache/raylign", QUICK_WORLDS):
        path = root / key / "summary.json"
        if path.is_file():
            s = json.loads(path.read_text())
            rm, probe = s["reward_models"], s["probe"]
            acc = ", ".join(f"{a:.3f}" for a in rm["heldout_accuracy_clean"])
            return (f"World `{key}`: proxy RMs' held-out accuracy on clean gold labels {acc}; "
                    f"SFT samples' mean gold {s['sft']['mean_gold_of_samples']:.3f}; probe "
                    f"\"{probe['spam'].strip()}\": gold {probe['gold']['spam']:.2f}, mean proxy "
                    f"{probe['mean_proxy']['spam']:.2f} (fluent review: gold "
                    f"{probe['gold']['fluent']:.2f}, proxy {probe['mean_proxy']['fluent']:.2f}).")
    return ""
