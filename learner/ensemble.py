"""Reward-ensemble aggregation and the best-of-n order-statistics estimator (Coste et al. 2023).

Aggregators take a (K, B) tensor: K member scores for each of B samples, and return (B,).
    mean    mean_k s_k
    min     min_k s_k                               worst-case optimisation (WCO)
    uwo     mean_k s_k - lambda * var_k s_k         uncertainty-weighted optimisation (UWO)
    single  s_0                                     member 0 alone (the no-ensemble baseline)
UWO's variance: the original code used the sample variance (ddof=1) for PPO and the population
variance (ddof=0) for best-of-n; `ddof` is a parameter (the run config's default is 1).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch


def aggregate_mean(scores: torch.Tensor) -> torch.Tensor:
    """mean over members. (K, B) -> (B,)."""
    return scores.mean(dim=0)


def aggregate_min(scores: torch.Tensor) -> torch.Tensor:
    """Worst case (WCO): min over members. (K, B) -> (B,)."""
    return scores.min(dim=0).values


def aggregate_uwo(scores: torch.Tensor, uwo_lambda: float, ddof: int) -> torch.Tensor:
    """UWO: mean - lambda * var, var = sum_k (s_k - mean)^2 / (K - ddof). (K, B) -> (B,)."""
    k = scores.shape[0]
    if k - ddof <= 0:
        raise ValueError(f"aggregate_uwo: {k} member(s) with ddof={ddof} leaves no degrees of "
                         "freedom; use at least 2 members (or ddof=0)")
    var = torch.var(scores, dim=0, correction=ddof)
    return scores.mean(dim=0) - uwo_lambda * var


def aggregate_single(scores: torch.Tensor) -> torch.Tensor:
    """Member 0 alone. (K, B) -> (B,)."""
    return scores[0]


AGGREGATORS: dict[str, Callable[..., torch.Tensor]] = {
    "mean": aggregate_mean,
    "min": aggregate_min,
    "uwo": aggregate_uwo,
    "single": aggregate_single,
}


def aggregate(
    scores: torch.Tensor, name: str, *, uwo_lambda: float | None = None, ddof: int | None = None
) -> torch.Tensor:
    """Aggregate a (K, B) score tensor with the aggregator `name` -> (B,).

    `uwo_lambda` and `ddof` are used by `uwo` only, and it needs both (their defaults live in
    the run config's `reward` section). An unknown name raises naming the valid ones.
    """
    if name not in AGGREGATORS:
        raise ValueError(f"unknown aggregation '{name}'; valid: {', '.join(AGGREGATORS)}")
    if scores.dim() != 2:
        raise ValueError(f"aggregate: expected a (K, B) score tensor, got shape "
                         f"{tuple(scores.shape)}")
    if name == "uwo":
        if uwo_lambda is None or ddof is None:
            raise ValueError("aggregate: 'uwo' needs uwo_lambda and ddof")
        return aggregate_uwo(scores, uwo_lambda=uwo_lambda, ddof=ddof)
    return AGGREGATORS[name](scores)


def best_of_n_weights(n: int, num_samples: int) -> torch.Tensor:
    """Weights w_i = C(i-1, n-1) / C(N, n) on the ascending order statistics, i = 1..N.

    w_i is the probability that the i-th smallest of N is the best of a uniformly random n-subset
    (zero for i < n); the weights sum to 1. Returns (N,) float64.
    """
    if not 1 <= n <= num_samples:
        raise ValueError(f"best_of_n: need 1 <= n <= N, got n={n}, N={num_samples}")
    total = math.comb(num_samples, n)
    w = [math.comb(i - 1, n - 1) / total for i in range(1, num_samples + 1)]
    return torch.tensor(w, dtype=torch.float64)


def best_of_n(
    proxy: torch.Tensor | Sequence[float],
    n: int,
    values: torch.Tensor | Sequence[float] | None = None,
) -> float:
    """Unbiased estimate of E[value of the proxy-best of n] from N >= n scored samples.

    Sort the N samples by proxy score ascending; E[best of n] = sum_{i=n..N} C(i-1, n-1) /
    C(N, n) * s_(i), where s_(i) is the proxy score (values=None) or the other score of the i-th
    sample in proxy order (e.g. gold: the gold value of the proxy-selected sample). Ties in the
    proxy are broken by a stable sort (sample order). proxy, values: (N,).
    """
    proxy_t = torch.as_tensor(proxy, dtype=torch.float64).flatten()
    vals = proxy_t if values is None else torch.as_tensor(values, dtype=torch.float64).flatten()
    if vals.shape != proxy_t.shape:
        raise ValueError(f"best_of_n: {proxy_t.numel()} proxy scores but {vals.numel()} values")
    order = torch.sort(proxy_t, stable=True).indices
    w = best_of_n_weights(n, proxy_t.numel())
    return float((w * vals[order]).sum())


def kl_bon(n: int) -> float:
    """KL(best-of-n || base) = log n - (n - 1) / n (Stiennon et al. 2020, Gao et al. 2022)."""
    if n < 1:
        raise ValueError(f"kl_bon: n must be >= 1, got {n}")
    return math.log(n) - (n - 1) / n
