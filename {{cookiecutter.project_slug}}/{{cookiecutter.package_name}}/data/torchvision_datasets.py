"""torchvision's datasets by name, read from (or downloaded to) `data.root`."""

from pathlib import Path

from ..config import DataConfig
from .bundle import DataError

# name -> (torchvision class, image channels)
TORCHVISION_DATASETS = {
    "cifar10": ("CIFAR10", 3),
    "cifar100": ("CIFAR100", 3),
    "mnist": ("MNIST", 1),
    "fashionmnist": ("FashionMNIST", 1),
}


def torchvision_dataset(cfg: DataConfig):
    """(train, val, classes, channels) of the torchvision dataset `data.dataset`."""
    import torchvision

    class_name, native_channels = TORCHVISION_DATASETS[cfg.dataset]
    dataset_class = getattr(torchvision.datasets, class_name)
    splits = []
    for train in (True, False):
        try:
            splits.append(dataset_class(cfg.root, train=train, download=cfg.download))
        except RuntimeError as error:
            if "not found" not in str(error).lower():
                raise
            raise DataError(
                f"data.dataset={cfg.dataset}: no {class_name} files in "
                f"{Path(cfg.root).resolve()}; put them there, or run once with "
                "data.download=true to download them (needs a network connection)"
            ) from None
    channels = cfg.channels or native_channels
    return splits[0], splits[1], list(splits[0].classes), channels
