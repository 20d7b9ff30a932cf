"""Write docs/config.md, the reference of every config key, from the pydantic schema itself.

    python tools/config_reference.py            # rewrite docs/config.md
    python tools/config_reference.py --check    # exit 1 when docs/config.md is out of date (tests/test_docs.py)

Types, defaults and bounds come from the schema's fields; the meaning of a key is the comment that
the schema's source puts on the field's line or on the lines right above it (the schema keeps its
explanations as comments, not as `Field(description=...)`, so they are read from the source with
`ast`/`tokenize` rather than duplicated here by hand, where they would drift).
"""
from __future__ import annotations

import argparse
import ast
import inspect
import io
import sys
import textwrap
import tokenize
import typing
from pathlib import Path

REPOSITORY_ROOT = Path(__file__).resolve().parents[1]
if str(REPOSITORY_ROOT) not in sys.path:
    sys.path.insert(0, str(REPOSITORY_ROOT))

from pydantic import BaseModel  # noqa: E402
from pydantic_core import PydanticUndefined  # noqa: E402

DOCUMENT = REPOSITORY_ROOT / "docs" / "config.md"
COMMAND = "python tools/config_reference.py"


def schema_module():
    """The config schema module."""
    import harness.config as module
    return module


def _source_comments(cls) -> dict[str, str]:
    """Field name -> the comment on its line, else the block of comment lines right above it."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    comments = {}  # line number -> comment text
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            comments[token.start[0]] = token.string.lstrip("#").strip()
    lines = source.splitlines()
    found = {}
    for node in ast.parse(source).body[0].body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        text = comments.get(node.lineno) if node.lineno in comments and \
            lines[node.lineno - 1].lstrip()[:1] != "#" else None
        if text is None:
            above, line = [], node.lineno - 1
            while line in comments and lines[line - 1].lstrip().startswith("#"):
                above.insert(0, comments[line])
                line -= 1
            text = " ".join(above) or None
        if text:
            found[node.target.id] = text
    return found


def field_comments(model: type[BaseModel]) -> dict[str, str]:
    """Comments of every field of `model`, the most derived class's comment winning."""
    merged = {}
    for klass in reversed(model.__mro__):
        if isinstance(klass, type) and issubclass(klass, BaseModel) and klass is not BaseModel:
            merged.update(_source_comments(klass))
    return merged


def type_text(annotation) -> str:
    if annotation is type(None):
        return "null"
    origin, arguments = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Union or (origin is not None and getattr(origin, "__name__", "") == "UnionType"):
        return " \\| ".join(type_text(a) for a in arguments)
    if origin is typing.Literal:
        return " \\| ".join(f"`{a}`" for a in arguments)
    if origin in (list, tuple, dict):
        inner = ", ".join("..." if a is Ellipsis else type_text(a) for a in arguments)
        return f"{origin.__name__}[{inner}]"
    if annotation is typing.Any:
        return "any"
    return getattr(annotation, "__name__", str(annotation).replace("typing.", ""))


def bounds_text(field) -> str:
    symbols = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}
    parts = []
    for constraint in field.metadata:
        for attribute, symbol in symbols.items():
            value = getattr(constraint, attribute, None)
            if value is not None:
                parts.append(f"{symbol} {value}")
    return ", ".join(parts)


def default_value(field):
    if field.default_factory is not None:
        return field.default_factory()
    return None if field.default is PydanticUndefined else field.default


def default_text(value) -> str:
    if value is None:
        return "`null`"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, BaseModel):
        return "(section)"
    if isinstance(value, (list, tuple, dict)) and not value:
        return "`[]`" if not isinstance(value, dict) else "`{}`"
    return f"`{value}`".replace("|", "\\|")


def own_doc(model) -> str:
    """The first paragraph of the class's own docstring (not one inherited from pydantic's BaseModel)."""
    doc = model.__dict__.get("__doc__") or ""
    return inspect.cleandoc(doc).split("\n\n")[0].replace("\n", " ") if doc else ""


def section_model(field):
    """The pydantic model a field holds, when the field is a section (possibly optional)."""
    candidates = [field.annotation, *typing.get_args(field.annotation)]
    for candidate in candidates:
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def sections(model: type[BaseModel], prefix: str = ""):
    """(dotted section name, model, rows) for `model` and every section below it, depth first."""
    comments = field_comments(model)
    rows, below = [], []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        nested = section_model(field)
        if nested is not None and nested is not model:
            optional = type(None) in typing.get_args(field.annotation)
            meaning = comments.get(name, "") or own_doc(nested)
            note = f"section, see [`{key}`](#{anchor(key)})" + ("; `null` switches it off" if optional else "")
            rows.append((key, "section", note, bounds_text(field), meaning))
            below.append((key, nested))
            continue
        rows.append((key, type_text(field.annotation), default_text(default_value(field)), bounds_text(field),
                     comments.get(name, "")))
    yield prefix.rstrip(".") or "top level", model, rows
    for key, nested in below:
        yield from sections(nested, f"{key}.")


def anchor(key: str) -> str:
    """GitHub's heading anchor for a heading that is exactly `key` in backticks."""
    return "".join(c for c in key.lower() if c.isalnum() or c in "-_ ").replace(" ", "-")


def render() -> str:
    module = schema_module()
    relative = Path(module.__file__).resolve().relative_to(REPOSITORY_ROOT).as_posix()
    out = [
        "# Which config keys are there, what are their defaults, and what do they mean?",
        "",
        f"<!-- Generated by `{COMMAND}` from the pydantic schema in {relative}; do not edit by hand.",
        "     tests/test_docs.py fails when this file is out of date. -->",
        "",
        f"One YAML file drives a run; `{relative}` is its schema (pydantic). Every key below is checked",
        "when the file loads: an unknown key, a wrong type or a value out of bounds stops the run before",
        "any work with one line naming the key and the nearest valid one, e.g.",
        "`unknown config key 'schedule.epoch'; did you mean 'schedule.epochs'?`.",
        "",
        "- `config_file_path` names base files (one or a list) that this file overrides, key by key.",
        "- `--set key=value` (train.py, test.py, sweep.py and the tools) overrides last; dotted keys reach",
        "  into sections: `--set data.root=/data/SID --set schedule.epochs=10`.",
        "- `--config` takes a path or a bare name found in `configfile/` (`--config seed_aba`).",
        "- `debug: true` shrinks every stage (2 epochs of 2 steps, 4 training pairs, 64x64 crops) to a",
        "  smoke test of the same code path.",
        "- The resolved config is printed and saved as `results/<experiment>/config.yaml`.",
        "",
        "Defaults reproduce the DBF/DBLE authors' recipe (Adam lr 1e-5 constant, batch 24, 512x512 crops,",
        "L1 mono + L1 RGB); the `configfile/` files shorten it for the embedded data. Special layers",
        "(`extra_quantizer_dict.special_layer`) are explained in [quantization.md](quantization.md#special-layers).",
        "",
        "Sections:",
    ]
    tables = list(sections(module.Config))
    out += [f"[`{name}`](#{anchor(name)})" + ("" if i == len(tables) - 1 else " ·")
            for i, (name, _, _) in enumerate(tables)]
    for name, model, rows in tables:
        out += ["", f"## `{name}`", ""]
        doc = own_doc(model) if model is not module.Config else ""
        if doc:
            out += [doc, ""]
        out += ["| key | type | default | bounds | meaning |", "|---|---|---|---|---|"]
        for key, kind, default, bounds, meaning in rows:
            out.append(f"| `{key}` | {kind} | {default} | {bounds} | {meaning.replace('|', chr(92) + '|')} |")
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="exit 1 if docs/config.md differs from the schema")
    parser.add_argument("--out", type=Path, default=DOCUMENT, help="where to write (default docs/config.md)")
    arguments = parser.parse_args(argv)
    text = render()
    if arguments.check:
        current = arguments.out.read_text() if arguments.out.exists() else ""
        if current != text:
            print(f"{arguments.out} is out of date with the config schema; run: {COMMAND}", file=sys.stderr)
            return 1
        print(f"{arguments.out} is up to date")
        return 0
    arguments.out.parent.mkdir(parents=True, exist_ok=True)
    arguments.out.write_text(text)
    print(f"wrote {arguments.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
