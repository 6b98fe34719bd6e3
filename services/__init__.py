"""The service around the actors: config, driver loop, control, metrics, CLI, tasks."""

import os

# Ray 2.60 ignores ray.init(_node_ip_address="127.0.0.1") and advertises the machine's external
# interface unless this is off (ray._private.services.get_node_ip_address). An embedded run
# keeps every Ray address on 127.0.0.1; joining a cluster (RAY_ADDRESS / --address) does not.
if os.environ.get("RAY_ADDRESS", "local") in ("", "local"):
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
