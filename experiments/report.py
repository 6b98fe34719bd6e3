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
  docstring (`experiments/NAME.py`), written before it ran. A full run needs a clean checkout
  and runs from a git worktree of its commit (nothing committed or edited meanwhile reaches
  it); the JSON names the full commit and the world build's content digest.
- **Power before runs.** Each paired claim states its smallest effect of interest and the
  s.d. of per-seed differences it expects (`POWER` in the module, from the runs already
  made). `raylign experiment NAME` refuses a full run whose seeds give a claim less than 80%
  power at that effect, and says how many seeds would, or that they do not fit a budget of 3
  hours of the 2-core machine ("not decidable within budget"); `--underpowered` runs anyway.
  The seeds column gives the power each result's seeds had.
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


def seeds_and_power(mod, res: dict) -> str:
    """"N seeds" and, for paired claims (the module's POWER), the power those seeds gave at
    the smallest effect of interest, and the seeds 80% would need."""
    from experiments import power_plan

    plan = power_plan(mod, res["seeds"])
    if not plan:
        return f"{res['seeds']}"
    return f"{res['seeds']} (" + "; ".join(
        f"{p['claim'].split(',')[0]}: {p['power']:.2f} at {p['effect']:g}, 80% needs "
        f"{p['seeds_for_80']}" for p in plan) + ")"


def render(out: Path, doc: Path) -> None:
    from experiments import NAMES

    results = {}
    for name in NAMES:
        path = Path(out) / f"{name}.json"
        if path.is_file():
            results[name] = json.loads(path.read_text())
    rel = os.path.relpath(Path(out).resolve(), Path(doc).resolve().parent)
    lines = [HEADER, "| experiment | claim | setting | paper reported | we measured | seeds "
             "(power at the effect of interest) | verdict |", "|---|---|---|---|---|---|---|"]
    for name in NAMES:
        mod = importlib.import_module(f"experiments.{name}")
        res = results.get(name)
        if res is None:
            lines.append(f"| [{name}](#{name}) | {mod.CLAIM['claim']} | — | "
                         f"{mod.CLAIM['paper']} | no results | — | not run |")
            continue
        for c in res["claims"]:
            verdict = c["verdict"] + (" (quick run: no evidence)" if res.get("quick") else "")
            lines.append(f"| [{name}](#{name}) | {c['claim']} | {c['setting']} | {c['paper']} "
                         f"| {c['measured']} | {seeds_and_power(mod, res)} | **{verdict}** |")
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
                        else f" ({res['world_digest_note']})" if res.get("world_digest_note")
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
