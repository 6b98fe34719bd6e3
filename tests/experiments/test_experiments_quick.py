"""`raylign experiment NAME --quick`: the command end to end on the micro world (real local Ray).

Quick runs (1 seed, a few steps) check that the command trains through the pipeline and writes
finite, well-formed JSON, PNGs and results.md; they assert nothing about the claims.
`overopt` runs in the default suite; the others (more arms) are marked slow.
"""

from __future__ import annotations

import json
import math

import pytest

from services.cli import main
from tests.conftest import numbers

KEYS = {"experiment", "title", "claims", "section", "plots", "sizes", "data", "seeds",
        "quick", "seconds"}
VERDICTS = {"held", "refuted", "inconclusive"}  # experiments.common.VERDICT_RULE


def run_quick(name, tmp_path, monkeypatch) -> dict:
    monkeypatch.chdir(tmp_path)  # run dirs go under tmp_path/runs
    out = tmp_path / "out"
    assert main(["experiment", name, "--quick", "--seeds", "1", "--out", str(out)]) == 0
    result = json.loads((out / f"{name}.json").read_text())
    assert set(result) >= KEYS and result["experiment"] == name and result["quick"]
    assert result["claims"] and all(c["verdict"] in VERDICTS for c in result["claims"])
    assert result["method"] == "preregistered" and result["rows"]  # per-step per-seed rows
    for c in result["claims"]:
        assert {"claim", "setting", "paper", "measured"} <= set(c)
    for p in result["plots"]:
        assert (out / p).stat().st_size > 1000, p
    vals = list(numbers(result["data"]))
    assert vals and all(math.isfinite(v) for v in vals)  # NaN/inf would be null in the JSON
    doc = (out / "results.md").read_text()
    assert f"## {name}" in doc and "quick run" in doc.lower()
    assert "| no results | — | not run |" in doc  # the other experiments are listed, not invented
    return result


def test_overopt_quick(ray_session, micro_world, tmp_path, monkeypatch):
    result = run_quick("overopt", tmp_path, monkeypatch)
    data, z = result["data"], result["sizes"]
    evals = z["steps"] // z["eval_every"]  # held-out gold and KL of one policy each
    assert len(data["ppo"]) == 1 and len(data["ppo"][0]["d"]) == evals
    assert data["ppo"][0]["step"] == [z["eval_every"] * (i + 1) for i in range(evals)]
    assert data["bon"]["n"][0] == 1 and data["bon"]["gold"][0] == 0.0  # re-centred
    assert data["rl_fit"]["form"].startswith("d*") and data["bon_fit"]["points"] >= 3
    assert result["method"] == "preregistered" and len(result["claims"]) == 3
    assert {r["step"] for r in result["rows"]} == set(range(1, z["steps"] + 1))
    assert result["claims"][0]["verdict"] == "inconclusive"  # one seed decides nothing


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ensembles", "elastic", "soup", "together", "offpolicy"])
def test_experiment_quick(ray_session, micro_world, tmp_path, monkeypatch, name):
    run_quick(name, tmp_path, monkeypatch)


def test_unknown_experiment_is_refused(capsys):
    assert main(["experiment", "nope"]) == 2
    err = capsys.readouterr().err
    assert "unknown experiment 'nope'" in err and "overopt" in err and "together" in err


def test_parser_does_not_import_experiments():
    """The CLI imports the research harness only when `raylign experiment` runs."""
    import subprocess
    import sys

    code = ("import sys; from services.cli import build_parser; "
            "build_parser().parse_args(['experiment', 'overopt']); "
            "sys.exit('experiments' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
