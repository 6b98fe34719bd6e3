"""Run report: PNG plots and a markdown summary from RUN_DIR/metrics.jsonl."""

from __future__ import annotations

import json
from pathlib import Path


def read_metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_report(run_dir: Path) -> list[str]:
    """Write rewards.png (proxy/gold vs step and vs KL), rollout.png, and report.md."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(run_dir)
    if not rows:
        return []
    step = [r["step"] for r in rows]

    def col(key: str) -> list[float]:
        return [r.get(key, float("nan")) for r in rows]

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    a.plot(step, col("reward/proxy"), label="proxy (combined)")
    a.plot(step, col("reward/gold"), label="gold")
    for r in rows[0]:
        if r.startswith("reward/member"):
            a.plot(step, col(r), lw=0.7, alpha=0.5, label=r.split("/")[1])
    for r in rows:
        if r.get("reset"):
            a.axvline(r["step"], color="grey", ls=":", lw=0.8)
    a.set(xlabel="learner step", ylabel="reward", title="reward (dotted: Elastic Reset)")
    a.legend(fontsize=7)
    kl = col("kl/init_k1")
    b.scatter(kl, col("reward/proxy"), c=step, cmap="Blues", marker="o", s=18, label="proxy")
    b.scatter(kl, col("reward/gold"), c=step, cmap="Oranges", marker="^", s=18, label="gold")
    b.set(xlabel="KL(policy || init), summed k1 per sequence", ylabel="reward",
          title="reward vs drift (darker = later step)")
    b.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(run_dir / "rewards.png", dpi=110)
    plt.close(fig)

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.5))
    a.plot(step, col("rollout/staleness_mean"), label="mean")
    a.plot(step, col("rollout/staleness_max"), label="max")
    a.set(xlabel="learner step", ylabel="versions", title="sample staleness")
    a.legend(fontsize=7)
    b.plot(step, col("rollout/samples_per_s"))
    b.set(xlabel="learner step", ylabel="samples/s", title="throughput (cumulative)")
    fig.tight_layout()
    fig.savefig(run_dir / "rollout.png", dpi=110)
    plt.close(fig)

    first, last = rows[0], rows[-1]
    keys = ["reward/proxy", "reward/gold", "kl/init_k1", "loss/policy", "loss/value",
            "rollout/samples_per_s"]
    lines = ["# Run report", "", "| metric | first step | last step |", "|---|---|---|"]
    lines += [f"| {k} | {first.get(k, float('nan')):.4f} | {last.get(k, float('nan')):.4f} |"
              for k in keys]
    lines += ["", f"Elastic Resets: {sum(bool(r.get('reset')) for r in rows)}",
              "", "![rewards](rewards.png)", "", "![rollout](rollout.png)", ""]
    (run_dir / "report.md").write_text("\n".join(lines))
    return [str(run_dir / "rewards.png"), str(run_dir / "rollout.png"), str(run_dir / "report.md")]
