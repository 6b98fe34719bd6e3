"""PPO core math on padded (batch, response_length) tensors: pure functions, no model, no config.

Shapes: B = batch, T = response length (right-padded). `mask` is 1 for real response tokens and
0 for padding; every mean, sum and variance below is masked, so padding never counts.
References: Schulman et al. 2017 (PPO), Schulman et al. 2016 (GAE), Ziegler et al. 2019 (the
KL-penalised per-token reward), verl `core_algos.py` and cleanrl `ppo.py` (diagnostics).
"""

from __future__ import annotations

import torch


def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """sum(x * mask) over `dim` (all dims if None)."""
    m = mask.to(x.dtype)
    return (x * m).sum() if dim is None else (x * m).sum(dim=dim)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """sum(x * mask) / sum(mask) over `dim` (all dims if None).

    An all-padding row (sum(mask) = 0) gives 0, not NaN.
    """
    m = mask.to(x.dtype)
    if dim is None:
        return (x * m).sum() / m.sum().clamp(min=1.0)
    return (x * m).sum(dim=dim) / m.sum(dim=dim).clamp(min=1.0)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of the masked entries of x (a scalar).

    var = sum(mask * (x - mu)^2) / (n - 1) with n = sum(mask) (Bessel-corrected when `unbiased`,
    as TRL does), mu = masked_mean(x, mask).
    """
    m = mask.to(x.dtype)
    mu = masked_mean(x, mask)
    var = masked_mean((x - mu) ** 2, mask)
    if unbiased:
        n = m.sum()
        if n <= 1:
            raise ValueError(f"masked_var: need at least 2 unmasked entries, got {int(n)}")
        var = var * n / (n - 1)
    return var


def masked_whiten(
    x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8
) -> torch.Tensor:
    """(x - mu) / sqrt(var + eps) with masked mean/variance (unbiased); padding is set to 0.

    With `shift_mean=False` the mean is added back (only the scale changes).
    """
    mu = masked_mean(x, mask)
    var = masked_var(x, mask)
    out = (x - mu) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mu
    return out * mask.to(x.dtype)


def kl_penalised_rewards(
    scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, beta: float
) -> torch.Tensor:
    """Per-token rewards r_t = -beta * kl_t, plus the sequence score at the last real token.

    r_t = -beta * kl_t * mask_t + score * [t = last_b],   last_b = max{t : mask_bt = 1}
    Shapes: scores (B,), kl (B, T) per-token KL estimate to the reference, mask (B, T);
    returns (B, T), zero on padding. Every row needs at least one real token.
    """
    m = mask.to(kl.dtype)
    lengths = m.sum(dim=1).long()
    if (lengths <= 0).any():
        raise ValueError("kl_penalised_rewards: a response has no real token to carry its score")
    rewards = -beta * kl * m
    last = _last_index(mask)
    rewards = rewards.clone()
    rewards[torch.arange(rewards.shape[0]), last] += scores.to(rewards.dtype)
    return rewards


def _last_index(mask: torch.Tensor) -> torch.Tensor:
    """(B,) index of the last 1 in each row of a (B, T) mask (right or inner padding alike)."""
    t = mask.shape[1]
    pos = torch.arange(t, device=mask.device).expand_as(mask)
    return torch.where(mask.bool(), pos, torch.full_like(pos, -1)).max(dim=1).values


def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    *,
    gamma: float,
    lam: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over right-padded responses (Schulman et al. 2016).

    delta_t = r_t + gamma * V_{t+1} * mask_{t+1} - V_t
    A_t     = delta_t + gamma * lam * mask_{t+1} * A_{t+1},   A_T = 0, V_T = 0
    R_t     = A_t + V_t       (the returns, before any whitening of A)
    The episode ends at the last real token (V after it is 0: no bootstrap). Shapes: rewards,
    values, mask (B, T); returns (advantages, returns), both (B, T), zero on padding.
    """
    m = mask.to(values.dtype)
    values = values * m
    rewards = rewards * m
    b, t = rewards.shape
    last_adv = torch.zeros(b, dtype=values.dtype, device=values.device)
    next_value = torch.zeros_like(last_adv)
    next_mask = torch.zeros_like(last_adv)
    advantages = torch.zeros_like(values)
    for i in reversed(range(t)):
        delta = rewards[:, i] + gamma * next_value * next_mask - values[:, i]
        last_adv = delta + gamma * lam * next_mask * last_adv
        advantages[:, i] = last_adv
        next_value, next_mask = values[:, i], m[:, i]
    advantages = advantages * m
    returns = (advantages + values) * m
    return advantages, returns


def group_advantages(
    returns: torch.Tensor, groups: torch.Tensor, mode: str, eps: float = 1e-6
) -> torch.Tensor:
    """Critic-free advantages of whole sequences against their prompt's group (B,) -> (B,).

    grpo: A_i = (R_i - mean_g R) / (std_g R + eps)      std unbiased (Shao et al. 2024)
    rloo: A_i = R_i - (sum_g R - R_i) / (G - 1)          leave-one-out mean (Ahmadian et al.)
    g = the group of i (the samples sharing its prompt id), G its size (>= 2).
    """
    _, inverse, counts = torch.unique(groups, return_inverse=True, return_counts=True)
    if (counts < 2).any():
        raise ValueError(f"group_advantages: every group needs >= 2 samples, got sizes "
                         f"{sorted(set(counts.tolist()))}")
    r = returns.double()
    n = counts.double()
    sums = torch.zeros(len(counts), dtype=r.dtype).index_add_(0, inverse, r)
    if mode == "grpo":
        mean = (sums / n)[inverse]
        sq = torch.zeros(len(counts), dtype=r.dtype).index_add_(0, inverse, (r - mean) ** 2)
        std = torch.sqrt(sq / (n - 1))[inverse]
        out = (r - mean) / (std + eps)
    elif mode == "rloo":
        out = r - (sums[inverse] - r) / (n[inverse] - 1)
    else:
        raise ValueError(f"group_advantages: mode '{mode}' is not one of grpo, rloo")
    return out.to(returns.dtype)


def behaviour_weights(
    prox_logp: torch.Tensor,
    behav_logp: torch.Tensor,
    mask: torch.Tensor,
    mode: str,
    cap: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-token importance weights from the behaviour policy mu (the engine that sampled) to
    the proximal policy pi_prox (the learner's weights when the step starts), detached.

    w = pi_prox(a_t) / mu(a_t) = exp(prox_logp - behav_logp)
    none:      1                        (the sample is treated as on-policy)
    tis:       min(w, cap)              (truncated importance sampling)
    decoupled: w if w <= cap, else 0    (decoupled PPO as AReaL runs it: a token whose weight
                                         exceeds the cap is dropped from the loss)
    Shapes (B, T). Stats (token means over `mask`): ratio_mean = mean w, truncated_frac =
    fraction with w > cap, kl_behaviour = mean((w - 1) - log w), the k3 estimate of
    KL(mu || pi_prox) from mu's samples.
    """
    log_w = (prox_logp - behav_logp).detach()
    w = torch.exp(log_w)
    over = w > cap
    if mode == "none":
        weights = torch.ones_like(w)
    elif mode == "tis":
        weights = torch.clamp(w, max=cap)
    elif mode == "decoupled":
        weights = torch.where(over, torch.zeros_like(w), w)
    else:
        raise ValueError(f"behaviour_weights: mode '{mode}' is not one of none, tis, decoupled")
    stats = {"ratio_mean": masked_mean(w, mask),
             "truncated_frac": masked_mean(over.to(w.dtype), mask),
             "kl_behaviour": masked_mean((w - 1.0) - log_w, mask)}
    return weights * mask.to(w.dtype), stats


def policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float,
    weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO clipped surrogate, token-mean over the masked entries.

    ratio = exp(logp - old_logp)
    L = mean_t w_t * max(-A_t * ratio, -A_t * clip(ratio, 1 - eps, 1 + eps))
    w: per-token behaviour weights (`behaviour_weights`; None = 1). Shapes: all (B, T).
    Returns (loss scalar, {"clipfrac", "approx_kl"}): clipfrac = fraction of tokens where the
    clipped term is the active one; approx_kl = mean((ratio - 1) - log ratio) (k3,
    http://joschu.net/blog/kl-approx.html), both detached.
    """
    log_ratio = logp - old_logp
    ratio = torch.exp(log_ratio)
    pg_loss1 = -advantages * ratio
    pg_loss2 = -advantages * torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps)
    per_token = torch.maximum(pg_loss1, pg_loss2)
    if weights is not None:
        per_token = per_token * weights
    loss = masked_mean(per_token, mask)
    with torch.no_grad():
        clipfrac = masked_mean((pg_loss2 > pg_loss1).to(logp.dtype), mask)
        approx_kl = masked_mean((ratio - 1.0) - log_ratio, mask)
    return loss, {"clipfrac": clipfrac, "approx_kl": approx_kl}


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    value_clip: float | None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped value loss, token-mean over the masked entries.

    L = 0.5 * mean_t max((V_t - R_t)^2, (clip(V_t, V_old_t - c, V_old_t + c) - R_t)^2)
    With value_clip=None: L = 0.5 * mean_t (V_t - R_t)^2. Shapes: all (B, T). Returns
    (loss scalar, {"clipfrac"}): the fraction of tokens where the clipped term is larger.
    """
    vf_loss1 = (values - returns) ** 2
    if value_clip is None:
        return 0.5 * masked_mean(vf_loss1, mask), {"clipfrac": torch.zeros((), dtype=values.dtype)}
    v_clipped = old_values + torch.clamp(values - old_values, -value_clip, value_clip)
    vf_loss2 = (v_clipped - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(vf_loss1, vf_loss2), mask)
    with torch.no_grad():
        clipfrac = masked_mean((vf_loss2 > vf_loss1).to(values.dtype), mask)
    return loss, {"clipfrac": clipfrac}


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Per-token entropy of the categorical softmax(logits).

    H = logsumexp(z) - sum_v softmax(z)_v * z_v.  Shapes: logits (..., V) -> (...).
    """
    pd = torch.softmax(logits, dim=-1)
    return torch.logsumexp(logits, dim=-1) - (pd * logits).sum(dim=-1)


def logprobs_from_logits(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[tokens]. Shapes: logits (B, T, V), tokens (B, T) -> (B, T)."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return torch.gather(logp, -1, tokens.unsqueeze(-1)).squeeze(-1)
