"""Datasets and samplers: the built-in shapes, the image-folder source and batch order."""

import pytest
import torch
from PIL import Image

from {{ cookiecutter.package_name }}.config import (
    ConfigError,
    DataConfig,
)
from {{ cookiecutter.package_name }}.data import (
    ShardSampler,
    build_datasets,
    build_loader,
    epoch_batch_sampler,
)
from {{ cookiecutter.package_name }}.shapes import (
    SHAPE_CLASSES,
    make_shapes,
)


def small_data(**changes) -> DataConfig:
    settings = dict(train_size=100, val_size=20, image_size=16, batch_size=10)
    return DataConfig(**{**settings, **changes})


def test_shapes_are_deterministic_from_the_seed():
    images, labels = make_shapes(50, 16, seed=3)
    again_images, again_labels = make_shapes(50, 16, seed=3)
    assert torch.equal(images, again_images) and torch.equal(labels, again_labels)
    other_images, other_labels = make_shapes(50, 16, seed=4)
    assert not torch.equal(images, other_images)
    assert not torch.equal(labels, other_labels)


def test_shapes_have_the_right_format_and_balanced_classes():
    images, labels = make_shapes(200, 24, seed=0)
    assert images.shape == (200, 3, 24, 24) and images.dtype == torch.uint8
    assert labels.shape == (200,) and labels.dtype == torch.int64
    counts = torch.bincount(labels, minlength=len(SHAPE_CLASSES))
    assert counts.tolist() == [200 // len(SHAPE_CLASSES)] * len(SHAPE_CLASSES)
    assert images.float().std() > 10  # not a blank image


def test_train_and_val_images_differ_and_follow_the_seed():
    bundle = build_datasets(small_data(), seed=0)
    same = build_datasets(small_data(), seed=0)
    other = build_datasets(small_data(), seed=1)
    assert bundle.classes == list(SHAPE_CLASSES) and bundle.in_channels == 3
    assert len(bundle.train) == 100 and len(bundle.val) == 20
    assert torch.equal(bundle.train.images, same.train.images)
    assert not torch.equal(bundle.train.images, other.train.images)
    assert not torch.equal(bundle.train.images[:20], bundle.val.images)


def test_batched_indexing_returns_a_float_batch():
    dataset = build_datasets(small_data(image_size=20), seed=0).train
    indices = [7, 0, 3, 3]
    images, labels = dataset[indices]
    assert images.shape == (4, 3, 20, 20) and images.dtype == torch.float32
    assert labels.shape == (4,) and labels.dtype == torch.int64
    for row, index in enumerate(indices):
        image, label = dataset[index]
        assert image.shape == (3, 20, 20)
        assert torch.equal(images[row], image) and labels[row] == label
    tensor_images, _ = dataset[torch.tensor(indices)]
    assert torch.equal(tensor_images, images)


def train_sampler(seed: int = 0, size: int = 100, batch_size: int = 10, rank=0, world_size=1):
    dataset = build_datasets(small_data(train_size=size, batch_size=batch_size), seed=0).train
    loader = build_loader(
        dataset,
        small_data(batch_size=batch_size),
        train=True,
        seed=seed,
        rank=rank,
        world_size=world_size,
    )
    return loader, epoch_batch_sampler(loader)


def batches_of(sampler, epoch: int, start_batch: int = 0) -> list[list[int]]:
    sampler.set_epoch(epoch, start_batch=start_batch)
    return [torch.as_tensor(batch).tolist() for batch in sampler]


def test_epoch_order_depends_only_on_seed_and_epoch():
    _, sampler = train_sampler()
    first = batches_of(sampler, epoch=0)
    assert len(first) == sampler.batches_per_epoch == 10
    assert sorted(index for batch in first for index in batch) == list(range(100))
    assert batches_of(sampler, epoch=0) == first  # same epoch again: same order
    assert batches_of(sampler, epoch=1) != first  # next epoch: reshuffled
    _, fresh = train_sampler()
    assert batches_of(fresh, epoch=1) == batches_of(sampler, epoch=1)
    _, other_seed = train_sampler(seed=1)
    assert batches_of(other_seed, epoch=0) != first


@pytest.mark.parametrize("start_batch", [0, 1, 4, 9, 10])
def test_start_batch_skips_exactly_the_first_batches(start_batch):
    _, sampler = train_sampler()
    full = batches_of(sampler, epoch=2)
    rest = batches_of(sampler, epoch=2, start_batch=start_batch)
    assert rest == full[start_batch:]
    assert len(sampler) == len(full) - start_batch


def test_loader_yields_the_sampled_batches():
    loader, sampler = train_sampler()
    sampler.set_epoch(0, start_batch=8)
    expected = batches_of(sampler, epoch=0, start_batch=8)
    sampler.set_epoch(0, start_batch=8)
    batches = list(loader)
    assert len(batches) == 2
    for (images, labels), indices in zip(batches, expected, strict=True):
        assert images.shape == (10, 3, 16, 16)
        assert torch.equal(labels, loader.dataset.labels[indices])


def test_training_shards_of_two_ranks_are_disjoint_and_cover_the_data():
    seen = []
    for rank in range(2):
        _, sampler = train_sampler(size=100, batch_size=10, rank=rank, world_size=2)
        seen += [index for batch in batches_of(sampler, epoch=0) for index in batch]
    assert sorted(seen) == list(range(100))


@pytest.mark.parametrize("length", [10, 11, 1])
def test_shard_sampler_over_two_ranks_covers_every_index_once(length):
    shards = [list(ShardSampler(length, rank, world_size=2)) for rank in range(2)]
    assert sorted(shards[0] + shards[1]) == list(range(length))
    assert [len(ShardSampler(length, rank, 2)) for rank in range(2)] == [len(s) for s in shards]


def test_validation_loader_keeps_order_and_every_sample():
    dataset = build_datasets(small_data(val_size=25), seed=0).val
    loader = build_loader(dataset, small_data(batch_size=10), train=False, seed=0)
    labels = torch.cat([batch_labels for _, batch_labels in loader])
    assert torch.equal(labels, dataset.labels)  # in order, nothing dropped or repeated


def write_image_folder(root, layout: dict[str, list[str]]) -> None:
    """root/<split>/<class>/<n>.png, three small coloured images per class."""
    for split, classes in layout.items():
        for number, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True)
            for index in range(3):
                colour = (40 * number, 60 * index, 200)
                Image.new("RGB", (20 + index, 18), colour).save(folder / f"{index}.png")


def test_image_folder_builds_datasets_with_the_classes(tmp_path):
    write_image_folder(tmp_path, {"train": ["cat", "dog"], "val": ["dog"]})
    cfg = small_data(dataset="imagefolder", root=str(tmp_path), image_size=16)
    bundle = build_datasets(cfg, seed=0)
    assert bundle.classes == ["cat", "dog"] and bundle.in_channels == 3
    assert len(bundle.train) == 6 and len(bundle.val) == 3
    image, label = bundle.train[0]
    assert image.shape == (3, 16, 16) and image.dtype == torch.float32
    assert label == 0
    # val/ lacks "cat": its "dog" images must keep the training index of "dog".
    assert [label for _, label in bundle.val] == [1, 1, 1]
    loader = build_loader(bundle.train, cfg, train=True, seed=0)
    images, labels = next(iter(loader))
    assert images.shape[1:] == (3, 16, 16) and set(labels.tolist()) <= {0, 1}


@pytest.mark.parametrize("missing", ["train", "val"])
def test_image_folder_without_a_split_raises_config_error_naming_it(tmp_path, missing):
    present = "val" if missing == "train" else "train"
    write_image_folder(tmp_path, {present: ["cat", "dog"]})
    cfg = small_data(dataset="imagefolder", root=str(tmp_path))
    with pytest.raises(ConfigError) as error:
        build_datasets(cfg, seed=0)
    assert str(tmp_path / missing) in str(error.value)


def test_image_folder_with_unknown_val_class_raises_config_error(tmp_path):
    write_image_folder(tmp_path, {"train": ["cat"], "val": ["cat", "emu"]})
    with pytest.raises(ConfigError, match="emu"):
        build_datasets(small_data(dataset="imagefolder", root=str(tmp_path)), seed=0)


def test_unknown_dataset_raises_config_error():
    with pytest.raises(ConfigError, match="nosuchdata"):
        build_datasets(small_data(dataset="nosuchdata"), seed=0)
