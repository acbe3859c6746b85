"""Model files from someone else: reading one runs no code from it, and what it declares
(sizes, statistics, classes) is checked before anything is built or allocated."""

import io
import json
import pickle
import shutil
import zipfile
from pathlib import Path

import pytest
import torch
from conftest import SMALL_OVERRIDES, write_images

from shape_classifier.checkpoint import CheckpointError
from shape_classifier.cli import DEFAULT_CONFIG
from shape_classifier.config import load_config
from shape_classifier.export_program import export_program
from shape_classifier.exported import info_path, load_program
from shape_classifier.train import main

CLASSES = {"a": 4, "b": 4, "c": 4}
WEIGHTS_CONFIG = "data/weights/model_weights_config.json"
CONSTANTS_CONFIG = "data/constants/model_constants_config.json"
PROGRAM = "models/model.json"
SAMPLE_INPUTS = "data/sample_inputs/model.pt"


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[Path, Path]:
    """(the images, a .pt2 that export.py wrote, with its card) of a one-epoch run."""
    root = tmp_path_factory.mktemp("untrusted")
    write_images(root / "images", CLASSES)
    settings = [
        *SMALL_OVERRIDES,
        "data.dataset=imagefolder",
        "data.image_size=16",
        "data.batch_size=8",
        f"data.root={root / 'images'}",
        f"run.dir={root / 'run'}",
    ]
    assert main(load_config([DEFAULT_CONFIG], settings)) == 0
    program = root / "model.pt2"
    export_program(root / "run" / "checkpoints" / "last.pt", program)
    return root / "images", program


class WritesMarker:
    """Unpickling this creates the file `path`: what a malicious payload would do."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def torch_pickle(value) -> bytes:
    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.getvalue()


def rewritten(program: Path, output: Path, change) -> Path:
    """A copy of the .pt2 `program` (and its card) whose records `change(records)` edits."""
    with zipfile.ZipFile(program) as archive:
        root = archive.namelist()[0].split("/")[0]
        records = {name.split("/", 1)[1]: archive.read(name) for name in archive.namelist()}
    change(records)
    with zipfile.ZipFile(output, "w", zipfile.ZIP_STORED) as archive:
        for name, data in records.items():
            archive.writestr(f"{root}/{name}", data)
    shutil.copyfile(info_path(program), info_path(output))
    return output


def edit_json(records: dict, name: str, edit) -> None:
    document = json.loads(records[name])
    edit(document)
    records[name] = json.dumps(document).encode()


def pickled_weight(marker: Path):
    def change(records):
        def mark_pickled(config):
            entry = config["config"]["stem.0.weight"]
            entry["use_pickle"] = True
            records["data/weights/" + entry["path_name"]] = torch_pickle(WritesMarker(marker))

        edit_json(records, WEIGHTS_CONFIG, mark_pickled)

    return change


def pickled_constant(marker: Path, path_name: str, payload: bytes):
    def change(records):
        entry = {"path_name": path_name, "is_param": False, "use_pickle": True}
        edit_json(records, CONSTANTS_CONFIG, lambda config: config["config"].update(c=entry))
        records[f"data/constants/{path_name}"] = payload

    return change


def pickled_sample_inputs(marker: Path):
    return lambda records: records.update({SAMPLE_INPUTS: torch_pickle(WritesMarker(marker))})


def code_in_shape_expression(marker: Path):
    def change(records):
        text = records[PROGRAM].decode()
        symbol = "Symbol('s77', positive=True, integer=True)"
        assert symbol in text
        code = f"__import__('pathlib').Path({str(marker)!r}).touch() or {symbol}"
        records[PROGRAM] = text.replace(symbol, code.replace("'", "\\u0027")).encode()

    return change


def code_in_guards(marker: Path):
    guard = f"__import__('pathlib').Path({str(marker)!r}).touch() is None"
    return lambda records: edit_json(records, PROGRAM, lambda p: p.update(guards_code=[guard]))


def node_target(target: str):
    def change(records):
        def retarget(program):
            program["graph_module"]["graph"]["nodes"][0]["target"] = target

        edit_json(records, PROGRAM, retarget)

    return change


def parameter_name(name: str):
    def change(records):
        def rename(program):
            spec = program["graph_module"]["signature"]["input_specs"][0]
            spec["parameter"]["parameter_name"] = name

        edit_json(records, PROGRAM, rename)

    return change


def empty_weight_of_huge_size(records):
    def enlarge(config):
        entry = config["config"]["stem.0.weight"]
        entry["tensor_meta"]["sizes"] = [{"as_int": 100_000}] * 3
        records["data/weights/" + entry["path_name"]] = b""

    edit_json(records, WEIGHTS_CONFIG, enlarge)


def native_library(records):
    records["data/aotinductor/model/model.so"] = b"\x7fELF"


def legacy_pickled_weights(marker: Path):
    return lambda records: records.update({"data/weights/model.pt": torch_pickle(marker)})


HOSTILE = {
    "a weight marked pickled": pickled_weight,
    "a tensor constant marked pickled": lambda marker: pickled_constant(
        marker, "tensor_0", torch_pickle(WritesMarker(marker))
    ),
    "an opaque object constant": lambda marker: pickled_constant(
        marker, "opaque_obj_0", pickle.dumps(WritesMarker(marker))
    ),
    "a torchbind object constant": lambda marker: pickled_constant(
        marker, "custom_obj_0", pickle.dumps(WritesMarker(marker))
    ),
    "sample inputs that are not tensors": pickled_sample_inputs,
    "legacy pickled weights": legacy_pickled_weights,
    "code in a shape expression": code_in_shape_expression,
    "code in guards": code_in_guards,
    "a node calling os.system": lambda marker: node_target("torch.os.system"),
    "a node calling a non-ATen operator": lambda marker: node_target("torch.ops.higher_order.cond"),
    "a node reading a file": lambda marker: node_target("torch.ops.aten.from_file.default"),
    "an attribute name with code": lambda marker: parameter_name('a") or print("b'),
    "a carriage return in metadata": lambda marker: node_target("torch.ops.aten.relu.default\r"),
    "an empty weight of huge size": lambda marker: empty_weight_of_huge_size,
    "native code": lambda marker: native_library,
}


@pytest.mark.parametrize("case", HOSTILE)
def test_a_hostile_program_is_refused_before_torch_reads_it(exported, tmp_path, case):
    _, program = exported
    marker = tmp_path / "marker"
    hostile = rewritten(program, tmp_path / "hostile.pt2", HOSTILE[case](marker))
    with pytest.raises(CheckpointError) as refused:
        load_program(hostile)
    message = str(refused.value)
    assert str(hostile) in message and "\n" not in message and "export" in message
    assert not marker.exists()


def test_a_program_rewritten_unchanged_still_loads(exported, tmp_path):
    """The checks refuse what is hostile, not archives that torch.export.save did not
    write byte for byte (here: written again by Python's zipfile)."""
    _, program = exported
    copy = rewritten(program, tmp_path / "copy.pt2", lambda records: None)
    images = torch.rand(2, 3, 16, 16)
    assert torch.equal(load_program(copy)(images), load_program(program)(images))


def test_a_compressed_archive_is_refused(exported, tmp_path):
    _, program = exported
    compressed = tmp_path / "compressed.pt2"
    with zipfile.ZipFile(program) as source, zipfile.ZipFile(compressed, "w") as target:
        for entry in source.infolist():
            target.writestr(entry.filename, source.read(entry), zipfile.ZIP_DEFLATED)
    with pytest.raises(CheckpointError, match="compressed"):
        load_program(compressed)


@pytest.mark.parametrize("script", ["predict.py", "evaluate.py"])
def test_predict_and_evaluate_end_in_one_line_on_a_hostile_program(
    exported, run_python, tmp_path, script
):
    images, program = exported
    marker = tmp_path / "marker"
    hostile = rewritten(program, tmp_path / "hostile.pt2", pickled_weight(marker))
    arguments = [str(hostile), str(images)] if script == "predict.py" else [str(hostile)]
    result = run_python(script, *arguments)
    errors = [line for line in result.stderr.splitlines() if not line.startswith("INFO")]
    assert result.returncode != 0 and len(errors) == 1, result.stderr
    assert errors[0].startswith("error: refused to load") and "pickled" in errors[0]
    assert not marker.exists()
