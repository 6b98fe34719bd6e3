"""The named controller actor: desired replicas per role, a stop request, and the driver's
last status. It survives its own restart: Ray restarts it, calls are retried, and the
driver, seeing a new pid in `poll`, hands it back the desired counts it knew.

`raylign scale --rollout N`, `raylign status` and `raylign stop` find it by name in the run's
namespace and talk to it; the driver polls it about once a second, reconciles the fleet against
the desired counts and, once a stop is requested, checkpoints and stops as on SIGTERM.
"""

from __future__ import annotations

import os

import ray

CONTROLLER_NAME = "raylign-controller"


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


def start_controller(desired: dict[str, int], namespace: str):
    """Create the controller (named, in the run's namespace); fail if one already runs."""
    actor = ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)(Controller)
    return actor.options(name=CONTROLLER_NAME, namespace=namespace).remote(desired)


def find_controller(namespace: str):
    try:
        return ray.get_actor(CONTROLLER_NAME, namespace=namespace)
    except ValueError:
        raise RuntimeError(
            f"no running raylign job in namespace '{namespace}' (controller "
            f"'{CONTROLLER_NAME}' not found)"
        ) from None
