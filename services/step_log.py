"""What a run reports: one metrics.jsonl row and Prometheus figures per learner step, a
progress bar, and the per-phase timings `time/<phase>` of the driver loop."""

from __future__ import annotations

import json
import math
import statistics
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

from tqdm import tqdm

from actors.fleet import cpu_seconds
from actors.records import StepStats, TrainBatch
from services.prometheus_metrics import Metrics


def disagreement(samples) -> float:
    """Mean over samples of the (population) std of the member scores; 0 with one member."""
    return statistics.fmean(statistics.pstdev(s.member_scores) if len(s.member_scores) > 1
                            else 0.0 for s in samples)


def batch_figures(batch: TrainBatch) -> dict[str, float]:
    """Reward, length and staleness figures of the samples one step trained on."""
    samples = batch.samples
    k = len(samples[0].member_scores)
    members = [statistics.fmean(s.member_scores[i] for s in samples) for i in range(k)]
    out = {f"reward/member{i}": m for i, m in enumerate(members)}
    out["reward/proxy"] = statistics.fmean(s.reward for s in samples)
    out["reward/disagreement"] = disagreement(samples)
    golds = [s.gold for s in samples if s.gold is not None]
    if golds:
        out["reward/gold"] = statistics.fmean(golds)
    out["rollout/response_len"] = statistics.fmean(len(s.sample.response_tokens)
                                                   for s in samples)
    out["rollout/staleness_mean"] = statistics.fmean(batch.staleness)
    out["rollout/staleness_max"] = float(max(batch.staleness))
    return out


def keep_rows_upto(path: Path, step: int) -> None:
    """Drop the rows of metrics.jsonl past `step` (logged after the checkpoint a run resumes
    from: they are logged again), and a torn last line; atomically."""
    if not path.is_file():
        return
    rows = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:  # a line cut by a kill
            continue
        if row["step"] <= step:
            rows.append(line + "\n")
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(rows))
    tmp.replace(path)


class StepLog:
    def __init__(self, metrics: Metrics, run_dir: Path, steps: int, start_step: int) -> None:
        self.metrics = metrics
        self.path = run_dir / "metrics.jsonl"
        keep_rows_upto(self.path, start_step)
        self.log = open(self.path, "a")  # noqa: SIM115 - closed by close()
        self.bar = tqdm(total=steps, initial=start_step, desc="train", unit="step")
        self.phase_s: dict[str, float] = defaultdict(float)  # since the last step's row
        self.truncated = 0  # prompts cut to fit the context, since the last step's row
        self.cpu_seen: dict[str, float] = {}  # role -> its CPU seconds at the last row

    @contextmanager
    def phase(self, name: str):
        """Time a phase of the driver loop into `time/<name>_s` of the next step's row."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.phase_s[name] += time.perf_counter() - t0

    def step(self, stats: StepStats, batch: TrainBatch, extra: dict[str, float]) -> None:
        """Log one learner step: its stats, its batch's figures, the driver's phase times."""
        v = stats.values
        v.update(batch_figures(batch))
        v.update(extra)
        # The windowed rate, not "since the last step": with max_staleness > 0 a step's batch
        # is often scored before the step before it ends, and a per-step figure reads 0.
        v["rollout/samples_per_s"] = self.metrics.sample_rate()
        v["rollout/prompts_truncated"] = float(self.truncated)
        v.update({f"time/{name}_s": s for name, s in self.phase_s.items()})
        v.update(self._cpu_since_last_row())
        self.truncated = 0
        self.phase_s.clear()
        k = len(batch.samples[0].member_scores)
        self.metrics.record_rewards([v[f"reward/member{i}"] for i in range(k)], v["reward/proxy"],
                                    v.get("reward/gold"), v["reward/disagreement"])
        self.metrics.record_step(stats.step, v, v.get("time/learner_step_s", 0.0),
                                 stats.reset, stats.skipped)
        record = {"step": stats.step, "version": stats.policy_version, "reset": stats.reset,
                  "skipped": stats.skipped, "time": time.time(), **v}
        self.log.write(json.dumps(record) + "\n")
        self.log.flush()
        self.bar.update(stats.step - self.bar.n)
        self.bar.set_postfix(proxy=f"{v['reward/proxy']:.3f}",
                             gold=f"{v.get('reward/gold', math.nan):.3f}",
                             kl=f"{v.get('kl/init_k1', math.nan):.3f}",
                             sps=f"{v['rollout/samples_per_s']:.1f}")

    def _cpu_since_last_row(self) -> dict[str, float]:
        """`cpu/<role>_s`: CPU seconds each role's processes used since the last row (from the
        health probes, so up to a second late), and the driver's own."""
        now = {**self.metrics.cpu_by_role, "driver": cpu_seconds()}
        out = {f"cpu/{role}_s": t - self.cpu_seen.get(role, 0.0) for role, t in now.items()}
        self.cpu_seen = now
        return out

    def rewind(self, step: int) -> None:
        """The run went back to the checkpoint of `step`: its later rows go."""
        self.log.close()
        keep_rows_upto(self.path, step)
        self.log = open(self.path, "a")  # noqa: SIM115 - closed by close()
        self.bar.reset(total=self.bar.total)
        self.bar.update(step)

    def close(self) -> None:
        self.bar.close()
        self.log.close()
