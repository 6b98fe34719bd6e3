"""PPOTrainer: the policy, a separate critic, the KL reference, the EMA, optimizers, one step.

`step(batch)` reads in the algorithm's order:
  1. make experience: old log-probs (the proximal policy: the learner's weights now; with
     off_policy=none the engine's behaviour log-probs instead), reference and init
     log-probs, values
  2. rewards: sequence score at the last real token, minus beta * per-token KL (kl_mode=reward)
  3. GAE, returns = advantages + values, then whitening of the advantages
  4. ppo_epochs x minibatches: clipped policy loss (each token weighted by the behaviour
     correction, `off_policy`) + clipped value loss (- ent_coef * entropy, + beta * KL in
     kl.mode=loss), grad-norm clipping per model, optimizer steps
  5. EMA update and Elastic Reset per the schedule; KL controller update

Design choices (documented here because the originals differ):
- The critic is a SEPARATE model: a copy of the initial policy's trunk plus a scalar linear head
  (as OpenRLHF/veRL do), so an Elastic Reset of the policy leaves the critic alone unless
  `reset_value_head` (critic <- its initial weights).
- With `lora` settings the policy and the critic trunk are wrapped in peft LoRA; only adapter
  weights (and the value head) train, and the EMA / init / snapshots hold only those tensors.
- The init and EMA references are evaluated by swapping their tensors into the policy under
  no_grad (no second copy of the model); a soup reference is a frozen copy of the policy
  loaded with the soup state (the soup differs in every weight, base included).
- Models run in eval mode (dropout off), as is usual for RLHF.
- Mixed precision: the master weights and Adam's moments are fp32 whatever the checkpoint's
  dtype (Adam stepping bf16 weights rounds away every update below bf16's spacing); forwards
  run under autocast in `compute_dtype` (bf16 on GPU, fp32 on CPU by default). Snapshots
  (published weights, exports) are cast back to the checkpoint's dtype (`weights_dtype`).
- Nothing is copied per step. Non-finite values are caught before they reach the weights: a
  non-finite score (or too few tokens to whiten) skips the step before any update; a
  non-finite loss or gradient norm skips that optimizer step (`optimizer.step()` is not called)
  and ends the iteration's updates there. An iteration that applied no update is skipped
  (`step/skipped` 1, version unchanged); one that applied some counts, with
  `step/nonfinite_updates` 1. Only the minibatch order's generator has advanced.
- A learner group (`group`, world size N > 1) shards every model with FSDP2 and splits the
  batch's forwards over the ranks so that N ranks make the update one would
  (learner/distributed.py); LoRA is single-process only.
- Elastic Reset happens at the end of iterations reset_every, 2 * reset_every, ... (counted
  from 1, skipped steps not counted); see learner/elastic_reset.py.
"""

from __future__ import annotations

import copy
import json
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from learner.distributed import Group, full, full_state_dict, like, reshard, shard
from learner.elastic_reset import ElasticReset, clone_tensors, copy_into_, trainable_tensors
from learner.kl import get_kl_estimator, kl_k1, kl_k2, kl_per_token, make_kl_controller
from learner.ppo import (
    behaviour_weights,
    entropy_from_logits,
    gae,
    group_advantages,
    kl_penalised_rewards,
    logprobs_from_logits,
    masked_mean,
    masked_sum,
    masked_whiten,
    policy_loss,
    value_loss,
)
from learner.settings import LoraSettings, PPOSettings
from learner.weights import WeightSnapshot, snapshot_from_model, snapshot_from_state


@dataclass
class RolloutBatch:
    """One PPO batch as padded tensors."""

    query: torch.Tensor  # (B, P) prompt ids, LEFT-padded
    query_mask: torch.Tensor  # (B, P) 1 = real prompt token
    response: torch.Tensor  # (B, T) sampled ids, RIGHT-padded
    response_mask: torch.Tensor  # (B, T) 1 = real response token
    scores: torch.Tensor  # (B,) aggregated reward of each sequence
    logprobs: torch.Tensor | None = None  # (B, T) behaviour log-probs mu(a_t), 0 on padding
    groups: torch.Tensor | None = None  # (B,) prompt id of each sample: its group

    def __len__(self) -> int:
        return self.query.shape[0]

    @classmethod
    def from_samples(cls, samples: list[Any], pad_token_id: int) -> RolloutBatch:
        """Pad scored samples (objects with `.sample.prompt_tokens`, `.sample.response_tokens`,
        optional `.sample.logprobs`, and `.reward`, i.e. actors.records.ScoredSample)."""
        if not samples:
            raise ValueError("RolloutBatch.from_samples: no samples")
        prompts = [list(s.sample.prompt_tokens) for s in samples]
        responses = [list(s.sample.response_tokens) for s in samples]
        for i, (p, r) in enumerate(zip(prompts, responses, strict=True)):
            if not p or not r:
                raise ValueError(f"RolloutBatch.from_samples: sample {i} has an empty "
                                 f"{'prompt' if not p else 'response'}")
        b, plen, tlen = len(samples), max(map(len, prompts)), max(map(len, responses))
        query = torch.full((b, plen), pad_token_id, dtype=torch.long)
        query_mask = torch.zeros((b, plen), dtype=torch.long)
        response = torch.full((b, tlen), pad_token_id, dtype=torch.long)
        response_mask = torch.zeros((b, tlen), dtype=torch.long)
        logprobs = torch.zeros((b, tlen), dtype=torch.float32)
        has_logprobs = all(getattr(s.sample, "logprobs", None) is not None for s in samples)
        for i, (p, r) in enumerate(zip(prompts, responses, strict=True)):
            query[i, plen - len(p):] = torch.tensor(p)
            query_mask[i, plen - len(p):] = 1
            response[i, : len(r)] = torch.tensor(r)
            response_mask[i, : len(r)] = 1
            if has_logprobs:
                logprobs[i, : len(r)] = torch.tensor(list(samples[i].sample.logprobs))
        scores = torch.tensor([float(s.reward) for s in samples], dtype=torch.float32)
        groups = torch.tensor([int(getattr(s.sample, "prompt_id", i))
                               for i, s in enumerate(samples)])
        return cls(query, query_mask, response, response_mask, scores,
                   logprobs if has_logprobs else None, groups)

    def to(self, device: torch.device) -> RolloutBatch:
        """The batch with every tensor on `device` (itself if they are there already)."""
        if self.query.device == device:
            return self
        return RolloutBatch(*(None if t is None else t.to(device) for t in (
            self.query, self.query_mask, self.response, self.response_mask, self.scores,
            self.logprobs, self.groups)))

    def model_inputs(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(input_ids, attention_mask, position_ids), each (B, P + T); positions skip the
        left padding, as `generate` numbers them."""
        ids = torch.cat([self.query, self.response], dim=1)
        attn = torch.cat([self.query_mask, self.response_mask], dim=1).long()
        pos = (attn.cumsum(dim=1) - 1).clamp(min=0)
        return ids, attn, pos


class Critic(nn.Module):
    """Value model: a transformer trunk + a scalar linear head. forward -> (B, L) values."""

    def __init__(self, trunk: nn.Module, hidden_size: int, generator: torch.Generator) -> None:
        super().__init__()
        self.trunk = trunk
        self.head = nn.Linear(hidden_size, 1)
        with torch.no_grad():
            self.head.weight.normal_(0.0, 1.0 / (hidden_size + 1) ** 0.5, generator=generator)
            self.head.bias.zero_()

    def forward(self, input_ids, attention_mask, position_ids) -> torch.Tensor:
        out = self.trunk(input_ids=input_ids, attention_mask=attention_mask,
                         position_ids=position_ids, use_cache=False)
        return self.head(out.last_hidden_state.float()).squeeze(-1)


class PPOTrainer:
    """PPO learner over a causal LM (see the module docstring for the design).

    policy: an HF causal LM (PreTrainedModel) with the initial weights; the trainer takes
    ownership (with `lora` it is wrapped in peft in place). soup_state: the HF state dict of the
    soup, required for kl.reference="soup". temperature: the sampling temperature; log-probs are
    of softmax(logits / temperature). seed: value-head init and minibatch order.
    compute_dtype: the forwards' dtype (autocast; float32 = off). publish_dtype: the dtype of
    `snapshot()` (the weights rollout engines load; None = the checkpoint's, `weights_dtype`).
    device: where the models and the batch live (None = CUDA if this process sees a GPU).
    group: this process's rank in a learner group (None = a single process).
    gradient_checkpointing: recompute activations in the backward pass (policy and critic).
    drift_every: steps between the KL-to-init metrics (`kl/init_*`): their forward of the
    initial weights runs only then, unless the KL reference is the initial model and in use
    (0 = never). The reference forward runs only when the KL is in use (kl.coef > 0 or
    adaptive).
    """

    def __init__(
        self,
        policy: nn.Module,
        settings: PPOSettings,
        *,
        pad_token_id: int,
        soup_state: dict[str, torch.Tensor] | None = None,
        lora: LoraSettings | None = None,
        temperature: float = 1.0,
        seed: int = 0,
        compute_dtype: torch.dtype = torch.float32,
        publish_dtype: torch.dtype | None = None,
        device: str | torch.device | None = None,
        group: Group | None = None,
        gradient_checkpointing: bool = False,
        drift_every: int = 1,
    ) -> None:
        s = self.settings = settings
        er = s.elastic_reset
        self.lora, self.temperature = lora, temperature
        self.drift_every = drift_every
        self.pad_token_id = int(pad_token_id)
        get_kl_estimator(s.kl.estimator)
        self.generator = torch.Generator().manual_seed(seed)
        self.group = group or Group()
        if self.group.sharded and lora is not None:
            raise ValueError("a learner group (world size > 1) trains full models only; LoRA "
                             "runs in one learner process")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.compute_dtype = compute_dtype
        self.weights_dtype = next(policy.parameters()).dtype  # the checkpoint's: exported as
        self.publish_dtype = publish_dtype or self.weights_dtype
        policy.to(self.device).eval()
        if lora is None:
            policy.float()  # fp32 master weights; under LoRA the frozen base keeps its dtype

        # KL reference "soup": a frozen copy of the policy loaded with the soup (HF names)
        self.ref_model: nn.Module | None = None
        if s.kl.reference == "soup":
            if soup_state is None:
                raise ValueError("kl_reference='soup' needs soup_state (the averaged state dict)")
            self.ref_model = copy.deepcopy(policy)
            self.ref_model.load_state_dict(soup_state, strict=True)
            # frozen: no master copy needed, it runs (and is kept) in the compute dtype
            self.ref_model.to(compute_dtype).requires_grad_(False).eval()

        # critic (GAE only): a copy of the initial trunk + a scalar head
        trunk = copy.deepcopy(policy.base_model) if s.estimator == "gae" else None
        if lora is not None:
            from peft import LoraConfig, get_peft_model

            if trunk is not None:
                trunk.requires_grad_(False)
                trunk = get_peft_model(trunk, LoraConfig(r=lora.rank, lora_alpha=lora.alpha,
                                                         target_modules=lora.target_modules))
            policy = get_peft_model(policy, LoraConfig(
                task_type="CAUSAL_LM", r=lora.rank, lora_alpha=lora.alpha,
                target_modules=lora.target_modules))
        self.critic = (None if trunk is None else Critic(
            trunk, policy.config.hidden_size, self.generator).to(self.device).eval())
        self.policy = policy.eval()
        for model in (self.policy, self.critic):  # fp32 master weights of what trains
            for t in ([] if model is None else trainable_tensors(model).values()):
                t.data = t.data.float()
        if gradient_checkpointing:
            for model in (self.policy, None if trunk is None else self.critic.trunk):
                if model is not None:
                    model.gradient_checkpointing_enable(
                        gradient_checkpointing_kwargs={"use_reentrant": False})
        if self.group.sharded:
            for model in (self.policy, self.critic, self.ref_model):
                if model is not None:
                    shard(model, compute_dtype)

        # initial weights (EMA reset target, init reference, drift metric), EMA, optimizers
        self.init = clone_tensors(trainable_tensors(self.policy))
        self.critic_init = clone_tensors(self._critic_tensors())
        self.elastic: ElasticReset | None = None
        if er.enabled or s.kl.reference == "ema":
            self.elastic = ElasticReset(
                self.policy, ema_decay=er.ema_decay,
                reset_every=er.reset_every if er.enabled else None,
                ema_update=er.ema_update, reset_value_head=er.reset_value_head,
                reset_optimizer=er.reset_optimizer, init=self.init, target=er.target,
                reset_ema=er.reset_ema)
        self.policy_opt = torch.optim.Adam(list(trainable_tensors(self.policy).values()), lr=s.lr)
        self.critic_opt = (None if self.critic is None else torch.optim.Adam(
            list(self._critic_tensors().values()), lr=s.value_lr or s.lr))
        self.kl_ctl = make_kl_controller(s.kl.coef, s.kl.adaptive, s.kl.target, s.kl.horizon)
        self.version = 0  # completed (not skipped) steps = published weight version
        self.skipped = 0

    # -- forward helpers ---------------------------------------------------------------------

    def _autocast(self):
        if self.compute_dtype == torch.float32:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.compute_dtype)

    def _logprobs(self, model: nn.Module, inputs: tuple, batch_rows, plen: int,
                  response: torch.Tensor, with_entropy: bool = False):
        ids, attn, pos = (x[batch_rows] for x in inputs)
        with self._autocast():
            out = model(input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=False)
        reshard(model)
        t = response.shape[1]
        logits = out.logits[:, plen - 1: plen + t - 1].float() / self.temperature
        logp = logprobs_from_logits(logits, response)
        return (logp, entropy_from_logits(logits)) if with_entropy else (logp, None)

    def _critic_tensors(self) -> dict[str, torch.Tensor]:
        return {} if self.critic is None else trainable_tensors(self.critic)

    def _values(self, inputs: tuple, batch_rows, plen: int, tlen: int) -> torch.Tensor:
        ids, attn, pos = (x[batch_rows] for x in inputs)
        with self._autocast():
            values = self.critic(ids, attn, pos)
        reshard(self.critic)
        return values[:, plen - 1: plen + tlen - 1].float()

    @contextmanager
    def _policy_weights(self, tensors: dict[str, torch.Tensor]):
        """Temporarily load `tensors` (trainable names) into the policy; restore bit-exactly."""
        live = trainable_tensors(self.policy)
        saved = clone_tensors(live)
        copy_into_(live, tensors)
        try:
            yield
        finally:
            copy_into_(live, saved)

    @torch.no_grad()
    def _ref_logprobs(self, inputs, rows, plen, response, which: str) -> torch.Tensor:
        if which == "soup":
            return self._logprobs(self.ref_model, inputs, rows, plen, response)[0]
        tensors = self.init if which == "init" else self.elastic.ema
        with self._policy_weights(tensors):
            return self._logprobs(self.policy, inputs, rows, plen, response)[0]

    @torch.no_grad()
    def compute_logprobs(self, batch: RolloutBatch, which: str = "policy") -> torch.Tensor:
        """(B, T) log-probs of the batch's responses under the policy or a reference
        (`which`: policy | init | ema | soup), 0 on padding."""
        batch = batch.to(self.device)
        inputs = batch.model_inputs()
        plen = batch.query.shape[1]
        if which == "policy":
            logp = self._logprobs(self.policy, inputs, slice(None), plen, batch.response)[0]
        else:
            if which == "soup" and self.ref_model is None or which == "ema" and not self.elastic:
                raise ValueError(f"compute_logprobs: this trainer has no '{which}' model")
            logp = self._ref_logprobs(inputs, slice(None), plen, batch.response, which)
        return logp * batch.response_mask

    # -- the step ----------------------------------------------------------------------------

    def _advantages(self, rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor,
                    groups: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(advantages, returns), both (B, T), by `estimator`:
        gae:          GAE(gamma, lam) with the critic's values; whitened if whiten_advantages
        reinforce_pp: returns-to-go R_t = sum_{k>=t} gamma^(k-t) r_k (no critic), whitened over
                      the batch if whiten_advantages (REINFORCE++)
        grpo, rloo:   the sequence's return R = sum_t r_t against its prompt group
                      (`group_advantages`), the same on every token; not whitened
        r_t: the per-token rewards (score at the last token, minus beta * KL in kl.mode=reward).
        """
        s = self.settings
        if s.estimator in ("grpo", "rloo"):
            if groups is None:
                raise ValueError(f"estimator={s.estimator} needs the prompt groups "
                                 "(RolloutBatch.groups)")
            seq = group_advantages(masked_sum(rewards, mask, dim=1), groups, s.estimator)
            m = mask.to(rewards.dtype)
            return seq[:, None] * m, masked_sum(rewards, mask, dim=1)[:, None] * m
        lam = s.lam if s.estimator == "gae" else 1.0  # lam 1 and V = 0: returns-to-go
        advantages, returns = gae(rewards, values, mask, gamma=s.gamma, lam=lam)
        if s.whiten_advantages:
            advantages = masked_whiten(advantages, mask)
        return advantages, returns

    def step(self, batch: RolloutBatch) -> dict[str, float]:
        """One PPO iteration on `batch`; returns namespaced scalar stats."""
        t0 = time.perf_counter()
        s = self.settings
        batch = batch.to(self.device)
        inputs = batch.model_inputs()
        b, plen = batch.query.shape
        tlen = batch.response.shape[1]
        rows = self.group.rows(b)  # this rank's share of the experience forwards,
        gather = self.group.gather_rows  # then every rank's rows in batch order
        mask = batch.response_mask.float()
        response = batch.response
        scores = batch.scores.float()
        if not torch.isfinite(scores).all():
            return self._skip(t0, "score")

        if s.whiten_advantages and mask.sum() < 2:  # no variance to whiten with
            return self._skip(t0, "degenerate")

        # 1. experience: old (proximal) / reference / init log-probs and values, without grad
        with torch.no_grad():
            off_policy = s.off_policy or "none"
            weights, off_stats = None, {}
            if off_policy == "none" and batch.logprobs is not None:
                old_logp = batch.logprobs  # the engine's log-probs: no recompute forward
            else:
                old_logp = gather(self._logprobs(self.policy, inputs, rows, plen,
                                                 response[rows])[0])
            if off_policy != "none":
                if batch.logprobs is None:
                    raise ValueError(f"off_policy={off_policy} needs the behaviour log-probs "
                                     "(RolloutBatch.logprobs)")
                weights, off_stats = behaviour_weights(old_logp, batch.logprobs, mask,
                                                       off_policy, s.off_policy_cap)
            uses_kl = s.kl.coef > 0 or s.kl.adaptive  # else the reference forward is skipped
            drift = bool(self.drift_every) and (self.version + 1) % self.drift_every == 0
            ref_logp = init_logp = None
            if uses_kl:
                ref_logp = gather(self._ref_logprobs(inputs, rows, plen, response[rows],
                                                     s.kl.reference))
            if s.kl.reference == "init" and ref_logp is not None:
                init_logp = ref_logp
            elif drift:
                init_logp = gather(self._ref_logprobs(inputs, rows, plen, response[rows],
                                                      "init"))
            old_values = (gather(self._values(inputs, rows, plen, tlen))
                          if self.critic is not None else torch.zeros_like(mask))

            # 2. rewards: score at the last real token, minus beta * KL per token
            beta = self.kl_ctl.value
            kl_tok = (kl_per_token(old_logp, ref_logp, s.kl.estimator) if uses_kl
                      else torch.zeros_like(mask))
            penalty_beta = beta if s.kl.mode == "reward" else 0.0
            rewards = kl_penalised_rewards(scores, kl_tok, mask, penalty_beta)

            # 3. advantages (the estimator's), returns before whitening
            advantages, returns = self._advantages(rewards, old_values, mask, batch.groups)
            raw_adv_mean = masked_mean(advantages, mask)

        # 4. epochs x minibatches
        mb = min(s.minibatch_size, b)
        policy_params = list(trainable_tensors(self.policy).values())
        critic_params = list(self._critic_tensors().values())
        acc: dict[str, list[float]] = {}
        optimizers = [o for o in (self.policy_opt, self.critic_opt) if o is not None]
        updates, nonfinite = 0, None
        for _ in range(s.ppo_epochs):
            perm = torch.randperm(b, generator=self.generator)
            for start in range(0, b, mb):
                minibatch = perm[start: start + mb].to(self.device)
                idx = minibatch[self.group.rank::self.group.world_size]  # this rank's rows
                m = mask[idx]
                share = m.sum() / mask[minibatch].sum()  # this rank's share of the tokens
                logp, entropy = self._logprobs(self.policy, inputs, idx, plen, response[idx],
                                               with_entropy=True)
                pg_loss, pg_stats = policy_loss(logp, old_logp[idx], advantages[idx], m,
                                                s.clip_eps,
                                                None if weights is None else weights[idx])
                vf_loss, vf_clip = torch.zeros((), device=self.device), torch.zeros(())
                if self.critic is not None:
                    values = self._values(inputs, idx, plen, tlen)
                    vf_loss, vf_stats = value_loss(values, old_values[idx], returns[idx], m,
                                                   s.value_clip)
                    vf_clip = vf_stats["clipfrac"]
                ent = masked_mean(entropy, m)
                # The critic is a separate model with its own Adam and clip: a weight on its
                # loss would only rescale its gradient, which Adam undoes (value_lr sets its pace)
                loss = pg_loss + vf_loss - s.ent_coef * ent
                kl_loss = torch.zeros((), device=self.device)
                if s.kl.mode == "loss" and uses_kl:
                    kl_loss = masked_mean(kl_per_token(logp, ref_logp[idx], s.kl.estimator), m)
                    loss = loss + beta * kl_loss
                for o in optimizers:
                    o.zero_grad(set_to_none=True)
                if not self.group.all_finite(loss):
                    nonfinite = "loss"
                    break
                # token-mean over the whole minibatch: FSDP averages the ranks' gradients
                (loss * (share * self.group.world_size)).backward()
                gn = full(torch.nn.utils.clip_grad_norm_(policy_params, s.max_grad_norm))
                gv = full(torch.nn.utils.clip_grad_norm_(critic_params, s.max_grad_norm))
                if not (torch.isfinite(gn) and torch.isfinite(gv)):
                    nonfinite = "grad"
                    break
                for o in optimizers:  # only now does anything change
                    o.step()
                updates += 1
                if self.elastic is not None:
                    self.elastic.on_step(self.policy)
                token_means = (("loss/policy", pg_loss), ("loss/value", vf_loss),
                               ("loss/kl", kl_loss), ("loss/total", loss),
                               ("policy/clipfrac", pg_stats["clipfrac"]),
                               ("policy/approx_kl", pg_stats["approx_kl"]),
                               ("policy/entropy", ent), ("value/clipfrac", vf_clip))
                for k, v in token_means:  # each rank's share of the minibatch's mean
                    v = self.group.sum(v.detach().to(self.device) * share)
                    acc.setdefault(k, []).append(float(v))
                for k, v in (("grad/norm", gn), ("grad/value_norm", gv)):
                    acc.setdefault(k, []).append(float(v))
            if nonfinite:
                break
            if self.elastic is not None:
                self.elastic.on_epoch(self.policy)
        for o in optimizers:
            o.zero_grad(set_to_none=True)  # no gradient memory held between steps
        if updates == 0:
            return self._skip(t0, nonfinite or "empty")

        # 5. EMA / Elastic Reset, KL controller
        reset = False
        if self.elastic is not None:
            reset = self.elastic.end_iteration(self.policy)
        if reset:
            critic_reset = s.elastic_reset.reset_value_head and self.critic is not None
            if critic_reset:
                copy_into_(self.critic, self.critic_init)
            if s.elastic_reset.reset_optimizer:
                self.policy_opt.state.clear()
                if critic_reset:
                    self.critic_opt.state.clear()
        stats = {k: sum(v) / len(v) for k, v in acc.items()}
        with torch.no_grad():
            if ref_logp is not None:
                kl_ref = float(masked_sum(kl_k1(old_logp, ref_logp), mask, dim=1).mean())
                self.kl_ctl.update(kl_ref, b)
                stats["kl/ref"] = kl_ref
            if init_logp is not None:
                stats["kl/init_k1"] = float(masked_sum(kl_k1(old_logp, init_logp), mask,
                                                       dim=1).mean())
                stats["kl/init_k2"] = float(masked_sum(kl_k2(old_logp, init_logp), mask,
                                                       dim=1).mean())
        self.version += 1
        stats.update({
            "kl/penalty_estimator": float(masked_sum(kl_tok, mask, dim=1).mean()),
            "kl/coef": float(beta),
            "kl/coef_next": float(self.kl_ctl.value),
            "reward/score_mean": float(scores.mean()),
            "reward/score_std": float(scores.std()) if b > 1 else 0.0,
            "reward/penalty_mean": float(-penalty_beta * masked_sum(kl_tok, mask, dim=1).mean()),
            "value/mean": float(masked_mean(old_values, mask)),
            "returns/mean": float(masked_mean(returns, mask)),
            "advantages/mean_raw": float(raw_adv_mean),
            "response/length_mean": float(mask.sum(dim=1).mean()),
            "elastic/reset": float(reset),
            "elastic/resets": float(self.elastic.schedule.resets if self.elastic else 0),
            **{f"offpolicy/{k}": float(v) for k, v in off_stats.items()},
            "step/skipped": 0.0,
            "step/nonfinite_updates": float(nonfinite is not None),
            "step/updates": float(updates),
            "step/version": float(self.version),
            "time/step_s": time.perf_counter() - t0,
        })
        return stats

    def _skip(self, t0: float, reason: str) -> dict[str, float]:
        """Nothing was updated: count the skip (no state to restore)."""
        self.skipped += 1
        return {"step/skipped": 1.0, "step/skipped_total": float(self.skipped),
                "step/version": float(self.version), "elastic/reset": 0.0,
                f"step/skip_{reason}": 1.0, "time/step_s": time.perf_counter() - t0}

    # -- weights and state -------------------------------------------------------------------

    def snapshot(self, version: int | None = None, copy: bool = True) -> WeightSnapshot:
        """The policy's weights (the LoRA adapter only, under LoRA) as a WeightSnapshot in
        `publish_dtype`; copy=False: views of the live parameters where no cast is needed
        (`snapshot_from_model`)."""
        kind = "full" if self.lora is None else "lora"
        version = self.version if version is None else version
        if self.group.sharded:  # gathered on rank 0; the other ranks take part, get None
            state = full_state_dict(self.policy)
            return snapshot_from_state(state, version, self.publish_dtype) if state else None
        return snapshot_from_model(self.policy, version, kind, copy=copy,
                                   dtype=self.publish_dtype)

    def _state(self) -> dict:
        state = {
            "policy": trainable_tensors(self.policy),
            "critic": self._critic_tensors(),
            "policy_opt": self.policy_opt.state_dict(),
            "critic_opt": None if self.critic_opt is None else self.critic_opt.state_dict(),
            "kl_ctl": self.kl_ctl.state_dict(),
            "elastic": None if self.elastic is None else {
                "ema": self.elastic.ema, "schedule": self.elastic.schedule.state_dict()},
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "counters": {"version": self.version, "skipped": self.skipped},
            "init": self.init,
            "critic_init": self.critic_init,
        }
        return state

    def state_dict(self) -> dict:
        """Everything needed for an exact resume (tensors are copies)."""
        return copy.deepcopy(self._state())

    def load_state_dict(self, state: dict) -> None:
        self._load_state(copy.deepcopy(state))

    @torch.no_grad()
    def _load_state(self, state: dict) -> None:
        copy_into_(self.policy, state["policy"])
        if self.critic is not None:
            copy_into_(self.critic, state["critic"])
        self.policy_opt.load_state_dict(_laid_out(state["policy_opt"], self.policy_opt))
        if self.critic_opt is not None:
            self.critic_opt.load_state_dict(_laid_out(state["critic_opt"], self.critic_opt))
        self.kl_ctl.load_state_dict(state["kl_ctl"])
        policy_live, critic_live = trainable_tensors(self.policy), self._critic_tensors()
        self.init = {k: like(v, policy_live[k]).clone() for k, v in state["init"].items()}
        self.critic_init = {k: like(v, critic_live[k]).clone()
                            for k, v in state["critic_init"].items()}
        if self.elastic is not None:
            self.elastic.init = clone_tensors(self.init)
        if (state["elastic"] is None) != (self.elastic is None):
            raise ValueError("load_state_dict: Elastic Reset / EMA on in one state and off in "
                             "the other; use the same settings")
        if self.elastic is not None:
            self.elastic.ema = {k: like(v, policy_live[k]).to(v.dtype).clone()
                                for k, v in state["elastic"]["ema"].items()}
            self.elastic.schedule.load_state_dict(state["elastic"]["schedule"])
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        self.version = int(state["counters"]["version"])
        self.skipped = int(state["counters"]["skipped"])

    def save(self, path: str | Path) -> Path:
        """Write the state: tensors to `state.safetensors`, the rest to `state.json`."""
        from safetensors.torch import save_file

        out = Path(path)
        state = _map_tensors(self._state(), full)  # a learner group's shards, gathered
        if self.group.rank != 0:
            return out  # rank 0 writes
        out.mkdir(parents=True, exist_ok=True)
        tensors: dict[str, torch.Tensor] = {}
        for group in ("policy", "critic", "init", "critic_init"):
            for k, v in state[group].items():
                tensors[f"{group}/{k}"] = v
        if state["elastic"] is not None:
            for k, v in state["elastic"]["ema"].items():
                tensors[f"ema/{k}"] = v
        tensors["rng/generator"] = state["generator"]
        tensors["rng/torch"] = state["torch_rng"]
        meta: dict[str, Any] = {
            "format": 1,
            "settings": asdict(self.settings),
            "lora_rank": 0 if self.lora is None else self.lora.rank,
            "kl_ctl": state["kl_ctl"],
            "schedule": None if state["elastic"] is None else state["elastic"]["schedule"],
            "counters": state["counters"],
        }
        for name in ("policy_opt", "critic_opt"):
            meta[name] = state[name] and _flatten_optimizer(state[name], name, tensors)
        save_file({k: v.detach().contiguous().clone() for k, v in tensors.items()},
                  str(out / "state.safetensors"))
        (out / "state.json").write_text(json.dumps(meta, indent=1, sort_keys=True))
        return out

    def load(self, path: str | Path) -> None:
        """Restore a state written by `save` (no pickles are read)."""
        from safetensors.torch import load_file

        p = Path(path)
        meta = json.loads((p / "state.json").read_text())
        tensors = load_file(str(p / "state.safetensors"))
        rank = 0 if self.lora is None else self.lora.rank
        if meta["lora_rank"] != rank:
            raise ValueError(f"load: state was saved with LoRA rank {meta['lora_rank']}, this "
                             f"trainer has {rank} (0 = full fine-tuning)")

        def group(name: str) -> dict[str, torch.Tensor]:
            pre = f"{name}/"
            return {k[len(pre):]: v for k, v in tensors.items() if k.startswith(pre)}

        state = {
            "policy": group("policy"), "critic": group("critic"), "init": group("init"),
            "critic_init": group("critic_init"),
            "policy_opt": _unflatten_optimizer(meta["policy_opt"], tensors),
            "critic_opt": meta["critic_opt"] and _unflatten_optimizer(meta["critic_opt"], tensors),
            "kl_ctl": meta["kl_ctl"],
            "elastic": None if meta["schedule"] is None else {
                "ema": group("ema"), "schedule": meta["schedule"]},
            "generator": tensors["rng/generator"], "torch_rng": tensors["rng/torch"],
            "counters": meta["counters"],
        }
        for g in ("policy", "critic"):
            live = trainable_tensors(self.policy) if g == "policy" else self._critic_tensors()
            if set(live) != set(state[g]):
                diff = sorted(set(live) ^ set(state[g]))[:5]
                raise ValueError(f"load: {g} tensors differ from this trainer's: {diff}")
        self._load_state(state)


def _map_tensors(obj, fn):
    """`obj` (nested dicts and lists) with fn applied to every tensor, in a fixed order."""
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, dict):
        return {k: _map_tensors(v, fn) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_map_tensors(v, fn) for v in obj]
    return obj


def _laid_out(sd: dict, optimizer: torch.optim.Optimizer) -> dict:
    """An optimizer state dict of full tensors with each moment laid out as its parameter
    (sharded in a learner group; unchanged otherwise)."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    state = {i: {k: like(v, params[i]) if isinstance(v, torch.Tensor) and v.dim() else v
                 for k, v in entry.items()} for i, entry in sd["state"].items()}
    return {"state": state, "param_groups": sd["param_groups"]}


def _flatten_optimizer(sd: dict, name: str, tensors: dict[str, torch.Tensor]) -> dict:
    """JSON structure of an optimizer state dict; its tensors go into `tensors`."""
    state = {}
    for idx, entry in sd["state"].items():
        state[str(idx)] = {}
        for key, val in entry.items():
            if isinstance(val, torch.Tensor):
                tkey = f"{name}/{idx}/{key}"
                tensors[tkey] = val
                state[str(idx)][key] = {"tensor": tkey}
            else:
                state[str(idx)][key] = {"value": val}
    return {"state": state, "param_groups": sd["param_groups"]}


def _unflatten_optimizer(meta: dict, tensors: dict[str, torch.Tensor]) -> dict:
    state = {}
    for idx, entry in meta["state"].items():
        state[int(idx)] = {k: tensors[v["tensor"]] if "tensor" in v else v["value"]
                           for k, v in entry.items()}
    return {"state": state, "param_groups": meta["param_groups"]}
