"""Model files from someone else: reading one runs no code from it, and what it declares
(sizes, statistics, classes) is checked before anything is built or allocated."""

import io
import json
import os
import pickle
import resource
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
import torchvision
from conftest import PROJECT_ROOT, SMALL_OVERRIDES, write_images

from {{ cookiecutter.package_name }}.checkpoint import CheckpointError
from {{ cookiecutter.package_name }}.cli import DEFAULT_CONFIG
from {{ cookiecutter.package_name }}.config import load_config
from {{ cookiecutter.package_name }}.data import DataError, builtin
from {{ cookiecutter.package_name }}.export_program import export_program, onnx_missing
from {{ cookiecutter.package_name }}.exported import export_weights, info_path, load_program
from {{ cookiecutter.package_name }}.inference import evaluate_checkpoint, load_trained
from {{ cookiecutter.package_name }}.train import main

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


def program_edit(edit):
    return lambda records: edit_json(records, PROGRAM, edit)


def subgraph_named_with_code(marker: Path):
    """A subgraph argument: torch registers it under its name and writes the name into
    the code of `forward` as an attribute."""
    touch = f'getattr(__import__("pathlib"), "Path")("{marker}").touch()'
    name = f'g") if {touch} else getattr(self, "g'

    def edit(program):
        graph = program["graph_module"]["graph"]
        meta = next(iter(graph["tensor_values"].values()))
        subgraph = {
            "inputs": [{"as_tensor": {"name": "sub_x"}}],
            "outputs": [{"as_tensor": {"name": "sub_x"}}],
            "nodes": [],
            "tensor_values": {"sub_x": meta},
            "sym_int_values": {},
            "sym_bool_values": {},
            "is_single_tensor_return": True,
            "custom_obj_values": {},
            "sym_float_values": {},
        }
        for argument in graph["nodes"][0]["inputs"]:
            if argument["name"] == "bias":
                argument["arg"] = {"as_graph": {"name": name, "graph": subgraph}}

    return program_edit(edit)


def tensor_named_with_code(marker: Path):
    """A node's name, everywhere it is used: torch names the node's variable by it."""
    code = f"conv2d = __import__('pathlib').Path({str(marker)!r}).touch(); conv2d"

    def change(records):
        text = records[PROGRAM].decode()
        assert '"conv2d"' in text
        records[PROGRAM] = text.replace('"conv2d"', json.dumps(code)).encode()

    return change


def first_argument(argument: dict):
    def edit(program):
        program["graph_module"]["graph"]["nodes"][0]["inputs"][-1]["arg"] = argument

    return program_edit(edit)


def input_spec_context(context: list):
    """The spec of the program's inputs, with keyword arguments named by `context`."""

    def edit(program):
        signature = program["graph_module"]["module_call_graph"][0]["signature"]
        spec = json.loads(signature["in_spec"])
        spec[1]["children_spec"][1]["context"] = json.dumps(context)
        signature["in_spec"] = json.dumps(spec)

    return program_edit(edit)


def range_constraint(symbol: str, low, high):
    def edit(program):
        program["range_constraints"][symbol] = {"min_val": low, "max_val": high}

    return program_edit(edit)


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
    "a subgraph named with code": subgraph_named_with_code,
    "a tensor named with code": tensor_named_with_code,
    "an operator as an argument": lambda marker: first_argument({"as_operator": "torch.os.system"}),
    "a custom object argument": lambda marker: first_argument(
        {"as_custom_obj": {"name": "obj", "class_fqn": "__torch__.torch.classes.a.B"}}
    ),
    "keyword arguments named with code": lambda marker: input_spec_context(["x') or print('"]),
    "an enum that torch would import": lambda marker: input_spec_context(
        [{"__enum__": True, "fqn": "antigravity:X", "name": "a"}]
    ),
    "a symbol index torch counts up to": lambda marker: range_constraint("u10000000", 0, None),
    "a range beyond 64 bits": lambda marker: range_constraint("s1", 0, 2**70),
    "node metadata torch does not write": lambda marker: program_edit(
        lambda program: program["graph_module"]["graph"]["nodes"][0]["metadata"].update(a="b")
    ),
    "a key torch's schema does not have": lambda marker: program_edit(
        lambda program: program["graph_module"]["graph"].update(subgraphs={})
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", HOSTILE)
def test_a_hostile_program_is_refused_before_torch_reads_it(exported, tmp_path, case):
    _, program = exported
    marker = tmp_path / "marker"
    hostile = rewritten(program, tmp_path / "hostile.pt2", HOSTILE[case](marker))
    with pytest.raises(CheckpointError) as refused:
        load_program(hostile)
    message = str(refused.value)
    assert message.startswith(f"refused to load {hostile}: ") and "\n" not in message
    assert "export" in message and not marker.exists()


def removed(name: str):
    return lambda records: records.pop(name)


def replaced(name: str, data: bytes):
    return lambda records: records.update({name: data})


def input_spec_node(edit):
    """The spec of the program's inputs, its root node changed by `edit`."""

    def change(program):
        signature = program["graph_module"]["module_call_graph"][0]["signature"]
        spec = json.loads(signature["in_spec"])
        edit(spec[1])
        signature["in_spec"] = json.dumps(spec)

    return program_edit(change)


# Archives broken rather than hostile, and the words that say what is wrong.
MALFORMED = {
    "a corrupt sample inputs record": (
        replaced(SAMPLE_INPUTS, b"}q\x00(X\x01\x00\x00\x00aq\x01s."),
        "sample inputs",
    ),
    "an empty sample inputs record": (replaced(SAMPLE_INPUTS, b""), "sample inputs"),
    "no sample inputs": (removed(SAMPLE_INPUTS), f"lacks {SAMPLE_INPUTS}"),
    "no archive version": (removed("archive_version"), "lacks archive_version"),
    "no archive format": (removed("archive_format"), "archive_format"),
    "no weights config": (removed(WEIGHTS_CONFIG), f"lacks {WEIGHTS_CONFIG}"),
    "no constants config": (removed(CONSTANTS_CONFIG), f"lacks {CONSTANTS_CONFIG}"),
    "a spec type that is a list": (
        input_spec_node(lambda node: node.update(type=["builtins.tuple"])),
        "type ['builtins.tuple']",
    ),
    "a spec type that is an object": (
        input_spec_node(lambda node: node.update(type={"builtins.tuple": 1})),
        "type {'builtins.tuple': 1}",
    ),
    "spec children that are an object": (
        input_spec_node(lambda node: node.update(children_spec={})),
        "children {}",
    ),
}


@pytest.mark.parametrize("case", MALFORMED)
def test_a_malformed_program_is_refused_in_one_line_saying_what_is_wrong(exported, tmp_path, case):
    _, program = exported
    change, words = MALFORMED[case]
    malformed = rewritten(program, tmp_path / "malformed.pt2", change)
    with pytest.raises(CheckpointError) as refused:
        load_program(malformed)
    message = str(refused.value)
    assert message.startswith(f"refused to load {malformed}: ") and "\n" not in message
    assert words in message, message


@pytest.mark.parametrize("failure", [IndexError, KeyError, TypeError, AttributeError])
def test_any_failure_of_a_check_on_the_file_is_a_refusal(exported, monkeypatch, failure):
    """The checks read values the file chose: one that fails in a way nobody foresaw
    refuses the file in one line, it does not end the program with a traceback."""
    _, program = exported
    archive_checks = sys.modules[load_program.__module__.rsplit(".", 1)[0] + ".program_archive"]

    def check_fails(_):
        raise failure("unforeseen")

    monkeypatch.setattr(archive_checks, "_check_program", check_fails)
    with pytest.raises(CheckpointError) as refused:
        load_program(program)
    message = str(refused.value)
    assert message.startswith(f"refused to load {program}: ") and failure.__name__ in message


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


@pytest.mark.slow
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


@pytest.fixture(scope="module")
def weights_file(exported) -> Path:
    """Weights that export.py wrote (.pt, read in every project), with their card."""
    _, program = exported
    output = program.with_name("model.pt")
    export_weights(program.parent / "run" / "checkpoints" / "last.pt", output)
    return output


def with_card(source: Path, output: Path, edit) -> Path:
    """A copy of the exported `source` whose card `edit(card)` changes."""
    shutil.copyfile(source, output)
    card = json.loads(info_path(source).read_text(encoding="utf-8"))
    edit(card)
    info_path(output).write_text(json.dumps(card), encoding="utf-8")
    return output


def set_config(section: str, key: str, value):
    return lambda card: card["config"][section].update({key: value})


def set_statistics(mean, std):
    return lambda card: card.update(normalization={"mean": mean, "std": std})


NAN, INF = float("nan"), float("inf")
DECLARED = {
    "a 100,000 px image size": (set_config("data", "image_size", 100_000), "beyond"),
    "a 100,000 px resize": (set_config("data", "resize", 100_000), "beyond"),
    "a 100,000-wide model": (set_config("model", "width", 100_000), "does not fit"),
    "a class list longer than the classifier": (
        lambda card: card.update(classes=["a", "b", "c", "d"]),
        "does not fit",
    ),
    "200,000 classes": (lambda card: card.update(classes=[str(n) for n in range(200_000)]), ""),
    "repeated class names": (lambda card: card.update(classes=["a", "a", "b"]), "distinct"),
    "class names that are not names": (lambda card: card.update(classes=[1, 2, 3]), "names"),
    "std 0": (set_statistics([0.5] * 3, [0.2, 0.0, 0.2]), "> 0"),
    "a negative std": (set_statistics([0.5] * 3, [0.2, -1.0, 0.2]), "> 0"),
    "a NaN std": (set_statistics([0.5] * 3, [0.2, NAN, 0.2]), "finite"),
    "an infinite std": (set_statistics([0.5] * 3, [INF, 0.2, 0.2]), "finite"),
    "a NaN mean": (set_statistics([NAN, 0.5, 0.5], [0.2] * 3), "finite"),
    "an infinite mean": (set_statistics([0.5, -INF, 0.5], [0.2] * 3), "finite"),
    "statistics of the wrong length": (set_statistics([0.5], [0.2]), "channels"),
    "statistics that are text": (set_statistics("0.5", "0.2"), "finite"),
    "a mean without a std": (set_statistics([0.5] * 3, None), "finite"),
    "a billion built-in validation images": (
        lambda card: card["config"]["data"].update(dataset="shapes", val_size=10**9),
        "data.val_size",
    ),
    "a batch of a billion images": (set_config("data", "batch_size", 10**9), "data.batch_size"),
    "ten thousand loader processes": (
        set_config("data", "num_workers", 10_000),
        "data.num_workers",
    ),
}


@pytest.mark.parametrize("case", DECLARED)
def test_what_a_file_declares_is_checked_before_use(weights_file, tmp_path, case):
    edit, words = DECLARED[case]
    hostile = with_card(weights_file, tmp_path / "model.pt", edit)
    with pytest.raises(CheckpointError) as refused:
        load_trained(hostile, ["train.device=cpu"])
    message = str(refused.value)
    assert str(hostile) in message and words in message and "\n" not in message


def card_text(text: str):
    """A card replaced by `text`."""
    return lambda card: card.write_text(text, encoding="utf-8")


def card_folder(card: Path) -> None:
    card.unlink()
    card.mkdir()


# A card that is not one, each read in-process: one CheckpointError naming it.
BAD_CARDS = {
    "not JSON": card_text("{"),
    "not UTF-8": lambda card: card.write_bytes(b"\xff\xfe{"),
    "nested a million levels deep": card_text("[" * 1_000_000),
    "a list": card_text("[1, 2, 3]"),
    "a step that is text": card_text('{"step": "ten"}'),
    "a folder": card_folder,
}


@pytest.mark.parametrize("case", BAD_CARDS)
def test_a_card_that_is_not_one_is_one_line(weights_file, tmp_path, case):
    hostile = with_card(weights_file, tmp_path / "model.pt", lambda card: None)
    BAD_CARDS[case](info_path(hostile))
    with pytest.raises(CheckpointError) as refused:
        load_trained(hostile, ["train.device=cpu"])
    message = str(refused.value)
    assert str(info_path(hostile)) in message and "\n" not in message


def limited_memory() -> None:
    """preexec_fn of a child: 8 GiB of address space, so that an unbounded read fails there
    instead of filling this machine."""
    resource.setrlimit(resource.RLIMIT_AS, (8 << 30, 8 << 30))


@pytest.mark.slow
def test_a_card_that_never_ends_is_refused_unread(weights_file, tmp_path):
    """A card that is a pipe nobody writes (opening it waits forever), /dev/zero (reading it
    never ends) or a sparse 16 GiB file: each refused in one line, in a child bounded in
    time and memory, since reading any of them would hang or fill the memory."""
    cards = {}
    for name in ("pipe", "zero", "huge"):
        cards[name] = with_card(weights_file, tmp_path / f"{name}.pt", lambda card: None)
        info_path(cards[name]).unlink()
    os.mkfifo(info_path(cards["pipe"]))
    info_path(cards["zero"]).symlink_to("/dev/zero")
    with info_path(cards["huge"]).open("wb") as file:
        file.truncate(16 << 30)
    script = (
        f"import sys\nfrom pathlib import Path\nfrom {load_trained.__module__} import "
        "load_trained\nfor name in sys.argv[1:]:\n    try:\n        load_trained(Path(name), "
        "['train.device=cpu'])\n    except Exception as error:\n        print(type(error)"
        ".__name__, ' '.join(str(error).split()))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, *map(str, cards.values())],
        cwd=PROJECT_ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(PROJECT_ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=limited_memory,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert len(lines) == 3, result.stdout
    for line, model in zip(lines, cards.values(), strict=True):
        assert line.startswith(f"CheckpointError {info_path(model)} is unreadable"), line


def test_a_file_starts_no_download_the_user_did_not_ask_for(
    weights_file, tmp_path, monkeypatch, project_log
):
    """A card whose config says data.download=true, for a torchvision dataset into a folder
    it names: evaluating it downloads nothing (one warning says so); the user's own
    data.download=true does."""
    root = tmp_path / "data"
    asks = set_config("data", "dataset", "cifar10")
    hostile = with_card(
        weights_file,
        tmp_path / "model.pt",
        lambda card: [asks(card), card["config"]["data"].update(download=True, root=str(root))],
    )
    downloads = []

    class Recorder:  # torchvision's CIFAR10, without its files and without a network
        def __init__(self, root, train, download):
            downloads.append(download)
            raise RuntimeError("Dataset not found. You can use download=True to download it")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", Recorder)
    trained = load_trained(hostile, ["train.device=cpu"])
    warnings = [record.getMessage() for record in project_log.records]
    assert len(warnings) == 1 and "data.download=true" in warnings[0], warnings
    with pytest.raises(DataError, match="data.download=true"):
        evaluate_checkpoint(trained)
    assert downloads == [False] and not root.exists()
    trained = load_trained(hostile, ["train.device=cpu", "data.download=true"])
    with pytest.raises(DataError):
        evaluate_checkpoint(trained)
    assert downloads == [False, True] and len(project_log.records) == 1


PROGRAM_CARDS = {
    "another channel count": (lambda card: card.update(in_channels=1), "does not take"),
    "channels that are not 1 or 3": (lambda card: card.update(in_channels=64), "not 1 or 3"),
    "more classes than outputs": (
        lambda card: card.update(classes=["a", "b", "c", "d"]),
        "one score for each of the 4 classes",
    ),
    "another image size": (set_config("data", "image_size", 8), ""),
}


def onnx_program(exported, folder: Path) -> Path:
    missing = onnx_missing()
    if missing is not None:
        pytest.skip(f"{missing} is not installed (pip install -e .[export])")
    _, program = exported
    output = folder / "model.onnx"
    export_program(program.parent / "run" / "checkpoints" / "last.pt", output)
    return output


@pytest.mark.slow
@pytest.mark.parametrize("suffix", [".pt2", ".onnx"])
@pytest.mark.parametrize("case", PROGRAM_CARDS)
def test_a_program_that_does_not_fit_its_card_is_refused(exported, tmp_path, case, suffix):
    edit, words = PROGRAM_CARDS[case]
    source = exported[1] if suffix == ".pt2" else onnx_program(exported, tmp_path)
    hostile = with_card(source, tmp_path / f"hostile{suffix}", edit)
    try:
        load_trained(hostile, ["train.device=cpu"])
    except CheckpointError as refused:
        assert str(hostile) in str(refused) and words in str(refused)
        assert "\n" not in str(refused)
    else:  # a program of dynamic size may take other sizes: then its outputs must fit
        assert case == "another image size"


@pytest.fixture(scope="module")
def shapes_weights(tmp_path_factory) -> Path:
    """Weights that export.py wrote for a run on the built-in shapes, with their card."""
    root = tmp_path_factory.mktemp("shapes")
    settings = [*SMALL_OVERRIDES, "data.image_size=16", f"run.dir={root / 'run'}"]
    assert main(load_config([DEFAULT_CONFIG], settings)) == 0
    return export_weights(root / "run" / "checkpoints" / "last.pt", root / "model.pt")


@pytest.mark.slow
def test_evaluation_builds_no_training_set(shapes_weights, tmp_path):
    """A card may declare any data.train_size: evaluating needs only the validation images,
    which are the same whatever it says (here 10**12 images, which would not fit)."""
    huge_set = set_config("data", "train_size", 10**12)
    huge = with_card(shapes_weights, tmp_path / "model.pt", huge_set)
    expected = evaluate_checkpoint(load_trained(shapes_weights, ["train.device=cpu"]))
    found = evaluate_checkpoint(load_trained(huge, ["train.device=cpu"]))
    assert torch.equal(found.confusion, expected.confusion) and found.loss == expected.loss


def test_an_allocation_that_fails_is_one_line_naming_the_setting(shapes_weights, monkeypatch):
    trained = load_trained(shapes_weights, ["train.device=cpu"])

    def refuse(*arguments, **settings):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1e12")

    monkeypatch.setattr(builtin, "make_shapes", refuse)
    with pytest.raises(DataError) as refused:
        evaluate_checkpoint(trained)
    message = str(refused.value)
    assert "data.val_size=64" in message and "memory" in message and "\n" not in message
    monkeypatch.undo()
    monkeypatch.setattr(trained, "logits", refuse)
    with pytest.raises(DataError, match="data.batch_size=32"):
        evaluate_checkpoint(trained)
