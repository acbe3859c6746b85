"""Which files under a folder are images: the one walk that training (folders.py), the data's
fingerprint (fingerprint.py) and predict.py (inference.py) list image files with, so all
three see the same files.

- An image file has a suffix of a format PIL reads (images.image_suffixes), in any case.
- Hidden files and folders (names starting with ".", and macOS's __MACOSX) are left out at
  every depth, as `ls` leaves them out: Jupyter keeps copies of images in
  .ipynb_checkpoints.
- Symbolic links are followed, to files and to folders, at any depth. Each real folder
  (told by its device and inode) is walked once: a link back to a folder already walked (a
  loop, or a second way to the same folder) is left out, so that no walk runs forever. Each
  real file is used once too: of the names that lead to one (symbolic or hard links), the
  first in sorted order is used and the others are left out, so that no image counts twice.
  Links that lead nowhere are left out. (Across class folders, the same folder or file
  reached from two is an error: folders.py.)
Everything left out that may have been meant as data is counted in one warning line per
kind (report_listing).
"""

import logging
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from .bundle import DataError
from .images import has_image_suffix, reads_as_image, shown

# The project's logger (the package's, not this module's).
logger = logging.getLogger(__name__.split(".")[0])


@dataclass
class Listing:
    """The files found under a folder (list_images), sorted within each list."""

    images: list[Path] = field(default_factory=list)
    hidden: list[Path] = field(default_factory=list)  # image files in hidden places
    misnamed: list[Path] = field(default_factory=list)  # images by content, not by suffix
    repeated: list[Path] = field(default_factory=list)  # more names of a file or folder read
    dangling: list[Path] = field(default_factory=list)  # links that lead nowhere
    # (st_dev, st_ino) -> path, of each folder walked
    folders: dict[tuple[int, int], Path] = field(default_factory=dict)
    # (st_dev, st_ino) -> path, of each image file used (one of `images`)
    files: dict[tuple[int, int], Path] = field(default_factory=dict)


def is_hidden(name: str) -> bool:
    """Whether a file or folder is left out of the data: hidden (the name starts with ".",
    as `ls` hides it: Jupyter keeps copies of images in .ipynb_checkpoints), or the
    __MACOSX folder of resource forks that macOS puts in zip archives."""
    return name.startswith(".") or name == "__MACOSX"


def is_image_file(path: Path) -> bool:
    """Whether `path` is a file (or a link to one) with an image suffix, and not hidden."""
    return has_image_suffix(path.name) and not is_hidden(path.name) and path.is_file()


def list_images(folder: Path, identify: bool = True, strict: bool = True) -> Listing:
    """The image files at any depth under `folder` and what was left out (see the module).

    `identify`: files with another suffix are opened to name those PIL reads as images
    (Listing.misnamed; a header read each). Without it nothing is read: only names and
    `stat`. `strict`: a visible folder that cannot be listed is a DataError, else skipped.
    """
    found = Listing()
    identities: dict[Path, tuple[int, int]] = {}  # of each image file found

    def unlistable(error: OSError) -> None:  # a hidden folder may stay unreadable
        if strict and not _under_hidden(Path(error.filename), folder):
            raise unlistable_error(error)

    with_identity = _identity(folder)
    if with_identity is not None:
        found.folders[with_identity] = folder
    for parent, folder_names, file_names in os.walk(folder, onerror=unlistable, followlinks=True):
        parent = Path(parent)
        hidden_here = _under_hidden(parent, folder)
        folder_names[:] = [name for name in folder_names if _first_visit(parent / name, found)]
        for name in file_names:
            path = parent / name
            if hidden_here or is_hidden(name):
                if has_image_suffix(name):
                    found.hidden.append(path)
            elif has_image_suffix(name) or identify:
                _sort_file(path, found, identify, identities)
    _use_each_file_once(found, identities)
    for paths in (found.images, found.hidden, found.misnamed, found.repeated, found.dangling):
        paths.sort()
    return found


def _use_each_file_once(found: Listing, identities: dict[Path, tuple[int, int]]) -> None:
    """Keep in found.images the first name (in sorted order) of each real file; the others
    (a symbolic or hard link to a file already there) go to found.repeated."""
    images, found.images = sorted(found.images), []
    for path in images:
        first = found.files.setdefault(identities[path], path)
        (found.images if first is path else found.repeated).append(path)


def _sort_file(
    path: Path, found: Listing, identify: bool, identities: dict[Path, tuple[int, int]]
) -> None:
    """Put a visible file into its list of `found`, if any; an image's identity (device,
    inode) into `identities`."""
    try:
        status = path.stat()
    except OSError:  # a link that leads nowhere (or round in a loop)
        if path.is_symlink():
            found.dangling.append(path)
        return
    if not stat.S_ISREG(status.st_mode):  # a socket, a device, a named pipe
        return
    if has_image_suffix(path.name):
        found.images.append(path)
        identities[path] = (status.st_dev, status.st_ino)
    elif identify and reads_as_image(path):
        found.misnamed.append(path)


def _first_visit(path: Path, found: Listing) -> bool:
    """Whether the folder `path` (maybe a link) is a real folder not walked before; records
    it. One already walked is added to found.repeated unless it is hidden."""
    identity = _identity(path)
    if identity is None:
        return True  # os.walk names it when it fails to list it
    if identity in found.folders:
        if not any(map(is_hidden, path.parts)):
            found.repeated.append(path)
        return False
    found.folders[identity] = path
    return True


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        status = path.stat()
    except OSError:
        return None
    return status.st_dev, status.st_ino


def _under_hidden(path: Path, folder: Path) -> bool:
    return any(map(is_hidden, path.relative_to(folder).parts))


def unlistable_error(error: OSError) -> DataError:
    """The error for a folder of the data that cannot be listed (no permission, say)."""
    return DataError(
        f"cannot list the folder {shown(error.filename)} ({error.strerror or error}); make it "
        "readable for this user, or move it out of data.root"
    )


def report_listing(listings: list[Listing]) -> None:
    """One warning line for each kind of file left out of `listings` (see the module)."""
    for kind, (one, several, text) in LEFT_OUT.items():
        paths = sorted(path for listing in listings for path in getattr(listing, kind))
        if paths:
            count = f"{len(paths)} {one if len(paths) == 1 else several}"
            logger.warning(text, count, shown(paths[0]))


# kind of Listing -> (noun for one, for several, the warning naming their count and one)
LEFT_OUT = {
    "hidden": (
        "image",
        "images",
        "skipped %s in hidden files or folders (names starting with '.', or __MACOSX), "
        "e.g. %s; rename or move them to use them",
    ),
    "misnamed": (
        "file",
        "files",
        "not used: %s that PIL reads as images but whose names do not end in an image "
        "suffix, e.g. %s; rename them with their format's suffix (.jpg, .png, ...) to use them",
    ),
    "repeated": (
        "link",
        "links",
        "not used: %s to a file or folder already read (a symbolic or hard link, a loop, or "
        "a second way to the same one), e.g. %s; each file and folder is read once, so each "
        "image counts once",
    ),
    "dangling": (
        "link",
        "links",
        "not used: %s that lead to nothing, e.g. %s; fix or remove them",
    ),
}
