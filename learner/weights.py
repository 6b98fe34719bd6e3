"""Versioned weight snapshots: what the learner publishes and rollout engines load.

A `WeightSnapshot` holds numpy arrays so that Ray's object store hands every reader zero-copy,
READ-ONLY views: a reader must never write to them. It copies them into its own parameters
(`apply_snapshot`) or, for inference only, makes its parameters those views (`adopt_snapshot`).
With peft LoRA (`kind="lora"`) only the adapter tensors move; an engine that holds only the base
weights (e.g. vLLM) gets full weights with `merge_lora(base, snap)`.

Names: kind "full" uses the plain HF state-dict names (`model.layers.0.self_attn.q_proj.weight`,
tied weights under each of their names, each its own copy); kind "lora" uses peft's saved-adapter
names, without the adapter name (`base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`).
bfloat16 (which numpy lacks) travels as its raw uint16 bits and is listed in `torch_dtypes`.
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from torch import nn

PEFT_PREFIX = "base_model.model."
_RAW_VIEWS = {torch.bfloat16: (torch.int16, "bfloat16")}
_TORCH_DTYPES = {"bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class WeightSnapshot:
    """One published weight version."""

    version: int  # learner version (policy_version of the samples made with it)
    tensors: dict[str, np.ndarray]  # name -> array; read-only for readers (zero-copy from Ray)
    kind: Literal["full", "lora"] = "full"  # full HF state dict, or LoRA adapter tensors only
    checksum: str = ""  # sha256 over sorted names, dtypes, shapes and bytes (`compute_checksum`)
    lora: dict | None = None  # kind lora: {"r", "alpha", "scaling", "target_modules", ...}
    torch_dtypes: dict[str, str] = field(default_factory=dict)  # names stored as raw bits

    @property
    def nbytes(self) -> int:
        """Bytes of tensor data (what a broadcast moves)."""
        return sum(a.nbytes for a in self.tensors.values())

    def tensor(self, name: str) -> torch.Tensor:
        """A torch tensor of one entry (a copy, safe to modify)."""
        return _to_torch(self.tensors[name], self.torch_dtypes.get(name)).clone()

    def verify(self) -> None:
        """Raise ValueError if the checksum does not match the tensors."""
        got = compute_checksum(self.tensors)
        if got != self.checksum:
            raise ValueError(f"WeightSnapshot v{self.version}: checksum mismatch "
                             f"({got[:12]} != {self.checksum[:12]})")


def compute_checksum(tensors: dict[str, np.ndarray]) -> str:
    """sha256 over (name, dtype, shape, bytes) of every array, in sorted name order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name])
        h.update(name.encode())
        h.update(f"|{a.dtype.str}|{a.shape}|".encode())
        h.update(memoryview(a).cast("B"))
    return h.hexdigest()


def _to_numpy(t: torch.Tensor, copy: bool = True) -> tuple[np.ndarray, str | None]:
    t = t.detach().to("cpu").contiguous()
    t = t.clone() if copy else t
    if t.dtype in _RAW_VIEWS:
        view, name = _RAW_VIEWS[t.dtype]
        return t.view(view).numpy(), name
    return t.numpy(), None


def _to_torch(a: np.ndarray, torch_dtype: str | None) -> torch.Tensor:
    with warnings.catch_warnings():  # read-only arrays: we only read (copy) from them
        warnings.simplefilter("ignore", UserWarning)
        t = torch.from_numpy(a)
    return t.view(_TORCH_DTYPES[torch_dtype]) if torch_dtype else t


def is_peft_model(model: nn.Module) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "get_base_model")


def _adapter_name(model: nn.Module) -> str:
    name = model.active_adapter
    return name if isinstance(name, str) else name[0]


def lora_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The live trainable adapter tensors of a peft model under adapter-name-free names."""
    adapter = _adapter_name(model)
    return {n.replace(f".{adapter}.", "."): p for n, p in model.named_parameters()
            if p.requires_grad}


def lora_info(model: nn.Module) -> dict:
    """r / alpha / scaling / target_modules / fan_in_fan_out of the active adapter."""
    cfg = model.peft_config[_adapter_name(model)]
    if getattr(cfg, "rank_pattern", None) or getattr(cfg, "alpha_pattern", None):
        raise NotImplementedError("LoRA snapshots with rank_pattern/alpha_pattern")
    scaling = cfg.lora_alpha / (cfg.r**0.5 if cfg.use_rslora else cfg.r)
    targets = cfg.target_modules
    targets = sorted(targets) if isinstance(targets, (set, list, tuple)) else targets
    return {"r": int(cfg.r), "alpha": float(cfg.lora_alpha), "scaling": float(scaling),
            "target_modules": targets, "fan_in_fan_out": bool(cfg.fan_in_fan_out),
            "use_rslora": bool(cfg.use_rslora)}


def peft_base_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The base (un-merged) weights of a peft model under plain HF names (detached, shared)."""
    out = {}
    for k, v in model.state_dict().items():
        if ".lora_" in k:
            continue
        name = k[len(PEFT_PREFIX):] if k.startswith(PEFT_PREFIX) else k
        out[name.replace(".base_layer.", ".")] = v
    return out


def _make(version: int, tensors: dict[str, torch.Tensor], kind: str, lora: dict | None,
          copy: bool = True, dtype: torch.dtype | None = None):
    arrays, raw = {}, {}
    for k, t in tensors.items():
        if dtype is not None and t.is_floating_point() and t.dtype != dtype:
            t, copy_t = t.detach().to("cpu", dtype), False  # the cast is the copy
        else:
            copy_t = copy
        arrays[k], dt = _to_numpy(t, copy_t)
        if dt:
            raw[k] = dt
    return WeightSnapshot(version=version, tensors=arrays, kind=kind,  # type: ignore[arg-type]
                          checksum=compute_checksum(arrays), lora=lora, torch_dtypes=raw)


@torch.no_grad()
def snapshot_from_model(
    model: nn.Module, version: int, kind: Literal["full", "lora"] = "full", copy: bool = True,
    dtype: torch.dtype | None = None,
) -> WeightSnapshot:
    """Copy a model's weights into a snapshot.

    kind "full": the whole HF state dict (tied weights cloned under each name); for a peft model,
    the merged weights W0 + scaling * B @ A under plain HF names. kind "lora": a peft model's
    adapter tensors only, with `lora` = r / alpha / scaling / target_modules.

    copy=False: the arrays are views of the live parameters (no clone), for a caller that hands
    the snapshot to `ray.put` (which copies it into the object store) before the next optimiser
    step, and then drops it. Cloning first would copy every byte twice: for the tiny policy the
    clone (into freshly faulted pages) was ~30 of the publish's ~55 ms (BENCHMARKS.md, figure 2).

    dtype: floating tensors are cast to it (a learner's fp32 master weights published in the
    checkpoint's bf16); None keeps each tensor's own dtype.
    """
    if kind == "lora":
        if not is_peft_model(model):
            raise ValueError("snapshot_from_model: kind='lora' needs a peft model")
        return _make(version, lora_tensors(model), "lora", lora_info(model), copy, dtype)
    if kind != "full":
        raise ValueError(f"unknown snapshot kind '{kind}'; valid: full, lora")
    if is_peft_model(model):  # merged weights are new tensors; the unadapted ones are not
        lora = snapshot_from_model(model, version, "lora", copy=False)
        return _make(version, merge_lora(peft_base_state(model), lora), "full", None, copy,
                     dtype)
    return _make(version, dict(model.state_dict()), "full", None, copy, dtype)


def snapshot_from_state(state: dict[str, torch.Tensor], version: int,
                        dtype: torch.dtype | None = None) -> WeightSnapshot:
    """A full snapshot of an HF state dict (e.g. a learner group's gathered weights)."""
    return _make(version, state, "full", None, copy=False, dtype=dtype)


def _check_names(caller: str, snap: WeightSnapshot, targets: dict) -> None:
    """KeyError unless the snapshot has exactly the target names."""
    missing = sorted(set(targets) - set(snap.tensors))
    unexpected = sorted(set(snap.tensors) - set(targets))
    if missing or unexpected:
        raise KeyError(f"{caller} v{snap.version} ({snap.kind}): missing {missing[:5]}, "
                       f"unexpected {unexpected[:5]}")


@torch.no_grad()
def apply_snapshot(model: nn.Module, snap: WeightSnapshot, verify: bool = False) -> None:
    """Copy a snapshot into a model's parameters in place (bit-exact; arrays are not written).

    kind "full" into a plain HF model (all state-dict keys must match); kind "lora" into a peft
    model (its adapter tensors). `verify` checks the checksum first.
    """
    if verify:
        snap.verify()
    if snap.kind == "lora":
        if not is_peft_model(model):
            raise ValueError("apply_snapshot: a LoRA snapshot needs a peft model (or merge_lora)")
        adapter = _adapter_name(model)
        targets = {n.replace(f".{adapter}.", "."): p for n, p in model.named_parameters()
                   if f".{adapter}." in n}
    else:
        if is_peft_model(model):
            raise ValueError("apply_snapshot: a full snapshot into a peft model; load it into "
                             "the base model instead")
        targets = model.state_dict()
    _check_names("apply_snapshot", snap, targets)
    for k, dst in targets.items():
        src = _to_torch(snap.tensors[k], snap.torch_dtypes.get(k))
        if tuple(src.shape) != tuple(dst.shape):
            raise ValueError(f"apply_snapshot: '{k}' has shape {tuple(src.shape)} in the "
                             f"snapshot, {tuple(dst.shape)} in the model")
        dst.copy_(src)


@torch.no_grad()
def adopt_snapshot(model: nn.Module, snap: WeightSnapshot, verify: bool = False) -> None:
    """Make a plain HF model's parameters and persistent buffers the snapshot's arrays (no copy).

    kind "full" only, all state-dict keys present with the model's shape, dtype and device (CPU);
    a LoRA snapshot, a peft model or a mismatch raises before anything changes (use
    `apply_snapshot` there). Tied weights become one tensor per name (equal values).

    For inference only: the adopted tensors are read-only (from Ray, views of the object store
    shared by every reader on the node) and nothing may write to them (no `load_state_dict`,
    no optimiser). They keep the Ray object alive while the model references them. A new version
    is a new object, so adopting it never changes tensors that holders of an earlier one use.
    """
    if snap.kind != "full" or is_peft_model(model):
        raise ValueError("adopt_snapshot: only a full snapshot into a plain (non-peft) model; "
                         "use apply_snapshot (or merge_lora)")
    if verify:
        snap.verify()
    targets = model.state_dict()
    _check_names("adopt_snapshot", snap, targets)
    views = {k: _to_torch(snap.tensors[k], snap.torch_dtypes.get(k)) for k in targets}
    for k, dst in targets.items():
        src = views[k]
        if (src.shape, src.dtype, src.device) != (dst.shape, dst.dtype, dst.device):
            raise ValueError(f"adopt_snapshot: '{k}' is {tuple(src.shape)} {src.dtype} "
                             f"{src.device} in the snapshot, {tuple(dst.shape)} {dst.dtype} "
                             f"{dst.device} in the model")
    assign_state(model, views)


def assign_state(model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Point each named parameter / buffer at the given tensor (by reference, never a copy into
    the old one). Parameters become frozen (`requires_grad=False`); tied names are untied."""
    for k, t in tensors.items():
        prefix, _, name = k.rpartition(".")
        module = model.get_submodule(prefix)
        if name in module._parameters:
            module._parameters[name] = nn.Parameter(t, requires_grad=False)
        elif name in module._buffers:
            module._buffers[name] = t
        else:
            raise KeyError(f"assign_state: '{k}' is neither a parameter nor a buffer")


@torch.no_grad()
def merge_lora(
    base_state: dict[str, torch.Tensor], snap: WeightSnapshot
) -> dict[str, torch.Tensor]:
    """Full HF-named weights W = W0 + scaling * B @ A for every adapted module.

    base_state: the base model's HF state dict (W0). Returns a new dict: merged tensors are new,
    the others are the base_state tensors themselves (not copied). Same arithmetic as peft's
    `merge_and_unload` (delta = (B @ A) * scaling, transposed if fan_in_fan_out; W0 + delta).
    """
    if snap.kind != "lora" or not snap.lora:
        raise ValueError("merge_lora: needs a LoRA snapshot (kind='lora' with lora info)")
    scaling = float(snap.lora["scaling"])
    pairs: dict[str, dict[str, str]] = {}
    for name in snap.tensors:
        stem = name[len(PEFT_PREFIX):] if name.startswith(PEFT_PREFIX) else name
        for part in ("lora_A", "lora_B"):
            suffix = f".{part}.weight"
            if stem.endswith(suffix):
                pairs.setdefault(stem[: -len(suffix)], {})[part] = name
                break
        else:
            raise NotImplementedError(f"merge_lora: cannot merge non-LoRA tensor '{name}'")
    out = dict(base_state)
    for module, names in pairs.items():
        key = f"{module}.weight"
        if key not in base_state or len(names) != 2:
            raise KeyError(f"merge_lora: no base weight '{key}' (or an incomplete A/B pair)")
        w0 = base_state[key]
        a = _to_torch(snap.tensors[names["lora_A"]], snap.torch_dtypes.get(names["lora_A"]))
        b = _to_torch(snap.tensors[names["lora_B"]], snap.torch_dtypes.get(names["lora_B"]))
        compute = torch.float32 if w0.dtype in (torch.float16, torch.bfloat16) else w0.dtype
        delta = b.to(compute) @ a.to(compute)
        if snap.lora.get("fan_in_fan_out"):
            delta = delta.T
        delta = delta * scaling
        out[key] = (w0.to(compute) + delta).to(w0.dtype)
    return out
