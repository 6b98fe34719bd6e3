"""The learner's memory plan: bytes per rank of everything the trainer keeps, before it starts.

With P policy parameters (T of them trainable: P, or the LoRA adapters), Pc critic parameters,
N ranks (FSDP2 shards every fp32 tensor N ways), b_c the compute dtype's bytes:

    policy master weights   4 P / N            (LoRA: the frozen base in its stored dtype, + 4 T)
    gradients               4 T / N
    Adam moments            8 T / N
    initial weights         4 T / N            (the init reference, EMA reset target, drift)
    EMA                     4 T / N            (Elastic Reset or kl.reference=ema)
    soup reference          b_c P / N          (kl.reference=soup: frozen, in the compute dtype)
    critic                  (4 + 4 + 8 + 4) Pc / N    (weights, gradients, Adam, initial)
    activations (estimate)  tokens x layers x hidden x b_c x (24, or 2 with checkpointing)
                            + tokens x vocab x 4 x 3   (fp32 logits, log-softmax, gradient)
    publish (rank 0, host)  b_p P              (the gathered full weights in the publish dtype)

tokens = the minibatch rows a rank takes x (prompt + response tokens). Every term but the
activations is exact for the tensors the trainer allocates; the activations term is a rough
upper estimate (it ignores attention's quadratic term, small at RLHF sequence lengths).
"""

from __future__ import annotations

from dataclasses import dataclass

GIB = 2**30


@dataclass(frozen=True)
class ModelShape:
    params: int  # every parameter (tied embeddings once)
    trunk_params: int  # without the LM head (the critic's trunk); = params when tied
    hidden: int
    layers: int
    vocab: int


def plan_learner(shape: ModelShape, *, world_size: int = 1, lora_params: int | None = None,
                 stored_bytes: int = 4, compute_bytes: int = 4, publish_bytes: int = 4,
                 critic: bool = False, ema: bool = False, soup: bool = False,
                 tokens: int = 0, gradient_checkpointing: bool = False) -> dict[str, int]:
    """Bytes per rank by item (see the module docstring); lora_params: the adapters' count
    (None = full fine-tuning)."""
    n, p = world_size, shape.params
    t = p if lora_params is None else lora_params
    master = 4 * p // n if lora_params is None else stored_bytes * p + 4 * t
    plan = {
        "policy master weights": master,
        "gradients": 4 * t // n,
        "Adam moments": 8 * t // n,
        "initial weights": 4 * t // n,
    }
    if ema:
        plan["EMA"] = 4 * t // n
    if soup:
        plan["soup reference"] = compute_bytes * p // n
    if critic:
        pc = shape.trunk_params + shape.hidden + 1  # + the value head
        plan["critic (weights, gradients, Adam, initial)"] = 20 * pc // n
    per_token = shape.layers * shape.hidden * compute_bytes * (2 if gradient_checkpointing else 24)
    plan["activations (estimate)"] = tokens * (per_token + shape.vocab * 4 * 3)
    return plan


def publish_bytes_on_rank0(shape: ModelShape, publish_bytes: int) -> int:
    """Host memory rank 0 needs to gather the full weights for one publish."""
    return shape.params * publish_bytes


def table(plan: dict[str, int], world_size: int, publish: int, budget_gib: float | None) -> str:
    """The plan as aligned text lines (GiB)."""
    width = max(len(k) for k in plan)
    lines = [f"learner memory plan, per rank (world_size {world_size}):"]
    lines += [f"  {k:<{width}}  {v / GIB:8.3f} GiB" for k, v in plan.items()]
    total = sum(plan.values())
    budget = "" if budget_gib is None else f" of {budget_gib:g} GiB (learner.memory_gb)"
    lines.append(f"  {'total':<{width}}  {total / GIB:8.3f} GiB{budget}")
    lines.append(f"  + rank 0 gathers the full weights to publish: {publish / GIB:.3f} GiB "
                 "of host memory")
    return "\n".join(lines)
