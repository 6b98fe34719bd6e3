"""The tiny world: a self-contained RLHF task built locally, no download (docs/design.md section 4).

`prepare(task)` builds, or finds in its cache, everything an RLHF run needs:

1. corpus     reviews from a stochastic grammar (`corpus.py`), sentiment words from VADER;
              mixed polarity, so the SFT policy is not already positive
2. tokenizer  byte-level BPE trained on the corpus; <s> bos, </s> eos, <pad> pad
3. base       one small Llama pretrained on every training review (shuffled, packed)
4. sft-i      num_sft_seeds fine-tunes of that base on whole reviews (seed = data order and
              attention dropout; with sft_data=disjoint each on its own share of the reviews);
              sharing a base, they average into a soup without a barrier
5. rm-k       num_members Bradley-Terry reward models (`reward_models.py`) on pairs of
              sft-0 samples labelled by the gold scorer (`gold.py`), label_noise flipped
6. summary    perplexities, the interpolation path, RM accuracies, spam vs fluent scores

The build goes to `<cache_dir>/<size>-<hash>`, the hash covering the task fields that change the
world and BUILD_VERSION; it is written in a temporary dir and renamed into place, so a killed
build leaves no half world. A second `prepare` loads the cached world instantly.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import hashlib
import json
import math
import multiprocessing
import os
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from actors.scoring import RewardScorer, encode_inputs, reward_forward
from tasks import corpus
from tasks.base import PromptStream, Task
from tasks.configs import TinyWorldConfig
from tasks.gold import gold_score
from tasks.models import (
    ModelSize,
    encode_docs,
    lm_batches,
    lm_loss,
    load_policy,
    mean_nll,
    new_causal_lm,
    pack_blocks,
    sample_completions,
    save_model,
    train_loop,
    train_tokenizer,
)
from tasks.reward_models import (
    make_pairs,
    pair_accuracy,
    train_reward_model,
)

__all__ = ["BUILD_VERSION", "World", "RewardScorer", "gold_score", "load_policy", "prepare",
           "task_of"]

BUILD_VERSION = "tw-4"  # bump whenever the build's output changes
RM_PROCESSES = 2  # reward models trained side by side (one torch thread each: 2 cores busy)
TRAIN_ACC_PAIRS = 512  # training pairs the (diagnostic) train accuracy is measured on

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@dataclass(frozen=True)
class Recipe:
    """Everything a world size changes; each value's reason in a comment."""

    n_reviews: int  # training reviews (about 2.4 sentences each)
    n_heldout: int  # held-out reviews: perplexity / drift texts
    n_eval_prompts: int  # review openings kept out of the RL prompts
    model: ModelSize
    pretrain_epochs: float  # passes over the packed review stream
    pretrain_lr: float
    sft_epochs: float  # passes over the SFT review split (half the corpus)
    sft_lr: float
    rm_pairs: int  # training pairs (before ties are dropped)
    rm_heldout_pairs: int  # accuracy against clean gold labels
    rm_epochs: float
    rm_batch_pairs: int  # pairs per BT step (small batches = more steps: what BT needs here)
    rm_lr: float
    max_new_tokens: int  # completion length of the RM pairs (= the run's sampling length)
    batch_size: int = 32
    block: int = 64  # pretraining block length (tokens)


RECIPES: dict[str, Recipe] = {
    # micro: seconds on 2 cores, for tests; quality is secondary
    "micro": Recipe(
        n_reviews=2000,
        n_heldout=200,
        n_eval_prompts=64,
        model=ModelSize(vocab_size=1000, hidden_size=128, num_layers=2, intermediate_size=256),
        pretrain_epochs=2.0,
        pretrain_lr=3e-3,
        sft_epochs=1.0,
        sft_lr=1e-3,
        rm_pairs=2048,  # 1024 stayed at chance; 2048 -> ~0.62 held-out clean accuracy
        rm_heldout_pairs=256,
        rm_epochs=1.0,
        rm_batch_pairs=8,
        rm_lr=5e-4,
        max_new_tokens=12,
    ),
    # tiny: the demo world, a few minutes on 2 cores
    "tiny": Recipe(
        n_reviews=12000,
        n_heldout=500,
        n_eval_prompts=200,
        model=ModelSize(vocab_size=2000, hidden_size=256, num_layers=4, intermediate_size=512),
        pretrain_epochs=1.0,
        pretrain_lr=2e-3,
        sft_epochs=1.0,
        sft_lr=5e-4,
        rm_pairs=6144,  # 3072 -> ~0.65, 6144 -> ~0.73 held-out clean accuracy (measured)
        rm_heldout_pairs=512,
        rm_epochs=1.0,
        rm_batch_pairs=8,
        rm_lr=5e-4,  # 1e-4 left the BT loss at ln 2 (~0.53); 1e-3 also ~0.55
        max_new_tokens=24,
    ),
    # small: a larger world for machines with time to spare (not part of the tests)
    "small": Recipe(
        n_reviews=40000,
        n_heldout=1000,
        n_eval_prompts=256,
        model=ModelSize(vocab_size=4000, hidden_size=384, num_layers=6, intermediate_size=1024),
        pretrain_epochs=1.0,
        pretrain_lr=1e-3,
        sft_epochs=1.0,
        sft_lr=3e-4,
        rm_pairs=6000,
        rm_heldout_pairs=1000,
        rm_epochs=1.0,
        rm_batch_pairs=16,
        rm_lr=1e-4,
        max_new_tokens=24,
    ),
}

SPAM = " great great great amazing amazing wonderful wonderful"
FLUENT = " was really wonderful. I loved the acting. Overall, I would recommend it."
PROBE_PROMPT = "This movie"


@dataclass(frozen=True)
class World:
    root: Path  # cache dir of this build: <cache_dir>/<size>-<hash>
    tokenizer_dir: Path
    base_dir: Path  # pretrained base LM (HF dir, safetensors)
    sft_dirs: list[Path]  # >= 2 SFT models fine-tuned from the base, different seeds
    rm_dirs: list[Path]  # K proxy reward models (HF dirs)
    train_prompts: list[str]  # review openings for RL
    eval_prompts: list[str]  # held-out review openings
    heldout_texts: list[str]  # held-out corpus text for the perplexity drift metric
    summary: dict  # the prepare summary (also saved as root/summary.json)


def world_key(task: TinyWorldConfig) -> str:
    """`<size>-<hash>`: the hash covers the fields that change the world, the size's recipe
    and BUILD_VERSION."""
    fields = {"name": task.kind} | {
        k: getattr(task, k) for k in ("size", "seed", "num_members", "num_sft_seeds", "label_noise")
    } | ({"sft_data": task.sft_data} if task.sft_data != "shared" else {})
    recipe = dataclasses.asdict(RECIPES[task.size])
    blob = json.dumps({"fields": fields, "recipe": recipe, "version": BUILD_VERSION},
                      sort_keys=True, default=str).encode()
    return f"{task.size}-{hashlib.sha256(blob).hexdigest()[:10]}"


BUILD_TIMES = ("timings_s", "build_seconds")  # the summary's fields that vary per build


def world_digest(root: Path) -> str:
    """sha256 of a built world's content: every file (path and bytes), summary.json without
    its build times and cache dir. Two builds of one key on one machine give the same digest
    (tests/tasks/test_tiny_world.py)."""
    h = hashlib.sha256()
    for path in sorted(p for p in Path(root).rglob("*") if p.is_file()):
        data = path.read_bytes()
        if path.name == "summary.json" and path.parent == Path(root):
            summary = {k: v for k, v in json.loads(data).items() if k not in BUILD_TIMES}
            summary["task"] = {k: v for k, v in summary.get("task", {}).items()
                               if k != "cache_dir"}
            data = json.dumps(summary, sort_keys=True).encode()
        h.update(str(path.relative_to(root)).encode() + b"\0" + data + b"\0")
    return h.hexdigest()


def _load(root: Path) -> World:
    summary = json.loads((root / "summary.json").read_text())
    data = json.loads((root / "data.json").read_text())
    return World(
        root=root,
        tokenizer_dir=root / "tokenizer",
        base_dir=root / "base",
        sft_dirs=[root / d for d in summary["layout"]["sft_dirs"]],
        rm_dirs=[root / d for d in summary["layout"]["rm_dirs"]],
        train_prompts=data["train_prompts"],
        eval_prompts=data["eval_prompts"],
        heldout_texts=data["heldout_texts"],
        summary=summary,
    )


def prepare(task: TinyWorldConfig, verbose: bool = False) -> World:
    """Build the world described by `task`, or load it from the cache (instant)."""
    root = (Path(task.cache_dir) / world_key(task)).resolve()
    if (root / "summary.json").is_file():
        world = _load(root)
        if verbose:
            print(f"tiny world (cached): {root}")
            print(json.dumps(world.summary, indent=2))
        return world
    root.parent.mkdir(parents=True, exist_ok=True)
    _remove_dead_temps(root)
    tmp = root.parent / f".tmp-{root.name}-{os.getpid()}-{random.randrange(1 << 30):08x}"
    tmp.mkdir()
    try:
        with _build_env():
            _build(task, tmp, root.name, verbose)
        try:
            os.rename(tmp, root)
        except OSError:  # another process finished the same world first: use theirs
            if not (root / "summary.json").is_file():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    world = _load(root)
    if verbose:
        print(f"tiny world built: {root}")
        print(json.dumps(world.summary, indent=2))
    return world


def _remove_dead_temps(root: Path) -> None:
    """Temp dirs of this world left by builds whose process is gone (killed builds)."""
    for d in root.parent.glob(f".tmp-{root.name}-*"):
        try:
            pid = int(d.name[len(f".tmp-{root.name}-") :].split("-")[0])
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(d, ignore_errors=True)
        except (ValueError, PermissionError):
            pass


@contextlib.contextmanager
def _build_env(threads: int = 2):
    """`threads` torch threads (whatever the process had: a build's floats depend on how its
    sums are split), deterministic kernels, quiet transformers; restored afterwards."""
    from transformers.utils import logging as hf_logging

    saved_threads = torch.get_num_threads()
    det = torch.are_deterministic_algorithms_enabled()
    verbosity = hf_logging.get_verbosity()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        torch.set_num_threads(saved_threads)
        torch.use_deterministic_algorithms(det)
        hf_logging.set_verbosity(verbosity)
        hf_logging.enable_progress_bar()


def _train_member(job) -> tuple[float, float]:
    """One proxy RM in a worker process; returns (held-out clean, train noisy) accuracy, the
    latter on the first TRAIN_ACC_PAIRS training pairs (a diagnostic, not worth a full pass)."""
    out, m, seed, r, train_noisy, held_clean = job
    from transformers import AutoTokenizer

    with _build_env(threads=1):
        tok = AutoTokenizer.from_pretrained(str(out / "base"))
        rm, _ = train_reward_model(out / "base", tok, train_noisy, seed, r.rm_epochs,
                                   r.rm_batch_pairs, r.rm_lr, out / f"rm-{m}", False,
                                   f"reward model {m}")
        max_len = r.model.max_positions
        return (round(pair_accuracy(rm, tok, held_clean, max_len), 4),
                round(pair_accuracy(rm, tok, train_noisy[:TRAIN_ACC_PAIRS], max_len), 4))


def ingredient_data(docs: list, domains: list[str], n: int, mode: str, epochs: int
                    ) -> list[tuple[list, int]]:
    """Each of the n SFT ingredients' (documents, epochs). shared: every document, `epochs`;
    disjoint: every n-th document from the i-th, n x epochs; domains: the documents of the
    i-th share of the review domains (sorted, every n-th from the i-th), for
    round(epochs x len(docs) / len(share)) epochs: about the shared number of steps."""
    if mode == "shared":
        return [(docs, epochs)] * n
    if mode == "disjoint":
        return [(docs[i::n], epochs * n) for i in range(n)]
    if mode != "domains":
        raise ValueError(f"sft_data: unknown mode '{mode}'")
    names = sorted(set(domains))
    if len(names) < n:
        raise ValueError(f"sft_data=domains: {n} ingredients, only {len(names)} domains")
    out = []
    for i in range(n):
        mine = set(names[i::n])
        share = [d for d, dom in zip(docs, domains, strict=True) if dom in mine]
        out.append((share, max(1, round(epochs * len(docs) / len(share)))))
    return out


def ingredient_spread(ingredients: list[dict], base: dict) -> float:
    """How far apart the fine-tunes are, relative to how far each moved from the base:
    ||theta_0 - theta_1|| / mean_i ||theta_i - theta_base|| over all floating-point tensors
    (0 = identical; sqrt(2) = orthogonal moves of equal size); NaN with one ingredient."""
    if len(ingredients) < 2:
        return math.nan

    def norm(a: dict, b: dict) -> float:
        return math.sqrt(sum(float(((a[k].double() - b[k].double()) ** 2).sum())
                             for k in a if a[k].is_floating_point()))

    moved = sum(norm(sd, base) for sd in ingredients) / len(ingredients)
    return norm(ingredients[0], ingredients[1]) / moved if moved else math.nan


def _build(task: TinyWorldConfig, out: Path, key: str, verbose: bool) -> None:
    r = RECIPES[task.size]
    t_start = time.time()
    timings: dict[str, float] = {}
    phase_start = [time.time()]

    def phase(name: str) -> None:
        now = time.time()
        timings[name] = round(now - phase_start[0], 2)
        phase_start[0] = now
        if verbose:
            print(f"  [{name}] {timings[name]:.1f}s", flush=True)

    # 1. corpus -----------------------------------------------------------------------------
    domains: list[str] = []
    reviews = corpus.generate_reviews(r.n_reviews, seed=task.seed, domains=domains)
    heldout = corpus.generate_reviews(r.n_heldout, seed=task.seed + 10_007)
    heldout_texts = [text for _, text, _ in heldout]
    sentences = [s for _, text, _ in reviews for s in corpus.split_sentences(text)]
    openings = list(dict.fromkeys(op for op, _, _ in reviews + heldout))
    random.Random(task.seed).shuffle(openings)
    eval_prompts = sorted(openings[: r.n_eval_prompts])
    train_prompts = sorted(openings[r.n_eval_prompts :])
    sft_texts = [text for _, text, _ in reviews[: r.n_reviews // 2]]
    (out / "data.json").write_text(
        json.dumps(
            {
                "train_prompts": train_prompts,
                "eval_prompts": eval_prompts,
                "heldout_texts": heldout_texts,
            },
            indent=1,
        )
    )
    phase("corpus")

    # 2. tokenizer --------------------------------------------------------------------------
    tok = train_tokenizer(sentences, r.model.vocab_size, out / "tokenizer")
    pad = tok.pad_token_id
    max_len = r.model.max_positions
    heldout_docs = encode_docs(tok, heldout_texts, max_len)
    phase("tokenizer")

    # 3. base: pretrain on every training review, shuffled and packed ----------------------
    # (whole reviews, not loose sentences: the LM must track a review's polarity, and those
    # features are what the reward models start from)
    rng = random.Random(task.seed + 1)
    shuffled = [text for _, text, _ in reviews]
    rng.shuffle(shuffled)
    blocks = pack_blocks(encode_docs(tok, shuffled, max_len), r.block)
    base = new_causal_lm(r.model, tok, seed=task.seed)
    gen = torch.Generator().manual_seed(task.seed + 2)
    n_steps = max(1, int(len(blocks) * r.pretrain_epochs / r.batch_size))
    batches = []
    for _ in range(n_steps):
        b = blocks[torch.randint(len(blocks), (r.batch_size,), generator=gen)]
        batches.append((b, torch.ones_like(b), b))
    pre_losses = train_loop(base, batches, lm_loss, r.pretrain_lr, "pretrain base", verbose)
    save_model(base, tok, out / "base")
    base_nll = mean_nll(base, heldout_docs, pad)
    phase("pretrain")

    # 4. SFT ingredients: same base, different seeds (data order, attention dropout) ---------
    sft_docs = encode_docs(tok, sft_texts, max_len)
    sft_models, sft_dirs = [], []
    n_sft = task.num_sft_seeds
    shares = ingredient_data(sft_docs, domains[: len(sft_docs)], n_sft, task.sft_data,
                             r.sft_epochs)
    for i in range(n_sft):
        seed = task.seed * 1000 + 10 + i
        torch.manual_seed(seed)
        model, _ = load_policy(out / "base")
        model.config.attention_dropout = 0.1
        docs, epochs = shares[i]
        batches = list(lm_batches(docs, r.batch_size, epochs, seed, pad))
        train_loop(model, batches, lm_loss, r.sft_lr, f"sft seed {i}", verbose)
        model.config.attention_dropout = 0.0
        save_model(model, tok, out / f"sft-{i}")
        sft_models.append(model)
        sft_dirs.append(f"sft-{i}")
    phase("sft")

    # 5. soup check: loss along the path sft-0 -> sft-1 and the uniform soup ------------------
    from learner.soup import average_state_dicts, interpolation_losses

    sds = [m.state_dict() for m in sft_models]
    sft_nll = [mean_nll(m, heldout_docs, pad) for m in sft_models]
    probe, _ = load_policy(out / "base")
    path = {}
    if len(sds) >= 2:
        alphas = (0.0, 0.25, 0.5, 0.75, 1.0)
        losses = interpolation_losses(sds[0], sds[1], probe,
                                      lambda m: mean_nll(m, heldout_docs, pad), alphas)
        path = {str(a): round(loss, 4) for a, loss in zip(alphas, losses, strict=True)}
    probe.load_state_dict(average_state_dicts(sds))
    soup_nll = mean_nll(probe, heldout_docs, pad)
    del probe
    spread = ingredient_spread(sds, base.state_dict())
    phase("soup")

    # 6. preference pairs from sft-0 samples, gold labels, label noise ---------------------
    n_pairs = r.rm_pairs + r.rm_heldout_pairs
    pair_prompts = [train_prompts[i % len(train_prompts)] for i in range(n_pairs)]
    random.Random(task.seed + 3).shuffle(pair_prompts)
    torch.manual_seed(task.seed + 4)
    comps = sample_completions(
        sft_models[0],
        tok,
        pair_prompts + pair_prompts,
        r.max_new_tokens,
        desc="sample pairs",
        show=verbose,
    )
    comp_a, comp_b = comps[:n_pairs], comps[n_pairs:]
    gold_a, gold_b = gold_score(pair_prompts, comp_a), gold_score(pair_prompts, comp_b)
    k = r.rm_pairs
    train_noisy, _, flipped = make_pairs(
        pair_prompts[:k],
        comp_a[:k],
        comp_b[:k],
        gold_a[:k],
        gold_b[:k],
        task.label_noise,
        seed=task.seed + 5,
    )
    _, held_clean, _ = make_pairs(
        pair_prompts[k:], comp_a[k:], comp_b[k:], gold_a[k:], gold_b[k:], 0.0, seed=task.seed + 6
    )
    sft_gold = gold_a + gold_b
    phase("pairs")

    # 7. K proxy reward models, RM_PROCESSES at a time (one torch thread each) --------------
    jobs = [(out, m, task.seed * 1000 + 100 + m, r, train_noisy, held_clean)
            for m in range(task.num_members)]
    with concurrent.futures.ProcessPoolExecutor(
        RM_PROCESSES, mp_context=multiprocessing.get_context("spawn")
    ) as pool:
        results = list(tqdm(pool.map(_train_member, jobs), total=len(jobs),
                            desc="reward models", disable=not verbose, leave=False))
    rm_acc = [acc for acc, _ in results]
    rm_train_acc = [acc for _, acc in results]
    rm_dirs = [f"rm-{m}" for m in range(task.num_members)]
    rms = [RewardScorer(out / d).model for d in rm_dirs]
    phase("reward_models")

    # 8. summary ---------------------------------------------------------------------------
    probes = [SPAM, FLUENT]
    gold_probe = gold_score([PROBE_PROMPT] * 2, probes)
    proxy_probe = [0.0, 0.0]
    for rm in rms:
        with torch.inference_mode():
            s = reward_forward(rm, encode_inputs(tok, [PROBE_PROMPT] * 2, probes, max_len), pad)
        proxy_probe = [a + float(b) / len(rms) for a, b in zip(proxy_probe, s)]
    torch.manual_seed(task.seed + 7)
    shown = eval_prompts[:5]
    samples = sample_completions(sft_models[0], tok, shown, r.max_new_tokens)
    n_params = sum(p.numel() for p in sft_models[0].parameters())
    mean_ingredient = sum(sft_nll) / len(sft_nll)
    summary = {
        "world": key,
        "build_version": BUILD_VERSION,
        "task": task.model_dump(mode="json"),
        "layout": {
            "tokenizer": "tokenizer",
            "base": "base",
            "sft_dirs": sft_dirs,
            "rm_dirs": rm_dirs,
        },
        "corpus": {
            "reviews": len(reviews),
            "sentences": len(sentences),
            "pretrain_tokens": int(blocks.numel()),
            "sft_reviews": len(sft_texts),
            "heldout_texts": len(heldout_texts),
            "train_prompts": len(train_prompts),
            "eval_prompts": len(eval_prompts),
            "polarity": {
                p: sum(x[2] == p for x in reviews) / len(reviews) for p in corpus.POLARITY_WEIGHTS
            },
        },
        "model": {
            "params": n_params,
            "vocab": len(tok),
            "hidden": r.model.hidden_size,
            "layers": r.model.num_layers,
            "heads": r.model.num_heads,
            "head_dim": 64,
        },
        "base": {
            "final_pretrain_loss": round(sum(pre_losses[-10:]) / len(pre_losses[-10:]), 4),
            "heldout_ppl": round(float(torch.tensor(base_nll).exp()), 3),
        },
        "sft": {
            "heldout_ppl": [round(float(torch.tensor(x).exp()), 3) for x in sft_nll],
            "soup_heldout_ppl": round(float(torch.tensor(soup_nll).exp()), 3),
            "soup_no_worse_than_mean": soup_nll <= mean_ingredient + 1e-6,
            "interpolation_loss": path,
            "ingredient_spread": round(spread, 4) if spread == spread else None,
            "mean_gold_of_samples": round(sum(sft_gold) / len(sft_gold), 4),
            "frac_positive_samples": round(sum(g > 0.05 for g in sft_gold) / len(sft_gold), 4),
            "samples": [{"prompt": p, "completion": c} for p, c in zip(shown, samples)],
        },
        "reward_models": {
            "train_pairs": len(train_noisy),
            "flipped": flipped,
            "heldout_pairs": len(held_clean),
            "heldout_accuracy_clean": rm_acc,
            "train_accuracy_noisy": rm_train_acc,
        },
        "probe": {
            "prompt": PROBE_PROMPT,
            "spam": SPAM,
            "fluent": FLUENT,
            "gold": {"spam": round(gold_probe[0], 4), "fluent": round(gold_probe[1], 4)},
            "mean_proxy": {"spam": round(proxy_probe[0], 4), "fluent": round(proxy_probe[1], 4)},
        },
        "timings_s": timings,
        "build_seconds": round(time.time() - t_start, 2),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))


def task_of(world: World, seed: int) -> Task:
    """The world as a run's task; training prompts shuffled per epoch by the run `seed`."""
    return Task(name=f"tiny_world/{world.root.name}", tokenizer_dir=world.tokenizer_dir,
                policy_dirs=world.sft_dirs, reward_dirs=world.rm_dirs,
                train=PromptStream(tuple(world.train_prompts), seed),
                eval_prompts=world.eval_prompts, gold="tasks.gold:gold_score",
                heldout_texts=world.heldout_texts)
