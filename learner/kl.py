"""Per-token KL estimators and KL coefficient controllers.

Estimators (Schulman, "Approximating KL divergence", http://joschu.net/blog/kl-approx.html) of
KL(pi || pi_ref) from tokens x ~ pi, with r = pi_ref(x) / pi(x) = exp(logp_ref - logp):
    k1 = -log r              unbiased, can be negative per token
    k2 = 0.5 * (log r)^2     biased, low variance, always >= 0
    k3 = (r - 1) - log r     unbiased, always >= 0
Beware the common bug of k3 with r inverted (pi / pi_ref): that version is biased.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def kl_k1(logp: torch.Tensor, logp_ref: torch.Tensor) -> torch.Tensor:
    """k1 = -log r = logp - logp_ref. Shapes: (B, T) -> (B, T)."""
    return logp - logp_ref


def kl_k2(logp: torch.Tensor, logp_ref: torch.Tensor) -> torch.Tensor:
    """k2 = 0.5 * (log r)^2 with log r = logp_ref - logp. Shapes: (B, T) -> (B, T)."""
    return 0.5 * (logp_ref - logp) ** 2


def kl_k3(logp: torch.Tensor, logp_ref: torch.Tensor) -> torch.Tensor:
    """k3 = (r - 1) - log r with r = exp(logp_ref - logp). Shapes: (B, T) -> (B, T)."""
    log_r = logp_ref - logp
    return torch.expm1(log_r) - log_r


KL_ESTIMATORS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "k1": kl_k1,
    "k2": kl_k2,
    "k3": kl_k3,
}


def get_kl_estimator(name: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The estimator `name` (k1 | k2 | k3); an unknown name raises naming the valid ones."""
    try:
        return KL_ESTIMATORS[name]
    except KeyError:
        raise ValueError(
            f"unknown KL estimator '{name}'; valid: {', '.join(sorted(KL_ESTIMATORS))}"
        ) from None


def kl_per_token(
    logp: torch.Tensor, logp_ref: torch.Tensor, estimator: str = "k1"
) -> torch.Tensor:
    """Per-token KL estimate with the named estimator. Shapes: (B, T) -> (B, T)."""
    return get_kl_estimator(estimator)(logp, logp_ref)


class FixedKLController:
    """A constant KL coefficient beta."""

    def __init__(self, kl_coef: float) -> None:
        self.value = float(kl_coef)

    def update(self, current_kl: float, n_samples: int) -> None:
        """No-op (kept so both controllers share one interface)."""

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.value = float(state["value"])


class AdaptiveKLController:
    """Adaptive beta (Ziegler et al. 2019, "Fine-Tuning LMs from Human Preferences", 2.2).

    e = clip(KL / target - 1, -0.2, 0.2);  beta <- beta * (1 + e * n_samples / horizon)
    where KL is the mean over samples of the per-sequence summed k1 to the reference.
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: int) -> None:
        if target <= 0 or horizon <= 0:
            raise ValueError(f"AdaptiveKLController: target ({target}) and horizon ({horizon}) "
                             "must be > 0")
        self.value = float(init_kl_coef)
        self.target = float(target)
        self.horizon = int(horizon)

    def update(self, current_kl: float, n_samples: int) -> None:
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_samples / self.horizon

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.value = float(state["value"])
        self.target = float(state["target"])
        self.horizon = int(state["horizon"])


def make_kl_controller(
    kl_coef: float, adaptive: bool, target: float, horizon: int
) -> FixedKLController | AdaptiveKLController:
    """A fixed controller, or an adaptive one toward `target` over `horizon` samples."""
    if adaptive:
        return AdaptiveKLController(kl_coef, target, horizon)
    return FixedKLController(kl_coef)
