"""torchvision's datasets by name, read from (or downloaded to) `data.root`."""

import http.client
from pathlib import Path
from urllib.error import URLError

from ..config import DataConfig
from ..errors import EnvironmentProblem
from .bundle import DataError

# name -> (torchvision class, image channels)
TORCHVISION_DATASETS = {
    "cifar10": ("CIFAR10", 3),
    "cifar100": ("CIFAR100", 3),
    "mnist": ("MNIST", 1),
    "fashionmnist": ("FashionMNIST", 1),
}

# What a download can fail with: no network, a refused or reset connection, a proxy in
# the way, a reply cut short (URLError and the connection errors are OSErrors).
NETWORK_ERRORS = (URLError, ConnectionError, TimeoutError, http.client.HTTPException)


def torchvision_dataset(cfg: DataConfig):
    """(train, val, classes, channels) of the torchvision dataset `data.dataset`."""
    import torchvision

    class_name, native_channels = TORCHVISION_DATASETS[cfg.dataset]
    dataset_class = getattr(torchvision.datasets, class_name)
    splits = []
    for train in (True, False):
        try:
            splits.append(dataset_class(cfg.root, train=train, download=cfg.download))
        except (*NETWORK_ERRORS, OSError, RuntimeError) as error:
            raise _not_loaded(cfg, class_name, error) from None
    channels = cfg.channels or native_channels
    return splits[0], splits[1], list(splits[0].classes), channels


def _not_loaded(cfg: DataConfig, class_name: str, error: Exception) -> Exception:
    """The one-line error for a torchvision dataset that could not be downloaded or read;
    an error of another kind is given back as it is (a bug shows its traceback)."""
    root = Path(cfg.root).resolve()
    message = str(error).strip()
    # torchvision's MNIST tries its mirrors, then raises one RuntimeError that lists each
    # mirror's error (the last line is the last mirror's); a download cut short fails its
    # checksum ("File not found or corrupted.").
    downloading = (
        isinstance(error, NETWORK_ERRORS)
        or message.startswith("Error downloading")
        or "corrupted" in message.lower()
    )
    reason = message.splitlines()[-1] if message else type(error).__name__
    reason = reason.removeprefix("<urlopen error ").removesuffix(">")  # URLError's wrapping
    where = f"data.dataset={cfg.dataset}"
    if cfg.download and downloading:  # the network, not the settings: exit 1
        return EnvironmentProblem(
            f"{where}: downloading {class_name} into {root} failed ({reason}); check the "
            "network connection and proxy settings (HTTPS_PROXY), or download it on a "
            f"machine with network access and copy its folder into {root}"
        )
    if isinstance(error, OSError):
        return DataError(
            f"{where}: cannot {'write' if cfg.download else 'read'} the {class_name} files "
            f"in {root} ({reason}); point data.root at a folder this user can read and write"
        )
    if "not found" in message.lower() or "corrupted" in message.lower():
        return DataError(
            f"{where}: no complete {class_name} files in {root}; put them there, or run once "
            "with data.download=true to download them (needs a network connection)"
        )
    return error
