"""docs/config.md, the run-config reference, is in step with the pydantic models."""

from __future__ import annotations

import subprocess
import sys
import types
import typing
from pathlib import Path

from services.config import TASK_KINDS, RunConfig, fields_of
from services.config_doc import DOC, render

REPO = Path(__file__).resolve().parents[2]


def dotted_paths(model: type, prefix: str = "") -> list[str]:
    """Every field of the config tree by dotted name, sections (also `X | None`, `list[X]`
    as `name[].`, and each kind of task) included."""
    paths = []
    for name, field in fields_of(model).items():
        paths.append(prefix + name)
        t = field.annotation
        if model is RunConfig and name == "task":
            for kind in TASK_KINDS.values():
                paths += dotted_paths(kind, "task.")
            continue
        many = typing.get_origin(t) in (typing.Union, types.UnionType, list)
        for candidate in (t, *(typing.get_args(t) if many else ())):
            if fields_of(candidate) is not None:
                sub = "[]." if typing.get_origin(t) is list else "."
                paths += dotted_paths(candidate, f"{prefix}{name}{sub}")
    return paths


def test_committed_doc_is_the_rendered_one():
    assert DOC == REPO / "docs" / "config.md"
    assert DOC.read_text() == render(), (
        "docs/config.md is out of date: run `python -m services.config_doc`")


def table_rows() -> dict[str, str]:
    """The doc's table rows by their first cell (the dotted field)."""
    return {line.split(" | ")[0].strip("|` "): line for line in render().splitlines()
            if line.startswith("| `")}


def test_doc_names_every_field():
    text = render()
    paths = dotted_paths(RunConfig)
    assert {"learner.kl.coef", "policy.lora.rank", "rollout.sampling.n", "task.train",
            "task.size", "reward.functions[].path"} <= set(paths)
    top = {name for name, f in fields_of(RunConfig).items() if fields_of(f.annotation)}
    top.add("task")  # one table per kind: "## task (kind: ...)"
    headings = {line.removeprefix("## ").split(" (kind")[0] for line in text.splitlines()
                if line.startswith("## ")}
    assert top and top <= headings
    documented = table_rows()
    missing = [p for p in paths if p not in top and p not in documented]
    assert not missing, f"fields missing from docs/config.md: {missing}"
    for leak in ("PydanticUndefined", "typing.", "<class", "NoneType"):
        assert leak not in text


def test_rows_are_readable():
    rows = table_rows()
    assert rows["policy.lora"].split(" | ")[1:3] == ["`section \\| None`", "`null`"]
    assert rows["learner.kl"].split(" | ")[2] == "(section)"
    assert rows["reward.ddof"].split(" | ")[1] == "`0 \\| 1`"
    assert "`float` >= 0, < 0.5" in rows["task.label_noise"]


def test_the_documented_command_works_and_changes_nothing():
    before = DOC.read_bytes()
    done = subprocess.run([sys.executable, "-m", "services.config_doc"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(DOC)
    assert DOC.read_bytes() == before, "`python -m services.config_doc` changed docs/config.md"
