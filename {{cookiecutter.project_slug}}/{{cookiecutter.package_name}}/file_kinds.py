"""What a file is, told by its first bytes: to say exactly why a weights file is refused.

torch.save writes a zip archive. A file that is not one may still be weights in torch's
legacy format (before torch 1.6, or `_use_new_zipfile_serialization=False`), which loads; or
something else that people hand over as weights: say what it is, not just "corrupt".
"""

from pathlib import Path

# The legacy format is a pickle whose first object is torch's magic number.
LEGACY_TORCH_MAGIC = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19"

# First bytes -> what the file is, and what to do about it.
KNOWN_STARTS = {
    b"\x89HDF\r\n\x1a\n": "is an HDF5 file (Keras or TensorFlow weights?), not PyTorch weights",
    b"\x93NUMPY": "is a NumPy array file, not PyTorch weights",
    b"version https://git-lfs": "is a Git LFS pointer, not the file itself; run git lfs pull",
    b"<!doctype html": "is a web page, not weights; the download link may need a login",
    b"<html": "is a web page, not weights; the download link may need a login",
}


def _head(path: Path, size: int = 64) -> bytes:
    with open(path, "rb") as file:
        return file.read(size)


def is_legacy_torch_file(path: Path) -> bool:
    """Whether `path` starts as torch's legacy (non-zip) format does."""
    return _head(path).startswith(LEGACY_TORCH_MAGIC)


def what_it_is(path: Path) -> str:
    """What `path`, which is not a torch zip archive, is: `is <what>; <fix>`."""
    head = _head(path)
    if not head:
        return "is empty (0 bytes): a save or a download that did not finish"
    for start, kind in KNOWN_STARTS.items():
        if head.lower().startswith(start.lower()):
            return kind
    if _is_safetensors(head, path):
        return "is a safetensors file; give it the suffix .safetensors"
    if head[:1] == b"\x80":  # the opcode that starts a pickle of protocol 2 or later
        return "is a plain Python pickle, not a file written by torch.save"
    return "is truncated or corrupt (not a torch zip archive)"


def _is_safetensors(head: bytes, path: Path) -> bool:
    """safetensors: the length of a JSON header (8 bytes, little-endian), then the header."""
    length = int.from_bytes(head[:8], "little")
    return len(head) > 8 and head[8:9] == b"{" and 8 + length <= path.stat().st_size
