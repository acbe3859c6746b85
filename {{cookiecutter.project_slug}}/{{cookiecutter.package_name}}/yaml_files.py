"""Reading YAML for the settings: files with the position of every key, and single values.

OmegaConf builds the values (its YAML rules: `1e-3` is a number, `${...}` an interpolation),
but its errors lose the line and column, and a key given twice is not named. Here a file is
first composed with PyYAML to find both, so every problem is one `YamlError` that starts
with `FILE:LINE:COLUMN:`. Nothing here knows the schema (config_checks.py checks the keys).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

MERGE_KEY_TAG = "tag:yaml.org,2002:merge"
NAME_KEY_TAGS = ("tag:yaml.org,2002:str", "tag:yaml.org,2002:int", MERGE_KEY_TAG)
# What to do about PyYAML's most common complaints: (words in its problem, the fix).
HINTS = (
    ("'\\t'", "indent with spaces; YAML does not allow tabs there"),
    ("mapping values are not allowed", "check the indentation, and quote a value holding ': '"),
    ("expected <block end>", "check the indentation"),
    ("expected ',' or ']'", "close the list with ']'"),
    ("expected ',' or '}'", "close the mapping with '}'"),
    ("another document", "keep one document: remove the '---' line"),
    ("undefined alias", "define the anchor (&name) before its alias (*name)"),
    ("constructor for the tag", "remove the tag: settings are plain values"),
    ("characters are not allowed", "remove that character"),
    ("nested too deeply", "flatten it"),
)

# Settings files are kilobytes; a file far larger is not one (and is not read whole).
MAX_FILE_BYTES = 16 * 2**20


class YamlError(ValueError):
    """YAML that cannot be read; the message says where and how to fix it."""


def read_mapping(path: Path) -> tuple[dict[Any, Any], dict[str, str]]:
    """The file's settings as plain dicts, lists and scalars, and `FILE:LINE:COLUMN` of each
    dotted key written in it (a key seen only through an alias has none)."""
    text = _read_text(path)
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except (yaml.YAMLError, RecursionError) as error:
        raise YamlError(_describe(error, str(path), text)) from None
    if node is None:
        return {}, {}
    if not isinstance(node, yaml.MappingNode):
        kind = "list" if isinstance(node, yaml.SequenceNode) else "single value"
        raise YamlError(
            f"{_where(path, node.start_mark)}: the file holds a {kind}, not settings; "
            "write one 'key: value' per line, e.g. 'optim: {lr: 0.01}'"
        )
    positions: dict[str, str] = {}
    _check_keys(node, str(path), "", positions, visited=set())
    try:
        loaded = OmegaConf.to_container(OmegaConf.load(io.StringIO(text)), resolve=False)
    except Exception as error:  # PyYAML's constructors raise several types (KeyError, ...)
        raise YamlError(_describe(error, str(path), text)) from None
    return loaded, positions


def parse_value(text: str) -> Any:
    """The value of a `key=value` override, read as OmegaConf reads it."""
    try:
        parsed = OmegaConf.from_dotlist([f"value={text}"])
        return OmegaConf.to_container(parsed, resolve=False)["value"]
    except Exception as error:  # as in read_mapping
        _, problem = _locate(error, text)
        raise YamlError(f"not a YAML value: {_with_hint(problem)}") from None


def spelling(value: Any, limit: int = 60) -> str:
    """`value` written as YAML on one line (strings quoted), shortened past `limit`."""
    written = _spell(value)
    return written if len(written) <= limit else written[: limit - 3] + "..."


def _spell(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_spell(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_spell(k)}: {_spell(v)}" for k, v in value.items()) + "}"
    return repr(value)  # quotes strings; escapes line breaks and unprintable characters


def _read_text(path: Path) -> str:
    try:
        if not path.is_file():
            problem = "is not a file" if path.exists() else "does not exist"
            raise YamlError(f"config file {path} {problem}; give the path of a YAML file")
        with path.open("rb") as file:  # never all of a huge file: settings are kilobytes
            data = file.read(MAX_FILE_BYTES + 1)
    except OSError as error:  # no permission, a name too long, ...
        raise YamlError(
            f"config file {path} cannot be read ({error.strerror}); check the path"
        ) from None
    if len(data) > MAX_FILE_BYTES:
        raise YamlError(
            f"config file {path} is larger than {MAX_FILE_BYTES // 2**20} MiB, far too large "
            "for settings; give the path of a YAML file of settings"
        )
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        before = data[: error.start].decode("utf-8", "replace")
        where = _position(before, len(before))
        raise YamlError(
            f"{path}:{where}: byte {data[error.start]:#04x} is not UTF-8 text; "
            "save the file as UTF-8"
        ) from None


def _check_keys(
    node: yaml.MappingNode, path: str, prefix: str, positions: dict, visited: set
) -> None:
    """Refuse keys that are not names and keys given twice; note where each key is."""
    if id(node) in visited:  # an alias of a mapping already walked (or of itself)
        return
    visited.add(id(node))
    first_seen: dict[str, yaml.Node] = {}
    for key_node, value_node in node.value:
        if not isinstance(key_node, yaml.ScalarNode) or key_node.tag not in NAME_KEY_TAGS:
            raise YamlError(
                f"{_where(path, key_node.start_mark)}: a key must be a name, e.g. 'lr:'; "
                "quote it if it is text"
            )
        if key_node.tag == MERGE_KEY_TAG:
            continue
        key = f"{prefix}{key_node.value}"
        if key_node.value in first_seen:
            line = first_seen[key_node.value].start_mark.line + 1
            raise YamlError(
                f"{_where(path, key_node.start_mark)}: duplicate key {key!r} (first at line "
                f"{line}); keep one of them"
            )
        first_seen[key_node.value] = key_node
        positions[key] = _where(path, key_node.start_mark)
        if isinstance(value_node, yaml.MappingNode):
            _check_keys(value_node, path, f"{key}.", positions, visited)


def _describe(error: Exception, path: str, text: str) -> str:
    """`PATH:LINE:COLUMN: problem; fix` from a PyYAML or OmegaConf error (one line)."""
    where, problem = _locate(error, text)
    return f"{path}{where}: {_with_hint(problem)}"


def _with_hint(problem: str) -> str:
    hint = next((fix for words, fix in HINTS if words in problem), "fix the YAML there")
    return f"{' '.join(problem.split())}; {hint}"


def _locate(error: Exception, text: str) -> tuple[str, str]:
    """(`:LINE:COLUMN` or "", the problem) of an error met while reading `text`."""
    if isinstance(error, yaml.MarkedYAMLError) and error.problem_mark is not None:
        mark, problem = error.problem_mark, error.problem or ""
        if error.context and error.context_mark is not None:
            start = error.context_mark
            problem += f" ({error.context}, from line {start.line + 1} column {start.column + 1})"
        elif error.context:
            problem = f"{error.context}: {problem}"
        return f":{mark.line + 1}:{mark.column + 1}", problem
    if isinstance(error, yaml.reader.ReaderError):
        where = f":{_position(text, error.position)}"
        return where, f"character {error.character!r}: {error.reason}"
    lines = str(error).strip().splitlines()
    if isinstance(error, (yaml.YAMLError, OmegaConfBaseException)) and lines:
        return "", lines[0]
    if isinstance(error, RecursionError):
        return "", "nested too deeply to read"
    if isinstance(error, UnicodeEncodeError):  # undecodable bytes of a command line
        return "", "it holds bytes that are not UTF-8 text"
    # PyYAML's constructors of explicit tags (!!int x) fail with Python's own errors
    return "", f"{type(error).__name__}: {lines[0] if lines else ''}"


def _where(path: str, mark: yaml.Mark) -> str:
    return f"{path}:{mark.line + 1}:{mark.column + 1}"


def _position(text: str, offset: int) -> str:
    """`LINE:COLUMN` (1-based) of a character offset in `text`."""
    before = text[:offset]
    line = before.count("\n") + 1
    column = offset - before.rfind("\n")  # rfind is -1 on the first line
    return f"{line}:{column}"


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """The dotted keys of nested mappings: {"optim": {"lr": 0.1}} -> {"optim.lr": 0.1}."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
