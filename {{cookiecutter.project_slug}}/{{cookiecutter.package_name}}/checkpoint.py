"""Checkpoints: atomic saves of the full training state, safe loading, resume.

A checkpoint holds plain types only (tensors, numbers, strings, lists, dicts), so it
loads with `torch.load(weights_only=True)`, which refuses any file that would run code.
Every write goes through `files.atomic_path`: a kill at any instant leaves the previous
checkpoint whole.
"""

import logging
import os
import pickle
import shutil
import zipfile
from pathlib import Path

import torch
from torch import nn

from .features import feature_module
from .file_kinds import is_legacy_torch_file, what_it_is
from .files import (
    TEMPORARY_FILES,
    atomic_path,
    atomic_symlink,
    file_sha256,
    sidecar_of,
    write_sidecar,
)

logger = logging.getLogger(__name__.rsplit(".", 1)[0])

CHECKPOINT_FORMAT = 1
# Prefixes added by wrappers: DistributedDataParallel/DataParallel and torch.compile.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
SAFETENSORS = ".safetensors"
# The key of a checkpoint whose model weights are kept beside it (its "model" is None):
# the SHA-256 of that file, which ties the two together.
WEIGHTS_BESIDE = "weights_sha256"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be written or used; the message names the file."""


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model inside DDP/DataParallel (`.module`) and torch.compile (`._orig_mod`)."""
    while hasattr(model, "module") or hasattr(model, "_orig_mod"):
        model = getattr(model, "module", None) or model._orig_mod
    return model


def strip_prefixes(state_dict: dict) -> dict:
    """Remove wrapper prefixes from every key, however they are nested."""
    cleaned = {}
    for key, value in state_dict.items():
        while key.startswith(WRAPPER_PREFIXES):
            key = key.split(".", 1)[1]  # each prefix is one name and its dot
        cleaned[key] = value
    return cleaned


def load_model_state(
    model: nn.Module, state_dict: dict, source: Path | str, check_only: bool = False
) -> None:
    """Load weights into `model`, or raise one error listing every mismatched key and shape;
    `check_only`: only check (e.g. a model built on the meta device, which holds no data)."""
    state_dict = strip_prefixes(state_dict)
    expected = unwrap(model).state_dict()
    problems = state_dict_mismatches(expected, state_dict, "checkpoint")
    if problems:
        raise CheckpointError(
            f"{source} does not fit this model (another model.name or class count?): "
            + " | ".join(problems)
        )
    if not check_only:
        unwrap(model).load_state_dict(state_dict)


def state_dict_mismatches(expected: dict, found: dict, source: str) -> list[str]:
    """Why `found` does not load into a model whose state dict is `expected`: one phrase
    per kind of mismatch (shapes, missing keys, extra keys); empty when it fits."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    wrong_shape = [
        f"{key}: {source} {tuple(found[key].shape)} vs model {tuple(expected[key].shape)}"
        for key in expected
        if key in found and found[key].shape != expected[key].shape
    ]
    problems = []
    if wrong_shape:
        problems.append("shapes differ: " + "; ".join(wrong_shape[:10]))
    if missing:
        problems.append(f"{len(missing)} missing in the {source}: " + ", ".join(missing[:10]))
    if unexpected:
        problems.append(f"{len(unexpected)} not in the model: " + ", ".join(unexpected[:10]))
    return problems


def first_line(error: BaseException) -> str:
    """The first line of an error's message, or its type where it has none."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


# A sidecar is `HEX  NAME`: its first kilobytes hold the checksum, whatever else it holds.
SIDECAR_BYTES = 4096


def verify_file(path: Path) -> None:
    """Compare `path` with its SHA-256 sidecar; without one, check the zip's CRCs.

    Neither torch's zip format nor safetensors checks the tensor bytes at load time, so
    without this a flipped bit would load silently as a slightly different model.
    """
    sidecar = sidecar_of(path)
    if sidecar.is_file():
        with sidecar.open("rb") as file:  # one line: a damaged one may be huge, never read it all
            head = file.read(SIDECAR_BYTES).decode("utf-8", "replace")
        recorded = (head.split() or [""])[0]
        if file_sha256(path) != recorded:
            raise CheckpointError(
                f"{path} is corrupt: its SHA-256 differs from the one in {sidecar.name}, "
                "recorded when it was written"
            )
        return
    if not zipfile.is_zipfile(path):
        if is_legacy_torch_file(path):
            return  # torch's format before 1.6 (e.g. older .pth weights): no checksums to test
        raise CheckpointError(f"{path} {what_it_is(path)}")
    with zipfile.ZipFile(path) as archive:
        damaged = archive.testzip()
    if damaged is not None:
        raise CheckpointError(f"{path} is corrupt: the checksum of its entry {damaged} fails")


class PtWeights:
    """Model weights inside the .pt: the format of projects generated without safetensors,
    which read .safetensors files but do not write them. `weights_format()` gives this or,
    with safetensors, `safetensors_io.SafetensorsWeights` (same methods)."""

    # Patterns of the temporary files a weights library writes by itself: none here.
    library_temporary_files: tuple[str, ...] = ()

    def store(self, state: dict, model: nn.Module, path: Path) -> dict:
        """`state` as the checkpoint file `path` holds it: with the model weights inside."""
        return state

    def write_safetensors(self, weights: dict, path: Path, metadata: dict | None = None) -> None:
        raise CheckpointError(
            f"{path}: this project was generated without safetensors (use_safetensors=no), "
            "so it writes model weights as .pt only: choose a .pt file, or generate the "
            "project again with use_safetensors=yes"
        )


def safetensors_library(action: str, path: Path):
    """`safetensors.torch` and the library's error type; CheckpointError naming `path` and
    the fix where the package is not installed."""
    try:
        import safetensors.torch
        from safetensors import SafetensorError
    except ImportError:
        raise CheckpointError(
            f"{action} {path} needs the safetensors package: pip install safetensors"
        ) from None
    return safetensors.torch, SafetensorError


def read_safetensors(path: Path) -> dict:
    """The tensors of a .safetensors file, on the CPU; CheckpointError naming the file."""
    library, library_error = safetensors_library("reading", path)
    try:
        return library.load_file(str(path), device="cpu")
    except (library_error, OSError) as error:
        raise CheckpointError(f"{path} is truncated or corrupt ({first_line(error)})") from None


def _load_weights_beside(path: Path, recorded_sha256: str) -> dict:
    """The model weights of checkpoint `path`, kept beside it as `step-<N>.safetensors` by
    a project generated with safetensors, checked against the SHA-256 the .pt records."""
    weights = path.with_suffix(SAFETENSORS)
    if not weights.is_file():
        raise CheckpointError(f"{path} keeps its model weights in {weights.name}, which is missing")
    if file_sha256(weights) != recorded_sha256:
        raise CheckpointError(
            f"{weights} does not match {path.name} (SHA-256 differs): the weights file is "
            "corrupt or belongs to another checkpoint"
        )
    return read_safetensors(weights)


def weights_format():
    """How this project stores and reads model weights: `PtWeights`, or the safetensors
    module's format in projects generated with safetensors."""
    safetensors_io = feature_module("safetensors_io")
    return safetensors_io.SafetensorsWeights() if safetensors_io is not None else PtWeights()


def _warn_if_safe_loading_is_disabled() -> None:
    if os.environ.get("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "0").lower() not in ("", "0", "false"):
        logger.warning(
            "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD is set: torch may unpickle arbitrary objects, "
            "and a malicious checkpoint could run code. Unset it unless you need it."
        )


def _require_file(path: Path, kind: str) -> None:
    if not path.is_file():
        raise CheckpointError(f"{kind} {path} does not exist")


def _load_verified(path: Path):
    """Verify `path` (SHA-256 or zip CRCs) and unpickle it safely onto the CPU.

    Returns (resolved path, loaded object); raises CheckpointError naming the file.
    """
    _require_file(path, "checkpoint")
    _warn_if_safe_loading_is_disabled()
    real = path.resolve()  # last.pt and best.pt are symbolic links to step files
    verify_file(real)
    return real, unpickle_safely(real, str(path))


def unpickle_safely(source, name: str):
    """What the torch file `source` (a path or a binary file) holds, read onto the CPU by
    torch's weights-only unpickler: the one place this project unpickles a file.

    That unpickler builds plain types and tensors only and runs no code from the file, so
    whatever else it raises on a malformed pickle (IndexError, KeyError, EOFError, ...)
    means the file is truncated or corrupt: one CheckpointError naming `name`. Running out
    of memory, Ctrl-C and exit pass through to their own handling."""
    try:
        return torch.load(source, map_location="cpu", weights_only=True)
    except MemoryError:
        raise
    except pickle.UnpicklingError as error:
        raise CheckpointError(
            f"refused to load {name}: it holds objects that could run code when unpickled "
            f"({first_line(error)}); load only checkpoints you trust, made by this project"
        ) from None
    except Exception as error:  # the unpickler's own failures share no base class
        raise CheckpointError(
            f"{name} is truncated or corrupt ({type(error).__name__}: {first_line(error)})"
        ) from None


def load_checkpoint(path: Path) -> dict:
    """Verify and load a checkpoint onto the CPU, or raise CheckpointError naming the file."""
    path = Path(path)
    real, checkpoint = _load_verified(path)
    return _with_model_weights(path, real, checkpoint)


def _with_model_weights(path: Path, real: Path, checkpoint) -> dict:
    """`checkpoint` with its model weights in place, or CheckpointError if it has none."""
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"{path} is not a checkpoint of this project (no model weights)")
    if checkpoint.get("model") is None and WEIGHTS_BESIDE in checkpoint:
        checkpoint["model"] = _load_weights_beside(real, checkpoint[WEIGHTS_BESIDE])
    if checkpoint.get("model") is None:
        if checkpoint and all(isinstance(value, torch.Tensor) for value in checkpoint.values()):
            raise CheckpointError(
                f"{path} holds model weights only, not a training checkpoint (model.weights="
                "PATH starts a run from such weights)"
            )
        raise CheckpointError(f"{path} is not a checkpoint of this project (no model weights)")
    return checkpoint


def load_weights(path: Path) -> dict:
    """Model weights from any file of them: a checkpoint, a weights-only .pt or .pth (from
    export.py or torchvision) or a .safetensors file. The one reader of weights files: it
    raises CheckpointError naming the file when it cannot be used."""
    path = Path(path)
    if path.suffix == SAFETENSORS:
        _require_file(path, "weights file")
        return read_safetensors(path)
    real, loaded = _load_verified(path)  # one verified load, whichever kind of file
    if isinstance(loaded, dict) and "progress" not in loaded and "model" not in loaded:
        return loaded  # a weights-only file
    return _with_model_weights(path, real, loaded)["model"]


def write_weights(weights: dict, path: Path, metadata: dict[str, str] | None = None) -> Path:
    """A weights-only file for inference, .pt or .safetensors by its suffix, atomically;
    a .safetensors file keeps `metadata` in its header (a .pt has no place for it)."""
    if path.suffix == SAFETENSORS:
        weights_format().write_safetensors(weights, path, metadata)
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_path(path) as temporary:
            torch.save(weights, temporary)
    except (OSError, RuntimeError) as error:  # a full disk is a RuntimeError in torch.save
        raise CheckpointError(f"could not write {path} ({first_line(error)})") from None
    return path


def _step_of(path: Path) -> int:
    return int(path.name.split(".")[0].removeprefix("step-"))


class CheckpointManager:
    """Checkpoints of one run, in `<run.dir>/checkpoints/`.

    Every save writes `step-<N>.pt` (and, where `weights_format()` keeps the model weights
    beside it, `step-<N>.safetensors`) with a `.sha256` beside it, then points `last.pt`
    (and `best.pt` at a new best) at it: a symbolic link, switched in one atomic rename, so
    an alias never refers to half of one checkpoint and half of another. Step files beyond
    the newest `keep_last` are deleted afterwards, except those an alias points to. Only the
    main process writes.
    """

    ALIASES = ("last", "best")

    def __init__(self, folder: Path, is_main: bool, keep_last: int = 3) -> None:
        self.folder = folder
        self.is_main = is_main
        self.keep_last = max(keep_last, 1)
        self.weights = weights_format()
        if is_main and folder.is_dir():
            self._remove_orphans()

    def _remove_orphans(self) -> None:
        """Delete what a killed save or clean-up left: temporary files, and the parts
        (.sha256, weights) of a step whose .pt is gone. No save runs at this point."""
        for pattern in (TEMPORARY_FILES, *self.weights.library_temporary_files):
            for orphan in self.folder.glob(pattern):
                orphan.unlink(missing_ok=True)
        for part in self.folder.glob("step-*"):
            self._remove_parts_without_pt(part.name.split(".")[0])

    def _remove_parts_without_pt(self, stem: str) -> None:
        if not (self.folder / f"{stem}.pt").is_file():
            for part in self.folder.glob(f"{stem}.*"):
                part.unlink(missing_ok=True)

    def step_files(self) -> list[Path]:
        """The step checkpoints, newest first."""
        if not self.folder.is_dir():
            return []
        return sorted(self.folder.glob("step-*.pt"), key=_step_of, reverse=True)

    def candidates(self) -> list[Path]:
        """Checkpoints to resume from, best guess first: newest step file, ..., last.pt."""
        found = self.step_files()
        last = self.folder / "last.pt"
        if last.is_file() and last.resolve() not in {path.resolve() for path in found}:
            found.append(last)  # e.g. a copy made where symbolic links are not supported
        return found

    def latest(self) -> Path | None:
        found = self.candidates()
        return found[0] if found else None

    def load_newest_valid(self) -> tuple[Path, dict] | None:
        """The newest checkpoint that verifies and loads; broken newer ones are skipped."""
        found = self.candidates()
        problems = []
        for path in found:
            try:
                return path, load_checkpoint(path)
            except CheckpointError as error:
                logger.warning("skipping a checkpoint that cannot be used: %s", error)
                problems.append(str(error))
        if found:
            raise CheckpointError(
                f"no usable checkpoint in {self.folder}: {' | '.join(problems)}. Resume "
                "from a copy you trust with run.resume=PATH, or start a new run.dir"
            )
        return None

    def save(self, state: dict, model: nn.Module, is_best: bool = False) -> Path:
        """Save `state` as the checkpoint of its global step; return its path."""
        stem = f"step-{state['progress']['global_step']:08d}"
        path = self.folder / f"{stem}.pt"
        if not self.is_main:
            return path
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            state = self.weights.store(state, model, path)
            with atomic_path(path) as temporary:
                torch.save(state, temporary)
            write_sidecar(path)
            self._point("last", path)
            if is_best:
                self._point("best", path)
            self._prune()
        except (OSError, RuntimeError) as error:
            self._remove_parts_without_pt(stem)  # e.g. weights written before the .pt failed
            raise CheckpointError(
                f"could not write {path} ({first_line(error)}); the previous checkpoint is "
                "untouched. Free disk space or point run.dir at a writable folder, then "
                "resume with run.resume=auto"
            ) from None
        return path

    def _point(self, alias: str, path: Path) -> None:
        """Make `<alias>.pt` a symbolic link to `path`, atomically (a copy where the
        filesystem has no symbolic links)."""
        target = self.folder / f"{alias}.pt"
        try:
            atomic_symlink(target, path.name)
        except OSError:
            with atomic_path(target) as temporary:
                shutil.copyfile(path, temporary)

    def _prune(self) -> None:
        """Delete step checkpoints older than the newest `keep_last`, unless an alias
        points at them; the .pt goes first, so no step file is ever left without parts."""
        pointed = {
            (self.folder / f"{alias}.pt").resolve()
            for alias in self.ALIASES
            if (self.folder / f"{alias}.pt").is_symlink()
        }
        for old in self.step_files()[self.keep_last :]:
            if old.resolve() not in pointed:
                old.unlink(missing_ok=True)
                self._remove_parts_without_pt(old.stem)
