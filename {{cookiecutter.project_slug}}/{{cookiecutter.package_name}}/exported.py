"""Model files for inference: what export.py writes, and what predict.py and evaluate.py read.

Weights alone do not say how to use them: which class each output means, how the images
were normalised, which model to build. export.py writes these beside the weights file, as
`<file>.json` (e.g. `weights.pt.json`); a .safetensors file also keeps them in its own
header, so that it works alone. predict.py and evaluate.py take a training checkpoint or
such an exported file alike.
"""

import json
from pathlib import Path

from .checkpoint import (
    SAFETENSORS,
    CheckpointError,
    first_line,
    load_checkpoint,
    load_weights,
    safetensors_library,
    write_weights,
)
from .files import atomic_write_text

# What a checkpoint holds beside its weights that using them needs.
INFO_KEYS = ("classes", "normalization", "config")


def info_path(weights: Path) -> Path:
    """`weights.pt` -> `weights.pt.json`: what export.py writes beside a weights file."""
    return weights.with_name(weights.name + ".json")


def export_weights(checkpoint_path: Path, output: Path) -> Path:
    """Write the model weights of a checkpoint for inference (.pt or .safetensors by the
    suffix of `output`), atomically, with the class names, normalisation and config."""
    checkpoint = load_checkpoint(checkpoint_path)
    info = {key: checkpoint.get(key) for key in INFO_KEYS}
    header = {key: json.dumps(value) for key, value in info.items()}
    write_weights(checkpoint["model"], output, header)
    card = {"checkpoint": str(checkpoint_path), "step": _step(checkpoint), **info}
    atomic_write_text(info_path(output), json.dumps(card, indent=2) + "\n")
    return output


def _step(checkpoint: dict) -> int:
    return int(checkpoint.get("progress", {}).get("global_step", -1))


def load_model_file(path: Path) -> dict:
    """A training checkpoint, or weights that export.py wrote, as a dict with the model
    weights and the keys of INFO_KEYS; CheckpointError naming the file otherwise."""
    path = Path(path)
    info = read_info(path)
    if info is None:
        if path.suffix == SAFETENSORS:
            raise CheckpointError(
                f"{path} holds model weights only, without the class names and settings "
                "that using them needs; give the checkpoint they came from, or export it "
                "with python export.py CHECKPOINT"
            )
        return load_checkpoint(path)
    return {**info, "model": load_weights(path), "progress": {"global_step": info["step"]}}


def read_info(path: Path) -> dict | None:
    """What export.py recorded with the weights file `path`: from `<path>.json`, else from
    a .safetensors header; None where neither holds it (e.g. a training checkpoint)."""
    card = info_path(path)
    if card.is_file():
        try:
            info = json.loads(card.read_text(encoding="utf-8"))
        except (ValueError, OSError) as error:
            raise CheckpointError(f"{card} is unreadable ({first_line(error)})") from None
        return {**info, "step": info.get("step", -1)}
    if path.suffix != SAFETENSORS or not path.is_file():
        return None
    header = _safetensors_header(path)
    if not all(key in header for key in INFO_KEYS):
        return None
    try:
        return {**{key: json.loads(header[key]) for key in INFO_KEYS}, "step": -1}
    except ValueError as error:
        raise CheckpointError(f"{path}: its header is unreadable ({first_line(error)})") from None


def _safetensors_header(path: Path) -> dict[str, str]:
    """The text metadata in the header of a .safetensors file."""
    library, library_error = safetensors_library("reading", path)
    try:
        with library.safe_open(str(path), framework="pt") as file:
            return file.metadata() or {}
    except (library_error, OSError) as error:
        raise CheckpointError(f"{path} is truncated or corrupt ({first_line(error)})") from None
