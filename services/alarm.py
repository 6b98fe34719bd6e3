"""The over-optimisation alarm: is the policy gaming its reward? Read from what a run has
(never from gold): the reward ensemble's disagreement.

When the policy finds completions that one reward model over-scores, the other models do not
follow: the members' scores of the same completion spread apart (Coste et al. 2024 used
ensemble disagreement the same way). Per learner step t, with D_t the batch's mean over
samples of the std over members (`reward/disagreement`):

    S_t     = S_{t-1} + a (D_t - S_{t-1}),  a = 1 - 2^(-1/halflife)   (S_1 = D_1)
    F_t     = min(S_u : warmup <= u <= t)              the floor, from step `warmup` on
    score_t = S_t / F_t - 1                            (0 before `warmup`, or if F_t = 0)

    state_t = alarm    if score >= threshold for `patience` steps in a row (latched: the run
                       stays in alarm), else
              warning  if score >= warning, else ok

The rule, its parameters and how they were chosen and validated against gold:
docs/alarm.md. With one reward member there is no disagreement: the score stays 0."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass

STATES = ("ok", "warning", "alarm")
OK, WARNING, ALARM = range(3)


@dataclass
class Alarm:
    warmup: int  # the parameters (their defaults: config.AlarmConfig)
    halflife: float
    warning: float
    threshold: float
    patience: int
    # what it has seen
    smoothed: float | None = None
    floor: float | None = None
    steps: int = 0
    above: int = 0  # steps in a row with score >= threshold
    score: float = 0.0
    state: int = OK
    fired_at: int | None = None  # the step the alarm fired
    last_ok: int = 0  # the last step whose state was ok

    def update(self, step: int, disagreement: float) -> int:
        """Fold in step `step`'s disagreement; the state after it."""
        a = 1.0 - 0.5 ** (1.0 / self.halflife)
        s = disagreement if self.smoothed is None else (
            self.smoothed + a * (disagreement - self.smoothed))
        self.smoothed, self.steps = s, self.steps + 1
        if self.steps >= self.warmup:
            self.floor = s if self.floor is None else min(self.floor, s)
        self.score = s / self.floor - 1.0 if self.floor else 0.0
        self.above = self.above + 1 if self.score >= self.threshold else 0
        if self.fired_at is None and self.above >= self.patience:
            self.fired_at = step
        self.state = (ALARM if self.fired_at is not None else
                      WARNING if self.score >= self.warning else OK)
        if self.state == OK:
            self.last_ok = step
        return self.state

    def figures(self) -> dict[str, float]:
        """The metrics.jsonl columns of the last step."""
        return {"alarm/score": self.score, "alarm/state": float(self.state)}

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> Alarm:
        return cls(**d)


def replay(disagreements: Iterable[tuple[int, float]], **params) -> Alarm:
    """An Alarm with `params` fed (step, disagreement) pairs in order (offline evaluation)."""
    alarm = Alarm(**params)
    for step, d in disagreements:
        alarm.update(step, d)
    return alarm
