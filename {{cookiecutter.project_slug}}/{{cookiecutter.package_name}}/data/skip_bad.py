"""data.skip_bad: images that fail to decode are left out of the data before it is served.

The check of the files (folders.py) reads only headers; a file whose header is sound but
whose pixels are not (a JPEG cut short) fails only when decoded. With data.skip_bad, such
files are found by decoding every image once when the data is built (the cache does this
as it fills; without it, leave_out_undecodable does) and are removed from the sample list.
No image is ever replaced by another, so every image counts once with its own label, and
the validation set is the same with the cache and without: the same images, in the same
order. The samplers are made from the final list, so the batch order and an exact resume
depend on nothing that happens during an epoch. Without data.skip_bad nothing is decoded
ahead (a bad file stops the run when a batch reaches it), so that path costs nothing more.
"""

import logging

import torch
from torch.utils.data import DataLoader, Dataset

from .bundle import DataError
from .folders import ImageFiles
from .images import UnreadableImage, open_image

# The project's logger (the package's, not this module's).
logger = logging.getLogger(__name__.split(".")[0])


class _Problems(Dataset):
    """Sample `index` of a list of (path, label) as None, or the problem of a file that
    does not decode (data.skip_bad's warning): a string, which a DataLoader worker sends
    back as it is."""

    def __init__(self, samples: list) -> None:
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> str | None:
        try:
            open_image(self.samples[index][0])
        except UnreadableImage as error:
            return error.skip_warning
        return None


def leave_out_undecodable(dataset: ImageFiles, num_workers: int, what: str) -> None:
    """Decode every image of `dataset` once (in `num_workers` worker processes) and remove
    those that fail from its samples, each named in a warning, counted in one more line."""
    # A generator of its own: a DataLoader without one draws its workers' base seed from
    # torch's global generator, which would shift the model's initial weights, so that
    # data.skip_bad on images without a bad file would train differently from the same run
    # without it.
    loader = DataLoader(
        _Problems(dataset.samples),
        batch_size=64,
        num_workers=num_workers,
        collate_fn=list,
        generator=torch.Generator(),
    )
    problems = [problem for batch in loader for problem in batch]
    kept = [
        sample for sample, problem in zip(dataset.samples, problems, strict=True) if not problem
    ]
    report_left_out([problem for problem in problems if problem], len(problems), what)
    dataset.samples = kept
    dataset.targets = [label for _, label in kept]


def report_left_out(problems: list[str], total: int, what: str) -> None:
    """Warn about each file left out by data.skip_bad, then count them in one line; a
    DataError when none of the `total` images of the set is left."""
    for problem in problems:
        logger.warning(problem)
    if not problems:
        return
    if len(problems) == total:
        raise DataError(f"none of the {total} {what} images could be decoded")
    logger.warning(
        "data.skip_bad: %d of %d %s images could not be decoded and are left out",
        len(problems),
        total,
        what,
    )
