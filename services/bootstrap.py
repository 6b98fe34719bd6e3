"""Starting a run: Ray (embedded on 127.0.0.1, or a cluster), the actors placed per role,
the exporter, and `train()` that runs the driver and writes the report."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import shutil
import signal
from collections.abc import Callable
from dataclasses import dataclass

import ray
from tqdm import tqdm

from actors import storage
from actors.fleet import ActorGroup, Member, nice_options
from actors.learner import LearnerActor
from actors.reward import RewardMember, RewardPool, RewardSpec
from actors.rollout import RolloutWorker
from actors.scoring import pad_token_id
from services.config import ConfigError, Placement, RunConfig, model_context, model_dtype
from services.control import start_controller
from services.errors import RunFailed
from services.evaluation import HeldOut
from services.metrics import Metrics
from services.plan import check_plan, learner_plan
from services.tasks.base import Task


def init_ray(cfg: RunConfig) -> bool:
    """Embedded Ray (a new instance on 127.0.0.1) by default, or join `cluster.address`. True if
    we started it."""
    if ray.is_initialized():
        return False
    env = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    if cfg.cluster.address:
        ray.init(address=cfg.cluster.address, namespace=cfg.cluster.namespace,
                 runtime_env={"env_vars": env})
    else:
        # address="local": always a new private instance, whatever other Ray runs here
        ray.init(address="local", num_cpus=cfg.cluster.num_cpus, namespace=cfg.cluster.namespace,
                 _node_ip_address="127.0.0.1", include_dashboard=False,
                 runtime_env={"env_vars": env}, log_to_driver=False)
    return True


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
            cfg.cluster.namespace)
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
        start_dir = cfg.policy.model_dir or str(self.task.policy_dirs[0])
        return ActorGroup("rollout", lambda name: remote(
            RolloutWorker, cfg.rollout, f"{cfg.name}:{name}", cfg.cluster.namespace).remote(
                name, start_dir, cfg.engine_kind(), cfg.rollout.sampling, cfg.seed,
                self.task.max_prompt_tokens, cfg.rollout_dtype(model_dtype(start_dir))),
            on_start=on_start)

    def rewards(self, on_failure: Callable[[Member, Exception], None]) -> RewardPool:
        rc = self.cfg.reward
        specs = reward_specs(self.cfg, self.task)
        return RewardPool(len(specs), lambda k, name: remote(
            RewardMember, rc, f"{self.cfg.name}:{name}", self.cfg.cluster.namespace).remote(
                k, specs[k], rc.batch_size), combine_options(self.cfg, self.task), on_failure,
            nice=rc.nice)


def learner_args(cfg: RunConfig, task: Task, tokenizer) -> dict:
    """LearnerActor's arguments for this run (the driver's actor, and `raylign export`)."""
    stored = model_dtype(cfg.policy.model_dir or task.policy_dirs[0])
    return {"settings": cfg.learner_settings(stored),
            "compute_dtype": cfg.learner_dtype(), "publish_dtype": cfg.rollout_dtype(stored),
            "start_dir": cfg.policy.model_dir or str(task.policy_dirs[0]),
            "soup_dirs": [str(d) for d in task.policy_dirs], "init": cfg.policy.init,
            "soup_weights": cfg.learner.soup_weights, "lora": cfg.policy.lora,
            "temperature": cfg.rollout.sampling.temperature, "seed": cfg.seed,
            "pad_token_id": pad_token_id(tokenizer),
            "world_size": cfg.learner.world_size, "rank_options": rank_options(cfg.learner),
            "collective_timeout_s": cfg.deadlines.step_s,
            "gradient_checkpointing": cfg.learner.gradient_checkpointing}


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
        raise RunFailed(f"reward.gold_in_reward: task {task.name} has no gold scorer")
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


RESUME_MAY_CHANGE = ("learner.steps", "learner.epochs", "rollout.replicas", "reward.replicas",
                     "learner.world_size", "learner.memory_gb",  # checkpoints hold full tensors
                     "learner.gradient_checkpointing",
                     "cluster.", "metrics.", "checkpoint.", "deadlines.", "run_dir")


def check_resumable(cfg: RunConfig, allow_config_change: bool = False) -> None:
    """--resume needs a valid checkpoint and the config the run was started with (the one
    saved with the checkpoint; but for the fields in RESUME_MAY_CHANGE), unless
    allow_config_change."""
    from services.checkpoint import latest_valid, read_file

    ckpt = latest_valid(cfg.storage)
    if ckpt is None:
        raise ConfigError(f"--resume: no valid checkpoint under {cfg.storage}/checkpoints")
    blob = read_file(ckpt, "config.json") or (cfg.path / "config.json").read_bytes()
    saved, now = _flat(json.loads(blob)), _flat(cfg.model_dump(mode="json"))
    changed = sorted(k for k in saved.keys() | now.keys() if saved.get(k) != now.get(k)
                     and not k.startswith(RESUME_MAY_CHANGE))
    if changed and not allow_config_change:
        raise ConfigError(f"--resume: the config differs from the run's (saved with {ckpt}) in "
                          f"{', '.join(changed)} (--allow-config-change resumes anyway)")


def check_fresh(cfg: RunConfig, overwrite: bool = False) -> None:
    """A run dir belongs to one run: a start without --resume into a dir (or checkpoint
    storage) that holds a run is refused, or with `overwrite` that run is deleted first."""
    from services.checkpoint import checkpoints

    held = [n for n in ("config.json", "checkpoints", "metrics.jsonl", "summary.json", "export")
            if (cfg.path / n).exists()]
    stored = cfg.storage != cfg.path and bool(checkpoints(cfg.storage))
    if not held and not stored:
        return
    where = f"{cfg.path} ({', '.join(held)})" if held else f"{cfg.storage}/checkpoints"
    if not overwrite:
        raise ConfigError(f"{where} already holds a run named '{cfg.name}': --resume continues "
                          "it, --overwrite deletes it first, or choose another name (name=...) "
                          "or run_dir")
    if stored and storage.local_path(cfg.storage) is None:
        raise ConfigError(f"--overwrite: {cfg.storage}/checkpoints holds this name's "
                          "checkpoints on object storage; delete them there or choose another "
                          "name")
    shutil.rmtree(cfg.path, ignore_errors=True)
    if stored:
        shutil.rmtree(storage.local_path(cfg.storage) / "checkpoints", ignore_errors=True)


def check_outputs(cfg: RunConfig) -> None:
    """Where the run writes, and the port it serves, are usable (before anything is written):
    run_dir and a local checkpoint.storage are directories this process may write (or can be
    made), and metrics.port is free."""
    import socket
    import tempfile

    places = [("run_dir", cfg.path)]
    local = storage.local_path(cfg.storage)
    if local is not None and local != cfg.path:
        places.append(("checkpoint.storage", local))
    for field, path in places:
        existing = next(p for p in (path, *path.parents) if p.exists())
        if not existing.is_dir():
            raise ConfigError(f"{field}: {existing} is a file, not a directory ({path} cannot "
                              "be made)")
        try:  # a real write (permissions, read-only mounts, immutable dirs)
            tempfile.TemporaryFile(dir=existing).close()
        except OSError as e:
            raise ConfigError(f"{field}: cannot write in {existing} ({e.strerror}), so "
                              f"{path} cannot hold the run's files") from None
    m = cfg.metrics
    if m.enabled and m.port:
        with socket.socket() as sock:
            try:
                sock.bind((m.host, m.port))
            except OSError as e:
                raise ConfigError(f"metrics.port: cannot listen on {m.host}:{m.port} "
                                  f"({e.strerror}); choose another port, or 0 for any free "
                                  "one") from None


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in tree.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k: v})
    return out


def check_context(cfg: RunConfig, task: Task) -> None:
    """max_new_tokens must leave the policy's context room for a prompt."""
    context = model_context(cfg.policy.model_dir or task.policy_dirs[0])
    if context is not None and cfg.rollout.sampling.max_new_tokens >= context:
        raise ConfigError(f"rollout.sampling.max_new_tokens ({cfg.rollout.sampling.max_new_tokens})"
                          f" leaves no room for a prompt in the policy's context ({context})")


def check_resources(cfg: RunConfig, members: int, cluster: dict[str, float]) -> None:
    """Every role's actors fit the embedded Ray's resources (before any actor is created:
    Ray would wait for them forever)."""
    roles = [("learner", cfg.learner, cfg.learner.world_size),
             ("rollout", cfg.rollout, cfg.rollout.replicas),
             ("reward", cfg.reward, cfg.reward.replicas * members)]
    need: dict[str, float] = {}
    for role, res, n in roles:
        ask = {"CPU": res.num_cpus, "GPU": res.num_gpus, **res.resources}
        for name, amount in ask.items():
            if amount > cluster.get(name, 0.0):
                raise ConfigError(f"{role}: one actor asks for {amount:g} {name}; the embedded "
                                  f"Ray has {cluster.get(name, 0.0):g}")
            need[name] = need.get(name, 0.0) + n * amount
    for name, amount in need.items():
        if amount > cluster.get(name, 0.0) + 1e-9:
            raise ConfigError(f"the run's actors ask for {amount:g} {name} in all (learner x "
                              f"world_size, rollout x replicas, reward x members x replicas); "
                              f"the embedded Ray has {cluster.get(name, 0.0):g} (cluster.num_cpus)")


def train(cfg: RunConfig, *, resume: bool = False, allow_config_change: bool = False,
          overwrite: bool = False) -> dict:
    """Build/load the task, start Ray (embedded unless cluster.address), run, report."""
    from services.pipeline import Driver
    from services.report import write_report
    from services.tasks import load_task

    if resume:
        check_resumable(cfg, allow_config_change)
    else:
        check_fresh(cfg, overwrite)
    check_outputs(cfg)
    task = load_task(cfg)
    check_context(cfg, task)
    HeldOut.check(cfg, task, gold_scorer(cfg, task))
    start = cfg.policy.model_dir or task.policy_dirs[0]
    plan, text = learner_plan(cfg, start, task.max_prompt_tokens, model_context(start))
    print(text, flush=True)
    check_plan(cfg, plan)
    if cfg.learner.epochs is not None:  # a run set by epochs: as many steps as they take
        samples = cfg.learner.epochs * len(task.train) * cfg.rollout.sampling.n
        steps = max(1, math.ceil(samples / cfg.learner.samples_per_step))
        cfg = cfg.model_copy(update={"learner": dataclasses.replace(cfg.learner, steps=steps)})
    run_dir = cfg.path
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps(cfg.model_dump(mode="json"), indent=1))
    metrics = Metrics()
    if cfg.metrics.enabled:
        port = metrics.serve(cfg.metrics.host, cfg.metrics.port)
        print(f"metrics: http://{cfg.metrics.host}:{port}/metrics", flush=True)
        (run_dir / "metrics_port").write_text(str(port))
    started = init_ray(cfg)
    driver = None
    try:
        if started and not cfg.cluster.address:
            check_resources(cfg, len(reward_specs(cfg, task)), ray.cluster_resources())
        driver = Driver(Fleet.start(cfg, task), run_dir, metrics)
        summary = driver.run(resume=resume)
    finally:
        if driver is not None:
            driver.shutdown()
        if started:
            ray.shutdown()
        metrics.stop()
    summary["plots"] = write_report(run_dir)
    if not summary["interrupted"]:  # the final policy, as an HF model dir (LoRA: an adapter)
        from services.export import export_run

        summary["export"] = str(export_run(run_dir, merge_lora=cfg.policy.lora is not None))
    remote_storage = storage.local_path(cfg.storage) is None
    if remote_storage:  # a URI: the run's outputs go there too
        summary["outputs"] = str(storage.join(cfg.storage, "outputs"))
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    if remote_storage:
        storage.upload(run_dir, summary["outputs"])
    return summary
