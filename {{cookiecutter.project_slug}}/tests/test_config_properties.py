"""Property tests of the command line: whatever the overrides and YAML files, train.py's
parsing ends in exit 0 or in exactly one `error:` line and exit 2, never a traceback.

The arguments go through `cli.parse_command_line` in this process (with --print-config, so
that nothing trains), with stdout encoding strictly to UTF-8 as a terminal does. Examples
are derived from the test's name (`derandomize`): every run, here and in CI, tries the same
few hundred inputs, and a failure prints the smallest argument list that shows it.
"""

import contextlib
import io
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from {{ cookiecutter.package_name }} import cli
from {{ cookiecutter.package_name }}.config import Config, get_setting, schema_fields

# Left out of the quick subset (pytest -m "not slow"): every test here is a property test:
# hypothesis draws hundreds of configs.
pytestmark = pytest.mark.slow

KEYS = [key for key, _ in schema_fields()]
SECTIONS = sorted({key.split(".")[0] for key in KEYS if "." in key})
LEAF_NAMES = sorted({key.rsplit(".", 1)[-1] for key in KEYS})
# Tokens that mean something to YAML or OmegaConf, and a few values of the right shape.
YAML_TOKENS = (
    "null", "~", "true", "False", "yes", "off", "[", "]", "{", "}", "[1, 2]", "{a: 1}",
    "[0.9,0.999]", "${", "${x}", "${seed}", "${oc.env:HOME}", "${oc.env:NO_SUCH_VARIABLE}",
    "???", "!!bool", "!!int x", "!!binary aGk=", "!!set {a}", "!!python/tuple [1]", "&a",
    "*a", "&a [*a]", "- 1", "a: b", "---", "...", "#", "'", '"', "\\", "\t", "\n", " ", ",",
    "1e3", "1e999", ".inf", "-.inf", ".nan", "nan", "0x1f", "0o17", "1:2", "1_000",
    "2024-01-01", "=", "==", "-1", "0", "4294967296", "99999999999999999999999", "%",
    "@", "`", "|", ">", "?", ":", "é", "\u2028", "\x00", "\x85", "\ufeff",
)  # fmt: skip
PROPERTY_SETTINGS = settings(
    max_examples=200,
    deadline=None,  # a loaded machine is slow, not wrong
    derandomize=True,
    database=None,  # nothing written into the project
    suppress_health_check=[HealthCheck.too_slow],
)


def dump(value, flow: bool) -> str:
    """`value` as YAML text: on one line (flow), or in blocks."""
    text = yaml.safe_dump(value, default_flow_style=flow, allow_unicode=True, sort_keys=False)
    return text.removesuffix("\n...\n").strip() if flow else text


# Undecodable bytes reach sys.argv as lone surrogates (Python's surrogateescape).
argv_bytes = st.binary(max_size=6).map(lambda data: data.decode("utf-8", "surrogateescape"))
random_text = st.one_of(st.text(max_size=12), argv_bytes)
tokens = st.sampled_from(YAML_TOKENS)
value_texts = st.one_of(
    tokens,
    random_text,
    st.integers().map(str),
    st.floats().map(str),
    st.lists(st.one_of(tokens, random_text), min_size=2, max_size=4).map("".join),
)
key_texts = st.one_of(
    st.sampled_from(KEYS),
    st.sampled_from(SECTIONS + LEAF_NAMES),
    st.builds("{}.{}".format, st.sampled_from(SECTIONS), st.sampled_from(LEAF_NAMES)),
    st.builds(str.__add__, st.sampled_from(KEYS), st.one_of(tokens, random_text)),
    st.builds(str.__add__, st.sampled_from(["+", "-", "--", " ", "."]), st.sampled_from(KEYS)),
    random_text,
)
# Values of about the right kind for known keys, so that many examples get past the first
# mistake, into the checks of types, choices, ranges and settings that depend on each other.
DEFAULTS = {key: get_setting(Config(), key) for key in KEYS}
CHOICES = {
    key: item.metadata["choices"] for key, item in schema_fields() if "choices" in item.metadata
}
plausible_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-2, 300),
    st.floats(-0.5, 2.0),
    st.lists(st.floats(-0.5, 1.5), max_size=3),
    st.lists(st.integers(0, 100), max_size=3),
    st.sampled_from([choice for choices in CHOICES.values() for choice in choices]),
)


def values_like_the_default(key: str) -> st.SearchStrategy:
    """Values of the setting's own kind: its choices, booleans, small numbers."""
    default = DEFAULTS[key]
    if key in CHOICES:
        return st.sampled_from(CHOICES[key])
    kinds = {bool: st.booleans(), int: st.integers(0, 64), float: st.floats(0, 1)}
    if type(default) in kinds:
        return kinds[type(default)]
    return st.one_of(st.just(default), plausible_values)


plausible_overrides = st.sampled_from(KEYS).flatmap(
    lambda key: st.one_of(values_like_the_default(key), plausible_values).map(
        lambda value: f"{key}={dump(value, True)}"
    )
)
overrides = st.one_of(
    st.builds("{}={}".format, key_texts, value_texts), plausible_overrides, plausible_overrides
)
arguments = st.one_of(
    overrides,
    overrides.map(lambda text: text.replace("=", "==", 1)),
    st.builds(str.__add__, value_texts, st.sampled_from(["=", "=1", ".yaml", ""])),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=8),
    tokens,
)
mapping_keys = st.one_of(st.sampled_from(SECTIONS + LEAF_NAMES + KEYS), st.text(max_size=6))
trees = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=3), st.dictionaries(mapping_keys, children, max_size=4)
    ),
    max_leaves=12,
)
# Documents shaped like a settings file: sections holding (mostly) known names.
settings_trees = st.dictionaries(
    st.sampled_from(SECTIONS + ["seed"]),
    st.one_of(
        st.dictionaries(st.sampled_from(LEAF_NAMES), plausible_values, max_size=4),
        st.dictionaries(st.sampled_from(LEAF_NAMES), plausible_values, max_size=4),
        st.dictionaries(st.sampled_from(LEAF_NAMES), trees, max_size=4),
        scalars,
    ),
    max_size=4,
)


@pytest.fixture(scope="module")
def settings_file(tmp_path_factory) -> Path:
    """One file that every example of a property overwrites."""
    return tmp_path_factory.mktemp("properties") / "settings.yaml"


def run_command_line(argv: list[str]) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of parsing `argv --print-config` in this process."""
    stdout = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")  # strict, as a terminal's
    stderr = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="backslashreplace")
    status = 0
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            cli.parse_command_line([*argv, "--print-config"])
        except SystemExit as exit_:
            status = exit_.code
    for stream in (stdout, stderr):
        stream.flush()
    return status, stdout.buffer.getvalue().decode(), stderr.buffer.getvalue().decode()


def assert_one_outcome(argv: list[str]) -> None:
    """Exit 0 having printed the config (or the help), or exit 2 with one `error:` line."""
    status, out, err = run_command_line(argv)
    if status == 0:
        assert err == "", err
        assert out.startswith("usage:") or isinstance(yaml.safe_load(out), dict), out
        return
    assert status == 2, (status, err)
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert out == "", out


@PROPERTY_SETTINGS
@given(st.lists(st.one_of(plausible_overrides, plausible_overrides, arguments), max_size=4))
def test_any_command_line_gives_the_config_or_one_error_line(argv):
    assert_one_outcome(argv)


@st.composite
def yaml_documents(draw) -> str:
    """A settings-like or random YAML document, then a few lines of it broken: indented
    by tabs or odd spaces, repeated (duplicate keys), given anchors, aliases or tokens."""
    tree = draw(st.one_of(settings_trees, st.dictionaries(mapping_keys, trees, max_size=4)))
    lines = dump(tree, flow=draw(st.booleans())).splitlines() or [""]
    for _ in range(draw(st.sampled_from([0, 0, 1, 2, 3]))):
        at = draw(st.integers(0, len(lines) - 1))
        line = lines[at]
        lines[at : at + 1] = draw(
            st.sampled_from(
                [
                    [line, line],
                    ["\t" + line],
                    [" " * draw(st.integers(1, 3)) + line],
                    [line.lstrip()],
                    [line + " " + draw(tokens)],
                    [draw(tokens) + line],
                    [line.replace(": ", ": &anchor ", 1), "alias: *anchor"],
                    [draw(st.text(max_size=12))],
                ]
            )
        )
    return "\n".join(lines) + "\n"


@PROPERTY_SETTINGS
@given(yaml_documents(), st.lists(overrides, max_size=2))
def test_any_yaml_file_gives_the_config_or_one_error_line(settings_file, document, argv):
    settings_file.write_text(document, encoding="utf-8")
    assert_one_outcome([str(settings_file), *argv])


@settings(PROPERTY_SETTINGS, max_examples=100)
@given(st.one_of(st.binary(max_size=40), st.text(max_size=40).map(str.encode)))
def test_any_bytes_as_a_yaml_file_give_the_config_or_one_error_line(settings_file, data):
    settings_file.write_bytes(data)
    assert_one_outcome([str(settings_file)])
