"""Find (or, as root, install) Debian's prometheus/promtool for the tests that need them."""

from __future__ import annotations

import os
import shutil
import subprocess

from tests.conftest import tool_missing

_tried: dict[str, str] = {}


def _apt_install() -> str:
    """Install Debian's `prometheus` package (root only); return why it failed, or ''."""
    if "result" in _tried:
        return _tried["result"]
    why = ""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        why = "not root, so cannot apt-get install prometheus"
    elif shutil.which("apt-get") is None:
        why = "no apt-get on this machine"
    else:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        cmd = ["apt-get", "install", "-y", "--no-install-recommends", "prometheus"]
        try:
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
            if done.returncode != 0:  # stale package lists: update once, try again
                subprocess.run(["apt-get", "update"], env=env, capture_output=True, timeout=300)
                done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
            if done.returncode != 0:
                why = f"apt-get install prometheus failed: {done.stderr.strip()[-300:]}"
        except (OSError, subprocess.TimeoutExpired) as e:
            why = f"apt-get install prometheus failed: {e}"
    _tried["result"] = why
    return why


def binary(name: str) -> str:
    """Path of `prometheus` or `promtool`; installs the package if missing; else the test
    fails in CI (CI=true) and skips elsewhere."""
    path = shutil.which(name)
    if path is None:
        why = _apt_install()
        path = shutil.which(name)
        if path is None:
            tool_missing(f"{name} unavailable: {why or 'not on PATH after install'} "
                         "(.ci/run installs Debian's prometheus package)")
    return path
