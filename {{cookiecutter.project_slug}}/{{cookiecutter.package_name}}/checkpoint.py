"""Checkpoints: atomic saves of the full training state, safe loading, resume.

A checkpoint holds plain types only (tensors, numbers, strings, lists, dicts), so it
loads with `torch.load(weights_only=True)`, which refuses any file that would run code.
Every write goes to a temporary file in the same folder, is flushed to disk, then
atomically renamed over the old file: a kill at any instant leaves the previous
checkpoint whole.
"""

import contextlib
import hashlib
import logging
import os
import pickle
import platform
import random
import shutil
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

logger = logging.getLogger(__name__.rsplit(".", 1)[0])

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
    problems = state_dict_mismatches(expected, state_dict, "checkpoint")
    if problems:
        raise CheckpointError(
            f"{source} does not fit this model (another model.name or class count?): "
            + " | ".join(problems)
        )
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


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sidecar_of(path: Path) -> Path:
    """`step-00000100.pt` -> `step-00000100.pt.sha256` (the format of `sha256sum`)."""
    return path.with_name(path.name + ".sha256")


def write_sidecar(path: Path) -> None:
    with atomic_path(sidecar_of(path)) as temporary:
        temporary.write_text(f"{file_sha256(path)}  {path.name}\n", encoding="utf-8")


def verify_file(path: Path) -> None:
    """Compare `path` with its SHA-256 sidecar; without one, check the zip's CRCs.

    Neither torch's zip format nor safetensors checks the tensor bytes at load time, so
    without this a flipped bit would load silently as a slightly different model.
    """
    sidecar = sidecar_of(path)
    if sidecar.is_file():
        recorded = (sidecar.read_text(encoding="utf-8").split() or [""])[0]
        if file_sha256(path) != recorded:
            raise CheckpointError(
                f"{path} is corrupt: its SHA-256 differs from the one in {sidecar.name}, "
                "recorded when it was written"
            )
        return
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"{path} is truncated or corrupt (not a torch zip archive)")
    with zipfile.ZipFile(path) as archive:
        damaged = archive.testzip()
    if damaged is not None:
        raise CheckpointError(f"{path} is corrupt: the checksum of its entry {damaged} fails")


def _warn_if_safe_loading_is_disabled() -> None:
    if os.environ.get("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "0").lower() not in ("", "0", "false"):
        logger.warning(
            "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD is set: torch may unpickle arbitrary objects, "
            "and a malicious checkpoint could run code. Unset it unless you need it."
        )


def _load_verified(path: Path):
    """Verify `path` (SHA-256 or zip CRCs) and unpickle it safely onto the CPU.

    Returns (resolved path, loaded object); raises CheckpointError naming the file.
    """
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    _warn_if_safe_loading_is_disabled()
    real = path.resolve()  # last.pt and best.pt are symbolic links to step files
    verify_file(real)
    try:
        return real, torch.load(real, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        reason = str(error).strip().splitlines()[0]
        raise CheckpointError(
            f"refused to load {path}: it holds objects that could run code when unpickled "
            f"({reason}); load only checkpoints you trust, made by this project"
        ) from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(f"{path} is truncated or corrupt ({reason})") from None


def load_checkpoint(path: Path) -> dict:
    """Verify and load a checkpoint onto the CPU, or raise CheckpointError naming the file."""
    path = Path(path)
    real, checkpoint = _load_verified(path)
    return _with_model_weights(path, real, checkpoint)


def _with_model_weights(path: Path, real: Path, checkpoint) -> dict:
    """`checkpoint` with its model weights in place, or CheckpointError if it has none."""
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"{path} is not a checkpoint of this project (no model weights)")
{% if cookiecutter.use_safetensors %}
    if checkpoint.get("model") is None and "weights_sha256" in checkpoint:
        checkpoint["model"] = _load_paired_weights(real, checkpoint["weights_sha256"])
{% endif %}
    if checkpoint.get("model") is None:
        raise CheckpointError(f"{path} is not a checkpoint of this project (no model weights)")
    return checkpoint


{% if cookiecutter.use_safetensors %}
def save_safetensors(model: nn.Module, path: Path) -> None:
    """Model weights only, through the safetensors library (shared tensors handled)."""
    from safetensors import SafetensorError
    from safetensors.torch import save_model

    try:
        with atomic_path(path) as temporary:
            save_model(unwrap(model), str(temporary), metadata={"format": "pt"})
    except SafetensorError as error:  # e.g. a full disk; not an OSError subclass
        raise OSError(f"safetensors: {error}") from None


def load_safetensors(path: Path) -> dict:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError) as error:
        raise CheckpointError(f"{path} is truncated or corrupt ({error})") from None


def _load_paired_weights(path: Path, recorded_sha256: str) -> dict:
    """The model weights of checkpoint `path`, kept beside it as `<name>.safetensors`."""
    weights = path.with_suffix(".safetensors")
    if not weights.is_file():
        raise CheckpointError(f"{path} keeps its model weights in {weights.name}, which is missing")
    if file_sha256(weights) != recorded_sha256:
        raise CheckpointError(
            f"{weights} does not match {path.name} (SHA-256 differs): the weights file is "
            "corrupt or belongs to another checkpoint"
        )
    return load_safetensors(weights)


{% endif %}
def load_weights(path: Path) -> dict:
    """Model weights from a checkpoint or a weights-only file (.pt{% if cookiecutter.use_safetensors %} or .safetensors{% endif %})."""
    path = Path(path)
{% if cookiecutter.use_safetensors %}
    if path.suffix == ".safetensors":
        return load_safetensors(path)
{% endif %}
    real, loaded = _load_verified(path)  # one verified load, whichever kind of file
    if isinstance(loaded, dict) and "progress" not in loaded and "model" not in loaded:
        return loaded  # a weights-only file written by export.py
    return _with_model_weights(path, real, loaded)["model"]


def export_weights(checkpoint_path: Path, output: Path) -> Path:
    """Write just the model weights of a checkpoint, for inference, atomically."""
    weights = load_checkpoint(checkpoint_path)["model"]
    output.parent.mkdir(parents=True, exist_ok=True)
{% if cookiecutter.use_safetensors %}
    if output.suffix == ".safetensors":
        from safetensors.torch import save_file

        with atomic_path(output) as temporary:
            save_file({k: v.contiguous() for k, v in weights.items()}, str(temporary))
        return output
{% endif %}
    with atomic_path(output) as temporary:
        torch.save(weights, temporary)
    return output


def _step_of(path: Path) -> int:
    return int(path.name.split(".")[0].removeprefix("step-"))


class CheckpointManager:
    """Checkpoints of one run, in `<run.dir>/checkpoints/`.

    Every save writes `step-<N>.pt` (and with safetensors, the model weights as
    `step-<N>.safetensors`) with a `.sha256` beside it, then points `last.pt` (and
    `best.pt` at a new best) at it: a symbolic link, switched in one atomic rename, so an
    alias never refers to half of one checkpoint and half of another. Step files beyond the
    newest `keep_last` are deleted afterwards, except those an alias points to. Only the
    main process writes.
    """

    ALIASES = ("last", "best")

    def __init__(self, folder: Path, is_main: bool, keep_last: int = 3) -> None:
        self.folder = folder
        self.is_main = is_main
        self.keep_last = max(keep_last, 1)
        if is_main and folder.is_dir():
            self._remove_orphans()

    def _remove_orphans(self) -> None:
        """Delete what a killed save or clean-up left: temporary files, and the parts
        (.sha256, .safetensors) of a step whose .pt is gone. No save runs at this point."""
        # Ours are .NAME.PID.tmp; the safetensors library writes through .tmpXXXXXX files.
        for orphan in [*self.folder.glob(".*.tmp"), *self.folder.glob(".tmp*")]:
            orphan.unlink(missing_ok=True)
        for part in self.folder.glob("step-*"):
            stem = part.name.split(".")[0]
            if not (self.folder / f"{stem}.pt").is_file():
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
{% if cookiecutter.use_safetensors %}
            weights = self.folder / f"{stem}.safetensors"
            save_safetensors(model, weights)
            state = {**state, "model": None, "weights_sha256": file_sha256(weights)}
{% endif %}
            with atomic_path(path) as temporary:
                torch.save(state, temporary)
            write_sidecar(path)
            self._point("last", path)
            if is_best:
                self._point("best", path)
            self._prune()
        except (OSError, RuntimeError) as error:
{% if cookiecutter.use_safetensors %}
            if not path.is_file():  # weights without their .pt would be an orphan
                (self.folder / f"{stem}.safetensors").unlink(missing_ok=True)
{% endif %}
            reason = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
            raise CheckpointError(
                f"could not write {path} ({reason}); the previous checkpoint is untouched. "
                "Free disk space or point run.dir at a writable folder, then resume "
                "with run.resume=auto"
            ) from None
        return path

    def _point(self, alias: str, path: Path) -> None:
        """Make `<alias>.pt` a symbolic link to `path`, atomically (a copy where the
        filesystem has no symbolic links)."""
        target = self.folder / f"{alias}.pt"
        temporary = self.folder / f".{alias}.pt.{os.getpid()}.tmp"
        temporary.unlink(missing_ok=True)
        try:
            temporary.symlink_to(path.name)
        except OSError:
            shutil.copyfile(path, temporary)
            with open(temporary, "rb+") as file:
                os.fsync(file.fileno())
        os.replace(temporary, target)
        _fsync_folder(self.folder)

    def _prune(self) -> None:
        """Delete step checkpoints older than the newest `keep_last`, unless an alias
        points at them; the .pt goes first, so no step file is ever left without parts."""
        pointed = {
            (self.folder / f"{alias}.pt").resolve()
            for alias in self.ALIASES
            if (self.folder / f"{alias}.pt").is_symlink()
        }
        for old in self.step_files()[self.keep_last :]:
            if old.resolve() in pointed:
                continue
            for suffix in (".pt", ".safetensors", ".pt.sha256"):
                (self.folder / f"{old.stem}{suffix}").unlink(missing_ok=True)


def check_finite_weights(model: nn.Module, step: int) -> None:
    """Refuse to save NaN or infinite weights or buffers (e.g. batch-norm statistics):
    a checkpoint that cannot train is worse than the older one it would replace."""
    from .engine import NonFiniteLossError

    state = unwrap(model).state_dict()
    bad = [
        name
        for name, tensor in state.items()
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())
    ]
    if bad:
        raise NonFiniteLossError(
            f"the model's {', '.join(bad[:5])} became NaN or infinite by optimizer step {step}; "
            "the last checkpoint saved before it is kept. Lower optim.lr or set "
            "train.grad_clip (e.g. 1.0), then resume with run.resume=auto"
        )


def training_state(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler,
    scaler: torch.amp.GradScaler,
    progress: dict,
    config: dict,
    classes: list[str],
    normalization: dict | None = None,
) -> dict:
    """Everything a checkpoint holds, as plain types.

    `normalization` holds the mean and std the inputs were normalised with: evaluate.py and
    predict.py need them when the config left them to be computed from the data.
    """
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
        "normalization": normalization or {},
        "versions": versions(),
    }
