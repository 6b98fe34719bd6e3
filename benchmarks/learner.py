"""Figure 3, learner overhead: one `PPOTrainer.step` ÷ a bare forward+backward of the same
policy on the same batch, in-process, with the learner actor's torch thread count.

What one PPO step does (the run config's learner settings): experience without grad (policy
old log-probs, the reference log-probs by swapping the init weights into the policy, critic
values), GAE + whitening, then ppo_epochs x (batch / minibatch) minibatches, each a policy
forward+backward, a critic (separate trunk) forward+backward, grad clipping and two Adam steps,
plus the EMA update (Elastic Reset). No copy of the state is made (`passes` below times the
one a pre-step backup would cost).

Two ratios: raw = step ÷ one bare policy forward+backward of the whole batch (the issue's
figure; it counts the PPO algorithm's extra model passes as overhead), and normalised = step ÷
the sum of the same model passes done bare (2 no-grad policy forwards + 1 no-grad critic forward
of the batch, ppo_epochs x minibatches x (policy fwd+bwd + critic fwd+bwd)), i.e. what the step
spends beyond its unavoidable passes. Repeats alternate the step and the bare passes.
"""

from __future__ import annotations

import random
import time

from benchmarks.common import role_threads, stats


def make_batch(cfg, world, n: int):
    """n real samples from the SFT policy (in-process HF engine) with seeded random rewards."""
    from actors.engines import HFEngine
    from actors.records import ScoredSample

    engine = HFEngine(world.sft_dirs[0], seed=cfg.seed)
    sampling = cfg.rollout.sampling
    b = cfg.rollout.prompts_per_batch
    prompts = world.train_prompts
    samples = []
    for start in range(0, n, b):
        batch = [(i, prompts[i % len(prompts)]) for i in range(start, min(start + b, n))]
        samples += engine.generate(batch, sampling, version=0, worker_id="bench")
    rng = random.Random(cfg.seed)
    return [ScoredSample(sample=s, member_scores=(r,), reward=r)
            for s in samples for r in [rng.gauss(0.0, 1.0)]]


def run(settings, cfg, world) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from actors.learner import build_policy
    from learner.ppo import logprobs_from_logits
    from learner.trainer import PPOTrainer, RolloutBatch

    lc = cfg.learner
    threads = role_threads(lc.num_cpus)["torch_threads"]
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        pad = AutoTokenizer.from_pretrained(world.tokenizer_dir).pad_token_id
        scored = make_batch(cfg, world, lc.samples_per_step)
        batch = RolloutBatch.from_samples(scored, pad)
        policy, soup = build_policy(world.sft_dirs[0], world.sft_dirs, init=cfg.policy.init,
                                    soup_weights=lc.soup_weights,
                                    with_soup=lc.kl.reference == "soup")
        trainer = PPOTrainer(policy, lc, pad_token_id=pad, soup_state=soup, lora=cfg.policy.lora,
                             temperature=cfg.rollout.sampling.temperature, seed=cfg.seed)
        bare = AutoModelForCausalLM.from_pretrained(world.sft_dirs[0], use_safetensors=True).eval()
        critic = trainer.critic  # read-only use below (no optimizer step)
        inputs = batch.model_inputs()
        b, plen = batch.query.shape
        mb = min(lc.minibatch_size, b)
        mask = batch.response_mask.float()

        def policy_pass(rows, grad: bool) -> None:
            ids, attn, pos = (x[rows] for x in inputs)
            with torch.set_grad_enabled(grad):
                out = bare(input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=False)
                t = batch.response.shape[1]
                logp = logprobs_from_logits(out.logits[:, plen - 1: plen + t - 1].float(),
                                            batch.response[rows])
                loss = -(logp * mask[rows]).sum() / mask[rows].sum()
                if grad:
                    loss.backward()
                    bare.zero_grad(set_to_none=True)

        def critic_pass(rows, grad: bool) -> None:
            ids, attn, pos = (x[rows] for x in inputs)
            with torch.set_grad_enabled(grad):
                v = critic(ids, attn, pos)[:, plen - 1: plen + mask.shape[1] - 1]
                loss = (v * mask[rows]).pow(2).sum() / mask[rows].sum()
                if grad:
                    loss.backward()
                    critic.zero_grad(set_to_none=True)

        all_rows = slice(None)
        minis = [torch.arange(s, min(s + mb, b)) for s in range(0, b, mb)]

        def equivalent() -> float:
            """The step's model passes, done bare."""
            t0 = time.perf_counter()
            policy_pass(all_rows, False)  # old log-probs
            policy_pass(all_rows, False)  # reference log-probs (init weights swapped in)
            critic_pass(all_rows, False)  # old values
            for _ in range(lc.ppo_epochs):
                for rows in minis:
                    policy_pass(rows, True)
                    critic_pass(rows, True)
            return time.perf_counter() - t0

        trainer.step(batch)  # warm-up (first Adam step allocates its state)
        policy_pass(all_rows, True)
        equivalent()
        steps, fb, eq = [], [], []
        for _ in range(settings.repeats):
            t0 = time.perf_counter()
            trainer.step(batch)
            steps.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            policy_pass(all_rows, True)
            fb.append(time.perf_counter() - t0)
            eq.append(equivalent())
    finally:
        torch.set_num_threads(before)

    passes = 2 * lc.ppo_epochs * len(minis)
    out = {
        "what": "one PPOTrainer.step ÷ bare policy forward+backward of the same batch",
        "batch": b, "minibatch": mb, "ppo_epochs": lc.ppo_epochs,
        "minibatches_per_epoch": len(minis), "prompt_len": plen,
        "response_len": int(batch.response.shape[1]),
        "kl_reference": lc.kl.reference, "elastic_reset": lc.elastic_reset.enabled,
        "policy_parameters": sum(p.numel() for p in bare.parameters()),
        "torch_threads": threads,
        "step_includes": (f"3 no-grad forwards of {b} (policy old, init reference, critic); "
                          f"{lc.ppo_epochs} epochs x {len(minis)} minibatches of {mb}: "
                          f"policy fwd+bwd + critic fwd+bwd + clip + 2 Adam steps "
                          f"({passes} fwd+bwd in all); GAE, whitening, EMA"),
        "step_s": stats(steps), "bare_fwd_bwd_s": stats(fb), "bare_equivalent_s": stats(eq),
        "raw_ratio": stats([s / f for s, f in zip(steps, fb)]),
        "normalised_ratio": stats([s / e for s, e in zip(steps, eq)]),
    }
    out["goal"] = {"figure": "normalised ratio", "target": "<= 1.3",
                   "value": out["normalised_ratio"]["median"],
                   "raw_value": out["raw_ratio"]["median"]}
    out["goal"]["met"] = out["goal"]["value"] <= 1.3
    out["passes"] = step_passes(settings, cfg, world, batch, threads, pad)
    return out


def step_passes(settings, cfg, world, batch, threads: int, pad: int) -> dict:
    """The step with and without each optional pass, timed alternately in one process: the
    KL reference forward (kl.coef > 0 uses it; the initial weights serve the drift metric
    too when it is the reference), the drift metric's forward of the initial weights
    (learner.drift_every), the proximal log-probs' recompute forward (off_policy tis: samples
    may be stale, or come from another engine or dtype; with none the engine's behaviour
    log-probs stand in), and what a per-step copy of the trainable state would cost."""
    import copy
    import dataclasses

    import torch

    from actors.learner import build_policy
    from learner.trainer import PPOTrainer

    lc = cfg.learner
    coef = lc.kl.coef or 0.05
    variants = {  # name: (kl.coef, drift_every, off_policy)
        "kl in use (reference forward)": (coef, 1, "none"),
        "kl.coef 0, drift every step (init forward)": (0.0, 1, "none"),
        "kl.coef 0, drift_every 0 (neither)": (0.0, 0, "none"),
        "neither, proximal recompute (off_policy tis)": (0.0, 0, "tis"),
    }
    torch.set_num_threads(threads)
    trainers = {}
    for name, (c, every, off) in variants.items():
        settings_v = dataclasses.replace(lc, off_policy=off, kl=dataclasses.replace(
            lc.kl, coef=c, adaptive=False))
        policy, _ = build_policy(world.sft_dirs[0], [], init="sft")
        trainers[name] = PPOTrainer(policy, settings_v, pad_token_id=pad,
                                    temperature=cfg.rollout.sampling.temperature,
                                    seed=cfg.seed, drift_every=every)
        trainers[name].step(batch)  # warm-up
    times: dict[str, list[float]] = {name: [] for name in [*variants, "state copy"]}
    for _ in range(settings.repeats):
        for name, tr in trainers.items():
            t0 = time.perf_counter()
            tr.step(batch)
            times[name].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        copy.deepcopy(trainers[next(iter(variants))]._state())
        times["state copy"].append(time.perf_counter() - t0)
    base = times[next(iter(variants))]
    return {name: {"s": stats(ts), "ratio_to_kl_in_use": stats(
        [t / b for t, b in zip(ts, base)])} for name, ts in times.items()}
