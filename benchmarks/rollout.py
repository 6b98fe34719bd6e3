"""Figure 1, rollout efficiency: samples/s through Ray (N RolloutWorkers + the reward pool) ÷
the same engine and batches called in-process.

Like for like: the same engine kind and model dir, the same prompt batches (same prompt ids, so
the same seeded completions and token counts), the same torch thread count as a rollout actor
gets from its `num_cpus` (Ray sets OMP_NUM_THREADS from it). Actor start-up and one warm-up
batch are excluded from both sides. The Ray side routes as the driver does
(`services.pipeline.Driver`): generate -> `ray.get` of the batch (the driver's fault check) ->
the driver's `RewardPool` (each member scores the samples ref, the `Combiner` actor combines); a
repeat ends when the last batch is scored, so the Ray side also pays the reward pool's CPU and
its last-batch latency.
Repeats alternate in-process and Ray (for N = 1, 2, ...) so load drift hits both alike.

A second baseline does the same work in-process: generate, then each of the K reward members
scores the batch (the same `RewardMember` class, called directly), then `combine_scores`. On a
machine where the reward pool shares the rollout worker's cores, this is the like-for-like
comparison; the first (engine only) is the one the goal is set on.
"""

from __future__ import annotations

import time

from benchmarks.common import role_threads, stats


def _batches(world, b: int, m: int, offset: int = 0) -> list[list[tuple[int, str]]]:
    prompts = world.train_prompts
    return [[(i, prompts[i % len(prompts)]) for i in range(offset + j * b, offset + (j + 1) * b)]
            for j in range(m)]


def _remote(cls, res):
    """Placed as the driver places a role: the config's per-actor resources."""
    import ray

    return ray.remote(cls).options(num_cpus=res.num_cpus, num_gpus=res.num_gpus,
                                   resources=res.resources or None)


def _count(samples) -> tuple[int, int]:
    return len(samples), sum(len(s.response_tokens) for s in samples)


def _fail(member, error):
    raise RuntimeError(f"{member.name} failed: {error}")


def run(settings, cfg, world) -> dict:
    import ray
    import torch
    from transformers import AutoModelForCausalLM

    from actors.engines import make_engine
    from actors.reward import RewardMember, RewardPool, combine_scores
    from actors.rollout import RolloutWorker
    from learner.weights import snapshot_from_model
    from services.fleet import combine_options, reward_specs
    from tasks.tiny_world import task_of

    rc, b, m = cfg.rollout, cfg.rollout.prompts_per_batch, settings.rollout_batches
    sampling = rc.sampling
    batches = _batches(world, b, m)
    warm = _batches(world, b, 1, offset=10_000)[0]
    actor = role_threads(rc.num_cpus)
    threads_before = torch.get_num_threads()
    torch.set_num_threads(actor["torch_threads"])
    try:
        # -- in-process baseline: the engine the worker builds, called directly -------------
        engine = make_engine(rc.engine, world.sft_dirs[0], seed=cfg.seed)
        engine.generate(warm, sampling, version=0, worker_id="local")

        def local() -> tuple[float, int, int]:
            t0 = time.perf_counter()
            out = [engine.generate(x, sampling, version=0, worker_id="local") for x in batches]
            dt = time.perf_counter() - t0
            n, tok = _count([s for batch in out for s in batch])
            return dt, n, tok

        rw = cfg.reward
        task = task_of(world, cfg.seed)
        combine_kw, specs = combine_options(cfg, task), reward_specs(cfg, task)
        k = len(specs)
        local_members = [RewardMember(i, specs[i], rw.batch_size) for i in range(k)]

        def local_same_work() -> tuple[float, int, int]:
            t0 = time.perf_counter()
            out = []
            for x in batches:
                samples = engine.generate(x, sampling, version=0, worker_id="local")
                scores = [mm.score(samples) for mm in local_members]
                out += [s.sample for s in combine_scores(samples, *scores, **combine_kw)]
            dt = time.perf_counter() - t0
            n, tok = _count(out)
            return dt, n, tok

        local_same_work()  # warm-up of the in-process reward models

        # -- the Ray side: workers + reward pool, placed with the config's resources --------
        nmax = max(settings.rollout_workers)
        workers = [_remote(RolloutWorker, rc).remote(f"rollout-{i}", str(world.sft_dirs[0]),
                                                     rc.engine, sampling, cfg.seed)
                   for i in range(nmax)]
        pool = RewardPool(k, lambda i, _name: _remote(RewardMember, rw).remote(
            i, specs[i], rw.batch_size), combine_kw, on_failure=_fail)
        pool.scale_to(1)
        pool.wait_ready()
        model = AutoModelForCausalLM.from_pretrained(world.sft_dirs[0], use_safetensors=True)
        snap_ref = ray.put(snapshot_from_model(model, 0))
        del model
        ray.get([w.set_weights.remote(0, snap_ref) for w in workers])
        ray.get([w.generate.remote(warm) for w in workers])  # warm-up, as the local side
        pool.submit("warm", workers[0].generate.remote(warm))
        pool.collect(ray.wait(list(pool.jobs))[0][0])  # warms the combiner up
        engine_name = ray.get(workers[0].info.remote())["engine"]

        def through_ray(n_workers: int, score: bool = True) -> tuple[float, int, int]:
            todo = list(batches)
            gens: dict = {}
            inflight = dict.fromkeys(range(n_workers), 0)
            scored = []
            t0 = time.perf_counter()
            while todo or gens or pool.jobs:
                for w in range(n_workers):  # keep every worker busy, bounded in-flight
                    while todo and inflight[w] < rc.max_inflight_per_worker:
                        gens[workers[w].generate.remote(todo.pop(0))] = w
                        inflight[w] += 1
                ready, _ = ray.wait([*gens, *pool.jobs], num_returns=1)
                for ref in ready:
                    if ref in pool.jobs:
                        batch = pool.collect(ref)
                        scored += [s.sample for s in batch.samples + batch.quarantined]
                        continue
                    inflight[gens.pop(ref)] -= 1
                    got = ray.get(ref)  # as the driver: a failed generate raises here
                    if score:
                        pool.submit(None, ref)
                    else:
                        scored += got
            out = scored
            dt = time.perf_counter() - t0
            n, tok = _count(out)
            return dt, n, tok

        local_runs: list[tuple[float, int, int]] = []
        same_work_runs: list[tuple[float, int, int]] = []
        ray_runs: dict[int, list[tuple[float, int, int]]] = {n: [] for n in
                                                              settings.rollout_workers}
        gen_only: list[tuple[float, int, int]] = []  # 1 worker, no reward pool: Ray's own cost
        for _ in range(settings.repeats):
            local_runs.append(local())
            same_work_runs.append(local_same_work())
            gen_only.append(through_ray(1, score=False))
            for n in settings.rollout_workers:
                ray_runs[n].append(through_ray(n))
        for h in workers:
            ray.kill(h)
        pool.shutdown()
    finally:
        torch.set_num_threads(threads_before)

    base_sps = [n / dt for dt, n, _ in local_runs]
    same_work_sps = [n / dt for dt, n, _ in same_work_runs]
    out = {
        "what": "samples/s through N Ray rollout workers + reward pool ÷ same engine in-process",
        "engine": engine_name, "batch_size": b, "batches_per_repeat": m,
        "samples_per_repeat": m * b, "max_new_tokens": rc.sampling.max_new_tokens,
        "reward_members": k, "rollout_num_cpus": rc.num_cpus, "reward_num_cpus": rw.num_cpus,
        "torch_threads_each_side": actor["torch_threads"],
        "actor_OMP_NUM_THREADS": actor["OMP_NUM_THREADS"],
        "startup_excluded": True,
        "in_process": {"samples_per_s": stats(base_sps),
                       "tokens_per_s": stats([t / dt for dt, _, t in local_runs])},
        "in_process_same_work": {"samples_per_s": stats(same_work_sps)},
        "by_workers": {},
        "one_worker_generate_only": {
            "samples_per_s": stats([n / dt for dt, n, _ in gen_only]),
            "ratio": stats([n / dt / c for (dt, n, _), c in zip(gen_only, base_sps)]),
        },
    }
    for n, runs in ray_runs.items():
        sps = [s / dt for dt, s, _ in runs]
        out["by_workers"][str(n)] = {
            "samples_per_s": stats(sps),
            "tokens_per_s": stats([t / dt for dt, _, t in runs]),
            "tokens_match_in_process": [t for *_, t in runs] == [t for *_, t in local_runs],
            "ratio": stats([a / c for a, c in zip(sps, base_sps)]),  # paired by repeat
            "ratio_same_work": stats([a / c for a, c in zip(sps, same_work_sps)]),
        }
    out["goal"] = {"figure": "ratio at N=1", "target": ">= 0.95",
                   "value": out["by_workers"][str(settings.rollout_workers[0])]["ratio"]["median"]}
    out["goal"]["met"] = out["goal"]["value"] >= 0.95
    return out
