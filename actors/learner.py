"""LearnerActor: wraps PPOTrainer; publishes each new version with exactly one `ray.put`.

With `world_size` N > 1 the actor is rank 0 of a learner group: it starts ranks 1..N-1 itself
(the same class, with the same resources, on its node where there is room), they form one
torch.distributed group and shard the model (learner/distributed.py). The driver talks to
rank 0 exactly as to a single learner: each call runs on every rank (rank 0 hands it to the
others first), and only rank 0 puts weights into the object store and writes files. The other
ranks are owned by rank 0, so killing rank 0 ends the group; a rank that dies fails rank 0's
next call, and the driver restores a new group from the newest checkpoint.
"""

from __future__ import annotations

import resource
import socket
import tempfile
import time
from pathlib import Path

import ray
import torch
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from actors import storage
from actors.engines import hf_sample, stop_ids
from actors.fleet import cpu_seconds, process_info, use_assigned_cpus
from actors.records import Sample, Sampling, ScoredSample, StepStats
from learner.distributed import init_process_group
from learner.settings import LoraSettings, PPOSettings
from learner.soup import soup_state_for
from learner.trainer import PPOTrainer, RolloutBatch
from learner.weights import snapshot_from_model


def build_policy(start_dir: Path, soup_dirs: list[Path], *, init: str, soup_weights=None,
                 with_soup: bool = False):
    """The initial policy (the model in `start_dir`, or the soup if init == "soup") and the
    soup's state dict (None unless init == "soup" or with_soup)."""
    from transformers import AutoModelForCausalLM

    policy = AutoModelForCausalLM.from_pretrained(start_dir, use_safetensors=True)
    soup = None
    if init == "soup" or with_soup:
        soup = soup_state_for(policy, soup_dirs, soup_weights)
    if init == "soup":
        policy.load_state_dict(soup)
    return policy, soup


class LearnerActor:
    """A plain class; the driver wraps it with `ray.remote(num_cpus=..., num_gpus=...)`."""

    def __init__(self, settings: PPOSettings, start_dir: str, soup_dirs: list[str], *,
                 init: str = "sft", soup_weights: list[float] | None = None,
                 lora: LoraSettings | None = None, temperature: float = 1.0, seed: int = 0,
                 pad_token_id: int, compute_dtype: str = "float32",
                 publish_dtype: str | None = None, world_size: int = 1,
                 rank_options: dict | None = None, collective_timeout_s: float = 600.0,
                 rank: int = 0, master: tuple[str, int] | None = None,
                 gradient_checkpointing: bool = False, drift_every: int = 1) -> None:
        """compute_dtype: the learner's autocast dtype; publish_dtype: the dtype of the
        snapshots workers load (None = the checkpoint's). world_size: ranks in the learner
        group, started by rank 0 with `rank_options` (Ray actor options); `rank` and `master`
        (rank 0's address and port) are set by rank 0 for the others."""
        # the constructor's arguments, for ranks 1..N-1 (first: nothing else is local yet)
        shared = dict(locals())
        for own in ("self", "rank", "master", "rank_options"):
            del shared[own]
        use_assigned_cpus()
        self.rss_start = _peak_rss()  # before the model is built
        torch.manual_seed(seed)
        self.rank, self.ranks = rank, []  # ranks: the other ranks' handles (rank 0 only)
        group = None
        if world_size > 1:
            if rank == 0:
                master = (ray.util.get_node_ip_address(), _free_port())
                here = NodeAffinitySchedulingStrategy(
                    ray.get_runtime_context().get_node_id(), soft=True)
                self.ranks = [ray.remote(LearnerActor).options(
                    **(rank_options or {}), max_restarts=0, scheduling_strategy=here).remote(
                        **shared, rank=r, master=master) for r in range(1, world_size)]
            group = init_process_group(rank, world_size, *master, collective_timeout_s)
        policy, soup = build_policy(Path(start_dir), [Path(d) for d in soup_dirs], init=init,
                                    soup_weights=soup_weights,
                                    with_soup=settings.kl.reference == "soup")
        self.pad_token_id = pad_token_id
        # Under LoRA the base weights never change: workers load them once, then adapters.
        publish = None if publish_dtype is None else getattr(torch, publish_dtype)
        self.base = (snapshot_from_model(policy, 0, dtype=publish) if lora is not None
                     else None)
        self.trainer = PPOTrainer(policy, settings, pad_token_id=pad_token_id, soup_state=soup,
                                  lora=lora, temperature=temperature, seed=seed,
                                  compute_dtype=getattr(torch, compute_dtype),
                                  publish_dtype=publish, group=group,
                                  gradient_checkpointing=gradient_checkpointing,
                                  drift_every=drift_every)
        self.puts = 0  # ray.put calls: exactly one per published version

    def _on_every_rank(self, method: str, *args) -> list[ray.ObjectRef]:
        """Rank 0: check that every other rank is alive (a dead one raises here, before any
        collective could wait for it), then hand it the same call."""
        ray.get([r.info.remote() for r in self.ranks])
        return [getattr(r, method).remote(*args) for r in self.ranks]

    def _put(self, snap) -> ray.ObjectRef:
        self.puts += 1
        return ray.put(snap)

    def publish(self) -> tuple[int, ray.ObjectRef | None, int]:
        """One `ray.put` of the current weights; every worker reads that same object."""
        others = self._on_every_rank("publish")
        out = self._publish()
        ray.get(others)
        return out

    def _publish(self) -> tuple[int, ray.ObjectRef | None, int]:
        # Views, not a clone: the put below is the copy, made before the next optimiser step.
        # In a group every rank takes part in gathering the weights; rank 0 gets them.
        snap = self.trainer.snapshot(copy=False)
        if snap is None:
            return self.trainer.version, None, 0
        return snap.version, self._put(snap), snap.nbytes

    def publish_base(self) -> tuple[int, ray.ObjectRef] | None:
        """Under LoRA, the frozen base weights that every adapter snapshot applies to."""
        return None if self.base is None else (self.base.version, self._put(self.base))

    def step(
        self, samples: list[ScoredSample]
    ) -> tuple[StepStats, ray.ObjectRef | None, int]:
        """One PPO iteration; then publish the new version (one `ray.put`) unless skipped."""
        others = self._on_every_rank("step", samples)
        t0 = time.perf_counter()
        batch = RolloutBatch.from_samples(samples, self.pad_token_id)
        values = self.trainer.step(batch)
        skipped = bool(values.get("step/skipped", 0.0))
        values["time/learner_step_s"] = time.perf_counter() - t0
        values["cpu/learner_process_s"] = cpu_seconds()  # since the actor started
        stats = StepStats(
            step=self.trainer.version,
            policy_version=self.trainer.version,
            num_samples=len(samples),
            reset=bool(values.get("elastic/reset", 0.0)),
            skipped=skipped,
            values=values,
        )
        ref, nbytes = None, 0
        if not skipped:
            _, ref, nbytes = self._publish()
        ray.get(others)
        return stats, ref, nbytes

    def evaluate(self, texts: list[list[int]]) -> dict[str, float]:
        """Drift on held-out corpus text: perplexity exp(-mean_t log pi(x_t | x_<t)) of the
        policy and of the initial model (token ids with BOS first; BOS is not scored)."""
        others = self._on_every_rank("evaluate", texts)
        items = [ScoredSample(Sample(i, ids[:1], ids[1:], [0.0] * (len(ids) - 1),
                                     self.trainer.version,
                                     "eval"), (0.0,), 0.0) for i, ids in enumerate(texts)]
        batch = RolloutBatch.from_samples(items, self.pad_token_id)
        n = batch.response_mask.sum()
        out = {}
        for which in ("policy", "init"):
            logp = self.trainer.compute_logprobs(batch, which)
            out[f"drift/ppl_{which}"] = float(torch.exp(-logp.sum() / n))
        ray.get(others)
        return out

    @torch.no_grad()
    def kl_to_init(self, prompts: list[list[int]], responses: list[list[int]]) -> list[float]:
        """Per completion, sum_t log pi(y_t | .) - log pi_init(y_t | .) over its response
        tokens: with completions sampled from the policy, the k1 estimate of KL(pi || init)."""
        others = self._on_every_rank("kl_to_init", prompts, responses)
        items = [ScoredSample(Sample(i, list(p), list(r), [0.0] * len(r), self.trainer.version,
                                     "eval"), (0.0,), 0.0)
                 for i, (p, r) in enumerate(zip(prompts, responses)) if r]
        out = [0.0] * len(prompts)  # an empty completion has no tokens: 0
        if items:
            batch = RolloutBatch.from_samples(items, self.pad_token_id)
            gap = (self.trainer.compute_logprobs(batch, "policy")
                   - self.trainer.compute_logprobs(batch, "init")) * batch.response_mask
            for item, kl in zip(items, gap.sum(-1).tolist()):
                out[item.sample.prompt_id] = kl
        ray.get(others)
        return out

    @torch.no_grad()
    def sample(self, prompts: list[list[int]], sampling: Sampling, seed: int) -> list[list[int]]:
        """One completion per prompt (token ids, ending with the stop token where one was drawn)
        from the current policy, sampled as the HF rollout engine samples (`hf_sample`), with
        the same random stream at every call (the run's RNG is left as it was): held-out
        evaluation, where every eval point sees the same draws. In a group every rank draws the
        same tokens (the same seed and logits), so they stop together."""
        others = self._on_every_rank("sample", prompts, sampling, seed)
        policy = self.trainer.policy
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            drawn = hf_sample(policy, prompts, sampling, pad_id=self.pad_token_id,
                              stop=stop_ids(policy))
        ray.get(others)
        return [response for response, _, _ in drawn]

    def save(self, dest: str) -> dict[str, str] | None:
        """Write the state at `dest`: a local path (None returned), or a URI (written to a
        local temp dir, uploaded; their {relative path: sha256} returned)."""
        others = self._on_every_rank("save", dest)
        local = storage.local_path(dest)
        if local is not None:
            self.trainer.save(local)  # in a group: every rank gathers, rank 0 writes
            ray.get(others)
            return None
        with tempfile.TemporaryDirectory(prefix="raylign-save-") as tmp:
            self.trainer.save(Path(tmp))
            ray.get(others)
            return storage.upload(Path(tmp), dest) if self.rank == 0 else None

    def load(self, src: str, digests: dict[str, str] | None = None) -> int:
        """Restore the state at `src` (a local path, or a URI: downloaded, checked against
        `digests` if given); returns the restored version. In a group every rank reads it (a
        local path must be one every rank's node sees)."""
        others = self._on_every_rank("load", src, digests)
        local = storage.local_path(src)
        if local is not None:
            self.trainer.load(local)
        else:
            with tempfile.TemporaryDirectory(prefix="raylign-load-") as tmp:
                storage.download(src, Path(tmp), digests)
                self.trainer.load(Path(tmp))
        ray.get(others)
        return self.trainer.version

    def info(self) -> dict:
        """Version, puts, rank, and memory: the process's peak resident bytes (`max_rss`) and
        its peak before the model was built (`rss_start`)."""
        return {"version": self.trainer.version, "puts": self.puts, "rank": self.rank,
                "world_size": self.trainer.group.world_size, "rss_start": self.rss_start,
                "max_rss": _peak_rss(),
                **process_info()}

    def rank_infos(self) -> list[dict]:
        """Every rank's `info()`, rank 0 first."""
        return [self.info(), *ray.get([r.info.remote() for r in self.ranks])]


def _peak_rss() -> int:
    """This process's peak resident memory in bytes (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]
