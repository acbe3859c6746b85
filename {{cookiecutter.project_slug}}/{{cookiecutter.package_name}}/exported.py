"""Model files for inference: what export.py writes, and what predict.py and evaluate.py read.

Weights alone do not say how to use them: which class each output means, how the images
were normalised, which model to build. export.py writes these beside the weights file, as
`<file>.json` (e.g. `weights.pt.json`); a .safetensors file also keeps them in its own
header, so that it works alone. predict.py and evaluate.py take a training checkpoint or
such an exported file alike.
"""

import io
import json
import logging
import os
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from .checkpoint import (
    SAFETENSORS,
    CheckpointError,
    first_line,
    load_checkpoint,
    load_weights,
    safetensors_library,
    write_weights,
)
from .config import ConfigError
from .ema import inference_weights
from .features import has_feature
from .files import (
    RECORD_LIMIT,
    atomic_write_text,
    file_record,
    matches,
    read_record,
    read_small_json,
)
from .program_archive import UnsafeProgram, check_program_archive

# What a checkpoint holds beside its weights that using them needs.
INFO_KEYS = ("classes", "normalization", "config")
# Files that hold the model itself as a program (export_program.py): torch.export, ONNX.
PROGRAM, ONNX = ".pt2", ".onnx"
PROGRAMS = (PROGRAM, ONNX)


def weights_suffix() -> str:
    """.safetensors where the project writes them (the safetensors feature), else .pt."""
    return SAFETENSORS if has_feature("safetensors_io") else ".pt"


def info_path(weights: Path) -> Path:
    """`weights.pt` -> `weights.pt.json`: what export.py writes beside a weights file."""
    return weights.with_name(weights.name + ".json")


def export_weights(checkpoint_path: Path, output: Path) -> Path:
    """Write the model weights of a checkpoint for inference (.pt or .safetensors by the
    suffix of `output`), atomically, with the class names, normalisation and config."""
    checkpoint = load_checkpoint(checkpoint_path)
    info = {key: checkpoint.get(key) for key in INFO_KEYS}
    weights = inference_weights(checkpoint)  # the moving average, where the run kept one
    write_weights(weights, output, {key: json.dumps(info[key]) for key in info})
    write_card(output, checkpoint_path, checkpoint)
    return output


def write_card(output: Path, checkpoint_path: Path, checkpoint: dict, **more) -> Path:
    """`<output>.json`: where the exported file came from, INFO_KEYS, `more`, and the size
    and SHA-256 of `output` as written ("file"): a later export replaces `output` only while
    it is still that file (check_replaceable)."""
    card = {"checkpoint": str(checkpoint_path), "step": _step(checkpoint)}
    card.update({key: checkpoint.get(key) for key in INFO_KEYS}, **more)
    card["file"] = file_record(output)
    atomic_write_text(info_path(output), json.dumps(card, indent=2) + "\n")
    return info_path(output)


def check_replaceable(output: Path) -> None:
    """ConfigError unless `output` is new, or still the file its card records (size and
    SHA-256): a file the user put in its place keeps the card beside it, and a card from an
    export.py that recorded no checksum cannot tell such a file from its own."""
    if not os.path.lexists(output):
        return
    card = read_record(info_path(output), "checkpoint")
    if card is not None and matches(output, card.get("file")):
        return
    if card is not None and "file" not in card:
        why = "its card records no checksum of it (an older export.py wrote it)"
    else:
        why = "it is not the file its card describes (changed or replaced since the export)"
    raise ConfigError(
        f"OUTPUT {output} exists and {why}, so export.py may not replace it; move it away "
        "(or delete it, if it is an export you no longer need), or name a new OUTPUT"
    )


def _step(checkpoint: dict) -> int:
    return int(checkpoint.get("progress", {}).get("global_step", -1))


def load_model_file(path: Path) -> dict:
    """A training checkpoint, or weights that export.py wrote, as a dict with the model
    weights and the keys of INFO_KEYS; CheckpointError naming the file otherwise."""
    path = Path(path)
    info = read_info(path)
    if path.suffix in PROGRAMS:  # the program is read by load_program: here its settings
        if info is None:
            raise CheckpointError(f"{path}: its {info_path(path).name} is missing; export again")
        return {**info, "progress": {"global_step": info["step"]}}
    if info is None:
        if path.suffix == SAFETENSORS:
            raise CheckpointError(
                f"{path} holds model weights only, without the class names and settings "
                "that using them needs; give the checkpoint they came from, or export it "
                "with python export.py CHECKPOINT"
            )
        return load_checkpoint(path)
    return {**info, "model": load_weights(path), "progress": {"global_step": info["step"]}}


class OnnxModel:
    """An ONNX file run by onnxruntime on the CPU, called like the model it came from."""

    def __init__(self, path: Path) -> None:
        import onnxruntime  # an optional package: pip install -e .[export]

        try:
            self.session = onnxruntime.InferenceSession(
                str(path), providers=["CPUExecutionProvider"]
            )
        except Exception as error:  # onnxruntime's errors share no base class but Exception
            raise CheckpointError(
                f"{path} is not a readable ONNX model ({first_line(error)})"
            ) from None
        self.input = self.session.get_inputs()[0].name

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        logits = self.session.run(None, {self.input: images.float().cpu().numpy()})[0]
        return torch.from_numpy(logits)


def load_program(path: Path) -> nn.Module | OnnxModel:
    """The model of a .pt2 or .onnx file, on the CPU, in evaluation mode as exported."""
    if path.suffix == ONNX:
        return OnnxModel(path)
    data = path.read_bytes()  # checked and loaded from the same bytes
    try:
        check_program_archive(data)
    except UnsafeProgram as problem:
        raise CheckpointError(
            f"refused to load {path}: {problem}; export it again with this project's "
            "python export.py CHECKPOINT OUTPUT.pt2, or give the checkpoint instead"
        ) from None
    with torch_export_warnings() as warnings:
        try:
            return torch.export.load(io.BytesIO(data)).module()
        except Exception as error:  # torch's deserializer raises every kind on a bad file
            reason = warnings[0] if warnings else first_line(error)
    raise CheckpointError(f"{path} is not a readable torch.export program ({reason})")


@contextmanager
def torch_export_warnings():
    """The first lines of what torch.export logs while loading, kept from the screen:
    torch.export.load logs a traceback where its loader fails, then tries an older format."""
    found: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            error = record.exc_info[1] if record.exc_info else None
            found.append(first_line(error) if error else record.getMessage())

    torch_logger = logging.getLogger("torch.export")
    handler, propagate = Keep(), torch_logger.propagate
    torch_logger.addHandler(handler)
    torch_logger.propagate = False
    try:
        yield found
    finally:
        torch_logger.removeHandler(handler)
        torch_logger.propagate = propagate


def read_info(path: Path) -> dict | None:
    """What export.py recorded with the weights file `path`: from `<path>.json`, else from
    a .safetensors header; None where neither holds it (e.g. a training checkpoint)."""
    card = read_card(info_path(path))
    if card is not None:
        return card
    if path.suffix != SAFETENSORS or not path.is_file():
        return None
    header = _safetensors_header(path)
    if not all(key in header for key in INFO_KEYS):
        return None
    try:
        return {**{key: json.loads(header[key]) for key in INFO_KEYS}, "step": -1}
    except ValueError as error:
        raise CheckpointError(f"{path}: its header is unreadable ({first_line(error)})") from None


def read_card(card: Path) -> dict | None:
    """The export card `card` as a dict with its "step"; None where there is none.
    Read only as a regular file of at most RECORD_LIMIT bytes (a pipe would wait forever,
    /dev/zero never end); anything else that is not a card is one CheckpointError."""
    try:
        info = read_small_json(card, RECORD_LIMIT, "an export card")
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:  # not a regular file, too large, not JSON
        raise CheckpointError(
            f"{card} is unreadable ({first_line(error)}); export the model again"
        ) from None
    step = info.get("step", -1) if isinstance(info, dict) else None
    if type(step) is not int:
        raise CheckpointError(f"{card} is not an export card of this project; export it again")
    return {**info, "step": step}


def _safetensors_header(path: Path) -> dict[str, str]:
    """The text metadata in the header of a .safetensors file."""
    library, library_error = safetensors_library("reading", path)
    try:
        with library.safe_open(str(path), framework="pt") as file:
            return file.metadata() or {}
    except (library_error, OSError) as error:
        raise CheckpointError(f"{path} is truncated or corrupt ({first_line(error)})") from None
