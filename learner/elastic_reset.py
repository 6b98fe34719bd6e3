"""Elastic Reset (Noukhov et al. 2023): an EMA of the online policy, and periodic resets.

    theta_ema <- eta * theta_ema + (1 - eta) * theta          (eta = ema_decay, 0.995)
    every reset_every iterations:  theta <- theta_ema;  theta_ema <- theta_init

The EMA is updated once per PPO iteration (after its epochs) by default; per epoch (the
StackLLaMA variant) and per gradient step are options (`ema_update`).

Schedule: iterations are counted from 1 (the first completed PPO iteration is iteration 1), and
resets happen at the end of iterations reset_every, 2 * reset_every, ... The original code
counted from 0 and so also reset after the very first iteration; raylign does not.

Only trainable tensors take part: for a full model every parameter, for a peft LoRA model only
the adapter weights (the frozen base is shared by online, EMA and init). Whether the critic
(value model) and the optimizer state are reset too is the caller's choice (`reset_value_head`,
`reset_optimizer`, both False by default as in the paper); this module only carries the flags.

Baselines of the paper (`target`, `reset_ema`; defaults = Elastic Reset itself):
    target="init"                     reset-to-init: theta <- theta_init (the EMA plays no part)
    target="ema", reset_ema=False     reset-to-EMA without resetting the EMA afterwards
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from learner.distributed import like

EmaUpdate = Literal["iteration", "epoch", "step"]
EMA_UPDATES = ("iteration", "epoch", "step")
ResetTarget = Literal["ema", "init"]
RESET_TARGETS = ("ema", "init")


def trainable_tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    """The live trainable parameters of `module` by name (requires_grad only; tied ones once)."""
    return {n: p for n, p in module.named_parameters() if p.requires_grad}


def clone_tensors(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detached copies of a dict of tensors."""
    return {k: v.detach().clone() for k, v in tensors.items()}


def ema_copies(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detached copies for an EMA: float tensors narrower than fp32 (bf16, fp16) become fp32,
    or (1 - eta) * theta would round away (bf16 keeps 8 bits of mantissa)."""
    return {k: v.detach().float() if v.is_floating_point() and v.element_size() < 4
            else v.detach().clone() for k, v in tensors.items()}


@torch.no_grad()
def ema_update_(
    ema: dict[str, torch.Tensor], online: dict[str, torch.Tensor] | nn.Module, decay: float
) -> None:
    """In place: ema[k] <- decay * ema[k] + (1 - decay) * online[k] for every key of `ema`.

    `online` is a dict of tensors or a module (its trainable parameters).
    """
    src = trainable_tensors(online) if isinstance(online, nn.Module) else online
    missing = sorted(set(ema) - set(src))
    if missing:
        raise KeyError(f"ema_update_: online weights lack {missing[:5]}")
    for k, e in ema.items():
        e.mul_(decay).add_(src[k].detach().to(e.dtype), alpha=1.0 - decay)


@torch.no_grad()
def copy_into_(
    target: dict[str, torch.Tensor] | nn.Module, source: dict[str, torch.Tensor]
) -> None:
    """In place: target[k] <- source[k] for every key of `source` (module: trainable params)."""
    dst = trainable_tensors(target) if isinstance(target, nn.Module) else target
    missing = sorted(set(source) - set(dst))
    if missing:
        raise KeyError(f"copy_into_: target lacks {missing[:5]}")
    for k, v in source.items():
        dst[k].copy_(like(v, dst[k]))  # a full tensor into a shard: its part


class ResetSchedule:
    """When to update the EMA and when to reset.

    `reset_every=None` keeps an EMA that is never reset (e.g. an EMA KL reference alone).
    Counters: `iteration` (completed PPO iterations, from 1), `epoch` and `step` (completed
    epochs and gradient steps, over the run), `resets` (resets done).
    """

    def __init__(self, reset_every: int | None, ema_update: EmaUpdate = "iteration") -> None:
        if reset_every is not None and reset_every < 1:
            raise ValueError(f"ResetSchedule: reset_every must be >= 1, got {reset_every}")
        if ema_update not in EMA_UPDATES:
            raise ValueError(f"unknown ema_update '{ema_update}'; valid: {', '.join(EMA_UPDATES)}")
        self.reset_every = None if reset_every is None else int(reset_every)
        self.ema_update = ema_update
        self.iteration = 0
        self.epoch = 0
        self.step = 0
        self.resets = 0

    def updates_ema_on(self, event: EmaUpdate) -> bool:
        """True if the EMA is updated at the end of this kind of event."""
        return event == self.ema_update

    def is_reset_iteration(self, iteration: int) -> bool:
        """True for iterations reset_every, 2 * reset_every, ... (never for 0; never if None)."""
        return self.reset_every is not None and iteration > 0 and iteration % self.reset_every == 0

    def state_dict(self) -> dict:
        return {"reset_every": self.reset_every, "ema_update": self.ema_update,
                "iteration": self.iteration, "epoch": self.epoch, "step": self.step,
                "resets": self.resets}

    def load_state_dict(self, state: dict) -> None:
        every = state["reset_every"]
        self.reset_every = None if every is None else int(every)
        self.ema_update = state["ema_update"]
        for k in ("iteration", "epoch", "step", "resets"):
            setattr(self, k, int(state[k]))


class ElasticReset:
    """EMA + reset logic over the trainable tensors of one module.

    Call `on_step(module)` after every optimizer step, `on_epoch(module)` after every epoch and
    `end_iteration(module)` after every PPO iteration; the last returns True if it reset.
    `init` is a copy of the trainable tensors at construction (or the given `init`).
    """

    def __init__(
        self,
        module: nn.Module,
        *,
        ema_decay: float = 0.995,
        reset_every: int | None = 17,
        ema_update: EmaUpdate = "iteration",
        reset_value_head: bool = False,
        reset_optimizer: bool = False,
        init: dict[str, torch.Tensor] | None = None,
        target: ResetTarget = "ema",
        reset_ema: bool = True,
    ) -> None:
        if not 0.0 <= ema_decay < 1.0:
            raise ValueError(f"ElasticReset: ema_decay must be in [0, 1), got {ema_decay}")
        if target not in RESET_TARGETS:
            raise ValueError(f"ElasticReset: unknown target '{target}'; valid: "
                             f"{', '.join(RESET_TARGETS)}")
        self.target = target
        self.reset_ema = bool(reset_ema)
        self.ema_decay = float(ema_decay)
        self.schedule = ResetSchedule(reset_every, ema_update)
        self.reset_value_head = reset_value_head
        self.reset_optimizer = reset_optimizer
        live = trainable_tensors(module)
        self.init = clone_tensors(live if init is None else init)
        self.ema = ema_copies(self.init)

    def _maybe_update(self, event: EmaUpdate, module: nn.Module) -> None:
        if self.schedule.updates_ema_on(event):
            ema_update_(self.ema, module, self.ema_decay)

    def on_step(self, module: nn.Module) -> None:
        self.schedule.step += 1
        self._maybe_update("step", module)

    def on_epoch(self, module: nn.Module) -> None:
        self.schedule.epoch += 1
        self._maybe_update("epoch", module)

    def end_iteration(self, module: nn.Module) -> bool:
        """Count the iteration, update the EMA if per-iteration, and reset if due."""
        self.schedule.iteration += 1
        self._maybe_update("iteration", module)
        if self.schedule.is_reset_iteration(self.schedule.iteration):
            self.reset(module)
            return True
        return False

    @torch.no_grad()
    def reset(self, module: nn.Module) -> None:
        """online <- EMA (or init if target="init"), then EMA <- init (if reset_ema)."""
        copy_into_(module, self.ema if self.target == "ema" else self.init)
        if self.reset_ema:
            self.ema = ema_copies(self.init)
        self.schedule.resets += 1

    def state_dict(self) -> dict:
        """{"ema": tensors, "init": tensors, "schedule": counters, ...} (tensors are copies)."""
        return {"ema": clone_tensors(self.ema), "init": clone_tensors(self.init),
                "schedule": self.schedule.state_dict(), "ema_decay": self.ema_decay,
                "reset_value_head": self.reset_value_head,
                "reset_optimizer": self.reset_optimizer, "target": self.target,
                "reset_ema": self.reset_ema}

    def load_state_dict(self, state: dict) -> None:
        self.ema = clone_tensors(state["ema"])
        self.init = clone_tensors(state["init"])
        self.schedule.load_state_dict(state["schedule"])
        self.ema_decay = float(state["ema_decay"])
        self.reset_value_head = bool(state["reset_value_head"])
        self.reset_optimizer = bool(state["reset_optimizer"])
        self.target = state.get("target", "ema")  # states saved before these flags existed
        self.reset_ema = bool(state.get("reset_ema", True))
