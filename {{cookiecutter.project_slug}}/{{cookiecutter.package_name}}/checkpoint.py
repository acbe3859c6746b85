"""Checkpoints: atomic saves of the full training state, safe loading, resume.

A checkpoint holds plain types only (tensors, numbers, strings, lists, dicts), so it
loads with `torch.load(weights_only=True)`, which refuses any file that would run code.
Every write goes to a temporary file in the same folder, is flushed to disk, then
atomically renamed over the old file: a kill at any instant leaves the previous
checkpoint whole.
"""

import contextlib
import os
import pickle
import platform
import random
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

CHECKPOINT_FORMAT = 1
# Prefixes added by wrappers: DistributedDataParallel/DataParallel and torch.compile.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be written or used; the message names the file."""


@contextlib.contextmanager
def atomic_path(path: Path):
    """Yield a temporary path next to `path`; on success it replaces `path` durably.

    On any failure (including a full disk, which torch reports as RuntimeError) the
    temporary file is removed and `path` is left exactly as it was.
    """
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield temporary
        with open(temporary, "rb+") as file:
            os.fsync(file.fileno())
        os.replace(temporary, path)
        _fsync_folder(path.parent)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _fsync_folder(folder: Path) -> None:
    # The rename itself is durable only once the folder's entry is on disk.
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model inside DDP/DataParallel (`.module`) and torch.compile (`._orig_mod`)."""
    while hasattr(model, "module") or hasattr(model, "_orig_mod"):
        model = getattr(model, "module", None) or model._orig_mod
    return model


def strip_prefixes(state_dict: dict) -> dict:
    """Remove wrapper prefixes from every key, however they are nested."""
    cleaned = {}
    for key, value in state_dict.items():
        stripped = True
        while stripped:
            stripped = False
            for prefix in WRAPPER_PREFIXES:
                if key.startswith(prefix):
                    key, stripped = key[len(prefix) :], True
        cleaned[key] = value
    return cleaned


def load_model_state(model: nn.Module, state_dict: dict, source: Path | str) -> None:
    """Load weights into `model`, or raise one error listing every mismatched key and shape."""
    state_dict = strip_prefixes(state_dict)
    expected = unwrap(model).state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    wrong_shape = [
        f"{key}: checkpoint {tuple(state_dict[key].shape)} vs model {tuple(expected[key].shape)}"
        for key in expected
        if key in state_dict and state_dict[key].shape != expected[key].shape
    ]
    if missing or unexpected or wrong_shape:
        problems = []
        if wrong_shape:
            problems.append("shapes differ: " + "; ".join(wrong_shape[:10]))
        if missing:
            problems.append("missing in checkpoint: " + ", ".join(missing[:10]))
        if unexpected:
            problems.append("not in model: " + ", ".join(unexpected[:10]))
        raise CheckpointError(
            f"{source} does not fit this model (another model.name or class count?): "
            + " | ".join(problems)
        )
    unwrap(model).load_state_dict(state_dict)


def rng_state() -> dict:
    """Python, NumPy and torch RNG states as plain types (weights_only-loadable)."""
    numpy_state = np.random.get_state(legacy=False)
    state = {
        "python": _to_plain(random.getstate()),
        "numpy": {
            "key": torch.from_numpy(numpy_state["state"]["key"].astype(np.int64)),
            "pos": int(numpy_state["state"]["pos"]),
            "has_gauss": int(numpy_state["has_gauss"]),
            "gauss": float(numpy_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    numpy_state = state["numpy"]
    np.random.set_state(
        (
            "MT19937",
            numpy_state["key"].numpy().astype(np.uint32),
            numpy_state["pos"],
            numpy_state["has_gauss"],
            numpy_state["gauss"],
        )
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_plain(value):
    if isinstance(value, tuple):
        return [_to_plain(item) for item in value]
    return value


def versions() -> dict:
    # str(): torch.__version__ is a TorchVersion, which weights_only loading refuses.
    return {"torch": str(torch.__version__), "python": platform.python_version()}


def load_checkpoint(path: Path) -> dict:
    """Load a checkpoint safely onto the CPU, or raise CheckpointError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"{path} is truncated or corrupt (not a torch zip archive)")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        reason = str(error).strip().splitlines()[0]
        raise CheckpointError(
            f"refused to load {path}: it holds objects that could run code when unpickled "
            f"({reason}); load only checkpoints you trust, made by this project"
        ) from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(f"{path} is truncated or corrupt ({reason})") from None
    if not isinstance(checkpoint, dict) or "model" not in checkpoint:
        raise CheckpointError(f"{path} is not a checkpoint of this project (no model weights)")
    return checkpoint


{% if cookiecutter.use_safetensors %}
def save_safetensors(model: nn.Module, path: Path) -> None:
    """Model weights only, through the safetensors library (shared tensors handled)."""
    from safetensors.torch import save_model

    with atomic_path(path) as temporary:
        save_model(unwrap(model), str(temporary), metadata={"format": "pt"})


def load_safetensors(path: Path) -> dict:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError) as error:
        raise CheckpointError(f"{path} is truncated or corrupt ({error})") from None


{% endif %}
def load_weights(path: Path) -> dict:
    """Model weights from a checkpoint (.pt) or a weights file (.pt{% if cookiecutter.use_safetensors %} or .safetensors{% endif %})."""
    path = Path(path)
{% if cookiecutter.use_safetensors %}
    if path.suffix == ".safetensors":
        return load_safetensors(path)
{% endif %}
    return load_checkpoint(path)["model"]


class CheckpointManager:
    """`last.pt` after every epoch (and at a stop), `best.pt` at each new best val_acc.

    Only the main process writes. `last.pt` holds everything needed to continue as if the
    run had never stopped; `best.pt` is the same kind of file for the best epoch.
    """

    def __init__(self, folder: Path, is_main: bool, write_safetensors: bool = False) -> None:
        self.folder = folder
        self.is_main = is_main
        self.write_safetensors = write_safetensors
        if is_main and folder.is_dir():
            self._remove_orphans()

    def _remove_orphans(self) -> None:
        """Delete temporary files left by a save that was killed half-way."""
        for orphan in self.folder.glob(".*.tmp"):
            orphan.unlink(missing_ok=True)

    def latest(self) -> Path | None:
        path = self.folder / "last.pt"
        return path if path.is_file() else None

    def save(self, state: dict, model: nn.Module, name: str) -> Path:
        path = self.folder / f"{name}.pt"
        if not self.is_main:
            return path
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            with atomic_path(path) as temporary:
                torch.save(state, temporary)
{% if cookiecutter.use_safetensors %}
            if self.write_safetensors:
                save_safetensors(model, path.with_suffix(".safetensors"))
{% endif %}
        except (OSError, RuntimeError) as error:
            reason = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
            raise CheckpointError(
                f"could not write {path} ({reason}); the previous checkpoint is untouched. "
                "Free disk space or point run.dir at a writable folder, then resume "
                "with run.resume=auto"
            ) from None
        return path


def training_state(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler,
    scaler: torch.amp.GradScaler,
    progress: dict,
    config: dict,
    classes: list[str],
) -> dict:
    """Everything a checkpoint holds, as plain types."""
    return {
        "format": CHECKPOINT_FORMAT,
        "model": unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "progress": progress,
        "rng": rng_state(),
        "config": config,
        "classes": list(classes),
        "versions": versions(),
    }
