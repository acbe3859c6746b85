"""The user's image folders: scanning the class folders, checking every image once, the
train/val split, and ImageFiles, the dataset that decodes them when indexed.

A broken file, an empty class folder or a wrong layout stops the run when the dataset is
built, with one error naming the file or folder, instead of a traceback from a DataLoader
worker an hour later. Which files are images, and how links and hidden files are treated,
is listing.py's (the data's fingerprint and predict.py list files the same way); how a
file becomes pixels is images.py's.
"""

import logging
import random
import time
from pathlib import Path

from torch.utils.data import Dataset

from ..config import DataConfig
from .bundle import DataError
from .images import GRAYSCALE_MODES, IMAGE_SUFFIXES, UnreadableImage, open_image, read_header, shown
from .listing import (
    Listing,
    is_hidden,
    is_image_file,
    list_images,
    report_listing,
    unlistable_error,
)
from .survey import ImageSurvey

# The project's logger (the package's, not this module's).
logger = logging.getLogger(__name__.split(".")[0])
# Named where a message says which files are images.
SUPPORTED = f"{', '.join(IMAGE_SUFFIXES)} or another suffix of a format PIL reads"


class ImageFiles(Dataset):
    """Image files listed as (path, label) pairs, decoded with open_image when indexed.

    Files were checked when the list was made; with `skip_bad`, those that fail to decode
    were left out of it (skip_bad.leave_out_undecodable): no file is ever replaced by
    another, so every image counts once and with its own label.
    """

    def __init__(
        self, samples: list[tuple[Path, int]], classes: list[str], skip_bad: bool = False
    ) -> None:
        self.samples = samples
        self.classes = classes
        self.skip_bad = skip_bad
        self.targets = [label for _, label in samples]
        self.transform = None  # set by build_datasets
        self.survey: ImageSurvey | None = None  # set by image_folder for the training set

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        if not 0 <= index < len(self.samples):
            raise IndexError(index)  # ends iteration over the dataset, as for a list
        path, label = self.samples[index]
        try:
            image = open_image(path)
        except UnreadableImage as error:
            if not self.skip_bad:
                raise
            raise DataError(
                f"{error.problem}, though it was decoded when the run started; put the file "
                "back as it was, or start the run again to leave it out"
            ) from None
        return (self.transform(image) if self.transform else image), label


def image_folder(cfg: DataConfig) -> tuple[ImageFiles, ImageFiles, list[str], int]:
    """The user's images: root/train + root/val, or root/<class> (or root/train) split."""
    root = Path(cfg.root)
    has_train, has_val = _check_layout(cfg, root)
    started = time.perf_counter()
    train_folder = root / "train" if has_train else root
    listings: dict[Path, Listing] = {}
    classes, train_files = _scan_class_folders(train_folder, listings)
    _check_two_classes(train_folder, classes)
    val_files = _scan_val_folder(cfg, root / "val", classes, listings) if has_val else {}
    report_listing(list(listings.values()))
    _check_folders_apart(listings)
    survey = _check_all_images([*train_files.values(), *val_files.values()], cfg)
    _check_no_empty_class(train_folder, train_files)
    if has_val:
        _check_no_empty_class(root / "val", val_files)
        train_samples = _labelled(train_files, classes)
        val_samples = _labelled(val_files, classes)
    else:
        if cfg.val_fraction == 0:
            raise DataError(
                f"data.root={cfg.root!r} has no val/ folder and data.val_fraction=0; add "
                f"{shown(root / 'val')}/<class>/ folders or set data.val_fraction=0.2"
            )
        train_samples, val_samples = _split(train_files, classes, cfg, train_folder)
    channels = survey.channels
    logger.info(
        "imagefolder %s: %d classes, %d train / %d val images (%s), %d channel%s, "
        "checked in %.1f s",
        shown(root),
        len(classes),
        len(train_samples),
        len(val_samples),
        "train/ and val/" if has_val else f"{cfg.val_fraction:.0%} held out for validation",
        channels,
        "" if channels == 1 else "s",
        time.perf_counter() - started,
    )
    train = ImageFiles(train_samples, classes, cfg.skip_bad)
    train.survey = survey
    return train, ImageFiles(val_samples, classes, cfg.skip_bad), classes, channels


def _check_layout(cfg: DataConfig, root: Path) -> tuple[bool, bool]:
    """Whether `root` has a train/ and a val/ folder; an error for a missing root, or for a
    val/ without train/."""
    if not root.is_dir():
        problem = "is a file, not a folder" if root.exists() else "does not exist"
        raise DataError(
            f"data.root={cfg.root!r}: folder {shown(root.resolve())} {problem}; point data.root "
            "at the folder that holds train/ and val/ (or one sub-folder per class)"
        )
    has_train, has_val = (root / "train").is_dir(), (root / "val").is_dir()
    if has_val and not has_train:
        raise DataError(
            f"data.root={cfg.root!r}: {shown(root / 'val')} exists but {shown(root / 'train')} "
            "does not; "
            "put the training images in train/<class>/ beside val/"
        )
    return has_train, has_val


def _scan_val_folder(
    cfg: DataConfig, folder: Path, classes: list[str], listings: dict[Path, Listing]
) -> dict[str, list[Path]]:
    """The image files of each class folder of val/, whose classes must all be in train/;
    a warning names the training classes that val/ lacks (their accuracy goes unmeasured)."""
    val_classes, val_files = _scan_class_folders(folder, listings)
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


def _check_all_images(file_lists: list[list[Path]], cfg: DataConfig) -> ImageSurvey:
    """Check every image (_check_images), leaving the unreadable ones out of their lists in
    place. Returns their survey (sizes, formats; its channels from the PIL modes seen)."""
    survey, modes = ImageSurvey(channels=3, source="the images"), set()
    for files in file_lists:
        files[:] = _check_images(files, cfg, modes, survey)
    survey.channels = cfg.channels or (1 if modes and modes <= set(GRAYSCALE_MODES) else 3)
    return survey


def _scan_class_folders(
    folder: Path, listings: dict[Path, Listing]
) -> tuple[list[str], dict[str, list[Path]]]:
    """Class names (sub-folder names, sorted) and each class's image files (at any depth).
    What each walk found is added to `listings` under the folder walked (hidden folders
    beside the class folders too, to count their images); images beside the class folders
    bring a warning, as they belong to no class."""
    try:
        entries = list(folder.iterdir())
    except OSError as error:
        raise unlistable_error(error) from None
    classes = sorted(e.name for e in entries if e.is_dir() and not is_hidden(e.name))
    _check_names_are_text(folder, classes)
    loose = [entry for entry in entries if is_image_file(entry)]
    if not classes:
        count = f"{len(loose)} image{'s' if len(loose) > 1 else ''}"
        where = f"holds {count} but no class folders" if loose else "is empty"
        raise DataError(
            f"{shown(folder)} {where}; put the images in one sub-folder per class, e.g. "
            f"{shown(folder / 'cat' / '001.png')} (supported: {SUPPORTED})"
        )
    if loose:
        logger.warning(
            "not used: %d image%s in %s beside the class folders (e.g. %s); move each into "
            "the folder of its class",
            len(loose),
            "s" if len(loose) > 1 else "",
            shown(folder),
            shown(min(loose).name),
        )
    dangling = sorted(entry for entry in entries if entry.is_symlink() and not entry.exists())
    listings[folder] = Listing(dangling=dangling)
    for entry in entries:
        if is_hidden(entry.name) and entry.is_dir():
            found = list_images(entry, identify=False, strict=False)
            listings[entry] = Listing(hidden=found.images + found.hidden)
    files = {}
    for name in classes:
        listings[folder / name] = list_images(folder / name)
        files[name] = listings[folder / name].images
    if not any(files.values()):
        raise DataError(
            f"no images in {shown(folder)}: its class folders ({shown(', '.join(classes[:5]))}"
            f"{', ...' if len(classes) > 5 else ''}) hold no files ending in {SUPPORTED}"
        )
    _check_no_empty_class(folder, files)
    return classes, files


def _check_names_are_text(folder: Path, classes: list[str]) -> None:
    """Class names are written as text (checkpoints, metrics, exports): a folder name that
    is not valid UTF-8 (Linux allows any bytes) is refused, naming it with its bytes shown."""
    for name in classes:
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            raise DataError(
                f"the name of the class folder {shown(folder / name)} is not valid UTF-8, "
                "and class names are written as text into checkpoints, metrics and exports; "
                "rename the folder (e.g. convmv -f latin1 -t utf8 -r --notest FOLDER)"
            ) from None


def _check_folders_apart(listings: dict[Path, Listing]) -> None:
    """Every real folder, and every real image file, belongs to one class folder of one
    split: one reached from two (through a symbolic or hard link) would give its images two
    labels, or put validation images into training. (Within one class folder, the walk
    reads each folder and file once.)"""
    for kind, of in (("folder", "its images"), ("file", "the image")):
        owners: dict[tuple[int, int], Path] = {}
        for listing in listings.values():
            for identity, path in getattr(listing, f"{kind}s").items():
                first = owners.setdefault(identity, path)
                if first is not path:
                    raise DataError(
                        f"{shown(first)} and {shown(path)} are the same {kind} (a link leads "
                        f"to it), so {of} would be read twice, with two labels or in both "
                        "training and validation; remove the link"
                    )


def image_files_under(folder: Path) -> list[Path]:
    """The image files at any depth under `folder`, sorted (list_images)."""
    return list_images(folder).images


def _check_two_classes(folder: Path, classes: list[str]) -> None:
    """A classifier needs two classes: with one, every answer is right and nothing learnt."""
    if len(classes) < 2:
        raise DataError(
            f"{shown(folder)} has one class folder ({classes[0]}), and a classifier needs at least "
            f"two classes; add a folder of images for each other class beside {classes[0]}/"
        )


def _check_no_empty_class(folder: Path, files: dict[str, list[Path]]) -> None:
    for name, paths in files.items():
        if not paths:
            raise DataError(
                f"class folder {shown(folder / name)} has no usable images; add some "
                f"(supported: {SUPPORTED}) or remove the folder"
            )


def _check_images(
    paths: list[Path], cfg: DataConfig, modes: set, survey: ImageSurvey
) -> list[Path]:
    """The readable images among `paths`; their PIL modes are added to `modes`, their sizes
    and formats to `survey`.

    Only the header is decoded and the file's checksums verified (cheap); the size is the
    one a viewer shows (EXIF orientation applied). An image that fails is an error naming
    it, or with `data.skip_bad` a warning and it is left out.
    """
    good = []
    for path in paths:
        try:
            size, mode, image_format = read_header(path)
        except UnreadableImage as error:
            if not cfg.skip_bad:
                raise
            logger.warning(error.skip_warning)
            continue
        survey.add(path, size, image_format)
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
                f"too few images for the split: class folder {shown(folder / name)} has "
                f"{len(paths)} image{'s' if len(paths) != 1 else ''}, and data.val_fraction="
                f"{cfg.val_fraction} needs at least 2 per class (one to train, one to "
                "validate); add images, or give separate train/ and val/ folders"
            )
        random.Random(f"{cfg.split_seed}/{name}").shuffle(paths)
        val += [(path, label) for path in sorted(paths[:held_out])]
        train += [(path, label) for path in sorted(paths[held_out:])]
    return train, val
