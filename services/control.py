"""The named controller actor: desired replicas per role, a stop request, and the driver's
last status. It survives its own restart: Ray restarts it, calls are retried, and the
driver, seeing a new pid in `poll`, hands it back the desired counts it knew.

Each run's controller is named after the run (`<name>:controller`). `raylign scale --rollout
N`, `raylign status` and `raylign stop` find it in the run's namespace (`--run NAME`, or the
only run there is; with several and no name they list them and act on none) and talk to it.
The driver polls it about once a second, reconciles the fleet against the desired counts and,
once a stop is requested, checkpoints and stops as on SIGTERM.
"""

from __future__ import annotations

import os

import ray

SUFFIX = ":controller"


def controller_name(run: str) -> str:
    """The named actor of run `run` (the config's `name`)."""
    return f"{run}{SUFFIX}"


class AmbiguousRun(RuntimeError):
    """Several runs in the namespace and no --run: nothing is acted on."""


class Controller:
    def __init__(self, desired: dict[str, int]) -> None:
        self.desired = dict(desired)
        self.stop = False
        self.last_status: dict = {}

    def set_replicas(self, role: str, n: int) -> dict[str, int]:
        if role not in self.desired:
            raise ValueError(f"unknown role '{role}' (valid: {', '.join(self.desired)})")
        if n < 1:
            raise ValueError(f"{role} replicas must be >= 1, got {n}")
        self.desired[role] = n
        return dict(self.desired)

    def get_desired(self) -> dict[str, int]:
        return dict(self.desired)

    def request_stop(self) -> None:
        """Ask the driver to checkpoint and stop (resumable with `raylign train --resume`)."""
        self.stop = True

    def poll(self) -> tuple[dict[str, int], bool, int]:
        """What the driver reads each turn: the desired counts, whether to stop, and this
        process's pid (a new one = restarted, its state lost)."""
        return dict(self.desired), self.stop, os.getpid()

    def restore(self, desired: dict[str, int], stop: bool) -> None:
        """After a restart: the state the driver last read."""
        self.desired, self.stop = dict(desired), self.stop or stop

    def report(self, status: dict) -> None:
        self.last_status = status

    def status(self) -> dict:
        return {"desired": dict(self.desired), "stop_requested": self.stop, **self.last_status}


def start_controller(desired: dict[str, int], namespace: str, run: str):
    """Create run `run`'s controller (named, in the run's namespace); fail if one already
    runs."""
    actor = ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)(Controller)
    return actor.options(name=controller_name(run), namespace=namespace).remote(desired)


def running(namespace: str) -> list[str]:
    """The names of the runs with a controller in `namespace`."""
    return sorted(a["name"].removesuffix(SUFFIX)
                  for a in ray.util.list_named_actors(all_namespaces=True)
                  if a["namespace"] == namespace and a["name"].endswith(SUFFIX))


def find_controller(namespace: str, run: str | None = None) -> tuple[str, object]:
    """(run name, its controller): `run`'s, or the only run's in `namespace`. RuntimeError if
    there is none; AmbiguousRun if there are several and no `run`."""
    runs = running(namespace)
    if run is None and len(runs) > 1:
        raise AmbiguousRun(f"{len(runs)} runs in namespace '{namespace}': {', '.join(runs)}; "
                           "name one with --run NAME (nothing was done)")
    run = run if run is not None else (runs[0] if runs else None)
    if run is None or run not in runs:
        which = f"run '{run}'" if run else "raylign job"
        raise RuntimeError(f"no running {which} in namespace '{namespace}'"
                           + (f" (running: {', '.join(runs)})" if runs else ""))
    return run, ray.get_actor(controller_name(run), namespace=namespace)
