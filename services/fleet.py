"""The run's actors, made from the config and the task: the controller, the learner (one
actor, or rank 0 of a learner group), rollout workers and reward members, each with its
role's resources and a name ops can find; and the signal handling of the driver's loop."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Callable
from dataclasses import dataclass

import ray
from tqdm import tqdm

from actors.fleet import ActorGroup, Member, nice_options
from actors.learner import LearnerActor
from actors.reward import RewardMember, RewardPool, RewardSpec, combiner_actor
from actors.rollout import RolloutWorker
from actors.scoring import pad_token_id
from services.config import ConfigError, Placement, RunConfig, model_dtype
from services.control import start_controller
from services.evaluation import HeldOut
from tasks.base import Task


def remote(cls, res: Placement, name: str, namespace: str):
    """One actor of a role with that role's resources; named, so ops can find it."""
    return ray.remote(cls).options(
        num_cpus=res.num_cpus, num_gpus=res.num_gpus, resources=res.resources or None,
        max_restarts=res.max_restarts, max_task_retries=0, name=name, namespace=namespace,
        **nice_options(res.nice),
    )


@dataclass
class Fleet:
    """How the run's actors are made, from the config and the task: the controller now; the
    learner, rollout workers and reward members through the groups that start (and replace)
    them."""

    cfg: RunConfig
    task: Task
    learner_kwargs: dict
    controller: ray.actor.ActorHandle
    heldout: HeldOut  # what every evaluation measures (drift; gold on held-out prompts)

    @classmethod
    def start(cls, cfg: RunConfig, task: Task) -> Fleet:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(task.tokenizer_dir)
        heldout = HeldOut.build(cfg, task, tokenizer, gold_scorer(cfg, task))
        controller = start_controller(
            {"rollout": cfg.rollout.replicas, "reward": cfg.reward.replicas},
            cfg.cluster.namespace, cfg.name)
        return cls(cfg, task, learner_args(cfg, task, tokenizer), controller, heldout)

    def learners(self) -> ActorGroup:
        """The learner: one actor (`learner-0`; a replacement is `learner-1`, ...)."""
        cfg = self.cfg
        group = ActorGroup("learner", lambda name: remote(
            LearnerActor, cfg.learner, f"{cfg.name}:{name}", cfg.cluster.namespace).remote(
                **self.learner_kwargs))
        group.scale_to(1)
        return group

    def rollout(self, on_start: Callable[[Member], None]) -> ActorGroup:
        cfg = self.cfg
        start_dir = cfg.start_dir(self.task)
        engine, dtype = cfg.engine_kind(), cfg.rollout_dtype(model_dtype(start_dir))  # once
        return ActorGroup("rollout", lambda name: remote(
            RolloutWorker, cfg.rollout, f"{cfg.name}:{name}", cfg.cluster.namespace).remote(
                name, start_dir, engine, cfg.rollout.sampling, cfg.seed,
                self.task.max_prompt_tokens, dtype),
            on_start=on_start)

    def rewards(self, on_failure: Callable[[Member, Exception], None]) -> RewardPool:
        rc = self.cfg.reward
        specs = reward_specs(self.cfg, self.task)
        return RewardPool(len(specs), lambda k, name: remote(
            RewardMember, rc, f"{self.cfg.name}:{name}", self.cfg.cluster.namespace).remote(
                k, specs[k], rc.batch_size), combine_options(self.cfg, self.task), on_failure,
            make_combiner=lambda: combiner_actor(
                name=f"{self.cfg.name}:combiner", namespace=self.cfg.cluster.namespace,
                resources=rc.resources or None, **nice_options(rc.nice)))


def learner_args(cfg: RunConfig, task: Task, tokenizer) -> dict:
    """LearnerActor's arguments for this run (the driver's actor, and `raylign export`)."""
    stored = model_dtype(cfg.start_dir(task))
    return {"settings": cfg.learner_settings(stored),
            "compute_dtype": cfg.learner_dtype(), "publish_dtype": cfg.rollout_dtype(stored),
            "start_dir": cfg.start_dir(task),
            "soup_dirs": [str(d) for d in task.policy_dirs], "init": cfg.policy.init,
            "soup_weights": cfg.learner.soup_weights, "lora": cfg.policy.lora,
            "temperature": cfg.rollout.sampling.temperature, "seed": cfg.seed,
            "pad_token_id": pad_token_id(tokenizer),
            "world_size": cfg.learner.world_size, "rank_options": rank_options(cfg.learner),
            "collective_timeout_s": cfg.deadlines.step_s,
            "gradient_checkpointing": cfg.learner.gradient_checkpointing,
            "drift_every": cfg.learner.drift_every}


def rank_options(res: Placement) -> dict:
    """Ray options of a learner group's ranks 1..N-1 (rank 0 is `remote`'s actor)."""
    return {"num_cpus": res.num_cpus, "num_gpus": res.num_gpus,
            "resources": res.resources or None, **nice_options(res.nice)}


def reward_specs(cfg: RunConfig, task: Task) -> list[RewardSpec]:
    """The ensemble's members: reward.model_dirs (or the task's reward models), then the
    reward functions that are not gold; the first reward.members of them."""
    dirs = cfg.reward.model_dirs or [str(d) for d in task.reward_dirs]
    specs = [RewardSpec(model_dir=d) for d in dirs]
    specs += [RewardSpec(function=f.ref, weight=f.weight)
              for f in cfg.reward.functions if not f.gold]
    return specs[: cfg.reward.members or len(specs)]


def gold_scorer(cfg: RunConfig, task: Task) -> str | None:
    """The reward function marked gold, else the task's gold scorer (None: neither)."""
    return next((f.ref for f in cfg.reward.functions if f.gold), task.gold)


def combine_options(cfg: RunConfig, task: Task) -> dict:
    """Keyword arguments of `actors.reward.combine_scores` for this run; the gold scorer is
    the reward function marked gold, else the task's."""
    rc = cfg.reward
    gold = gold_scorer(cfg, task)
    if rc.gold_in_reward and gold is None:
        raise ConfigError(f"reward.gold_in_reward: task {task.name} has no gold scorer")
    return {"aggregation": rc.aggregation, "uwo_lambda": rc.uwo_lambda, "ddof": rc.ddof,
            "score_clip": rc.score_clip,
            "gold": gold if rc.gold_eval or rc.gold_in_reward else None,
            "gold_in_reward": rc.gold_in_reward}


class signals_to:
    """SIGINT/SIGTERM ask the driver to checkpoint and stop at the next turn of its loop."""

    def __init__(self, driver) -> None:
        self.driver = driver
        self.saved: dict = {}

    def _handle(self, signum, _frame) -> None:
        tqdm.write(f"signal {signum}: checkpointing, then stopping")
        self.driver.stop_requested = True

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not the main thread: no handlers
                self.saved[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self.saved.items():
            signal.signal(sig, handler)
