"""A fingerprint of the data a run trains on, to notice when it changes under a resumed run.

- image folders: every image file that the data loading would read (relative path and size),
  listed by the walk that the data loading lists them with (listing.list_images: hidden
  files and folders skipped, links followed, each real folder once);
- torchvision datasets: every file of the dataset's own folder under `data.root`;
- the built-in shapes: the settings that generate them (seed, sizes, image size).

Files are listed with `stat` only, never read (30,000 files took 0.7 s on a 2-core machine
with the folder cached; reading them all would take minutes to hours): a file rewritten
with the same size (an image edited in place, say) is not noticed. The listing is reduced
to a SHA-256, counts and total bytes, plus a summary per folder; the full listing of
(path, size) is kept up to LISTING_LIMIT files, to name changed files by example (beyond
it, changes are named by folder).
"""

import hashlib
import os
from pathlib import Path

from ..config import Config
from .images import shown
from .listing import is_hidden, list_images

# The full listing is kept up to this many files (about 1 MB of JSON).
LISTING_LIMIT = 20_000
# Files or folders named as examples of a change.
EXAMPLES = 3
# Where torchvision keeps each dataset's files under data.root: only these are the data.
TORCHVISION_FOLDERS = {
    "cifar10": "cifar-10-batches-py",
    "cifar100": "cifar-100-python",
    "mnist": "MNIST",
    "fashionmnist": "FashionMNIST",
}


def fingerprint(cfg: Config) -> dict:
    """The fingerprint of the data `cfg` names, as plain JSON data (see the module's text).

    It needs only the config, so a resume can check the data before building it.
    """
    data = cfg.data
    if data.dataset == "shapes":
        settings = {
            "seed": cfg.seed,
            "train_size": data.train_size,
            "val_size": data.val_size,
            "image_size": data.image_size,
        }
        return {"dataset": "shapes", "settings": settings, "sha256": _sha256(repr(settings))}
    if data.dataset == "shards":  # from the index of the shards: none is read
        from .shards import shards_fingerprint  # (shards.py imports this module)

        return shards_fingerprint(data.root)
    root = Path(data.root)
    if data.dataset == "imagefolder":
        files = image_folder_files(root)
    else:
        own_folder = root / TORCHVISION_FOLDERS.get(data.dataset, "")
        files = _files_under(root, own_folder if own_folder.is_dir() else root)
    return {"dataset": data.dataset, "root": str(root.resolve()), **summarize(files)}


def image_folder_files(root: Path) -> dict[str, int]:
    """relative path -> size of the images that data loading reads from the image folder
    `root`: those of the class folders of root/train and root/val, or of root's own class
    folders when it has no train/ (loose files beside the class folders are not read)."""
    splits = [root / "train", root / "val"] if (root / "train").is_dir() else [root]
    files = {}
    for split in splits:
        for entry in _visible_entries(split):
            if entry.is_dir():  # a class folder (a symbolic link to one is followed)
                listing = list_images(Path(entry.path), identify=False, strict=False)
                files.update(_sizes(root, listing.images))
    return files


def _sizes(root: Path, paths: list[Path]) -> dict[str, int]:
    """relative path (to `root`, with /) -> size, of the files of `paths` that still exist."""
    sizes = {}
    for path in paths:
        try:
            sizes[Path(os.path.relpath(path, root)).as_posix()] = path.stat().st_size
        except OSError:  # gone since it was listed
            continue
    return sizes


def _visible_entries(folder: Path) -> list[os.DirEntry]:
    """The entries of `folder` that data loading does not leave out as hidden (is_hidden:
    dot-names and __MACOSX); none if `folder` cannot be listed (missing, or unreadable:
    data loading, too, skips such a folder or names it)."""
    try:
        with os.scandir(folder) as entries:
            return [entry for entry in entries if not is_hidden(entry.name)]
    except OSError:
        return []


def _files_under(root: Path, folder: Path) -> dict[str, int]:
    """relative path (to `root`, with /) -> size of the visible files below `folder` (a
    torchvision dataset's own files). Symbolic links to folders below `folder` are not
    followed; links to files count as their target."""
    files = {}
    pending = [folder]
    while pending:
        for entry in _visible_entries(pending.pop()):
            if entry.is_dir(follow_symlinks=False):
                pending.append(Path(entry.path))
            elif entry.is_file():
                relative = Path(os.path.relpath(entry.path, root)).as_posix()
                files[relative] = entry.stat().st_size
    return files


def summarize(files: dict[str, int]) -> dict:
    """The fingerprint of a listing (relative path -> size): its SHA-256, counts, a summary
    per folder, and the listing itself when it has at most LISTING_LIMIT files."""
    listing = dict(sorted(files.items()))
    per_folder: dict[str, dict[str, int]] = {}
    for path, size in listing.items():
        folder, _, name = path.rpartition("/")
        per_folder.setdefault(folder or ".", {})[name] = size
    folders = {
        folder: [len(sizes), sum(sizes.values()), _sha256(_lines(sizes))[:16]]
        for folder, sizes in per_folder.items()
    }
    return {
        "sha256": _sha256(_lines(listing)),
        "files": len(listing),
        "bytes": sum(listing.values()),
        "folders": folders,  # folder -> [files, bytes, SHA-256 of its listing (16 digits)]
        "listing": listing if len(listing) <= LISTING_LIMIT else None,
    }


def _lines(sizes: dict[str, int]) -> str:
    return "".join(f"{path}\t{size}\n" for path, size in sizes.items())


def _sha256(text: str) -> str:
    # surrogateescape: a file name that is not valid UTF-8 is hashed as its own bytes.
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()


def describe_change(saved: dict, current: dict) -> str | None:
    """What changed between two fingerprints, in one line; None when nothing did.

    By file (added, removed, resized; counts and a few names) when both kept their
    listing, otherwise by folder.
    """
    dataset, now = saved.get("dataset"), current.get("dataset")
    if dataset != now:
        return f"the dataset changed: {dataset} -> {now}"
    if saved.get("sha256") == current.get("sha256"):
        return None
    if "settings" in saved:
        changed = [
            f"{key} {saved['settings'].get(key)} -> {value}"
            for key, value in current["settings"].items()
            if saved["settings"].get(key) != value
        ]
        return "the built-in shapes' settings changed: " + ", ".join(changed)
    totals = (
        f"{saved['files']} -> {current['files']} files, "
        f"{_size(saved['bytes'])} -> {_size(current['bytes'])}"
    )
    if saved.get("listing") is not None and current.get("listing") is not None:
        changes = _differences(saved["listing"], current["listing"], "file")
    else:
        changes = _differences(saved["folders"], current["folders"], "folder")
    return f"the data in {shown(current['root'])} changed ({totals}): {'; '.join(changes)}"


def _differences(saved: dict, current: dict, kind: str) -> list[str]:
    """'N <kind>s added (e.g. ...)', then removed, then resized (files) or changed
    (folders), for those that occur."""
    added = sorted(set(current) - set(saved))
    removed = sorted(set(saved) - set(current))
    altered = sorted(key for key in set(saved) & set(current) if saved[key] != current[key])
    if kind == "folder":  # [files, bytes, digest]: say how the count of files moved
        altered = [f"{name} {saved[name][0]} -> {current[name][0]} files" for name in altered]
    verb = "resized" if kind == "file" else "changed"
    found = []
    for names, what in ((added, "added"), (removed, "removed"), (altered, verb)):
        if names:
            plural = "s" if len(names) != 1 else ""
            examples = ", ".join(map(shown, names[:EXAMPLES]))
            examples += ", ..." if len(names) > EXAMPLES else ""
            found.append(f"{len(names)} {kind}{plural} {what} (e.g. {examples})")
    return found


def _size(size: int) -> str:
    return f"{size:,} bytes" if size < 1_000_000 else f"{size / 1e6:,.1f} MB"
