"""Mutated model files (safetensors headers, .pt2 archives, ONNX bytes) end in a model or
in the project's one-line CheckpointError: never another exception, a hang or a run on
memory. Derandomized: the same examples on every run."""

import importlib.util
import json
import struct
import tempfile
import zipfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_untrusted_files import exported, rewritten  # noqa: F401  (exported: a fixture)

from {{ cookiecutter.package_name }}.checkpoint import CheckpointError, load_weights
from {{ cookiecutter.package_name }}.export_program import export_program, onnx_missing
from {{ cookiecutter.package_name }}.exported import OnnxModel, load_program, read_info

# Left out of the quick subset (pytest -m "not slow"): every test here fuzzes exported programs and
# checkpoints with hypothesis.
pytestmark = pytest.mark.slow

FUZZ = settings(
    derandomize=True,
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=8,
)
ARCHIVE_JSON = (
    "models/model.json",
    "data/weights/model_weights_config.json",
    "data/constants/model_constants_config.json",
)


def loads_or_refuses(load, path: Path) -> None:
    """`load(path)` gives a model, or the one-line CheckpointError naming the file."""
    try:
        load(path)
    except CheckpointError as error:
        assert str(path) in str(error) and "\n" not in str(error)


def json_paths(tree, prefix=()):
    """Every path of keys and indices into a JSON tree."""
    yield prefix
    if isinstance(tree, (dict, list)):
        for key, value in tree.items() if isinstance(tree, dict) else enumerate(tree):
            yield from json_paths(value, (*prefix, key))


def replaced(tree, path: tuple, value):
    if not path:
        return value
    tree[path[0]] = replaced(tree[path[0]], path[1:], value)
    return tree


@FUZZ
@given(data=st.data())
def test_a_mutated_program_json_loads_or_is_refused(exported, data):  # noqa: F811
    _, program = exported
    name = data.draw(st.sampled_from(ARCHIVE_JSON))
    with zipfile.ZipFile(program) as archive:
        root = archive.namelist()[0].split("/")[0]
        document = json.loads(archive.read(f"{root}/{name}"))
    paths = list(json_paths(document))
    where = data.draw(st.sampled_from(paths))
    value = data.draw(JSON_VALUES)
    mutated = json.dumps(replaced(document, where, value)).encode()
    with tempfile.TemporaryDirectory() as folder:
        output = Path(folder) / "mutated.pt2"
        rewritten(program, output, lambda records: records.update({name: mutated}))
        loads_or_refuses(load_program, output)


# A step into a string that holds JSON text itself (pytree specs and their contexts).
JSON_TEXT = "<json text>"


def json_text_paths(tree, prefix=(), inside=False):
    """Every path into the JSON held as text inside a JSON tree, through any depth of such
    text: a path element JSON_TEXT decodes the string it stands on."""
    if inside:
        yield prefix
    if isinstance(tree, str):
        try:
            inner = json.loads(tree)
        except ValueError:
            return
        if isinstance(inner, (dict, list)):
            yield from json_text_paths(inner, (*prefix, JSON_TEXT), inside=True)
    elif isinstance(tree, (dict, list)):
        for key, value in tree.items() if isinstance(tree, dict) else enumerate(tree):
            yield from json_text_paths(value, (*prefix, key), inside)


def replaced_deep(tree, path: tuple, value):
    if not path:
        return value
    if path[0] == JSON_TEXT:
        return json.dumps(replaced_deep(json.loads(tree), path[1:], value))
    tree[path[0]] = replaced_deep(tree[path[0]], path[1:], value)
    return tree


@FUZZ
@given(data=st.data())
def test_a_mutated_spec_inside_the_program_loads_or_is_refused(exported, data):  # noqa: F811
    """The pytree specs are JSON text inside the program's JSON: any value in them, at any
    depth, replaced by a value of any JSON type."""
    _, program = exported
    with zipfile.ZipFile(program) as archive:
        root = archive.namelist()[0].split("/")[0]
        document = json.loads(archive.read(f"{root}/models/model.json"))
    where = data.draw(st.sampled_from(list(json_text_paths(document))))
    mutated = json.dumps(replaced_deep(document, where, data.draw(JSON_VALUES))).encode()
    with tempfile.TemporaryDirectory() as folder:
        output = Path(folder) / "mutated.pt2"
        rewritten(program, output, lambda records: records.update({"models/model.json": mutated}))
        loads_or_refuses(load_program, output)


@FUZZ
@given(data=st.data())
def test_a_program_with_a_record_removed_or_cut_loads_or_is_refused(exported, data):  # noqa: F811
    _, program = exported
    with zipfile.ZipFile(program) as archive:
        names = sorted(name.split("/", 1)[1] for name in archive.namelist())
    name = data.draw(st.sampled_from(names))
    change = data.draw(st.sampled_from(["remove", "empty", "cut", "malformed pickle"]))

    def damage(records):
        if change == "remove":
            del records[name]
        elif change == "empty":
            records[name] = b""
        elif change == "cut":
            records[name] = records[name][: data.draw(st.integers(0, len(records[name])))]
        else:
            records[name] = b"}q\x00(X\x01\x00\x00\x00aq\x01s."

    with tempfile.TemporaryDirectory() as folder:
        output = Path(folder) / "damaged.pt2"
        rewritten(program, output, damage)
        loads_or_refuses(load_program, output)


def strings_of(tree) -> set[str]:
    if isinstance(tree, str):
        return {tree}
    values = tree.values() if isinstance(tree, dict) else tree if isinstance(tree, list) else []
    return set().union(*(strings_of(value) for value in values))


# Each becomes Python code where torch writes a name into the code it generates: a
# statement, an attribute (`getattr(self, "NAME")`), a quoted argument.
INJECTIONS = (
    "{name} = __import__('pathlib').Path({marker!r}).touch(); {name}",
    '{name}") if __import__("pathlib").Path({marker!r}).touch() else getattr(self, "{name}',
    "{name}') or __import__('pathlib').Path({marker!r}).touch() or ('",
    "{name}=__import__('pathlib').Path({marker!r}).touch()",
)


@FUZZ
@given(data=st.data())
def test_code_in_any_string_of_a_program_never_runs(exported, data):  # noqa: F811
    """Any string of the program, replaced everywhere by code for the Python that torch
    generates from the program: refused, or it stays text; the code never runs."""
    _, program = exported
    with zipfile.ZipFile(program) as archive:
        root = archive.namelist()[0].split("/")[0]
        text = archive.read(f"{root}/models/model.json").decode()
    name = data.draw(st.sampled_from(sorted(strings_of(json.loads(text)))))
    with tempfile.TemporaryDirectory() as folder:
        marker = Path(folder) / "marker"
        code = data.draw(st.sampled_from(INJECTIONS)).format(name=name, marker=str(marker))
        mutated = text.replace(json.dumps(name), json.dumps(code)).encode()
        output = Path(folder) / "mutated.pt2"
        rewritten(program, output, lambda records: records.update({"models/model.json": mutated}))
        try:
            load_program(output)(torch.zeros(1, 3, 16, 16))
        except CheckpointError as error:
            assert str(output) in str(error) and "\n" not in str(error)
        except Exception:  # a program that loads may fail on its input: it ran no code
            pass
        assert not marker.exists()


@FUZZ
@given(data=st.data())
def test_a_program_with_mutated_bytes_loads_or_is_refused(exported, data):  # noqa: F811
    _, program = exported
    raw = bytearray(program.read_bytes())
    for _ in range(data.draw(st.integers(1, 8))):
        position = data.draw(st.integers(0, len(raw) - 1))
        raw[position] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(len(raw) // 2, len(raw)))
    with tempfile.TemporaryDirectory() as folder:
        output = Path(folder) / "mutated.pt2"
        output.write_bytes(bytes(raw[:cut]))
        loads_or_refuses(load_program, output)


def safetensors_bytes() -> bytes:
    """A small .safetensors file with the metadata export.py writes."""
    if importlib.util.find_spec("safetensors") is None:
        pytest.skip("safetensors is not installed (pip install safetensors)")
    from safetensors.torch import save

    metadata = {
        "classes": json.dumps(["a", "b"]),
        "normalization": json.dumps({"mean": [0.5] * 3, "std": [0.2] * 3}),
        "config": json.dumps({"model": {"name": "small_resnet"}}),
    }
    return save({"head.weight": torch.zeros(2, 4), "head.bias": torch.zeros(2)}, metadata)


@FUZZ
@given(data=st.data())
def test_a_mutated_safetensors_header_loads_or_is_refused(data):
    raw = bytearray(safetensors_bytes())
    header_length = struct.unpack("<Q", raw[:8])[0]
    choice = data.draw(st.sampled_from(["byte", "length", "metadata"]))
    if choice == "byte":  # anywhere in the length or the header
        position = data.draw(st.integers(0, 8 + header_length - 1))
        raw[position] = data.draw(st.integers(0, 255))
    elif choice == "length":
        raw[:8] = struct.pack("<Q", data.draw(st.integers(0, 2**64 - 1)))
    else:  # another value for one of the metadata keys, as JSON text
        header = json.loads(raw[8 : 8 + header_length])
        key = data.draw(st.sampled_from(["classes", "normalization", "config"]))
        header["__metadata__"][key] = json.dumps(data.draw(JSON_VALUES))
        text = json.dumps(header).encode()
        raw = bytearray(struct.pack("<Q", len(text)) + text + raw[8 + header_length :])
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "weights.safetensors"
        path.write_bytes(bytes(raw))
        loads_or_refuses(read_info, path)
        loads_or_refuses(load_weights, path)


@pytest.fixture(scope="module")
def onnx_file(exported, tmp_path_factory) -> Path:  # noqa: F811
    missing = onnx_missing()
    if missing is not None:
        pytest.skip(f"{missing} is not installed (pip install -e .[export])")
    _, program = exported
    output = tmp_path_factory.mktemp("onnx") / "model.onnx"
    export_program(program.parent / "run" / "checkpoints" / "last.pt", output)
    return output


@FUZZ
@given(data=st.data())
def test_onnx_with_mutated_bytes_loads_or_is_refused(onnx_file, data):
    raw = bytearray(onnx_file.read_bytes())
    for _ in range(data.draw(st.integers(1, 8))):
        position = data.draw(st.integers(0, len(raw) - 1))
        raw[position] = data.draw(st.integers(0, 255))
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "mutated.onnx"
        path.write_bytes(bytes(raw))
        loads_or_refuses(OnnxModel, path)
