"""What a `.pt2` file may hold before torch reads it: torch.export.load trusts its file.

torch.export.load (torch 2.x) runs code that the archive brings: it unpickles, with a full
unpickler, every weight or constant that the archive's own JSON marks `use_pickle`, every
`opaque_obj_*` constant, its sample inputs where the safe unpickler refuses them, and the
legacy `weights/<model>.pt` entries; it loads the native libraries of `data/aotinductor/`;
it hands every shape expression (`expr_str`) to sympy, which evaluates it as Python; it
turns `guards_code` into Python source and executes it; and it resolves each graph node's
target by name inside the torch, math and operator modules, so a node can call any function
reachable from there (`torch.os.system`). The program's names (nodes, inputs, attributes,
subgraphs) become part of the Python code torch generates for the graph.

So an archive is read only when what it declares is what `torch.export.save` writes for a
model of plain tensor operations: the records torch's own reader lists, no pickled payload,
no native code, and a program that torch's own schema describes within the rules of
program_graph.py (graph nodes that call ATen operators or symbolic arithmetic only, no
subgraphs, plain names, shape expressions built from sympy's constructors), with sizes that
fit in the bytes the file holds. Anything else is refused before torch sees it.
"""

import io
import json
import re
import zipfile

import torch
from torch.export.pt2_archive import PT2ArchiveReader
from torch.export.pt2_archive import constants as layout

from .checkpoint import CheckpointError, first_line, unpickle_safely
from .program_graph import UnsafeGraph, check_program_json, product_exceeds

# torch.export.load returns the program of this name; save writes only this one.
MODEL = "model"
# Records torch.export.save writes besides the program, its payloads and extra files.
FIXED_RECORDS = (
    layout.ARCHIVE_FORMAT_PATH,
    layout.ARCHIVE_VERSION_PATH,
    "byteorder",
    ".data/version",
    ".data/serialization_id",
)
# Attribute names (parameters, buffers, submodules): dotted words, as nn.Module names them.
ATTRIBUTE_NAME = re.compile(r"[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*")
# The arithmetic torch.export records for symbolic sizes, by the names it serialises.
SYMBOLIC_OPERATORS = frozenset(
    f"_operator.{name}"
    for name in "add sub mul floordiv truediv mod neg eq ne lt le gt ge and_ or_ not_".split()
) | {"torch.sym_max", "torch.sym_min", "torch.sym_not", "torch.sym_int", "torch.sym_float"}


class UnsafeProgram(Exception):
    """What makes an archive unsafe or unreadable, in words; exported.py names the file."""


def check_program_archive(data: bytes) -> None:
    """Raise UnsafeProgram unless the .pt2 archive `data` holds only what loads without
    running code from the file and without allocating more than it holds.

    Every check reads what the file says: a check that fails on a value it did not expect
    (whatever it raises) is a refusal too. Running out of memory, Ctrl-C and exit pass
    through to their own handling."""
    try:
        _check_records(_records(data))
    except (UnsafeProgram, MemoryError):
        raise
    except RecursionError:
        raise UnsafeProgram("it nests its JSON too deeply") from None
    except Exception as error:
        raise UnsafeProgram(
            f"it is malformed ({type(error).__name__}: {first_line(error)[:200]})"
        ) from None


def _check_records(records: dict[str, bytes]) -> None:
    models = [name for name in records if name.startswith(layout.MODELS_DIR)]
    if models != [layout.MODELS_FILENAME_FORMAT.format(MODEL)]:
        raise UnsafeProgram(f"it holds the programs {models[:4]}, not one named {MODEL!r}")
    sample_inputs = layout.SAMPLE_INPUTS_FILENAME_FORMAT.format(MODEL)
    for required in (layout.ARCHIVE_FORMAT_PATH, layout.ARCHIVE_VERSION_PATH, sample_inputs):
        if required not in records:
            raise UnsafeProgram(f"it lacks {required}, which torch.export.save always writes")
    allowed = {*FIXED_RECORDS, *models, sample_inputs}
    for config, directory, prefix in (
        (layout.WEIGHTS_CONFIG_FILENAME_FORMAT, layout.WEIGHTS_DIR, layout.WEIGHT_FILENAME_PREFIX),
        (
            layout.CONSTANTS_CONFIG_FILENAME_FORMAT,
            layout.CONSTANTS_DIR,
            layout.TENSOR_CONSTANT_FILENAME_PREFIX,
        ),
    ):
        config_name = config.format(MODEL)
        allowed.add(config_name)
        allowed.update(_payload_records(records, config_name, directory, prefix))
    unexpected = [
        name for name in records if name not in allowed and not name.startswith(layout.EXTRA_DIR)
    ]
    if unexpected:
        raise UnsafeProgram(
            f"it holds {unexpected[0]}, which torch.export.save does not write for a program "
            "of tensor operations (native code, pickled objects or another format)"
        )
    _check_sample_inputs(records[sample_inputs])
    _check_program(_json(records, models[0]))


def _records(data: bytes) -> dict[str, bytes]:
    """The records of the archive as torch's reader sees them, by name. Python's zipfile
    must see the same names, each stored uncompressed: then no record is larger than the
    file, and no entry is hidden from one reader and seen by the other."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            entries = archive.infolist()
        reader = PT2ArchiveReader(io.BytesIO(data))
        names = reader.get_file_names()
        records = {name: reader.read_bytes(name) for name in names}
    except (zipfile.BadZipFile, RuntimeError, AssertionError, ValueError, OSError) as error:
        raise UnsafeProgram(f"it is not a torch.export archive ({first_line(error)})") from None
    roots = {entry.filename.split("/", 1)[0] for entry in entries}
    listed = sorted(entry.filename.split("/", 1)[-1] for entry in entries)
    if len(roots) != 1 or listed != sorted(names) or len(set(names)) != len(names):
        raise UnsafeProgram("its zip directory lists other records than torch reads")
    if any(entry.compress_type != zipfile.ZIP_STORED for entry in entries):
        raise UnsafeProgram("it holds compressed records, which torch.export.save never writes")
    return records


def _payload_records(records: dict, config_name: str, directory: str, prefix: str) -> set[str]:
    """The records a weights or constants config names, checked: plain tensors only."""
    config = _json(records, config_name).get("config")
    if not isinstance(config, dict):
        raise UnsafeProgram(f"its {config_name} holds no config")
    names = set()
    for fqn, payload in config.items():
        where = f"{config_name}: {str(fqn)[:80]}"
        if not isinstance(payload, dict) or payload.get("use_pickle") is not False:
            raise UnsafeProgram(f"{where} is a pickled object, which could run code when loaded")
        path_name = payload.get("path_name")
        if not ATTRIBUTE_NAME.fullmatch(fqn) or not re.fullmatch(rf"{prefix}\d+", str(path_name)):
            raise UnsafeProgram(f"{where} is not a plain tensor ({str(path_name)[:80]})")
        record = directory + path_name
        if record not in records:
            raise UnsafeProgram(f"{where} names {record}, which the archive lacks")
        _check_payload_size(payload.get("tensor_meta"), len(records[record]), where)
        names.add(record)
    return names


def _check_payload_size(meta, size: int, where: str) -> None:
    """A tensor declares no more elements than its record has bytes: torch makes an empty
    record into zeros of the declared size, and views a record at any declared stride."""
    if not isinstance(meta, dict) or not isinstance(meta.get("sizes"), list):
        raise UnsafeProgram(f"{where} declares no tensor sizes")
    sizes = [_plain_int(entry, where) for entry in meta["sizes"]]
    if any(side < 0 for side in sizes) or product_exceeds(sizes, size):
        raise UnsafeProgram(f"{where} declares sizes {sizes}, more than its {size} bytes hold")


def _plain_int(entry, where: str) -> int:
    value = entry.get("as_int") if isinstance(entry, dict) else None
    if type(value) is not int:
        raise UnsafeProgram(f"{where} declares a size that is not a plain integer")
    return value


def _check_sample_inputs(data: bytes) -> None:
    """torch reads the sample inputs with the safe unpickler, and where that fails on them
    for any reason, with the full one: refuse them here instead."""
    try:
        unpickle_safely(io.BytesIO(data), "sample inputs")
    except CheckpointError:
        raise UnsafeProgram(
            "its sample inputs are not plain tensors that torch's safe unpickler reads (the "
            "record is corrupt or holds other objects), and torch would read them with the "
            "full unpickler, which runs code"
        ) from None


def _check_program(program: dict) -> None:
    """The program's graph calls ATen operators only, names plain attributes, and declares
    no code, subgraphs or huge sizes (program_graph.py)."""
    try:
        check_program_json(program, _is_allowed_target)
    except UnsafeGraph as problem:
        raise UnsafeProgram(str(problem)) from None


def _is_allowed_target(target) -> bool:
    """An ATen operator overload that touches no file, or symbolic size arithmetic."""
    if not isinstance(target, str):
        return False
    if target in SYMBOLIC_OPERATORS:
        return True
    parts = target.split(".")
    if len(parts) != 5 or parts[:3] != ["torch", "ops", "aten"]:
        return False
    try:
        operator = getattr(getattr(torch.ops.aten, parts[3]), parts[4])
    except (AttributeError, RuntimeError):
        return False
    if not isinstance(operator, torch._ops.OpOverload):
        return False
    return "filename" not in {argument.name for argument in operator._schema.arguments}


def _json(records: dict[str, bytes], name: str) -> dict:
    if name not in records:
        raise UnsafeProgram(f"it lacks {name}")
    try:
        loaded = json.loads(records[name])
    except (ValueError, RecursionError) as error:
        raise UnsafeProgram(f"its {name} is not JSON ({first_line(error)})") from None
    if not isinstance(loaded, dict):
        raise UnsafeProgram(f"its {name} is not a JSON object")
    return loaded
