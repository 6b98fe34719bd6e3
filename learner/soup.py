"""Model soups: weight averages of models fine-tuned from one shared base (SALSA, Wortsman et al.).

theta_soup = sum_i w_i * theta_i, with sum_i w_i = 1 (uniform by default).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import torch


def average_state_dicts(
    state_dicts: list[dict[str, torch.Tensor]], weights: list[float] | None = None
) -> dict[str, torch.Tensor]:
    """Weighted parameter-wise average of M state dicts with identical keys and shapes."""
    if not state_dicts:
        raise ValueError("average_state_dicts: need at least one state dict")
    m = len(state_dicts)
    w = [1.0 / m] * m if weights is None else [float(x) for x in weights]
    if len(w) != m:
        raise ValueError(f"average_state_dicts: {m} state dicts but {len(w)} weights")
    if abs(sum(w) - 1.0) > 1e-6:
        raise ValueError(f"average_state_dicts: weights must sum to 1, got {sum(w)}")
    keys = list(state_dicts[0])
    for i, sd in enumerate(state_dicts[1:], start=1):
        if set(sd) != set(keys):
            diff = sorted(set(sd) ^ set(keys))[:5]
            raise ValueError(f"average_state_dicts: model {i} has different keys: {diff}")
    out = {}
    for k in keys:
        ref = state_dicts[0][k]
        for i, sd in enumerate(state_dicts[1:], start=1):
            if sd[k].shape != ref.shape:
                raise ValueError(
                    f"average_state_dicts: '{k}' has shape {tuple(sd[k].shape)} in model {i}, "
                    f"{tuple(ref.shape)} in model 0"
                )
        if not ref.is_floating_point():
            out[k] = ref.clone()
            continue
        acc = torch.zeros_like(ref, dtype=torch.float64)
        for wi, sd in zip(w, state_dicts, strict=True):
            acc += wi * sd[k].to(torch.float64)
        out[k] = acc.to(ref.dtype)
    return out


# ---------------------------------------------------------------------------------------------
# HF model dirs
# ---------------------------------------------------------------------------------------------

# config.json fields that must agree for two checkpoints to be averaged (the rest, e.g. dtype or
# transformers_version, may differ).
_ARCH_FIELDS = ("model_type", "architectures", "vocab_size", "hidden_size", "intermediate_size",
                "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "n_embd",
                "n_layer", "n_head", "tie_word_embeddings")


def load_model_dir(path: str | Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """(config.json as a dict, state dict) of an HF model dir saved as safetensors.

    Reads `model.safetensors` or the shards listed in `model.safetensors.index.json`; never
    unpickles (no pytorch_model.bin).
    """
    from safetensors.torch import load_file

    p = Path(path)
    cfg_file = p / "config.json"
    if not cfg_file.is_file():
        raise FileNotFoundError(f"{p}: not an HF model dir (no config.json)")
    config = json.loads(cfg_file.read_text())
    single, index = p / "model.safetensors", p / "model.safetensors.index.json"
    if single.is_file():
        return config, load_file(str(single))
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        state: dict[str, torch.Tensor] = {}
        for shard in shards:
            state.update(load_file(str(p / shard)))
        return config, state
    raise FileNotFoundError(f"{p}: no model.safetensors (or index) to read")


def check_same_architecture(configs: list[dict], names: list[str]) -> None:
    """Raise ValueError naming the first model and field whose architecture differs from model 0."""
    for name, cfg in zip(names[1:], configs[1:], strict=True):
        for field in _ARCH_FIELDS:
            a, b = configs[0].get(field), cfg.get(field)
            if a != b:
                raise ValueError(
                    f"soup: {name} has config.json {field}={b!r} but {names[0]} has {a!r}; only "
                    "models of one architecture (fine-tuned from one base) can be averaged"
                )


def average_model_dirs(
    dirs: list[str | Path], weights: list[float] | None = None
) -> tuple[dict, dict[str, torch.Tensor]]:
    """(config of dirs[0], weighted average state dict) of M HF model dirs of one architecture.

    Checks config.json (model_type, architectures, sizes) and then keys and shapes, with errors
    that name the offending dir.
    """
    if not dirs:
        raise ValueError("average_model_dirs: need at least one model dir")
    names = [str(d) for d in dirs]
    loaded = [load_model_dir(d) for d in dirs]
    configs, states = [c for c, _ in loaded], [s for _, s in loaded]
    check_same_architecture(configs, names)
    try:
        avg = average_state_dicts(states, weights)
    except ValueError as e:
        msg = str(e)
        for i, name in reversed(list(enumerate(names))):
            msg = msg.replace(f"model {i}", name)
        raise ValueError(msg) from None
    return configs[0], avg


def soup_state_for(
    model: torch.nn.Module, dirs: list[str | Path], weights: list[float] | None = None
) -> dict[str, torch.Tensor]:
    """The soup of `dirs` (`average_model_dirs`: architectures, keys and shapes checked) as a
    full state dict of `model`: a tensor the files leave out because the model ties it to
    another (an LM head tied to the embeddings) is the soup of the tensor it is tied to.
    A tensor neither in the files nor tied, or one the model does not have, is an error."""
    _, soup = average_model_dirs(dirs, weights)
    own = model.state_dict()
    unknown = sorted(set(soup) - set(own))
    if unknown:
        raise ValueError(f"soup: {dirs[0]} has tensors the model does not: {unknown[:5]}")
    by_storage = {own[k].data_ptr(): k for k in soup}
    for key in sorted(set(own) - set(soup)):
        tied = by_storage.get(own[key].data_ptr())
        if tied is None:
            raise ValueError(f"soup: {dirs[0]} lacks '{key}' (and the model ties it to nothing)")
        soup[key] = soup[tied]
    return soup


# ---------------------------------------------------------------------------------------------
# Interpolation path
# ---------------------------------------------------------------------------------------------


def interpolate_state_dicts(
    sd_a: dict[str, torch.Tensor], sd_b: dict[str, torch.Tensor], alpha: float
) -> dict[str, torch.Tensor]:
    """(1 - alpha) * sd_a + alpha * sd_b, parameter-wise (alpha = 0 gives sd_a)."""
    if alpha == 0.0:
        return {k: v.clone() for k, v in sd_a.items()}
    if alpha == 1.0:
        return {k: v.clone() for k, v in sd_b.items()}
    return average_state_dicts([sd_a, sd_b], [1.0 - alpha, alpha])


@torch.no_grad()
def interpolation_losses(
    sd_a: dict[str, torch.Tensor],
    sd_b: dict[str, torch.Tensor],
    model: torch.nn.Module,
    loss_fn: Callable[[torch.nn.Module], float | torch.Tensor],
    alphas: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0),
) -> list[float]:
    """loss_fn(model loaded with (1 - alpha) * sd_a + alpha * sd_b) for each alpha.

    A soup works when the path has no barrier: max over the path <= max of the endpoints (plus a
    tolerance); see `interpolation_barrier`. The model's own weights are restored afterwards.
    """
    saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
    losses = []
    try:
        for alpha in alphas:
            model.load_state_dict(interpolate_state_dicts(sd_a, sd_b, float(alpha)), strict=True)
            losses.append(float(loss_fn(model)))
    finally:
        model.load_state_dict(saved, strict=True)
    return losses


def interpolation_barrier(losses: Sequence[float]) -> float:
    """max(losses) - max(losses[0], losses[-1]): > 0 means a loss barrier between the ends."""
    return max(losses) - max(losses[0], losses[-1])
