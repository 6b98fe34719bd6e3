"""Starting a run, the composition root: the checks before Ray (services/preflight.py), Ray
(embedded on 127.0.0.1, or a cluster), the fleet (services/fleet.py), the exporter, and
`train()` that runs the driver and writes the report."""

from __future__ import annotations

import dataclasses
import json
import math

import ray

from actors import storage
from learner.process_env import PROCESS_ENV
from services.config import RunConfig
from services.evaluation import HeldOut
from services.fleet import Fleet, combine_options, gold_scorer, reward_specs
from services.plan import check_plan, learner_plan
from services.preflight import (
    check_context,
    check_fresh,
    check_outputs,
    check_resources,
    check_resumable,
)
from services.prometheus_metrics import Metrics


def init_ray(cfg: RunConfig) -> bool:
    """Embedded Ray (a new instance on 127.0.0.1) by default, or join `cluster.address`. True if
    we started it."""
    if ray.is_initialized():
        return False
    env = PROCESS_ENV
    if cfg.cluster.address:
        ray.init(address=cfg.cluster.address, namespace=cfg.cluster.namespace,
                 runtime_env={"env_vars": env})
    else:
        # address="local": always a new private instance, whatever other Ray runs here
        ray.init(address="local", num_cpus=cfg.cluster.num_cpus, namespace=cfg.cluster.namespace,
                 _node_ip_address="127.0.0.1", include_dashboard=False,
                 runtime_env={"env_vars": env}, log_to_driver=False)
    return True



def train(cfg: RunConfig, *, resume: bool = False, allow_config_change: bool = False,
          overwrite: bool = False) -> dict:
    """Build/load the task, start Ray (embedded unless cluster.address), run, report."""
    from services.pipeline import Driver
    from services.run_report import write_report
    from tasks import load_task

    if resume:
        check_resumable(cfg, allow_config_change)
    else:
        check_fresh(cfg, overwrite)
    check_outputs(cfg)
    task = load_task(cfg)
    context = check_context(cfg, task)
    HeldOut.check(cfg, task, gold_scorer(cfg, task))
    combine_options(cfg, task)  # gold_in_reward needs a gold scorer
    start = cfg.start_dir(task)
    plan, text = learner_plan(cfg, start, task.max_prompt_tokens, context)
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
    # checkpoint storage of its own (a URI, or a local path: e.g. a volume that outlives a
    # job's temporary working dir, where a relative run_dir lives): the outputs go there too
    separate = storage.local_path(cfg.storage) != cfg.path
    if separate:
        summary["outputs"] = str(storage.join(cfg.storage, "outputs"))
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    if separate:
        storage.upload(run_dir, summary["outputs"])
    return summary
