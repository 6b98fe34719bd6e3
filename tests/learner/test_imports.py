"""learner/ is pure PyTorch: importing it must not import Ray, vLLM or services."""

import subprocess
import sys

CODE = """
import learner.ppo, learner.kl, learner.ensemble, learner.elastic_reset, learner.soup
import learner.weights, learner.trainer, learner.settings
import sys
bad = sorted(m for m in sys.modules
             if m.split('.')[0] in ('ray', 'vllm', 'services') or m.startswith('ray_'))
print(','.join(bad))
"""


def test_learner_imports_no_ray_vllm_services():
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True,
                         check=True, cwd=__file__.rsplit("/tests/", 1)[0])
    assert out.stdout.strip() == "", out.stdout
