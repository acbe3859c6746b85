"""What is wrong with settings as given, in words a user can act on.

Settings from a YAML file or a `key=value` override are checked here, before OmegaConf
merges them onto the schema, because OmegaConf's own errors speak of its classes
("float is not a subclass of OptimConfig") and let a few mistakes through (a list inside
a list of names, `2` for true). Plain functions over the schema's leaf fields
(`config.schema_fields()`); config.py raises the ConfigError, cli.py prints the help.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
from collections.abc import Mapping
from typing import Any

from .yaml_files import spelling

Fields = dict[str, dataclasses.Field]
TYPE_WORDS = {  # annotation -> (in a sentence, in the help)
    "int": ("an integer", "integer"),
    "float": ("a number", "number"),
    "bool": ("true or false", "true/false"),
    "str": ("text", "text"),
    "list[int]": ("a list of integers", "list of integers"),
    "list[float]": ("a list of numbers", "list of numbers"),
    "list[str]": ("a list of names", "list of names"),
}
INTEGER_TEXT = re.compile(r"[-+]?\d+")
RANGE_RULES = (  # the schema's range rules: (name, whether a value keeps it, its sign)
    ("gt", lambda value, bound: value > bound, ">"),
    ("ge", lambda value, bound: value >= bound, ">="),
    ("lt", lambda value, bound: value < bound, "<"),
    ("le", lambda value, bound: value <= bound, "<="),
)


def type_words(item: dataclasses.Field, in_help: bool = False) -> str:
    """The setting's type as a user says it: "an integer or null", "adamw or sgd"."""
    base, nullable = _annotation(item)
    if "choices" in item.metadata:
        words = choice_words(item.metadata["choices"])
    else:
        words = TYPE_WORDS[base][1 if in_help else 0]
    return f"{words} or null" if nullable else words


def choice_words(choices: tuple[Any, ...]) -> str:
    """The choices in words: "adamw or sgd", "one of cosine, step, ... or none"."""
    names = _choice_names(choices)
    listed = f"{', '.join(names[:-1])} or {names[-1]}" if len(names) > 1 else names[0]
    return listed if len(choices) <= 2 else f"one of {listed}"


def rule_problem(key: str, value: Any, rules: Mapping[str, Any]) -> str:
    """What breaks a rule of the setting's schema field (choices, gt, ge, lt, le), or ""."""
    choices = rules.get("choices")
    if choices and value is not None and value not in choices:  # null: a nullable field's own
        close = difflib.get_close_matches(
            str(value).lower(), _choice_names(choices), n=1, cutoff=0.6
        )
        hint = f"; did you mean {close[0]}?" if close else ""
        return f"{key}={spelling(value)} is not allowed; choose {choice_words(choices)}{hint}"
    for rule, holds, words in RANGE_RULES:
        if rule in rules and value is not None and not holds(value, rules[rule]):
            return f"{key}={value!r} is out of range; it must be {words} {rules[rule]}"
    return ""


def tree_problem(tree: dict, fields: Fields, style: str, prefix: str = "") -> tuple[str, str]:
    """(dotted key, what is wrong) for the first wrong entry of a nested mapping of settings,
    or ("", "") when there is none. `style` is "yaml" or "override": how examples are written."""
    for name, value in tree.items():
        key = f"{prefix}{name}"
        if not isinstance(name, str) or not re.fullmatch(r"\w+", name):
            return key, _name_problem(key, fields, style)
        if key in fields:
            problem = value_problem(key, value, fields[key])
        elif key in _sections(fields):
            if isinstance(value, dict):
                found = tree_problem(value, fields, style, prefix=f"{key}.")
                if found[0]:
                    return found
                continue
            problem = _section_problem(key, value, fields, style)
        else:
            problem = unknown_key(key, fields)
        if problem:
            return key, problem
    return "", ""


def key_problem(key: str, fields: Fields) -> str:
    """What is wrong with an override's dotted `key` whatever its value: it names no setting,
    no section and nothing below a setting. "" for any other key (tree_problem checks the
    key with its value)."""
    parts = key.split(".")
    prefixes = [".".join(parts[: end + 1]) for end in range(len(parts))]
    if all(re.fullmatch(r"\w+", part) for part in parts) and (
        key in _sections(fields) or any(prefix in fields for prefix in prefixes)
    ):
        return ""
    return unknown_key(key, fields)


def value_problem(key: str, value: Any, item: dataclasses.Field) -> str:
    """What is wrong with `value` for the setting `key` ("" when OmegaConf may take it)."""
    base, nullable = _annotation(item)
    if isinstance(value, dict):
        return f"{key} is a setting, not a section; give it {type_words(item)}"
    if (value is None and nullable) or _is_interpolation(value):
        return ""
    if base.startswith("list["):
        item_type = base[len("list[") : -1]
        fits = isinstance(value, list) and all(_fits(entry, item_type) for entry in value)
    else:
        fits = _fits(value, base)
    return "" if fits else f"{key} must be {type_words(item)}, got {spelling(value)}"


def unknown_key(key: str, fields: Fields) -> str:
    """The unknown-key message, with the closest known keys or else the keys there are."""
    close = closest_keys(key, list(fields))
    if close:
        return f"unknown config key {spelling(key)}; did you mean {' or '.join(close)}?"
    section = key.split(".")[0]
    if section in _sections(fields):
        names = [known.split(".", 1)[1] for known in fields if known.startswith(f"{section}.")]
        return f"unknown config key {spelling(key)}; keys in {section}: {', '.join(names)}"
    top = list(dict.fromkeys(known.split(".")[0] for known in fields))
    return f"unknown config key {spelling(key)}; top-level keys: {', '.join(top)}"


def closest_keys(key: str, known: list[str], limit: int = 3) -> list[str]:
    """Known keys a mistyped `key` may mean: the same last part in another section
    (train.lr -> optim.lr), then close spellings of the whole key and of its last part."""
    leaf = key.rsplit(".", 1)[-1]
    leaves = {name: name.rsplit(".", 1)[-1] for name in known}
    same_leaf = [name for name in known if leaves[name] == leaf]
    close_whole = difflib.get_close_matches(key, known, n=limit, cutoff=0.85)
    close_leaves = difflib.get_close_matches(leaf, set(leaves.values()), n=limit, cutoff=0.8)
    close_leaf = [name for name in known if leaves[name] in close_leaves]
    return list(dict.fromkeys(same_leaf + close_whole + close_leaf))[:limit]


def _section_problem(section: str, value: Any, fields: Fields, style: str) -> str:
    """A section given a value: which of its keys the value was probably meant for."""
    keys = [key for key in fields if key.startswith(f"{section}.")]
    fitting = [key for key in keys if _fits_exactly(value, _annotation(fields[key])[0])]
    example_key = (fitting or keys)[0]
    example_value = spelling(value) if fitting else "VALUE"
    leaf = example_key.rsplit(".", 1)[1]
    example = (
        f"{example_key}={example_value}"
        if style == "override"
        else f"{section}: " + "{" + f"{leaf}: {example_value}" + "}"
    )
    names = ", ".join(key.rsplit(".", 1)[1] for key in keys)
    return f"{section} is a section, not a setting; set one of its keys ({names}), e.g. {example}"


def _name_problem(key: str, fields: Fields, style: str) -> str:
    """A key that is not a plain name: dotted keys belong nested in a YAML file."""
    if style == "yaml" and key in fields:
        section, leaf = key.rsplit(".", 1)
        return f"write {key} nested in a YAML file, e.g. {section}: " + "{" + f"{leaf}: VALUE" + "}"
    return unknown_key(key, fields)


def _choice_names(choices: tuple[Any, ...]) -> list[str]:
    """Choices as a user writes them (true, not True: a setting may take true, false or disk)."""
    return [choice if isinstance(choice, str) else spelling(choice) for choice in choices]


def _fits(value: Any, base: str) -> bool:
    """Whether OmegaConf may convert `value` to the type `base` without losing its meaning."""
    if _is_interpolation(value):
        return True
    if base.startswith("Union["):  # as given, no conversion (OmegaConf converts none)
        parts = base[len("Union[") : -1].split(", ")
        return any(_fits_exactly(value, part) for part in parts)
    if value == "???":  # OmegaConf's marker of a missing value
        return False
    if base == "bool":
        return isinstance(value, bool) or str(value).lower() in ("true", "false")
    if base == "int":
        return _fits_exactly(value, "int") or (
            isinstance(value, str) and INTEGER_TEXT.fullmatch(value.strip()) is not None
        )
    if base == "float":
        return _fits_exactly(value, "float") or (isinstance(value, str) and _is_finite(value))
    if base == "str":  # OmegaConf writes numbers as text (run.name=1 is "1")
        return isinstance(value, (str, int, float)) and not isinstance(value, bool)
    return False


def _is_interpolation(value: Any) -> bool:
    """`${...}`: OmegaConf checks the value it resolves to (config.py words its errors)."""
    return isinstance(value, str) and "${" in value


def _fits_exactly(value: Any, base: str) -> bool:
    """Whether `value` already has the type `base` (ints count as numbers)."""
    if isinstance(value, bool):
        return base == "bool"
    if isinstance(value, int):
        return base == "int" or (base == "float" and _is_finite(value))
    if isinstance(value, float):
        return base == "float" and math.isfinite(value)
    if isinstance(value, list):
        return base.startswith("list[")
    return isinstance(value, str) and base == "str"


def _is_finite(number: str | int) -> bool:
    """Whether `number` is a finite float (no nan or inf: no setting means them)."""
    try:
        return math.isfinite(float(number))
    except (ValueError, OverflowError):
        return False


def _annotation(item: dataclasses.Field) -> tuple[str, bool]:
    """("float", True) for Optional[float]: the type and whether null is allowed."""
    annotation = str(item.type)
    if annotation.startswith("Optional[") and annotation.endswith("]"):
        return annotation[len("Optional[") : -1], True
    return annotation, False


def _sections(fields: Fields) -> set[str]:
    return {key.rsplit(".", 1)[0] for key in fields if "." in key}


def image_settings_problem(data: Any) -> str:
    """What is wrong with the data section's image settings that depend on each other (`data`:
    a DataConfig), or ""."""
    if data.channels is not None and data.channels not in (1, 3):
        return (
            f"data.channels={data.channels} is not allowed; choose 1 (grayscale), 3 (RGB) "
            "or null (the data's own)"
        )
    # A null data.image_size is chosen later, no larger than data.resize (data/survey.py).
    if data.resize and data.image_size is not None and data.resize < data.image_size:
        return (
            f"data.resize={data.resize} is smaller than data.image_size={data.image_size}, "
            f"so the crop would not fit; use data.resize>={data.image_size} or data.resize=null"
        )
    if (data.mean is None) != (data.std is None):
        return (
            "data.mean and data.std go together: give both (one number per channel) or "
            "leave both null to compute them from the training set"
        )
    if data.mean is None:
        return ""
    if len(data.mean) != len(data.std) or len(data.mean) not in (1, 3):
        return (
            f"data.mean={data.mean} and data.std={data.std} need one number per channel "
            "each: 3 for RGB, 1 for grayscale"
        )
    if data.channels is not None and len(data.mean) != data.channels:
        return (
            f"data.mean={data.mean} has {len(data.mean)} numbers but data.channels="
            f"{data.channels}; give one number per channel"
        )
    if not all(value > 0 for value in data.std):
        return f"data.std={data.std} is not allowed; every value must be > 0"
    return ""
