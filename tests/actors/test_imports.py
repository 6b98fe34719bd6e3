"""actors/ imports learner/ and itself, never services/ (docs/design.md section 2:
services -> actors -> learner, one way)."""

import subprocess
import sys

CODE = """
import actors.engines, actors.fleet, actors.learner, actors.records, actors.reward
import actors.rollout, actors.scoring
import sys
print(','.join(sorted(m for m in sys.modules if m.split('.')[0] in ('services', 'benchmarks',
                                                                   'experiments'))))
"""


def test_actors_import_no_services():
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True,
                         check=True, cwd=__file__.rsplit("/tests/", 1)[0])
    assert out.stdout.strip() == "", out.stdout
