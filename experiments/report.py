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

## How to read this
- **Design first.** Each experiment's design, endpoints and verdict rule are in its module
  docstring (`experiments/NAME.py`), written before it ran; the JSON names the commit.
- **Verdicts** are `held | refuted | inconclusive`: held when the 95% interval of the predicted
  effect lies above 0 and its point estimate is at least the smallest effect of interest ("held,
  smaller than the effect of interest" when the estimate is smaller); refuted when the interval
  lies below the smallest effect of interest (so an effect that large is excluded) and does
  not lie above 0; inconclusive otherwise. Intervals are paired t-intervals over seeds
  (df = seeds − 1), or bootstraps over prompts for best-of-n.
- **Gold** is the tiny world's oracle reward (VADER compound × fluency), never seen in training;
  **proxy** is the learned reward model(s) the policy optimises. Gold, KL and perplexity drift
  are measured together, of one policy, on a fixed held-out prompt set stratified over prompt
  types. Each seed has its own prompt order, shared by every arm.
- **What is not claimed.** A 3M-parameter policy on a synthetic review world shows whether a
  mechanism works as described, not how large its effect is on real models.
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
            verdict = c["verdict"] + (" (quick run: no evidence)" if res.get("quick") else "")
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
                     f"world `{res.get('world', '?')}`"
                     + (f" (digest `{res['world_digest'][:12]}`)" if res.get("world_digest")
                        else "") + ", "
                     f"commit `{res.get('commit', '?')}`).\n")
        lines.append(res["section"])
        facts = res.get("world_facts") or _world_facts(res.get("world"))
        if facts:
            lines += ["", facts]
        if getattr(mod, "PAPER_FIGURE", None):
            lines += ["", f"*The paper's figure, to set beside ours:* {mod.PAPER_FIGURE}."]
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
