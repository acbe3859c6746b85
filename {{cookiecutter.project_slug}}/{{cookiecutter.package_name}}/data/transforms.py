"""Image transforms: PIL image -> tensor, as training and evaluation see images from files,
and the square that the decoded-image cache keeps of each. torchvision is imported only
when a transform is made."""

import math

from ..config import DataConfig


class ConvertMode:
    """Convert a PIL image to `mode` ("L" or "RGB"); a class, so worker processes can
    unpickle it."""

    def __init__(self, mode: str) -> None:
        self.mode = mode

    def __call__(self, image):
        return image if image.mode == self.mode else image.convert(self.mode)


def image_transform(
    cfg: DataConfig,
    channels: int,
    train: bool,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
):
    """PIL image -> normalised tensor: convert, resize, crop (random when training), flip.

    Without `mean`, the tensor is left in [0, 1] (used to compute the statistics).
    """
    from torchvision import transforms

    steps = [ConvertMode("L" if channels == 1 else "RGB")]
    resize = resize_side(cfg)
    if resize:
        steps.append(transforms.Resize(resize, interpolation_of(cfg), antialias=True))
    if train and cfg.random_crop:
        steps.append(transforms.RandomCrop(cfg.image_size))
    else:
        steps.append(transforms.CenterCrop(cfg.image_size))
    if train and cfg.flip:
        steps.append(transforms.RandomHorizontalFlip())
    steps.append(transforms.ToTensor())
    if mean is not None:
        steps.append(transforms.Normalize(mean, std))
    return transforms.Compose(steps)


def interpolation_of(cfg: DataConfig):
    """torchvision's InterpolationMode of data.interpolation (null: bilinear)."""
    from torchvision.transforms import InterpolationMode

    return InterpolationMode(cfg.interpolation or "bilinear")


def resize_side(cfg: DataConfig) -> int:
    """The side that images' shorter side is resized to; 0 means no resize."""
    return cfg.resize if cfg.resize is not None else math.ceil(cfg.image_size * 1.14)


def centre_window(side: int, crop: int) -> slice:
    """The centre crop of `crop` in `side` pixels, rounded as torchvision's CenterCrop."""
    start = int(round((side - crop) / 2.0))
    return slice(start, start + crop)


class CropSquare:
    """Crop a PIL image to a `side` x `side` square around its centre, placed so that the
    centre crop of `crop` taken from the square later is exactly CenterCrop(crop) of the
    whole image. (CenterCrop(side) then CenterCrop(crop) can land a pixel off where the two
    roundings differ, for images that are not square.)"""

    def __init__(self, side: int, crop: int) -> None:
        self.side, self.crop = side, crop

    def __call__(self, image):
        inner = centre_window(self.side, self.crop).start
        left = centre_window(image.width, self.crop).start - inner
        top = centre_window(image.height, self.crop).start - inner
        return image.crop((left, top, left + self.side, top + self.side))
