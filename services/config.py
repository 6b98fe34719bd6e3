"""The run configuration: one pydantic tree, loaded from YAML with errors that say where.

`load_config("tiny.yaml", ["learner.lr=1e-5"])` returns a validated `RunConfig` or raises
`ConfigError` whose message names the file, the line and the dotted field, e.g.
`tiny.yaml:14 learner.elastic_reset.ema_decay: must be < 1, got 1.5`. Nothing else in raylign
starts (no Ray, no model) before this succeeds.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import importlib.util
import ipaddress
import json
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    Discriminator,
    Field,
    StrictInt,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.dataclasses import dataclass
from pydantic.fields import FieldInfo

from actors.records import Sampling
from learner.settings import STRICT, LoraSettings, PPOSettings
from tasks.configs import DatasetConfig, Strict, TinyWorldConfig

# A field (or a whole section) marked RESUMABLE may differ from the run's saved config when the
# run resumes (`raylign train --resume`): how long to run, how many actors, where it reports.
RESUMABLE = {"resume": "may change"}

# ---------------------------------------------------------------------------------------------
# Sections (the learner's own settings classes are embedded as they are: learner/settings.py)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, config=STRICT)
class Placement:
    """Where each actor of a role runs: the Ray resources it asks for."""

    num_cpus: float = Field(1.0, ge=0, description="Ray CPUs per actor")
    num_gpus: float = Field(0.0, ge=0, description="Ray GPUs per actor")
    resources: dict[str, float] = Field(
        default_factory=dict, description="custom Ray resources per actor, e.g. {rollout: 1}"
    )
    max_restarts: StrictInt = Field(3, ge=-1, description="Ray max_restarts (-1 = forever)")
    max_replacements: StrictInt = Field(
        3, ge=0, description="new actors started in place of ones that failed "
        "checkpoint.max_actor_failures times in a row or hung past a deadline (0 = the run "
        "stops instead)")
    nice: StrictInt = Field(0, ge=0, le=19, description="niceness added to the role's actor "
                      "processes: where roles share a node's cores, the roles with less get "
                      "more CPU under contention (no effect on a node of its own)")


@dataclass(frozen=True, config=STRICT)
class Resources(Placement):
    """Placement, and how many actors of the role (changeable at run time: raylign scale)."""

    replicas: StrictInt = Field(1, ge=1, json_schema_extra=RESUMABLE,
                                description="actors of this role (for reward: per member)")


def _task_kind(value: Any) -> str:
    if isinstance(value, dict):
        return value.get("kind", "tiny_world")
    return getattr(value, "kind", "tiny_world")


TASK_KINDS = {"tiny_world": TinyWorldConfig, "dataset": DatasetConfig}
TaskConfig = Annotated[
    Annotated[TinyWorldConfig, Tag("tiny_world")] | Annotated[DatasetConfig, Tag("dataset")],
    Discriminator(_task_kind),
]


class PolicyConfig(Strict):
    init: Literal["sft", "soup"] = Field(
        "sft", description="start the policy from SFT model 0 or from the soup of all SFT models"
    )
    model_dir: str | None = Field(
        None, description="an HF model dir to start from instead of the task's SFT model"
    )
    lora: LoraSettings | None = Field(
        None, description="peft LoRA (e.g. {rank: 8, alpha: 16}); None = full fine-tuning")


@dataclass(frozen=True, config=STRICT)
class RolloutConfig(Resources):
    nice: StrictInt = Field(4, ge=0, le=19, description="niceness added to the rollout workers' "
                      "processes: where they share a node's cores with the learner (nice 0), "
                      "the learner gets more CPU under contention")
    engine: Literal["auto", "hf", "vllm"] = Field(
        "auto", description="auto = vllm if the driver's Python has it, else hf (transformers); "
        "resolved once by the driver and given to every worker and the learner (on a cluster "
        "where only the workers have vLLM, say vllm)"
    )
    dtype: Literal["auto", "float32", "bfloat16"] = Field(
        "auto", description="the engines' weights and compute: auto = the checkpoint's dtype "
        "where the workers have a GPU (num_gpus > 0), float32 on CPU; the learner publishes "
        "its weights in this dtype")
    prompts_per_batch: StrictInt = Field(8, ge=1, description="prompts in one generate() call")
    max_generating_during_step: StrictInt | None = Field(
        None, ge=0, description="generate calls in flight, over all workers, while the learner "
        "steps (None = no limit): where rollout workers share the learner's cores, a small "
        "number keeps more workers from slowing the step; they add speed between steps")
    max_inflight_per_worker: StrictInt = Field(2, ge=1, description="generate calls in flight per "
                                         "worker (backpressure)")
    max_staleness: StrictInt = Field(
        1, ge=0, description="train a sample made by weight version v at learner version u "
        "only if u - v <= this (0 = on-policy)"
    )
    sampling: Sampling = Field(default_factory=Sampling, description="how engines sample")


@dataclass(frozen=True, config=STRICT)
class RewardFunction:
    """A reward function as an ensemble member: fn(prompts, completions, labels) -> scores."""

    path: str = Field(description="a Python file (rewards.py, with name) or "
                      "'package.module:callable'")
    name: str | None = Field(None, description="the callable in the file at path")
    weight: float = Field(1.0,
                          description="scales the member's scores before aggregation")
    gold: bool = Field(False, description="evaluation only: logged as reward/gold, never "
                       "trained on")

    @property
    def ref(self) -> str:
        """`file.py:name` (absolute) or `module:callable`, for `load_callable`."""
        if self.name is None:
            return self.path
        path = str(Path(self.path).resolve()) if self.path.endswith(".py") else self.path
        return f"{path}:{self.name}"


@dataclass(frozen=True, config=STRICT)
class RewardConfig(Resources):
    nice: StrictInt = Field(
        4, ge=0, le=19, description="niceness added to the reward members' (and "
                      "the combiner's) processes, as rollout.nice")
    aggregation: Literal["mean", "min", "uwo", "single"] = Field(
        "mean", description="mean | min (worst case) | uwo (mean - lambda*var) | single (member 0)"
    )
    members: StrictInt | None = Field(
        None, ge=1, description="use the first K members (None = all)")
    uwo_lambda: float = Field(0.1, ge=0,
                              description="lambda of uwo (mean - lambda * var): 0.1 for PPO, "
                              "0.5 for best-of-n (Coste et al.)")
    ddof: Literal[0, 1] = Field(1, description="variance ddof for uwo (1 = sample variance)")
    gold_eval: bool = Field(True, description="also score with the gold scorer (metrics only)")
    gold_in_reward: bool = Field(False, description="train on gold (oracle) instead of proxies")
    score_clip: float | None = Field(None, gt=0,
                                     description="clip the aggregate to +-this")
    batch_size: StrictInt = Field(16, ge=1, description="samples per reward-model call")
    model_dirs: list[str] | None = Field(
        None, description="HF sequence-classification dirs to use as members instead of the "
        "task's proxy reward models"
    )
    functions: list[RewardFunction] = Field(
        default_factory=list, description="reward functions: members beside the models (or "
        "the gold scorer, gold: true)")


@dataclass(frozen=True, config=STRICT)
class LearnerConfig(Placement, PPOSettings):
    """The learner actor and its PPO settings."""

    world_size: StrictInt = Field(
        1, ge=1, json_schema_extra=RESUMABLE, description="learner ranks: N > 1 shards the "
        "model, gradients and optimizer state over N actors (FSDP2; each with this section's "
        "num_cpus/num_gpus) that make the update one learner would; minibatch_size must divide "
        "by it; full fine-tuning only")
    drift_every: StrictInt = Field(
        1, ge=0, description="steps between the per-step KL-to-init metrics (kl/init_k1, "
        "kl/init_k2; the plots' KL axis): their forward of the initial weights runs only then, "
        "unless the KL reference is the initial model and in use (0 = never; the held-out "
        "drift of eval_every is separate). The reference forward runs only when kl.coef > 0 "
        "or kl.adaptive")
    gradient_checkpointing: bool = Field(
        False, json_schema_extra=RESUMABLE, description="recompute each decoder layer's "
        "activations in the backward pass instead of keeping them (less memory, one more "
        "forward per minibatch)")
    memory_gb: float | None = Field(
        None, gt=0, json_schema_extra=RESUMABLE, description="memory each learner rank may use "
        "(its GPU's, or its share of the host's): a run whose memory plan (printed before Ray "
        "starts) needs more is refused (None = print the plan, check nothing)")
    dtype: Literal["auto", "float32", "bfloat16"] = Field(
        "auto", description="the learner's compute dtype (autocast): auto = bfloat16 where the "
        "learner has a GPU (num_gpus > 0), else float32. Master weights and the optimizer "
        "state are float32 whatever this and the checkpoint's dtype")

    steps: StrictInt = Field(20, ge=1, json_schema_extra=RESUMABLE,
                             description="PPO iterations (learner versions) to run")
    epochs: float | None = Field(None, gt=0, json_schema_extra=RESUMABLE,
                                 description="run this many passes over the training prompts "
                                 "instead (sets steps: ceil(epochs * prompts * n / "
                                 "samples_per_step))")
    samples_per_step: StrictInt = Field(32, ge=1, description="scored samples per PPO iteration")
    eval_every: StrictInt = Field(
        5, ge=0, description="steps between drift evaluations on held-out text (0 = off)"
    )
    eval_texts: StrictInt = Field(
        64, ge=1, description="held-out corpus texts per drift evaluation")
    eval_prompts: StrictInt = Field(
        0, ge=0, description="held-out prompts (the task's eval prompts, stratified by first "
        "word) the policy completes at every drift evaluation, scored by the gold scorer: "
        "eval/gold, the same policy as the drift (0 = off)")
    soup_weights: list[float] | None = Field(
        None, description="weights of the SFT models in the soup, summing to 1 (None = "
        "uniform)"
    )

    @model_validator(mode="after")
    def _divides(self) -> LearnerConfig:
        w = self.soup_weights
        if w is not None and (min(w, default=0) < 0 or abs(sum(w) - 1.0) > 1e-6):
            raise ValueError(f"soup_weights must be >= 0 and sum to 1, got {w}")
        if self.minibatch_size % self.world_size:
            raise ValueError(f"minibatch_size ({self.minibatch_size}) must divide by "
                             f"world_size ({self.world_size}): each rank takes an equal share")
        if self.samples_per_step % self.minibatch_size:
            raise ValueError(
                f"minibatch_size ({self.minibatch_size}) must divide samples_per_step "
                f"({self.samples_per_step})"
            )
        return self


class AlarmConfig(Strict):
    """The over-optimisation alarm (services/alarm.py, docs/alarm.md): a score from the reward
    members' disagreement, a state (ok, warning, alarm) and what the run does on alarm."""

    action: Literal["none", "mark", "stop"] = Field(
        "mark", description="on alarm: none = report only; mark = the newest checkpoint from "
        "before the score left ok becomes the run's recommended one (kept when older ones "
        "rotate out; raylign export --recommended); stop = mark, then checkpoint and stop")
    warmup: StrictInt = Field(5, ge=1, description="steps before the disagreement floor is "
                              "tracked (the score is 0 until then)")
    halflife: float = Field(2.0, gt=0, description="half-life, in steps, of the smoothing of "
                            "the disagreement")
    warning: float = Field(0.05, gt=0, description="score at which the state is warning")
    threshold: float = Field(0.1, gt=0, description="score at which, held for `patience` "
                             "steps, the state is alarm (score = smoothed disagreement / its "
                             "floor - 1); the defaults are the ones tuned in docs/alarm.md")
    patience: StrictInt = Field(1, ge=1, description="steps in a row at or above threshold")

    @model_validator(mode="after")
    def _levels(self) -> AlarmConfig:
        if self.warning > self.threshold:
            raise ValueError(f"alarm.warning ({self.warning}) must be <= alarm.threshold "
                             f"({self.threshold})")
        return self

    def params(self) -> dict:
        """The Alarm's parameters: every field but the action."""
        return self.model_dump(exclude={"action"})


class BroadcastConfig(Strict):
    keep_versions: StrictInt = Field(2, ge=1, description="weight versions kept referenced")


class MetricsConfig(Strict):
    enabled: bool = Field(True, description="serve the Prometheus exporter")
    host: str = Field("127.0.0.1", description="exporter bind address (loopback by default; "
                      "another address needs public: true)")
    public: bool = Field(False, description="allow binding a non-loopback host (the metrics "
                         "carry no secrets, but nothing authenticates the scraper)")

    @model_validator(mode="after")
    def _bind(self) -> MetricsConfig:
        try:
            address = ipaddress.ip_address(self.host)
        except ValueError:
            if self.host != "localhost":
                raise ValueError(f"metrics.host: '{self.host}' is not an IP address (or "
                                 "localhost)") from None
            return self
        if not address.is_loopback and not self.public:
            raise ValueError(f"metrics.host {self.host} is not loopback: set metrics.public: "
                             "true to serve the exporter there")
        return self
    port: StrictInt = Field(0, ge=0, le=65535, description="0 = pick a free port and log it")


class CheckpointConfig(Strict):
    storage: str | None = Field(
        None, description="where checkpoints go (STORAGE/<name>/checkpoints/), a storage no "
        "node owns: an absolute path every node mounts, or a URI (s3://bucket/prefix, "
        "gs://..., file:///...); None = RUN_DIR/checkpoints")

    @field_validator("storage")
    @classmethod
    def _storage(cls, v: str | None) -> str | None:
        if v is None:
            return v
        scheme = v.split("://", 1)[0] if "://" in v else None
        if scheme is None and not Path(v).is_absolute():
            raise ValueError(f"checkpoint.storage: '{v}' is a relative path; the learner "
                             "writes from its own node: give an absolute path or a URI")
        if scheme not in (None, "file", "s3", "gs", "gcs", "hdfs", "abfs", "abfss"):
            raise ValueError(f"checkpoint.storage: unknown scheme '{scheme}://' (local path, "
                             "file://, s3://, gs://, hdfs://, abfs://)")
        return v

    every: StrictInt = Field(
        10, ge=0, description="learner steps between checkpoints (0 = end only)")
    keep: StrictInt = Field(2, ge=1, description="newest checkpoints kept on disk")
    max_actor_failures: StrictInt = Field(
        8, ge=1, description="consecutive failures of one actor (with backoff 0.5 s doubling "
        "to 10 s, ~45 s in all) before it is replaced (<role>.max_replacements)"
    )


class DeadlinesConfig(Strict):
    """How long a remote call may take before its actor is killed and replaced."""

    generate_s: float = Field(600.0, ge=1, description="a rollout worker's generate call")
    score_s: float = Field(600.0, ge=1, description="a reward member's score call")
    step_s: float = Field(1800.0, ge=1, description="a learner step, save, load or evaluate")
    publish_s: float = Field(120.0, ge=1, description="a worker's acknowledgement of new "
                             "weights")
    probe_s: float = Field(60.0, ge=1, description="an idle actor's answer to a health probe")


class ClusterConfig(Strict):
    address: str | None = Field(None, description="None = embedded Ray; 'auto' = join a cluster")
    num_cpus: StrictInt | None = Field(
        None, ge=1, description="embedded Ray's CPUs (None = detect)")
    namespace: str = Field("raylign", description="Ray namespace of the run's named actors "
                           "(raylign scale/status/stop find the run by it)")


class RunConfig(Strict):
    name: str = Field("run", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$",
                      description="the run's name: RUN_DIR and actor names use it (letters, "
                      "digits, . _ -; no path)")
    seed: StrictInt = Field(0, ge=0, lt=2**32,
                      description="run seed: prompt order, sampling, learner RNG")
    run_dir: str = Field("runs", json_schema_extra=RESUMABLE,
                         description="RUN_DIR = run_dir/name")
    task: TaskConfig = Field(default_factory=TinyWorldConfig, description="what to train on")
    policy: PolicyConfig = Field(default_factory=PolicyConfig, description="the policy's start")
    rollout: RolloutConfig = Field(default_factory=RolloutConfig,
                                   description="rollout workers and sampling")
    reward: RewardConfig = Field(default_factory=RewardConfig,
                                 description="the reward ensemble")
    learner: LearnerConfig = Field(default_factory=LearnerConfig,
                                   description="the learner actor and its PPO settings")
    alarm: AlarmConfig = Field(default_factory=AlarmConfig,
                               description="the over-optimisation alarm")
    broadcast: BroadcastConfig = Field(default_factory=BroadcastConfig,
                                       description="weight broadcasts")
    metrics: MetricsConfig = Field(default_factory=MetricsConfig, json_schema_extra=RESUMABLE,
                                  description="the Prometheus exporter")
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig,
                                         json_schema_extra=RESUMABLE,
                                         description="checkpoints and fault limits")
    deadlines: DeadlinesConfig = Field(default_factory=DeadlinesConfig, json_schema_extra=RESUMABLE,
                                      description="deadlines of remote calls")
    cluster: ClusterConfig = Field(default_factory=ClusterConfig, json_schema_extra=RESUMABLE,
                                  description="embedded Ray or a cluster")

    def start_dir(self, task) -> str:
        """The policy's starting model dir: policy.model_dir, else the task's first policy."""
        return str(self.policy.model_dir or task.policy_dirs[0])

    @model_validator(mode="after")
    def _cross_field(self) -> RunConfig:
        rc, dataset = self.reward, self.task.kind == "dataset"
        golds = [f for f in rc.functions if f.gold]
        if len(golds) > 1:
            raise ValueError(f"reward.functions: {len(golds)} have gold: true; at most one")
        models = len(rc.model_dirs or []) or (0 if dataset else self.task.num_members)
        available = models + len(rc.functions) - len(golds)
        if available == 0:
            raise ValueError("a dataset task needs reward members: reward.model_dirs and/or "
                             "reward.functions (not gold)")
        k = rc.members or available
        if rc.members is not None and rc.members > available:
            raise ValueError(
                f"reward.members ({rc.members}) exceeds the {available} reward members "
                "available (task.num_members or reward.model_dirs, plus reward.functions)"
            )
        if rc.aggregation in ("min", "uwo") and k < 2 and not rc.gold_in_reward:
            raise ValueError(
                f"reward.aggregation={rc.aggregation} needs at least 2 members, got {k}"
            )
        if dataset and rc.gold_in_reward and not golds:
            raise ValueError("reward.gold_in_reward: a dataset task has no gold scorer; mark "
                             "one of reward.functions gold: true")
        if dataset and self.policy.model_dir is None:
            raise ValueError("a dataset task needs policy.model_dir (an HF causal LM dir)")
        n, est = self.rollout.sampling.n, self.learner.estimator
        if est in ("grpo", "rloo") and n < 2:
            raise ValueError(f"learner.estimator={est} needs rollout.sampling.n >= 2 "
                             f"completions per prompt (its group baseline), got {n}")
        if self.learner.samples_per_step % n:
            raise ValueError(f"rollout.sampling.n ({n}) must divide learner.samples_per_step "
                             f"({self.learner.samples_per_step}): groups are trained whole")
        uses_soup = self.learner.kl.reference == "soup" or self.policy.init == "soup"
        if uses_soup and (dataset or self.task.num_sft_seeds < 2):
            raise ValueError("a soup (policy.init or learner.kl.reference) needs several SFT "
                             "models: the tiny world with task.num_sft_seeds >= 2")
        sampling = self.rollout.sampling
        if self.learner.off_policy == "none" and (sampling.top_k or sampling.top_p < 1):
            raise ValueError(
                f"learner.off_policy=none with rollout.sampling top_k={sampling.top_k} top_p="
                f"{sampling.top_p}: the engines' log-probs are of the truncated distribution, "
                "the learner's of the full softmax, so their ratio and the KL would be biased; "
                "use tis or decoupled (the default resolves to tis)")
        if self.learner.world_size > 1 and self.policy.lora is not None:
            raise ValueError(f"learner.world_size={self.learner.world_size} with policy.lora: "
                             "a learner group trains full models only (LoRA: world_size 1)")
        return self

    def engine_kind(self) -> str:
        """rollout.engine resolved (auto: vllm if this Python can import it, else hf): the
        driver decides once and tells the workers and the learner."""
        if self.rollout.engine != "auto":
            return self.rollout.engine
        return "vllm" if importlib.util.find_spec("vllm") else "hf"

    def learner_dtype(self) -> str:
        """learner.dtype resolved: auto = bfloat16 with a GPU, float32 without."""
        if self.learner.dtype != "auto":
            return self.learner.dtype
        return "bfloat16" if self.learner.num_gpus > 0 else "float32"

    def rollout_dtype(self, checkpoint_dtype: str) -> str:
        """rollout.dtype resolved: auto = the checkpoint's dtype with a GPU, float32 without."""
        if self.rollout.dtype != "auto":
            return self.rollout.dtype
        return checkpoint_dtype if self.rollout.num_gpus > 0 else "float32"

    def learner_settings(self, checkpoint_dtype: str = "float32") -> LearnerConfig:
        """The learner section with `off_policy` resolved: None -> tis if samples can be off
        the learner's policy (max_staleness > 0, a vLLM engine's numerics, engines that
        compute in another dtype than the learner, or top-k/top-p sampling, whose log-probs
        are of the truncated distribution), else none. With tis the learner recomputes the
        proximal log-probs, and the KL penalty uses its own."""
        if self.learner.off_policy is not None:
            return self.learner
        sampling = self.rollout.sampling
        off = (self.rollout.max_staleness > 0 or self.engine_kind() == "vllm"
               or self.rollout_dtype(checkpoint_dtype) != self.learner_dtype()
               or bool(sampling.top_k) or sampling.top_p < 1)
        return dataclasses.replace(self.learner, off_policy="tis" if off else "none")

    def digest(self) -> str:
        """A short stable hash of the whole config."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]

    @property
    def path(self) -> Path:
        return Path(self.run_dir) / self.name

    @property
    def storage(self) -> Path | str:
        """Where the run's checkpoints go (under `checkpoints/`): checkpoint.storage/<name>,
        else RUN_DIR."""
        from actors.storage import join

        return self.path if self.checkpoint.storage is None else join(
            self.checkpoint.storage, self.name)


# ---------------------------------------------------------------------------------------------
# Loading with precise errors
# ---------------------------------------------------------------------------------------------


class ConfigError(ValueError):
    """A config problem, with `file:line dotted.path: message` lines."""


def _line_map(node: yaml.Node, prefix: tuple = (), out: dict | None = None) -> dict:
    """Map every YAML path (tuple of keys/indices) to its 1-based line."""
    out = {} if out is None else out
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            path = (*prefix, key_node.value)
            if path in out:
                dotted = ".".join(str(x) for x in path)
                raise ConfigError(f"{key_node.start_mark.line + 1} {dotted}: duplicate key "
                                  f"(first at line {out[path]})")
            out[path] = key_node.start_mark.line + 1
            _line_map(value_node, path, out)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            out[(*prefix, i)] = item.start_mark.line + 1
            _line_map(item, (*prefix, i), out)
    return out


def resumable_fields(model: Any = None, prefix: str = "") -> tuple[str, ...]:
    """The dotted paths of the fields (and sections, ending in '.') marked RESUMABLE."""
    out: list[str] = []
    for name, field in (fields_of(model or RunConfig) or {}).items():
        path = f"{prefix}{name}"
        sub = field.annotation if fields_of(field.annotation) else None
        if field.json_schema_extra == RESUMABLE:
            out.append(f"{path}." if sub else path)
        elif sub:
            out.extend(resumable_fields(sub, f"{path}."))
    return tuple(out)


def fields_of(model: Any) -> dict[str, FieldInfo] | None:
    """The pydantic fields of a section class (a model or a pydantic dataclass), else None."""
    if isinstance(model, type) and issubclass(model, BaseModel):
        return model.model_fields
    return getattr(model, "__pydantic_fields__", None)


def _model_at(path: tuple) -> dict[str, FieldInfo] | None:
    """The fields of the section that a YAML path (of mappings) points into."""
    fields = fields_of(RunConfig)
    for key in path:
        field = fields.get(key) if isinstance(key, str) else None
        if field is None:
            return None
        fields = fields_of(field.annotation)
        if fields is None:
            return None
    return fields


def _describe(err: dict) -> str:
    kind, ctx, value = err["type"], err.get("ctx") or {}, err.get("input")
    if kind in ("extra_forbidden", "unexpected_keyword_argument"):
        return "unknown key"
    bounds = {"less_than": "<", "less_than_equal": "<=", "greater_than": ">",
              "greater_than_equal": ">="}
    for name, op in bounds.items():
        if kind == name:
            bound = ctx.get({"<": "lt", "<=": "le", ">": "gt", ">=": "ge"}[op])
            return f"must be {op} {bound}, got {value!r}"
    if kind == "literal_error":
        return f"must be one of {ctx.get('expected')}, got {value!r}"
    if kind == "missing":
        return "required field is missing"
    if kind == "finite_number":
        return f"must be a finite number, got {value!r}"
    if kind == "string_pattern_mismatch":
        return f"must match {ctx.get('pattern')}, got {value!r}"
    if kind == "union_tag_invalid":
        return f"must be one of {ctx.get('expected_tags')}, got {ctx.get('tag')!r}"
    if kind == "value_error":
        return str(ctx.get("error", err["msg"]))
    return f"{err['msg']}, got {value!r}"


def _format(err: dict, source: str, lines: dict, overrides: dict) -> str:
    loc = tuple(err["loc"])
    variant = None  # pydantic puts the union tag in the path: task.dataset.train -> task.train
    if len(loc) > 1 and loc[0] == "task" and loc[1] in TASK_KINDS:
        variant, loc = TASK_KINDS[loc[1]], (loc[0], *loc[2:])
    dotted = ".".join(str(p) for p in loc) or "(top level)"
    message = _describe(err)
    if err["type"] in ("extra_forbidden", "unexpected_keyword_argument"):
        parent = fields_of(variant) if loc[:-1] == ("task",) else _model_at(loc[:-1])
        if parent is not None:
            close = difflib.get_close_matches(str(loc[-1]), list(parent), n=1)
            if close:
                message += f" (did you mean '{close[0]}'?)"
            else:
                message += f"; valid keys: {', '.join(parent)}"
    # The override that set the field, an item of it, or a field of the section in error.
    for key, item in overrides.items():
        related = dotted == key or key.startswith(f"{dotted}.") or dotted.startswith(f"{key}.")
        if related or (dotted == "(top level)" and len(overrides) == 1):
            return f"override '{item}': {dotted}: {message}"
    # The deepest path that the file names (a model-level error points at its section).
    for cut in range(len(loc), -1, -1):
        if loc[:cut] in lines:
            return f"{source}:{lines[loc[:cut]]} {dotted}: {message}"
    return f"{source} {dotted}: {message}"


def _apply_override(data: dict, item: str) -> str:
    if "=" not in item:
        raise ConfigError(f"override '{item}': expected dotted.key=value")
    key, raw = item.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override '{item}': value is not valid YAML: {e}") from None
    node = data
    parts = key.strip().split(".")
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if not isinstance(node, dict | list):
            raise ConfigError(f"override '{item}': {'.'.join(parts[:i])} is not a section")
        if isinstance(node, list):  # a list item by its index: reward.functions.0.weight=2
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"override '{item}': {'.'.join(parts[:i])} has items "
                                  f"0..{len(node) - 1}, not '{part}'")
            part = int(part)
            if last:
                node[part] = value
            else:
                node = node[part]
            continue
        if last:
            node[part] = value
            break
        child = node.setdefault(part, {})
        if not isinstance(child, dict | list):
            raise ConfigError(f"override '{item}': {part} is not a section or a list")
        node = child
    return key.strip()


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML run config (or the defaults when `path` is None) and apply dotted overrides."""
    data: dict = {}
    lines: dict = {}
    source = "<defaults>"
    if path is not None:
        p = Path(path)
        source = p.name
        if p.is_dir():
            raise ConfigError(f"{p}: is a directory, not a config file")
        if not p.is_file():
            raise ConfigError(f"{p}: config file not found")
        try:
            text = p.read_text()
        except UnicodeDecodeError as e:
            raise ConfigError(f"{p}: not a text (UTF-8) file: {e.reason} at byte {e.start}"
                              ) from None
        except OSError as e:
            raise ConfigError(f"{p}: cannot read: {e.strerror}") from None
        try:
            for event in yaml.parse(text, Loader=yaml.SafeLoader):  # before any expansion
                if isinstance(event, yaml.AliasEvent):
                    raise ConfigError(f"{source}:{event.start_mark.line + 1} YAML alias "
                                      f"*{event.anchor}: aliases are not supported in configs")
            node = yaml.compose(text, Loader=yaml.SafeLoader)
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f"{source}:{mark.line + 1}" if mark else source
            raise ConfigError(f"{where} YAML syntax error: {getattr(e, 'problem', e)}") from None
        if data is None:
            raise ConfigError(f"{source}: the file is empty (run without --config for the "
                              "built-in defaults)")
        if not isinstance(data, dict):
            raise ConfigError(f"{source}:1 (top level): must be a mapping of sections")
        try:
            lines = _line_map(node)
        except ConfigError as e:
            raise ConfigError(f"{source}:{e}") from None
    applied = {_apply_override(data, item): item for item in overrides or []}
    try:
        cfg = RunConfig.model_validate(data)
    except ValidationError as e:
        msgs = [_format(err, source, lines, applied) for err in e.errors()]
        raise ConfigError("invalid config:\n  " + "\n  ".join(msgs)) from None
    _check_paths(cfg, source, lines)
    return cfg


def check_model_dir(path: str | Path) -> str | None:
    """Why `path` is not a loadable HF model dir with safetensors weights (None if it is).

    Reads config.json and each safetensors header (cheap); never unpickles anything.
    """
    from safetensors import safe_open

    p = Path(path)
    if not p.is_dir():
        return f"no such directory '{p}'"
    try:
        json.loads((p / "config.json").read_text())
    except FileNotFoundError:
        return f"no config.json in '{p}' (not an HF model dir)"
    except ValueError as e:
        return f"config.json in '{p}' is not valid JSON: {e}"
    weights = sorted(p.glob("*.safetensors"))
    if not weights:
        pickles = [f.name for f in p.glob("*.bin")] + [f.name for f in p.glob("*.pt")]
        extra = f" (found {', '.join(pickles)}: pickles are never loaded)" if pickles else ""
        return f"no *.safetensors weights in '{p}'{extra}"
    for f in weights:
        try:
            with safe_open(str(f), framework="pt") as handle:
                for key in handle.keys():  # noqa: SIM118 - safe_open has no __iter__
                    handle.get_slice(key)
        except Exception as e:
            return f"'{f}' is not a valid safetensors file: {e}"
        expected = _safetensors_size(f)
        if expected != f.stat().st_size:
            return f"'{f}' is truncated ({f.stat().st_size} of {expected} bytes)"
    return None


def check_model_kind(model_dir: str | Path, kind: str) -> str | None:
    """Why the model in `model_dir` is not of `kind` ("causal": a causal LM for the policy;
    "classifier": a sequence classifier for a reward model), by the architectures its
    config.json names; None if it is (or names none). A model of the wrong kind would load
    with a randomly initialised head and train on noise."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES,
    )

    names = {"causal": MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
             "classifier": MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES}[kind]
    wanted = {v for vs in names.values() for v in ([vs] if isinstance(vs, str) else vs)}
    archs = json.loads((Path(model_dir) / "config.json").read_text()).get("architectures")
    if not archs or set(archs) & wanted:
        return None
    what = "a causal LM (AutoModelForCausalLM)" if kind == "causal" else (
        "a sequence classifier (AutoModelForSequenceClassification)")
    return (f"'{model_dir}' holds a {', '.join(archs)}, not {what}: its head would be "
            "randomly initialised")


def model_context(model_dir: str | Path) -> int | None:
    """The positions a model dir's architecture takes (`max_position_embeddings`, read through
    AutoConfig, which maps GPT-2's `n_positions` onto it); None if its config has none."""
    from transformers import AutoConfig

    return getattr(AutoConfig.from_pretrained(model_dir), "max_position_embeddings", None)


def model_dtype(model_dir: str | Path) -> str:
    """The dtype a model dir's weights are stored in (its config's `dtype`; float32 if unset)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_dir)
    dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    return str(dtype).removeprefix("torch.") if dtype is not None else "float32"


def _safetensors_size(path: Path) -> int:
    """The file size a safetensors header promises: 8 + header + the largest data offset."""
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
    ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
    return 8 + n + max(ends, default=0)


def _check_paths(cfg: RunConfig, source: str, lines: dict) -> None:
    """Files the config names: model dirs, reward functions, a dataset's files and context."""
    from actors.scoring import load_callable

    def fail(loc: tuple, problem: str) -> None:
        where = lines.get(loc) or lines.get(loc[:2]) or lines.get(loc[:1])
        at = f"{source}:{where}" if where else source
        raise ConfigError(f"invalid config:\n  {at} {'.'.join(str(x) for x in loc)}: {problem}")

    dirs = [(("policy", "model_dir"), cfg.policy.model_dir)]
    dirs += [(("reward", "model_dirs", i), d) for i, d in enumerate(cfg.reward.model_dirs or [])]
    for loc, model_dir in dirs:
        problem = model_dir is not None and (
            check_model_dir(model_dir)
            or check_model_kind(model_dir, "causal" if loc[0] == "policy" else "classifier"))
        if problem:
            fail(loc, problem)
    for i, f in enumerate(cfg.reward.functions):
        try:
            load_callable(f.ref)
        except Exception as e:  # the user's file may raise anything on import
            fail(("reward", "functions", i, "path"), str(e))
    if cfg.task.kind != "dataset":
        return
    for key in ("train", "eval"):
        path = getattr(cfg.task, key)
        if path is not None and not Path(path).exists():
            fail(("task", key), f"no such file or directory '{path}'")
    context = model_context(cfg.policy.model_dir)
    need = cfg.task.max_prompt_tokens + cfg.rollout.sampling.max_new_tokens
    if context is not None and need > context:
        fail(("task", "max_prompt_tokens"), f"task.max_prompt_tokens + rollout.sampling."
             f"max_new_tokens = {need} exceeds the policy's context ({context} positions)")
