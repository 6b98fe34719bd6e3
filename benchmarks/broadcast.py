"""Figure 2, weight broadcast: wall time from the publish (`ray.put` of a WeightSnapshot) until N
workers have loaded that version (each acks after `apply_snapshot`) ÷ one in-process
`load_state_dict` of the same weights.

The readers are light actors (`Holder`: a model and `apply_snapshot`, nothing else) with a small
`num_cpus`, so N = 8 fits beside everything else; they run the same load code as a rollout
worker's HF engine. The publisher is this process (the learner's side of the put). Measured for
the tiny world's policy and a ~100M-parameter Llama built from config (random init), each as
full weights and as a LoRA adapter (peft, r=8, peft's default target modules). Snapshot creation
(checksum, with and without a clone; the learner publishes views) is reported separately; the
ratio starts at the put. Repeats alternate the in-process baseline with every N.

Where the time goes, measured in the same repeats: N no-op calls to the same readers (Ray's
round-trip floor, no object), and the page faults the publisher takes during each put
(`ru_minflt`: a put that lands on object-store pages this process has not mapped yet faults
once per 4 KiB page, and that, not the copy, is most of a slow put). To show that cause, the
tiny policy's full broadcast is measured once more in a child process with its own Ray session
whose object store is preallocated (Ray's `preallocate_plasma_memory`: every page of the store
is allocated when it starts), `PREALLOCATED_STORE_MB` in size.
"""

from __future__ import annotations

import dataclasses
import json
import os
import resource
import subprocess
import sys
import time

from benchmarks.common import REPO, stats

LORA_RANK = 8
PREALLOCATED_STORE_MB = {True: 256, False: 1024}  # by settings.quick


def _build(config: dict, lora_rank: int, seed: int):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**config)).eval()
    if lora_rank:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", r=lora_rank,
                                                 lora_alpha=16.0, init_lora_weights=False))
    return model


class Holder:
    """A broadcast reader: holds one model, loads snapshots into it, acks the version; and a
    second model that adopts full snapshots (points at the object's buffers, as the HF engine
    does), kept apart because an adopted model must never be copied into."""

    def __init__(self) -> None:
        self.model = self.adopter = None

    def build(self, config: dict, lora_rank: int) -> int:
        self.model = self.adopter = None
        self.model = _build(config, lora_rank, seed=1)
        self.adopter = _build(config, 0, seed=1) if not lora_rank else None
        return os.getpid()

    def noop(self, version: int) -> int:
        return version

    def load(self, version: int, snapshot) -> int:
        from learner.weights import apply_snapshot

        apply_snapshot(self.model, snapshot)
        return version

    def adopt(self, version: int, snapshot) -> int:
        from learner.weights import adopt_snapshot

        adopt_snapshot(self.adopter, snapshot)
        return version


def _model_config(world) -> dict:
    import json

    cfg = json.loads((world.sft_dirs[0] / "config.json").read_text())
    keys = ("vocab_size", "hidden_size", "num_hidden_layers", "intermediate_size",
            "num_attention_heads", "num_key_value_heads", "max_position_embeddings",
            "tie_word_embeddings", "rms_norm_eps", "rope_theta", "head_dim")
    return {k: cfg[k] for k in keys if k in cfg}


def _one(name: str, config: dict, kind: str, readers: tuple[int, ...], repeats: int,
         holders: list) -> dict:
    import ray
    import torch

    from learner.weights import apply_snapshot, snapshot_from_model

    lora = LORA_RANK if kind == "lora" else 0
    ray.get([h.build.remote(config, lora) for h in holders])
    src = _build(config, lora, seed=2)  # the learner's new weights
    dst = _build(config, lora, seed=1)  # an in-process reader
    params = sum(p.numel() for p in src.parameters())
    t0 = time.perf_counter()
    snap = snapshot_from_model(src, 1, kind)
    snapshot_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    snapshot_from_model(src, 1, kind, copy=False)  # what the learner publishes: views
    snapshot_views_s = time.perf_counter() - t0
    # The baseline: load_state_dict of the same tensors into the same model.
    if kind == "full":
        state = {k: torch.from_numpy(v.copy()) for k, v in snap.tensors.items()}
    else:  # adapter tensors under the peft model's own (adapter-named) keys
        names = {k.replace(".default.", "."): k for k in dst.state_dict() if ".lora_" in k}
        state = {names[k]: torch.from_numpy(v.copy()) for k, v in snap.tensors.items()}
    base, apply_local, put_s, put_faults = [], [], [], []
    by_n: dict[int, list[float]] = {n: [] for n in readers}
    noop_n: dict[int, list[float]] = {n: [] for n in readers}
    adopt_n: dict[int, list[float]] = {n: [] for n in readers}  # put + N adopted (full only)
    adopt_floor: dict[int, list[float]] = {n: [] for n in readers}  # that put + N no-op calls
    dst.load_state_dict(state, strict=kind == "full")  # warm-up
    version = 1
    for _ in range(repeats):
        t0 = time.perf_counter()
        dst.load_state_dict(state, strict=kind == "full")
        base.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        apply_snapshot(dst, snap)
        apply_local.append(time.perf_counter() - t0)
        for n in readers:
            version += 1
            s = type(snap)(version=version, tensors=snap.tensors, kind=snap.kind,
                           checksum=snap.checksum, lora=snap.lora, torch_dtypes=snap.torch_dtypes)
            t0 = time.perf_counter()
            ray.get([h.noop.remote(version) for h in holders[:n]])
            noop_n[n].append(time.perf_counter() - t0)
            faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            t0 = time.perf_counter()
            ref = ray.put(s)  # the learner's publish: one put, N readers
            put_s.append(time.perf_counter() - t0)
            put_faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults)
            acks = ray.get([h.load.remote(version, ref) for h in holders[:n]])
            by_n[n].append(time.perf_counter() - t0)
            assert acks == [version] * n
            del ref
            if kind == "full":
                version += 1
                t0 = time.perf_counter()
                ref = ray.put(dataclasses.replace(snap, version=version))
                put = time.perf_counter() - t0
                assert ray.get([h.adopt.remote(version, ref) for h in holders[:n]]) == [
                    version] * n
                adopt_n[n].append(time.perf_counter() - t0)
                adopt_floor[n].append(put + noop_n[n][-1])
                del ref
    out = {"model": name, "kind": kind, "parameters": params, "bytes": snap.nbytes,
           "tensors": len(snap.tensors), "snapshot_create_s": snapshot_s,
           "snapshot_views_s": snapshot_views_s,
           "in_process_load_state_dict_s": stats(base),
           "in_process_apply_snapshot_s": stats(apply_local), "put_s": stats(put_s),
           "put_page_faults": stats(put_faults), "pages": snap.nbytes // 4096,
           "by_readers": {}}
    for n, times in by_n.items():
        out["by_readers"][str(n)] = {
            "seconds": stats(times),
            "ratio": stats([t / b for t, b in zip(times, base)]),  # paired by repeat
            "noop_calls_s": stats(noop_n[n]),  # N empty round trips: Ray's floor
            "noop_ratio": stats([t / b for t, b in zip(noop_n[n], base)]),
            "bytes_read": n * snap.nbytes,  # zero-copy reads of one object-store copy
        }
        if adopt_n[n]:  # the HF engine's load: readers point at the object, no copy
            out["by_readers"][str(n)]["adopt"] = {
                "seconds": stats(adopt_n[n]), "floor_s": stats(adopt_floor[n]),
                "ratio_to_floor": stats([t / f for t, f in zip(adopt_n[n], adopt_floor[n])])}
    return out


def _holders(n: int) -> list:
    import ray

    return [ray.remote(Holder).options(num_cpus=0.05).remote() for _ in range(n)]


def _preallocated(settings, world) -> dict:
    """The tiny policy's full broadcast, in a child process with a preallocated object store."""
    args = {"quick": settings.quick, "config": _model_config(world),
            "readers": list(settings.broadcast_readers), "repeats": settings.repeats}
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # a new local session
    proc = subprocess.run([sys.executable, "-m", "benchmarks.broadcast", json.dumps(args)],
                          capture_output=True, text=True, cwd=REPO, env=env, timeout=900)
    if proc.returncode:
        raise RuntimeError(f"preallocated-store child failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _child(args: dict) -> dict:
    import torch

    import services  # noqa: F401  (keeps this Ray session's addresses on 127.0.0.1)
    from benchmarks.common import init_ray

    mb = PREALLOCATED_STORE_MB[args["quick"]]
    init_ray(object_store_memory=mb * 2**20,
             _system_config={"preallocate_plasma_memory": True})
    torch.set_num_threads(1)
    holders = _holders(max(args["readers"]))
    case = _one(f"tiny-world policy, store preallocated ({mb} MiB)", args["config"], "full",
                tuple(args["readers"]), args["repeats"], holders)
    return {**case, "object_store_mb": mb, "preallocated": True}


def run(settings, cfg, world) -> dict:
    import ray
    import torch

    readers = settings.broadcast_readers
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each reader actor (num_cpus < 1 -> one thread)
    holders = _holders(max(readers))
    try:
        cases = [("tiny-world policy", _model_config(world), kind, settings.repeats)
                 for kind in ("full", "lora")]
        if settings.big_model:
            cases += [("llama-100M (random init)", settings.big_model, kind,
                       settings.big_repeats) for kind in ("full", "lora")]
        results = [_one(name, conf, kind, readers, reps, holders)
                   for name, conf, kind, reps in cases]
    finally:
        torch.set_num_threads(torch_threads)
        for h in holders:
            ray.kill(h)
    results.insert(1, _preallocated(settings, world))  # after the same case in this Ray session
    return {
        "what": "put -> N readers loaded ÷ one in-process load_state_dict (same tensors); "
                "put -> N readers adopted ÷ (put + N no-op calls)",
        "reader_num_cpus": 0.05, "in_process_threads": 1, "lora_rank": LORA_RANK,
        "cases": results, "goal": goal(results),
    }


def goal(cases: list[dict]) -> dict:
    """Adoption at N=4 within 1.5x of (put + N no-op calls), for every model measured in this
    Ray session (the preallocated-store child is a diagnostic of the put, not a model)."""
    adopted = {r["model"]: r["by_readers"]["4"]["adopt"]["ratio_to_floor"]["median"]
               for r in cases if "adopt" in r["by_readers"].get("4", {})
               and not r.get("preallocated")}
    return {"figure": "adoption at N=4, full weights, ÷ (put + N no-op calls), every model",
            "target": "<= 1.5", "value": adopted,
            "met": bool(adopted) and all(v <= 1.5 for v in adopted.values())}


if __name__ == "__main__":  # the preallocated-store child: one JSON line on stdout
    print(json.dumps(_child(json.loads(sys.argv[1]))))
