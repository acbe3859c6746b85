"""A checkpoint's model as a program, checked against the model itself: a torch.export
program (`.pt2`), or ONNX (`.onnx`, from torch's ONNX exporter; run with onnxruntime).

torch.export traces the model into a graph that runs without this project's model code, and
the ONNX exporter translates that graph. Either can drift from the model it came from (an
operator lowered differently, a shape specialised), so the program, read back from its
file, runs on real validation images beside the model: the largest difference of their
logits and how often their top-1 classes agree are printed and written to the file's
`.json`. Beyond TOLERANCE the export fails and leaves no file. ONNX needs the optional
packages of `pip install -e .[export]`; without them errors.py names that command.

Each export writes its files together, or none (files.staged_files: a failure or a signal
on the way leaves nothing), and replaces only files an earlier export wrote: an OUTPUT whose
card is export.py's, in an export folder the files its SUMMARY records with their SHA-256
and that still match (`check_output_file`, `check_export_folder`). Nothing is written into a
run's checkpoints folder, whichever way (a symbolic link included) the path leads there.
"""

import importlib.util
import io
import json
import os
from pathlib import Path

import torch
from torch import nn

from .checkpoint import CheckpointError
from .config import ConfigError
from .data import build_loader
from .exported import ONNX, info_path, load_model_file, load_program, write_card
from .files import (
    atomic_path,
    atomic_write_text,
    foreign_file,
    read_record,
    recorded_files,
    staged_files,
    written_record,
)
from .inference import load_trained, validation_data
from .runs import CHECKPOINTS, is_run_folder

# The largest difference of a logit that counts as the same model: float32 reorderings of
# the same arithmetic stay far below it.
TOLERANCE = 1e-4
# How many validation images the program is checked on (all of them, if fewer).
PARITY_IMAGES = 256
# What export.py writes beside the files of a whole export: the figures of each.
SUMMARY = "export.json"


def export_program(checkpoint: Path, output: Path) -> dict:
    """Write `output` (.pt2 or .onnx) and its `.json` together (files.staged_files); return
    the parity figures. CheckpointError (and no file) where the program differs from the
    model beyond TOLERANCE."""
    with staged_files(output.parent) as staging:
        return write_program(checkpoint, staging / output.name)


def write_program(checkpoint: Path, output: Path) -> dict:
    """export_program, written straight to `output` (inside a staging folder)."""
    trained = load_trained(checkpoint, ["train.device=cpu"])  # a program for every machine
    images = validation_images(trained.cfg, PARITY_IMAGES)
    batch = torch.export.Dim("batch", min=1)
    program = torch.export.export(trained.model, (images[:2],), dynamic_shapes=({0: batch},))
    with atomic_path(output) as temporary:
        save_program(program, images[:2], output.suffix, temporary)
    parity = measure_parity(trained.model, load_program(output), images)
    if parity["max_abs_logit_difference"] > TOLERANCE or parity["top1_agreement"] < 1:
        raise CheckpointError(
            f"the torch.export program of {checkpoint} differs from the model on "
            f"{parity['images']} validation images (largest logit difference "
            f"{parity['max_abs_logit_difference']:.2e}, top-1 agreement "
            f"{parity['top1_agreement']:.4f}); export the weights instead (OUTPUT ending in .pt)"
        )
    saved = load_model_file(checkpoint)
    write_card(output, checkpoint, saved, in_channels=trained.in_channels, parity=parity)
    return parity


def onnx_missing() -> str | None:
    """The first package ONNX export needs that is not installed (None: all are)."""
    for name in ("onnx", "onnxscript", "onnxruntime"):
        if importlib.util.find_spec(name) is None:
            return name
    return None


def export_all(checkpoint: Path, folder: Path) -> dict:
    """`folder`/model<weights suffix>, model.pt2 and (with the `[export]` packages)
    model.onnx, each read back and checked against the model on the same validation images;
    SUMMARY gathers the figures. Returns them, by file name (a skipped format: why).

    The files are made together and replace an earlier export's as one set (see
    files.staged_files): its files that this export does not make are removed.
    """
    with staged_files(folder, retire=earlier_export(folder)) as staging:
        return _write_all(checkpoint, staging)


def _write_all(checkpoint: Path, folder: Path) -> dict:
    from .exported import export_weights, weights_suffix

    weights = export_weights(checkpoint, folder / f"model{weights_suffix()}")
    trained = load_trained(checkpoint, ["train.device=cpu"])
    images = validation_images(trained.cfg, PARITY_IMAGES)
    reloaded = load_trained(weights, ["train.device=cpu"]).model
    figures = {weights.name: measure_parity(trained.model, reloaded, images)}
    figures["model.pt2"] = write_program(checkpoint, folder / "model.pt2")
    missing = onnx_missing()
    if missing is None:
        figures["model.onnx"] = write_program(checkpoint, folder / "model.onnx")
    else:
        needs = f'{missing} is not installed: pip install -e ".[export]"'
        figures["model.onnx"] = {"skipped": needs}
    summary = {"checkpoint": str(checkpoint), "tolerance": TOLERANCE, "files": figures}
    # What this export wrote, as it wrote it: the next one replaces or removes only these.
    summary["written"] = written_record(folder, (path.name for path in folder.iterdir()))
    atomic_write_text(folder / SUMMARY, json.dumps(summary, indent=2) + "\n")
    return figures


def earlier_export(folder: Path) -> dict[str, object]:
    """The files the export in `folder` wrote, by name, each with its record (size and
    SHA-256) from its SUMMARY; none where `folder` holds no export, or one whose SUMMARY
    records no files (then nothing of it is removed: files.staged_files)."""
    return recorded_files(read_record(folder / SUMMARY, "files"))


def export_names() -> list[str]:
    """The names of the files an export of everything writes here (model.onnx only with
    the `[export]` packages), their cards included, less SUMMARY."""
    from .exported import weights_suffix

    models = [f"model{weights_suffix()}", "model.pt2"]
    if onnx_missing() is None:
        models.append("model.onnx")
    return [*models, *(info_path(Path(name)).name for name in models)]


def check_export_folder(folder: Path) -> None:
    """ConfigError unless `folder` is new, empty, or holds an earlier export (its SUMMARY)
    whose files this export would replace are each still as that export wrote them:
    export.py replaces no file it did not write. Never a run's checkpoints folder."""
    check_not_checkpoints(folder, f"the export folder {folder}")
    if not os.path.lexists(folder) or (folder.is_dir() and not any(folder.iterdir())):
        return
    if not folder.is_dir() or read_record(folder / SUMMARY, "files") is None:
        raise ConfigError(
            f"{folder} holds files that export.py did not write (it has no {SUMMARY} of an "
            "earlier export); move them away, or export one file with python export.py "
            "CHECKPOINT OUTPUT"
        )
    foreign = foreign_file(folder, export_names(), earlier_export(folder))
    if foreign is not None:
        raise ConfigError(
            f"{foreign} is not the file the earlier export wrote there ({SUMMARY} records "
            "no such file, or another content), and this export would replace it; move it "
            "away, then export again"
        )


def check_not_checkpoints(folder: Path, what: str) -> None:
    """ConfigError where `folder`, followed through any symbolic links, is a run's
    checkpoints folder (named so, in a run folder) or holds step checkpoints: those hold
    a run's training checkpoints only, which an export must never replace or crowd."""
    real = folder.resolve()
    in_run = real.name == CHECKPOINTS and is_run_folder(real.parent)
    if in_run or (real.is_dir() and any(real.glob("step-*.pt"))):
        raise ConfigError(
            f"{what} is the folder of a run's training checkpoints ({real}), which holds "
            "those only; name a folder elsewhere, e.g. the run folder's export/"
        )


def check_output_file(checkpoint: Path, output: Path) -> None:
    """ConfigError unless export.py may write `output` and its card: each new, or both an
    earlier export (its card is export.py's); never into a run's checkpoints/ folder."""
    card = info_path(output)
    check_not_checkpoints(output.parent, f"the folder of OUTPUT {output}")
    if os.path.lexists(output) and output.resolve() == checkpoint.resolve():
        raise ConfigError(f"OUTPUT {output} is CHECKPOINT itself; name another OUTPUT")
    for path in (output, card):
        if path.is_symlink():  # export.py writes no links: this one is someone else's
            raise ConfigError(
                f"{path} is a symbolic link, which export.py did not make and would replace; "
                "name a new OUTPUT, or move the link away"
            )
    earlier = read_record(card, "checkpoint") is not None
    for path in (output, card):
        if os.path.lexists(path) and not (earlier and path.is_file()):
            raise ConfigError(
                f"{path} exists and export.py did not write it (there is no export card "
                f"{card.name} beside it); name a new OUTPUT, or move that file away"
            )


def save_program(program, example: torch.Tensor, suffix: str, path: Path) -> None:
    """Write the torch.export `program` to `path` as .pt2 or, for `suffix` .onnx, as ONNX."""
    if suffix == ONNX:
        onnx_program = torch.onnx.export(program, (example,), dynamo=True, verbose=False)
        onnx_program.save(str(path))
        return
    buffer = io.BytesIO()  # torch.export.save wants a name ending in .pt2, or a buffer
    torch.export.save(program, buffer)
    path.write_bytes(buffer.getvalue())


def validation_images(cfg, count: int) -> torch.Tensor:
    """Up to `count` validation images of the run's data, prepared as for validation (only
    the validation set is built: inference.validation_data)."""
    data, data_cfg = validation_data(cfg)
    batches = []
    for images, _ in build_loader(data.val, data_cfg, train=False, seed=0):
        batches.append(images)
        if sum(len(batch) for batch in batches) >= count:
            break
    return torch.cat(batches)[:count].float()


@torch.no_grad()
def measure_parity(model: nn.Module, program: nn.Module, images: torch.Tensor) -> dict:
    """The largest absolute difference of the logits, and the top-1 agreement."""
    expected, found = model(images).float(), program(images).float()
    agreement = (expected.argmax(dim=1) == found.argmax(dim=1)).float().mean().item()
    return {
        "images": len(images),
        "max_abs_logit_difference": (expected - found).abs().max().item(),
        "top1_agreement": agreement,
    }
