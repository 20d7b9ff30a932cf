"""Text the user writes (configs, sweep files, list files, `--set` values) read one way: UTF-8 with an
optional byte-order mark, YAML with duplicate keys refused, and every failure a one-line ValueError
that names the file (and line) at fault. A bottom helper: data/ and models/ may import it."""
from __future__ import annotations

from pathlib import Path

import yaml

ENCODING = "utf-8"


class TextInputError(ValueError):
    """A file or value that cannot be read as the text it should be; the message is one line."""


def read_text(path, what: str = "file") -> str:
    """The file as text: UTF-8, a leading BOM (Windows editors write one) dropped."""
    path = Path(path)
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise TextInputError(f"{what} {path}: not {ENCODING} text (byte 0x{data[error.start]:02x} at offset "
                             f"{error.start}); save it as {ENCODING}") from None


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key given twice in one mapping: PyYAML keeps the last silently,
    so `epochs: 100` below `epochs: 2` would quietly train for 100 epochs."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            self.flatten_mapping(node)  # merge keys (<<) are a deliberate override, not a duplicate
            seen = {}
            for key_node, _ in node.value:
                try:
                    key = self.construct_object(key_node, deep=True)
                    hash(key)
                except (TypeError, yaml.YAMLError):
                    continue  # unhashable keys: the base class reports them
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r} (lines {seen[key] + 1} and {key_node.start_mark.line + 1})",
                        key_node.start_mark)
                seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep)


def parse_yaml(text: str, where: str, show_line: bool = True):
    """`text` as YAML data (safe: tags that would build objects are refused), or one-line TextInputError
    starting with `where`."""
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None and show_line else ""
        problem = getattr(error, "problem", None) or str(error).strip().splitlines()[0]
        if "could not determine a constructor" in problem:
            problem = problem.replace("could not determine a constructor for the tag",
                                      "YAML tags are not accepted:")
        if problem.startswith("duplicate key"):
            raise TextInputError(f"{where}: {problem}; keep one") from None
        raise TextInputError(f"{where}{line}: not valid YAML ({problem})") from None


def read_yaml(path, what: str = "config") -> object:
    path = Path(path)
    return parse_yaml(read_text(path, what), str(path))
