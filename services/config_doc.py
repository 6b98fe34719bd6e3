"""docs/config.md, the reference of every run-config field, generated from the pydantic models.

`python -m services.config_doc` rewrites docs/config.md; tests/services/test_config_doc.py
checks that the committed file equals `render()`.
"""

from __future__ import annotations

import types
import typing
from pathlib import Path
from typing import Any, Literal

import annotated_types as at
import yaml
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from services.config import RESUMABLE, TASK_KINDS, RunConfig, fields_of

DOC = Path(__file__).resolve().parents[1] / "docs" / "config.md"

INTRO = """\
# Run configuration reference

Every field of a run config (`RunConfig` in `services/config.py`, which embeds the learner's
settings from `learner/settings.py` as they are): its type, default and meaning. A run config is
one YAML file of these sections (`deploy/configs/*.yaml`); a field left out takes its default,
an unknown key is an error.

Generated from the pydantic models by `python -m services.config_doc`: do not edit it by hand
(`tests/services/test_config_doc.py` checks that it is in step with the code).

Any field can be overridden after the file by its dotted name, the value read as YAML
(`None` is written `null`): `raylign train --config F learner.lr=1e-5 reward.members=null`.
A default of (section) means the defaults of the section's fields.
"""

_BOUNDS = ((at.Gt, "gt", ">"), (at.Ge, "ge", ">="), (at.Lt, "lt", "<"), (at.Le, "le", "<="))


def _section(annotation: Any) -> type | None:
    """The section class of an annotation (`X`, `X | None` or `list[X]`), else None."""
    union = typing.get_origin(annotation) in (typing.Union, types.UnionType, list)
    for t in (annotation, *(typing.get_args(annotation) if union else ())):
        if fields_of(t) is not None:
            return t
    return None


def _type(t: Any) -> str:
    if t is type(None):
        return "None"
    if fields_of(t) is not None:
        return "section"
    origin, args = typing.get_origin(t), typing.get_args(t)
    if origin is typing.Annotated:  # e.g. StrictInt: the type it constrains
        return _type(args[0])
    if origin is Literal:
        return " | ".join(f'"{a}"' if isinstance(a, str) else repr(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type(a) for a in args)
    if origin is not None:
        return f"{getattr(origin, '__name__', origin)}[{', '.join(_type(a) for a in args)}]"
    return getattr(t, "__name__", str(t))


def _bounds(field: FieldInfo) -> str:
    return ", ".join(f"{op} {getattr(m, attr)}" for m in field.metadata
                     for kind, attr, op in _BOUNDS if isinstance(m, kind))


def _default(field: FieldInfo) -> str:
    if field.default is not PydanticUndefined:
        value = field.default
    elif field.default_factory is not None:
        if fields_of(field.default_factory) is not None:
            return "(section)"
        value = field.default_factory()
    else:
        return "(required)"
    if fields_of(type(value)) is not None:
        return "(section)"
    text = yaml.safe_dump(value, default_flow_style=True, width=1 << 30).strip()
    return f"`{text.removesuffix('...').strip()}`"


def _rows(prefix: str, fields: dict[str, FieldInfo]) -> list[str]:
    rows = []
    for name, field in fields.items():
        path = f"{prefix}{name}"
        kind = f"`{_type(field.annotation)}`"
        if bounds := _bounds(field):
            kind += f" {bounds}"
        about = field.description or ""
        if field.json_schema_extra == RESUMABLE:
            about += " (may change on --resume)"
        cells = (f"`{path}`", kind, _default(field), about)
        rows.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
        section = _section(field.annotation)
        if section is not None:
            many = typing.get_origin(field.annotation) is list
            rows += _rows(f"{path}[]." if many else f"{path}.", fields_of(section))
    return rows


def _table(title: str, about: str, rows: list[str]) -> str:
    head = ["| field | type | default | description |", "|---|---|---|---|"]
    return "\n".join([f"## {title}", "", *([about, ""] if about else []), *head, *rows]) + "\n"


def render() -> str:
    """The markdown of docs/config.md."""
    top = fields_of(RunConfig)
    scalars = {k: f for k, f in top.items() if _section(f.annotation) is None and k != "task"}
    parts = [INTRO, _table("top level", "", _rows("", scalars))]
    for name, field in top.items():
        about = (field.description or "").rstrip(".")
        about = about[:1].upper() + about[1:] + "."
        if field.json_schema_extra == RESUMABLE:
            about += " Every field of it may change on `--resume`."
        if name == "task":  # one kind of task or another, chosen by task.kind
            for kind, section in TASK_KINDS.items():
                parts.append(_table(f"task (kind: {kind})", about,
                                    _rows("task.", fields_of(section))))
        elif (section := _section(field.annotation)) is not None:
            parts.append(_table(name, about, _rows(f"{name}.", fields_of(section))))
    return "\n".join(parts)


if __name__ == "__main__":
    text = render()
    if not DOC.is_file() or DOC.read_text() != text:  # unchanged: not rewritten (readers race)
        DOC.parent.mkdir(parents=True, exist_ok=True)
        DOC.write_text(text)
    print(DOC)
