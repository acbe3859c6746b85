"""The user's image folders: scanning the class folders, checking every image once, the
train/val split, and ImageFiles, the dataset that decodes them with PIL when indexed.

A broken file, an empty class folder or a wrong layout stops the run when the dataset is
built, with one error naming the file or folder, instead of a traceback from a DataLoader
worker an hour later. Hidden files and folders are left out at every depth, as `ls` leaves
them out. Every image file is decoded by open_image, the one place that turns a file into
pixels: training, the cache, the statistics, evaluation and prediction see the same ones.
PIL is imported only here, and only when needed.
"""

import contextlib
import logging
import os
import random
import time
import warnings
from pathlib import Path

from torch.utils.data import Dataset

from ..config import DataConfig
from .bundle import DataError

# The project's logger (the package's, not this module's).
logger = logging.getLogger(__name__.split(".")[0])

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")
# PIL modes that hold one channel of intensity.
GRAYSCALE_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")
# PIL modes that every later step converts to "L" and to "RGB" as they are.
PLAIN_MODES = ("1", "L", "LA", "P", "PA", "RGB", "RGBA")
# The value that stands for white in modes wider than 8 bits, the smallest of the list that
# the image's brightest pixel does not exceed: 16-bit data (PNG, TIFF, PGM) in "I;16" or "I",
# floats in [0, 1], [0, 255] or [0, 65535] in "F". PIL's own convert() clips these modes to
# 0..255 instead of scaling them: a 16-bit PNG would train as a black-and-white image.
WHITE_LEVELS = {"I;16": (65535,), "I": (65535, 2**31 - 1), "F": (1.0, 255.0, 65535.0)}


class ImageFiles(Dataset):
    """Image files listed as (path, label) pairs, decoded with PIL when indexed.

    Files were checked when the list was made; one that still fails to decode (a JPEG cut
    short, say) is an error naming it, or with `skip_bad` a warning, and the next file of
    the list takes its place so that batches keep their size and the run its determinism.
    """

    def __init__(
        self, samples: list[tuple[Path, int]], classes: list[str], skip_bad: bool = False
    ) -> None:
        self.samples = samples
        self.classes = classes
        self.skip_bad = skip_bad
        self.targets = [label for _, label in samples]
        self.transform = None  # set by build_datasets

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        if not 0 <= index < len(self.samples):
            raise IndexError(index)  # ends iteration over the dataset, as for a list
        for attempt in range(len(self.samples)):
            path, label = self.samples[(index + attempt) % len(self.samples)]
            try:
                image = open_image(path)
            except UnreadableImage as error:
                if not self.skip_bad:
                    raise
                logger.warning(error.skip_warning)
                continue
            return (self.transform(image) if self.transform else image), label
        raise DataError(f"none of the {len(self.samples)} images could be decoded")


def open_image(path: Path):
    """The decoded image at `path`, in one of PLAIN_MODES, or DataError naming the file.

    Images wider than 8 bits per pixel are scaled to 8 bits ("L") from their white level
    (WHITE_LEVELS); other modes (CMYK, YCbCr, LAB, ...) are converted to "RGB".
    """
    from PIL import Image

    try:
        with quiet_pil(), Image.open(path) as image:
            image.load()
            if image.mode == "P" and "transparency" in image.info:
                return image.convert("RGBA")  # as PIL asks, rather than warn at each convert
            if image.mode in PLAIN_MODES:
                return image
            if image.mode in GRAYSCALE_MODES:
                return to_8_bits(image)
            return image.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise _unreadable(path, error) from None


@contextlib.contextmanager
def quiet_pil():
    """PIL's warnings silenced: about damaged metadata (EXIF, TIFF tags) of an image that
    decodes all the same, they would be lines on stderr that ask nothing of the user."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning, module="PIL")
        yield


def to_8_bits(image):
    """A one-channel image of 16 or 32 bits per pixel ("I;16", "I", "F") as "L", scaled so
    that its white level (WHITE_LEVELS) becomes 255, rounded; NaN is black, +inf white."""
    import numpy as np
    from PIL import Image

    pixels = np.asarray(image, dtype=np.float64)
    finite = np.isfinite(pixels)
    peak = pixels.max(initial=0.0, where=finite)
    levels = WHITE_LEVELS["I;16" if image.mode.startswith("I;16") else image.mode]
    white = next((level for level in levels if peak <= level), peak)
    pixels = np.where(finite, pixels, np.where(pixels > 0, white, 0.0))
    scaled = np.clip(np.rint(pixels * (255 / white)), 0, 255).astype(np.uint8)
    return Image.fromarray(scaled)


class UnreadableImage(DataError):
    """An image file that PIL cannot open or decode. `skip_warning` is what data.skip_bad
    says instead: the same problem, without the advice to set data.skip_bad. (One argument
    is enough to make one: a DataLoader worker's error is re-made from its message.)"""

    def __init__(self, message: str, skip_warning: str = "") -> None:
        super().__init__(message)
        self.skip_warning = skip_warning or f"skipping: {str(self).split('; ')[0]}"


def _unreadable(path: Path, error: Exception) -> UnreadableImage:
    reason = _reason(error, path)
    return UnreadableImage(
        f"{path} is not a readable image ({reason}); replace or delete it, "
        "or set data.skip_bad=true to skip unreadable images with a warning",
        f"skipping {path}: not a readable image ({reason})",
    )


def _reason(error: Exception, path: Path) -> str:
    """The first line of PIL's message, without the path that the error names already."""
    text = str(error).strip().replace(f" {str(path)!r}", "").replace(str(path), "the file")
    return text.splitlines()[0] if text else type(error).__name__


def image_folder(cfg: DataConfig) -> tuple[ImageFiles, ImageFiles, list[str], int]:
    """The user's images: root/train + root/val, or root/<class> (or root/train) split."""
    root = Path(cfg.root)
    has_train, has_val = _check_layout(cfg, root)
    started = time.perf_counter()
    train_folder = root / "train" if has_train else root
    skipped: list[Path] = []
    classes, train_files = _scan_class_folders(train_folder, skipped)
    _check_two_classes(train_folder, classes)
    val_files = _scan_val_folder(cfg, root / "val", classes, skipped) if has_val else {}
    _report_skipped(skipped)
    modes = _check_all_images([*train_files.values(), *val_files.values()], cfg)
    _check_no_empty_class(train_folder, train_files)
    if has_val:
        _check_no_empty_class(root / "val", val_files)
        train_samples = _labelled(train_files, classes)
        val_samples = _labelled(val_files, classes)
    else:
        if cfg.val_fraction == 0:
            raise DataError(
                f"data.root={cfg.root!r} has no val/ folder and data.val_fraction=0; add "
                f"{root / 'val'}/<class>/ folders or set data.val_fraction=0.2"
            )
        train_samples, val_samples = _split(train_files, classes, cfg, train_folder)
    channels = cfg.channels or (1 if modes and modes <= set(GRAYSCALE_MODES) else 3)
    logger.info(
        "imagefolder %s: %d classes, %d train / %d val images (%s), %d channel%s, "
        "checked in %.1f s",
        root,
        len(classes),
        len(train_samples),
        len(val_samples),
        "train/ and val/" if has_val else f"{cfg.val_fraction:.0%} held out for validation",
        channels,
        "" if channels == 1 else "s",
        time.perf_counter() - started,
    )
    train = ImageFiles(train_samples, classes, cfg.skip_bad)
    return train, ImageFiles(val_samples, classes, cfg.skip_bad), classes, channels


def _check_layout(cfg: DataConfig, root: Path) -> tuple[bool, bool]:
    """Whether `root` has a train/ and a val/ folder; an error for a missing root, or for a
    val/ without train/."""
    if not root.is_dir():
        problem = "is a file, not a folder" if root.exists() else "does not exist"
        raise DataError(
            f"data.root={cfg.root!r}: folder {root.resolve()} {problem}; point data.root "
            "at the folder that holds train/ and val/ (or one sub-folder per class)"
        )
    has_train, has_val = (root / "train").is_dir(), (root / "val").is_dir()
    if has_val and not has_train:
        raise DataError(
            f"data.root={cfg.root!r}: {root / 'val'} exists but {root / 'train'} does not; "
            "put the training images in train/<class>/ beside val/"
        )
    return has_train, has_val


def _scan_val_folder(
    cfg: DataConfig, folder: Path, classes: list[str], skipped: list[Path]
) -> dict[str, list[Path]]:
    """The image files of each class folder of val/, whose classes must all be in train/;
    a warning names the training classes that val/ lacks (their accuracy goes unmeasured)."""
    val_classes, val_files = _scan_class_folders(folder, skipped)
    unknown = sorted(set(val_classes) - set(classes))
    if unknown:
        raise DataError(
            f"data.root={cfg.root!r}: classes {unknown} are in val/ but not in train/; "
            "every validation class needs training images (check the folder names)"
        )
    unseen = [name for name in classes if name not in set(val_classes)]
    if unseen:
        logger.warning(
            "data.root=%r: %d of %d classes have no folder in val/, so their accuracy is not "
            "measured: %s; add a val/<class>/ folder of images for each",
            cfg.root,
            len(unseen),
            len(classes),
            ", ".join(unseen),
        )
    return val_files


def _check_all_images(file_lists: list[list[Path]], cfg: DataConfig) -> set:
    """Check every image (_check_images), leaving the unreadable ones out of their lists in
    place, and warn once about images much smaller than the crop. Returns the PIL modes seen."""
    modes, tiny = set(), []
    for files in file_lists:
        files[:] = _check_images(files, cfg, modes, tiny)
    if tiny:
        path, (width, height) = tiny[0]
        logger.warning(
            "%d %s smaller than half of data.image_size=%d (e.g. %s, %dx%d) and %s scaled up "
            "a lot; a smaller data.image_size may suit them better",
            len(tiny),
            "images are" if len(tiny) > 1 else "image is",
            cfg.image_size,
            path,
            width,
            height,
            "are" if len(tiny) > 1 else "is",
        )
    return modes


def _scan_class_folders(
    folder: Path, skipped: list[Path]
) -> tuple[list[str], dict[str, list[Path]]]:
    """Class names (sub-folder names, sorted) and each class's image files (at any depth).
    Images under hidden entries are added to `skipped`; images beside the class folders
    bring a warning, as they belong to no class."""
    try:
        entries = list(folder.iterdir())
    except OSError as error:
        raise _unlistable(error) from None
    classes = sorted(e.name for e in entries if e.is_dir() and not is_hidden(e.name))
    loose = [entry for entry in entries if is_image_file(entry)]
    if not classes:
        count = f"{len(loose)} image{'s' if len(loose) > 1 else ''}"
        where = f"holds {count} but no class folders" if loose else "is empty"
        raise DataError(
            f"{folder} {where}; put the images in one sub-folder per class, e.g. "
            f"{folder / 'cat' / '001.png'} (supported: {', '.join(IMAGE_SUFFIXES)})"
        )
    if loose:
        logger.warning(
            "not used: %d image%s in %s beside the class folders (e.g. %s); move each into "
            "the folder of its class",
            len(loose),
            "s" if len(loose) > 1 else "",
            folder,
            min(loose).name,
        )
    for entry in entries:
        if is_hidden(entry.name) and entry.is_dir():
            skipped += [path for found in _images_under(entry) for path in found]
    files = {}
    for name in classes:
        files[name], hidden = _images_under(folder / name)
        skipped += hidden
    if not any(files.values()):
        raise DataError(
            f"no images in {folder}: its class folders ({', '.join(classes[:5])}"
            f"{', ...' if len(classes) > 5 else ''}) hold no files ending in "
            f"{', '.join(IMAGE_SUFFIXES)}"
        )
    _check_no_empty_class(folder, files)
    return classes, files


def is_hidden(name: str) -> bool:
    """Whether a file or folder is left out of the data: hidden (the name starts with ".",
    as `ls` hides it: Jupyter keeps copies of images in .ipynb_checkpoints), or the
    __MACOSX folder of resource forks that macOS puts in zip archives."""
    return name.startswith(".") or name == "__MACOSX"


def _images_under(folder: Path) -> tuple[list[Path], list[Path]]:
    """(used, hidden): the image files at any depth under `folder`, sorted, and those left
    out because they or a folder between them and `folder` are hidden (is_hidden)."""

    def stop_unless_hidden(error: OSError) -> None:  # a hidden folder may stay unreadable
        if not any(map(is_hidden, Path(error.filename).relative_to(folder).parts)):
            raise _unlistable(error)

    used, hidden = [], []
    for parent, _, names in os.walk(folder, onerror=stop_unless_hidden):
        inside_hidden = any(map(is_hidden, Path(parent).relative_to(folder).parts))
        for name in names:
            path = Path(parent) / name
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            if inside_hidden or is_hidden(name):
                hidden.append(path)
            elif path.is_file():
                used.append(path)
    return sorted(used), hidden


def _unlistable(error: OSError) -> DataError:
    """The error for a folder of the data that cannot be listed (no permission, say)."""
    return DataError(
        f"cannot list the folder {error.filename} ({error.strerror or error}); make it "
        "readable for this user, or move it out of data.root"
    )


def image_files_under(folder: Path) -> list[Path]:
    """The image files at any depth under `folder`, sorted, hidden ones left out."""
    return _images_under(folder)[0]


def is_image_file(path: Path) -> bool:
    """Whether `path` is a file with an image suffix and not hidden (is_hidden)."""
    return path.suffix.lower() in IMAGE_SUFFIXES and not is_hidden(path.name) and path.is_file()


def _check_two_classes(folder: Path, classes: list[str]) -> None:
    """A classifier needs two classes: with one, every answer is right and nothing learnt."""
    if len(classes) < 2:
        raise DataError(
            f"{folder} has one class folder ({classes[0]}), and a classifier needs at least "
            f"two classes; add a folder of images for each other class beside {classes[0]}/"
        )


def _report_skipped(skipped: list[Path]) -> None:
    """One warning line for all the images left out as hidden."""
    if skipped:
        logger.warning(
            "skipped %d image%s in hidden files or folders (names starting with '.', or "
            "__MACOSX), e.g. %s; rename or move them to train on them",
            len(skipped),
            "s" if len(skipped) > 1 else "",
            min(skipped),
        )


def _check_no_empty_class(folder: Path, files: dict[str, list[Path]]) -> None:
    for name, paths in files.items():
        if not paths:
            raise DataError(
                f"class folder {folder / name} has no usable images; add some (supported: "
                f"{', '.join(IMAGE_SUFFIXES)}) or remove the folder"
            )


def _check_images(paths: list[Path], cfg: DataConfig, modes: set, tiny: list) -> list[Path]:
    """The readable images among `paths`; their PIL modes are added to `modes`, and
    (path, size) of those less than half as large as the crop to `tiny`.

    Only the header is decoded and the file's checksums verified (cheap); an image that
    fails is an error naming it, or with `data.skip_bad` a warning and it is left out.
    """
    from PIL import Image

    good = []
    for path in paths:
        try:
            with quiet_pil(), Image.open(path) as image:
                size, mode = image.size, image.mode
                image.verify()
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
            if not cfg.skip_bad:
                raise _unreadable(path, error) from None
            logger.warning(_unreadable(path, error).skip_warning)
            continue
        if not cfg.resize and cfg.resize is not None and min(size) < cfg.image_size:
            raise DataError(
                f"{path} is {size[0]}x{size[1]} pixels, smaller than the crop of "
                f"data.image_size={cfg.image_size} with data.resize=0; use data.resize=null "
                "to scale images first, or a smaller data.image_size"
            )
        if 2 * min(size) < cfg.image_size:
            tiny.append((path, size))
        modes.add(mode)
        good.append(path)
    return good


def _labelled(files: dict[str, list[Path]], classes: list[str]) -> list[tuple[Path, int]]:
    """(path, label) pairs, labels being indices into the training classes."""
    index = {name: label for label, name in enumerate(classes)}
    return [(path, index[name]) for name in sorted(files) for path in files[name]]


def _split(
    files: dict[str, list[Path]], classes: list[str], cfg: DataConfig, folder: Path
) -> tuple[list[tuple[Path, int]], list[tuple[Path, int]]]:
    """A stratified split: each class gives `val_fraction` of its images (at least one) to
    validation. Each class is shuffled by its own seeded generator, so adding a class or
    images to one class leaves the split of the others as it was."""
    train, val = [], []
    for label, name in enumerate(classes):
        paths = list(files[name])
        held_out = max(1, round(len(paths) * cfg.val_fraction))
        if len(paths) - held_out < 1:
            raise DataError(
                f"too few images for the split: class folder {folder / name} has "
                f"{len(paths)} image{'s' if len(paths) != 1 else ''}, and data.val_fraction="
                f"{cfg.val_fraction} needs at least 2 per class (one to train, one to "
                "validate); add images, or give separate train/ and val/ folders"
            )
        random.Random(f"{cfg.split_seed}/{name}").shuffle(paths)
        val += [(path, label) for path in sorted(paths[:held_out])]
        train += [(path, label) for path in sorted(paths[held_out:])]
    return train, val
