"""Model weights written as .safetensors: beside each checkpoint, and as exported files.

This module exists only in projects generated with safetensors; `checkpoint.weights_format()`
finds it. A checkpoint `step-<N>.pt` then holds everything but the model weights, which are
written first as `step-<N>.safetensors`; the .pt records their SHA-256, so a weights file
that is damaged or belongs to another step is refused by name (safetensors itself checks
no tensor bytes).
"""

from pathlib import Path

from torch import nn

from .checkpoint import (
    SAFETENSORS,
    WEIGHTS_BESIDE,
    CheckpointError,
    first_line,
    safetensors_library,
    unwrap,
)
from .files import atomic_path, file_sha256


class SafetensorsWeights:
    """Model weights kept beside the checkpoint `step-<N>.pt` as `step-<N>.safetensors`,
    and weights-only files written in either format (every project reads both). The
    methods of `checkpoint.PtWeights`, for projects generated with safetensors."""

    # The safetensors library writes through a `.tmpXXXXXX` file of its own in the target
    # folder, then renames it: a kill during that write leaves one, as large as the model.
    library_temporary_files = (".tmp*",)

    def store(self, state: dict, model: nn.Module, path: Path) -> dict:
        """Write the model weights beside the checkpoint file `path`; return `state` as
        `path` holds it: without the weights, with their file's SHA-256."""
        weights = path.with_suffix(SAFETENSORS)
        library, library_error = safetensors_library("writing", weights)
        try:
            with atomic_path(weights) as temporary:  # save_model handles shared tensors
                library.save_model(unwrap(model), str(temporary), metadata={"format": "pt"})
        except library_error as error:  # e.g. a full disk; not an OSError subclass
            raise OSError(f"safetensors: {error}") from None
        return {**state, "model": None, WEIGHTS_BESIDE: file_sha256(weights)}

    def write_safetensors(self, weights: dict, path: Path, metadata: dict | None = None) -> None:
        library, library_error = safetensors_library("writing", path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {key: value.contiguous() for key, value in weights.items()}
        metadata = {"format": "pt", **(metadata or {})}
        try:
            with atomic_path(path) as temporary:
                library.save_file(tensors, str(temporary), metadata=metadata)
        except (library_error, OSError) as error:
            raise CheckpointError(f"could not write {path} ({first_line(error)})") from None
