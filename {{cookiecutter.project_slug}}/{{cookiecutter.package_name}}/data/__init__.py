"""Datasets and loaders.

Three sources, chosen by `data.dataset`:
- `shapes`: the built-in dataset, generated in memory from the seed (builtin.py);
- `imagefolder`: the user's images, in `data.root/train/<class>/` and `data.root/val/<class>/`,
  or in `data.root/<class>/` split into train and val by `data.val_fraction` (folders.py;
  which files are images: listing.py; a file into pixels: images.py; data.skip_bad:
  skip_bad.py);
- a torchvision dataset by name (cifar10, cifar100, mnist, fashionmnist) stored in `data.root`
  (torchvision_datasets.py).

build_datasets (datasets.py) gives a DataBundle (bundle.py): both sets, their classes and
the normalisation statistics (stats.py). Image files are checked once when the dataset is
built, so a broken file stops the run at once with one error naming it. With `data.cache`,
images are decoded once into memory and served a batch at a time with tensor operations
(cache.py). build_loader (loaders.py) serves the batches; their order comes only from
(seed, epoch), through the samplers of samplers.py, so a run can stop in the middle of an
epoch and continue with exactly the batches it would have seen. Transforms are in
transforms.py; torchvision and PIL are imported only for the sources that need them.
"""

from .builtin import ShapesDataset
from .bundle import SHAPES_MEAN, SHAPES_STD, DataBundle, DataError
from .cache import CachedImages, decode_images
from .datasets import DATASET_CHOICES, build_datasets
from .folders import ImageFiles, image_files_under
from .images import (
    GRAYSCALE_MODES,
    IMAGE_SUFFIXES,
    UnreadableImage,
    image_suffixes,
    open_image,
    shown,
    to_8_bits,
)
from .listing import Listing, is_hidden, is_image_file, list_images, report_listing
from .loaders import (
    AugmentingLoader,
    InMemoryLoader,
    SeededAugmentation,
    build_loader,
    epoch_batch_sampler,
    sample_seed,
)
from .samplers import EpochBatchSampler, GlobalBatchShardSampler, ShardSampler, TensorBatchSampler
from .stats import STATS_FILE, STATS_IMAGES, cached_stats, compute_stats, save_stats
from .torchvision_datasets import TORCHVISION_DATASETS
from .transforms import ConvertMode, CropSquare, image_transform, resize_side

__all__ = [
    "DATASET_CHOICES",
    "GRAYSCALE_MODES",
    "IMAGE_SUFFIXES",
    "SHAPES_MEAN",
    "SHAPES_STD",
    "STATS_FILE",
    "STATS_IMAGES",
    "TORCHVISION_DATASETS",
    "AugmentingLoader",
    "CachedImages",
    "ConvertMode",
    "CropSquare",
    "DataBundle",
    "DataError",
    "EpochBatchSampler",
    "GlobalBatchShardSampler",
    "ImageFiles",
    "InMemoryLoader",
    "Listing",
    "SeededAugmentation",
    "ShapesDataset",
    "ShardSampler",
    "TensorBatchSampler",
    "UnreadableImage",
    "build_datasets",
    "build_loader",
    "cached_stats",
    "compute_stats",
    "decode_images",
    "epoch_batch_sampler",
    "image_files_under",
    "image_suffixes",
    "image_transform",
    "is_hidden",
    "is_image_file",
    "list_images",
    "open_image",
    "report_listing",
    "resize_side",
    "sample_seed",
    "save_stats",
    "shown",
    "to_8_bits",
]
