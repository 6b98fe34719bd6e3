"""`raylign prepare | train | export | scale | status | stop | experiment`."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from pathlib import Path

from learner.process_env import set_process_env
from services.config import ConfigError, load_config
from services.errors import NoCluster, RunFailed
from tasks.dataset import DataError


def _add_config(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=None, help="run config YAML (default: built-in defaults)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. learner.lr=1e-5")


def cmd_prepare(args: argparse.Namespace) -> int:
    from tasks.tiny_world import prepare

    cfg = load_config(args.config, args.overrides)
    if cfg.task.kind != "tiny_world":
        print(f"raylign prepare: task.kind is {cfg.task.kind}; only the tiny world is built",
              file=sys.stderr)
        return 2
    if args.sft_dir:  # only the path of SFT model 0 (a policy for your own data)
        print(prepare(cfg.task).sft_dirs[0])
        return 0
    prepare(cfg.task, verbose=True)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    overrides = list(args.overrides)
    address = args.address or os.environ.get("RAY_ADDRESS")
    if address and address != "local":  # "local", as Ray reads it: a new embedded instance
        overrides.append(f"cluster.address={address}")
    cfg = load_config(args.config, overrides)  # fails here, before Ray starts
    if cfg.cluster.address:
        _reach_cluster(cfg.cluster.address)  # NoCluster now, not ray.init retrying for ever
    from services.bootstrap import train

    summary = train(cfg, resume=args.resume, allow_config_change=args.allow_config_change,
                    overwrite=args.overwrite)
    print(json.dumps(summary, indent=1))
    print(f"run dir: {cfg.path}  (plots: {cfg.path / 'rewards.png'}, report: "
          f"{cfg.path / 'report.md'})")
    return 130 if summary["interrupted"] else 0


def cmd_export(args: argparse.Namespace) -> int:
    from services.export import ExportError, export_run

    try:
        out = export_run(Path(args.run_dir), step=args.step, merge_lora=args.merge_lora,
                         recommended=args.recommended)
    except ExportError as e:
        print(f"raylign export: {e}", file=sys.stderr)
        return 2
    print(f"exported: {out}")
    return 0


def _experiments():
    """The research harness `experiments/` of the source checkout (not installed with raylign;
    `pip install -e .` does not put the checkout on sys.path for console scripts); None if
    this raylign is not run from a checkout."""
    # loaded by name at run time: a plug-in on top of the service, never a dependency of it
    try:
        return importlib.import_module("experiments")
    except ModuleNotFoundError as e:
        root = Path(__file__).resolve().parents[1]  # the checkout holding services/
        if e.name != "experiments":
            raise
        if not (root / "experiments" / "__init__.py").is_file():
            return None
        sys.path.insert(0, str(root))
        return importlib.import_module("experiments")


def cmd_experiment(args: argparse.Namespace) -> int:
    exp = _experiments()
    if exp is None:
        print("raylign experiment needs a source checkout: the experiments/ package is not "
              "installed with raylign; install raylign from a git clone (pip install -e .)",
              file=sys.stderr)
        return 2
    if args.name not in exp.NAMES:
        print(f"raylign: unknown experiment '{args.name}'; valid: {', '.join(exp.NAMES)}",
              file=sys.stderr)
        return 2
    try:
        result = exp.run_experiment(args.name, quick=args.quick, seeds=args.seeds, out=args.out,
                                    runs=args.runs, allow_dirty=args.allow_dirty,
                                    underpowered=args.underpowered)
    except (exp.DirtyTree, exp.Underpowered) as e:
        print(f"raylign: {e}", file=sys.stderr)
        return 2
    for claim in result["claims"]:
        print(f"{args.name}: {claim['verdict']}: {claim['measured']}")
    out = args.out or "docs/results"
    print(f"results: {out}/{args.name}.json, report: {exp.doc_path(out)}")
    return 0


def _reach_cluster(address: str) -> None:
    """Before a driver joins the cluster at `address` (host:port, ray://host:port, or 'auto':
    RAY_ADDRESS, else the last `ray start` here): keep a loopback cluster on loopback, then a
    TCP connect to the GCS address Ray will dial, within 5 s, or NoCluster (`ray.init` would
    retry an unreachable address for ever). Call it before `import ray`.

    Ray (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=1, its Linux default) rewrites a 127.0.0.1 or
    localhost GCS address to the host's external IP, where a head started with
    --node-ip-address=127.0.0.1 does not listen: a job's driver (RAY_ADDRESS=127.0.0.1:PORT)
    then retried that address for ever. So 0 for a loopback address; 1 for any other (a real
    cluster: the driver's node IP is its node's, not 127.0.0.1). Plain 'auto' keeps the
    environment's value (`services/__init__.py`: 0 without RAY_ADDRESS)."""
    import ipaddress

    target = os.environ.get("RAY_ADDRESS") if address == "auto" else address
    if target:
        host = target.removeprefix("ray://").rpartition(":")[0].strip("[]")
        try:
            loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
        except ValueError:  # a host name
            loopback = False
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0" if loopback else "1"
    gcs = target or address
    if not gcs.startswith("ray://"):
        from ray._private.services import canonicalize_bootstrap_address  # imports ray

        try:  # what ray.init dials: 'auto' resolved, localhost as the env var above says
            gcs = canonicalize_bootstrap_address(gcs) or gcs
        except (ConnectionError, ValueError) as e:
            raise NoCluster(f"no Ray cluster at {address}: {e}") from None
    host, _, port = gcs.removeprefix("ray://").rpartition(":")
    try:
        import socket

        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except (OSError, ValueError) as e:
        at = address if gcs == address else f"{address} ({gcs})"
        raise NoCluster(f"no Ray cluster at {at}: {e}") from None


def _connect(args: argparse.Namespace):
    """Join the cluster (a reachability check first, `_reach_cluster`) and find the run's
    controller actor."""
    address = args.address or os.environ.get("RAY_ADDRESS") or "auto"
    _reach_cluster(address)
    import ray

    from services.control import AmbiguousRun, find_controller

    try:
        ray.init(address=address, namespace=args.namespace, log_to_driver=False)
    except ConnectionError as e:
        raise NoCluster(f"no Ray cluster to join ({address}): {e}") from None
    try:
        run, controller = find_controller(args.namespace, args.run)
    except AmbiguousRun as e:
        raise ConfigError(str(e)) from None
    except RuntimeError as e:  # no controller actor: no such run in that namespace
        raise NoCluster(str(e)) from None
    print(f"run '{run}' (namespace '{args.namespace}', Ray at {address})", file=sys.stderr)
    return ray, controller


def cmd_scale(args: argparse.Namespace) -> int:
    ray, controller = _connect(args)
    if args.rollout is not None:
        ray.get(controller.set_replicas.remote("rollout", args.rollout))
    if args.reward_replicas is not None:
        ray.get(controller.set_replicas.remote("reward", args.reward_replicas))
    print(json.dumps(ray.get(controller.get_desired.remote())))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    ray, controller = _connect(args)
    print(json.dumps(ray.get(controller.status.remote()), indent=1))
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    ray, controller = _connect(args)
    ray.get(controller.request_stop.remote())
    print("stop requested: the run checkpoints and stops (resume with raylign train "
          "--resume)")
    return 0


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="raylign", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="build (or find cached) the tiny world")
    _add_config(p)
    p.add_argument("--sft-dir", action="store_true",
                   help="print only the dir of SFT model 0 (an HF causal LM to train further)")
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("train", help="run the RLHF pipeline (embedded Ray unless --address)")
    _add_config(p)
    p.add_argument("--address", default=None, help="Ray address ('auto' = running cluster)")
    p.add_argument("--resume", action="store_true", help="continue from RUN_DIR's checkpoint")
    p.add_argument("--allow-config-change", action="store_true",
                   help="with --resume: continue although the config differs from the run's")
    p.add_argument("--overwrite", action="store_true",
                   help="delete a run of the same name (RUN_DIR, its checkpoints) first")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("export", help="write a run's policy as an HF model dir (LoRA: a peft "
                       "adapter) under RUN_DIR/export/")
    p.add_argument("run_dir", help="the run's dir (<run_dir>/<name>: where raylign train "
                   "wrote config.json and checkpoints/)")
    p.add_argument("--step", type=int, default=None,
                   help="the checkpoint's step (default: the newest valid checkpoint)")
    p.add_argument("--merge-lora", action="store_true",
                   help="LoRA runs: also write merged/, the adapter merged into the base")
    p.add_argument("--recommended", action="store_true",
                   help="the checkpoint the over-optimisation alarm recommended, to "
                   "RUN_DIR/export/recommended/")
    p.set_defaults(func=cmd_export)

    # experiments/ is imported only when the command runs: it lives in the source checkout
    p = sub.add_parser("experiment", help="run one experiment (docs/results.md; source checkout)")
    p.add_argument("name", help="which claim to test (overopt, ensembles, ...; an unknown "
                   "name lists them)")
    p.add_argument("--quick", action="store_true",
                   help="micro world, a few steps: checks the command, not the claim")
    p.add_argument("--seeds", type=int, default=None,
                   help="seeds per arm (default: the experiment's SEEDS, else 3; quick 1)")
    p.add_argument("--out", default=None, help="JSON + PNG dir (default docs/results)")
    p.add_argument("--runs", default=None,
                   help="the runs' dir (default runs/experiments/NAME; cached runs are reused)")
    p.add_argument("--underpowered", action="store_true",
                   help="run even if the seeds give a claim less than 80%% power at its "
                   "smallest effect of interest (the result records the power)")
    p.add_argument("--allow-dirty", action="store_true",
                   help="run a full experiment from uncommitted changes in this checkout (the "
                   "diff is recorded); a clean one runs from a worktree of its commit")
    p.set_defaults(func=cmd_experiment)

    for name, func, text in (("scale", cmd_scale, "change replicas of a running job"),
                             ("status", cmd_status, "roles, versions, queues of a running job"),
                             ("stop", cmd_stop, "checkpoint and stop a running job")):
        p = sub.add_parser(name, help=text)
        p.add_argument("--address", default=None, help="Ray address (default: auto)")
        p.add_argument("--namespace", default="raylign", help="the run's cluster.namespace")
        p.add_argument("--run", default=None, help="the run's name (its config's `name`); "
                       "needed when several runs share the namespace")
        if name == "scale":
            p.add_argument("--rollout", type=_positive, default=None, help="rollout workers")
            p.add_argument("--reward-replicas", type=_positive, default=None,
                           help="actors per reward member")
        p.set_defaults(func=func)
    return parser


def main(argv: list[str] | None = None) -> int:
    set_process_env()  # before any command loads torch
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, DataError) as e:
        print(f"raylign: {e}", file=sys.stderr)
        return 2
    except NoCluster as e:
        print(f"raylign: {e}", file=sys.stderr)
        return 3
    except RunFailed as e:
        print(f"raylign: the run failed: {e}", file=sys.stderr)
        return 4


if __name__ == "__main__":
    sys.exit(main())
