"""Every repo path the docs and the code's docstrings and comments name exists.

Scanned: every Markdown file of the repo (hidden directories such as .venv, .cache and .git,
and runs/, left out), and the docstrings and comments of the Python files under the code and
test directories. A path is repo-relative when it starts with one of the repo's top-level
directories (`learner/`, `docs/`, ...) and ends in a file extension, or is a top-level
Markdown file named alone (`README.md`). Not paths: parts of URLs, globs (`*`), templates
(`<date>`, `{name}`, a capitalised metavariable such as `experiments/NAME.py`), and names
inside another path (`runs/x/docs/a.md`, `<out>/NOTES.md`).
Markdown links are also resolved relative to the file that holds them.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOP_DIRS = ("learner", "actors", "services", "experiments", "benchmarks", "examples", "tests",
            "deploy", "docker", "docs", "scripts")
CODE_DIRS = ("learner", "actors", "services", "experiments", "benchmarks", "examples", "tests")
SKIP_DIRS = {"runs", "__pycache__", "node_modules"}
EXTENSIONS = "py|md|yaml|yml|json|sh|txt|toml"

# A path starts at a word boundary that is not inside a longer path, and must not run on into
# a glob or a template (`docs/results/<name>.png` has no extension before the `<`).
_NOT_AFTER = r"(?<![\w./~$<>{}-])"
_NOT_BEFORE = r"(?![\w/*<{-])"
PATH = re.compile(_NOT_AFTER + rf"((?:{'|'.join(TOP_DIRS)})/[\w./-]*?\.(?:{EXTENSIONS}))"
                  + _NOT_BEFORE)
TOP_FILE = re.compile(_NOT_AFTER + r"([A-Z][A-Z0-9_]*\.md|pyproject\.toml)" + _NOT_BEFORE)
PLACEHOLDERS = {"NAME", "N", "STEP", "DATE"}  # metavariables, as in `raylign experiment NAME`
URL = re.compile(r"\b[a-z][a-z0-9+.-]*://\S+")
MD_LINK = re.compile(r"\]\(([^()\s]+)\)")


def _walk(suffix: str, under: Path):
    for path in sorted(under.rglob(f"*{suffix}")):
        rel = path.relative_to(ROOT).parts
        if any(p.startswith(".") or p in SKIP_DIRS or p.endswith(".egg-info") for p in rel[:-1]):
            continue
        yield path


def markdown_files() -> list[Path]:
    return list(_walk(".md", ROOT))


def python_files() -> list[Path]:
    return [p for d in CODE_DIRS if (ROOT / d).is_dir() for p in _walk(".py", ROOT / d)]


def prose_of_python(path: Path) -> list[tuple[int, str]]:
    """(line number, line) of every docstring (module, class, function) and comment line."""
    source = path.read_text()
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if (body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                    and isinstance(body[0].value.value, str)):
                first = body[0].lineno
                out += [(first + i, line)
                        for i, line in enumerate(body[0].value.value.splitlines())]
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            out.append((tok.start[0], tok.string))
    return out


def prose_of_markdown(path: Path) -> list[tuple[int, str]]:
    return list(enumerate(path.read_text().splitlines(), start=1))


def named_paths(text: str) -> list[str]:
    """The repo-relative paths named in `text`, URLs left out."""
    urls = [m.span() for m in URL.finditer(text)]
    found = []
    for pattern in (PATH, TOP_FILE):
        for m in pattern.finditer(text):
            path = m.group(1).rstrip(".")
            stems = {Path(part).stem for part in Path(path).parts}
            if not any(a <= m.start() < b for a, b in urls) and not stems & PLACEHOLDERS:
                found.append(path)
    return found


def _exists(rel: str) -> bool:
    return (ROOT / rel).exists()


def test_named_paths_exist():
    """Each missing path is reported with the file and line that name it."""
    texts = [(md, prose_of_markdown(md)) for md in markdown_files()]
    texts += [(py, prose_of_python(py)) for py in python_files()]
    assert len(texts) > 100  # the scan found the repo's files
    missing = [f"{path.relative_to(ROOT)}:{n}: {p}" for path, lines in texts
               for n, line in lines for p in named_paths(line) if not _exists(p)]
    assert not missing, "paths that do not exist:\n" + "\n".join(missing)


def test_markdown_links_resolve():
    missing = []
    for md in markdown_files():
        for n, line in prose_of_markdown(md):
            for target in MD_LINK.findall(line):
                if URL.match(target) or target.startswith(("#", "mailto:")):
                    continue
                target = target.split("#")[0]
                if target and not (md.parent / target).exists():
                    missing.append(f"{md.relative_to(ROOT)}:{n}: {target}")
    assert not missing, "links that do not resolve:\n" + "\n".join(missing)


def test_the_scanner_finds_paths_and_skips_urls_globs_and_templates():
    text = ("see docs/design.md and `services/pipeline.py`, README.md; not "
            "https://github.com/o/r/blob/main/docs/x.md, deploy/configs/*.yaml, "
            "benchmarks/results/<date>.json, experiments/NAME.py, <out>/NOTES.md or "
            "runs/a/docs/b.md.")
    assert named_paths(text) == ["docs/design.md", "services/pipeline.py", "README.md"]
