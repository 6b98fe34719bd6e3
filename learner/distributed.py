"""One learner over N processes: a torch.distributed group and FSDP2 (pure torch, no Ray).

A learner group of world size N runs the same PPOTrainer code on every rank:

- every model that trains or is evaluated (policy, critic, soup reference) is wrapped with
  FSDP2 `fully_shard`, one unit per decoder layer (`_no_split_modules`) and one for the root,
  so each rank holds 1/N of the fp32 master weights, gradients and Adam moments (DTensor
  shards); the EMA and the initial weights are clones of those shards, so they shard too;
- experience (old, reference and initial log-probs, values) is computed for the rank's
  contiguous 1/N of the batch and all-gathered, so advantages, whitening and group baselines
  see the whole batch exactly as one process would;
- each minibatch (the same global permutation on every rank) is split across ranks, row i to
  rank i mod N; rank r's loss is scaled by N * tokens_r / tokens so that FSDP's averaged
  gradient equals the gradient of the global token mean (N ranks make the update one would);
- full weights (publish, export, checkpoints) are gathered on demand.

`Group(rank=0, world_size=1)` is a single process: every helper is then the identity.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import torch
from torch import nn


@dataclass(frozen=True)
class Group:
    rank: int = 0
    world_size: int = 1

    @property
    def sharded(self) -> bool:
        return self.world_size > 1

    def rows(self, n: int) -> slice:
        """This rank's contiguous share of n rows (n divisible by world_size)."""
        per = n // self.world_size
        return slice(self.rank * per, (self.rank + 1) * per)

    def gather_rows(self, local: torch.Tensor) -> torch.Tensor:
        """Every rank's equal-sized `local` rows concatenated in rank order."""
        if not self.sharded:
            return local
        parts = [torch.empty_like(local) for _ in range(self.world_size)]
        torch.distributed.all_gather(parts, local.contiguous())
        return torch.cat(parts)

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        """The sum of `t` over ranks (`t` itself in a single process)."""
        if not self.sharded:
            return t
        out = t.detach().clone()
        torch.distributed.all_reduce(out)
        return out

    def all_finite(self, t: torch.Tensor) -> bool:
        """True if `t` is finite on every rank (the same answer everywhere)."""
        ok = torch.tensor(float(torch.isfinite(t).all()))
        return bool(self.sum(ok) == self.world_size)


def init_process_group(rank: int, world_size: int, address: str, port: int,
                       timeout_s: float) -> Group:
    """Join the group at address:port (gloo on CPU, NCCL where this process sees a GPU). A rank
    that dies makes the others' next collective fail within `timeout_s`."""
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    torch.distributed.init_process_group(
        backend, init_method=f"tcp://{address}:{port}", rank=rank, world_size=world_size,
        timeout=timedelta(seconds=timeout_s))
    return Group(rank, world_size)


def shard(model: nn.Module, compute_dtype: torch.dtype) -> nn.Module:
    """FSDP2 in place: one unit per decoder layer, then the root; parameters stay fp32 shards,
    forwards gather them in `compute_dtype`, gradients reduce in fp32."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mp = MixedPrecisionPolicy(param_dtype=compute_dtype, reduce_dtype=torch.float32)
    blocks = set(getattr(model, "_no_split_modules", None) or [])
    for module in model.modules():
        if type(module).__name__ in blocks:
            fully_shard(module, mp_policy=mp)
    fully_shard(model, mp_policy=mp)
    return model


def reshard(model: nn.Module) -> None:
    """Free the gathered weights FSDP2 keeps after a root module's forward, so its parameters
    are shards again (EMA, reference swaps and snapshots read them); no-op if not sharded."""
    from torch.distributed.fsdp import FSDPModule

    if isinstance(model, FSDPModule):
        model.reshard()


def is_sharded(t) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def full(t):
    """A DTensor's full value (a collective: every rank calls it); anything else as it is."""
    return t.detach().full_tensor() if is_sharded(t) else t


def like(value: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """`value` (a full tensor) laid out as `ref`: sharded the same way if `ref` is a DTensor."""
    if not is_sharded(ref) or is_sharded(value):
        return value
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(value.detach().to(ref.dtype), ref.device_mesh, ref.placements)


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's full HF state dict on CPU: on rank 0 of a sharded model (the other ranks get
    {} after taking part in the gather); the plain state dict otherwise."""
    if not any(is_sharded(p) for p in model.parameters()):
        return dict(model.state_dict())
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(
        model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
