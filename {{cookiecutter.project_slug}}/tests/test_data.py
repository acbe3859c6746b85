"""Datasets and samplers: the built-in shapes, the user's image folders and batch order."""

from collections import Counter

import pytest
import torch
from conftest import write_images

from {{ cookiecutter.package_name }}.config import (
    ConfigError,
    DataConfig,
)
from {{ cookiecutter.package_name }}.data import (
    STATS_FILE,
    ShardSampler,
    build_datasets,
    build_loader,
    epoch_batch_sampler,
    save_stats,
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


def images_config(root, **changes) -> DataConfig:
    return small_data(dataset="imagefolder", root=str(root), **changes)


def test_image_folder_builds_datasets_with_the_classes(tmp_path):
    write_images(tmp_path / "train", {"cat": 3, "dog": 3})
    write_images(tmp_path / "val", {"dog": 3})
    cfg = images_config(tmp_path)
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


def test_one_folder_of_classes_is_split_stratified_and_seeded(tmp_path):
    write_images(tmp_path, {"a": 10, "b": 5, "c": 20})
    cfg = images_config(tmp_path, val_fraction=0.2)
    bundle = build_datasets(cfg, seed=0)
    assert bundle.classes == ["a", "b", "c"]
    assert Counter(label for _, label in bundle.val.samples) == {0: 2, 1: 1, 2: 4}
    train_files = {path for path, _ in bundle.train.samples}
    val_files = {path for path, _ in bundle.val.samples}
    assert not train_files & val_files and len(train_files | val_files) == 35
    # The training seed plays no part; data.split_seed does.
    assert build_datasets(cfg, seed=7).val.samples == bundle.val.samples
    other = build_datasets(images_config(tmp_path, split_seed=1), seed=0)
    assert other.val.samples != bundle.val.samples
    # More images in one class leave the split of the other classes as it was.
    write_images(tmp_path, {"a": 0, "b": 0, "c": 5}, first=20)
    grown = build_datasets(cfg, seed=0)
    assert split_of_a_and_b(grown) == split_of_a_and_b(bundle)


def split_of_a_and_b(data):
    return [(path, label) for path, label in data.val.samples if label < 2]


def test_grayscale_rgb_and_mixed_folders_give_the_right_channels(tmp_path):
    write_images(tmp_path / "gray", {"a": 4, "b": 4}, mode="L", suffix=".jpg")
    gray = build_datasets(images_config(tmp_path / "gray"), seed=0)
    assert gray.in_channels == 1 and gray.train[0][0].shape == (1, 16, 16)
    write_images(tmp_path / "mixed", {"a": 4}, mode="L")
    write_images(tmp_path / "mixed", {"b": 4}, mode="RGB", suffix=".jpeg")
    mixed = build_datasets(images_config(tmp_path / "mixed"), seed=0)
    assert mixed.in_channels == 3 and mixed.train[0][0].shape == (3, 16, 16)
    forced = build_datasets(images_config(tmp_path / "mixed", channels=1), seed=0)
    assert forced.in_channels == 1 and forced.val[0][0].shape == (1, 16, 16)


def test_normalisation_is_computed_cached_or_given(tmp_path):
    write_images(tmp_path / "images", {"a": 6, "b": 6})
    cfg = images_config(tmp_path / "images", random_crop=False, flip=False)
    stats_file = tmp_path / STATS_FILE
    computed = build_datasets(cfg, seed=0, stats_file=stats_file)
    assert computed.stats_source == "computed" and len(computed.mean) == 3
    # Every training image was used: normalised, they have mean 0 and std 1 per channel.
    pixels = torch.stack([image for image, _ in computed.train])
    assert pixels.mean(dim=(0, 2, 3)).abs().max() < 1e-4
    assert (pixels.std(dim=(0, 2, 3), correction=0) - 1).abs().max() < 1e-3
    save_stats(stats_file, computed)
    cached = build_datasets(cfg, seed=0, stats_file=stats_file)
    assert cached.stats_source == "cached" and cached.mean == pytest.approx(computed.mean)
    given = images_config(tmp_path / "images", mean=[0.5, 0.5, 0.5], std=[0.2, 0.2, 0.2])
    bundle = build_datasets(given, seed=0, stats_file=stats_file)
    assert bundle.stats_source == "config" and bundle.mean == (0.5, 0.5, 0.5)


def test_shapes_use_fixed_statistics_and_write_no_file(tmp_path):
    bundle = build_datasets(small_data(), seed=0, stats_file=tmp_path / STATS_FILE)
    assert bundle.stats_source == "built-in" and not (tmp_path / STATS_FILE).exists()
    given = build_datasets(small_data(mean=[0.0] * 3, std=[1.0] * 3), seed=0)
    expected = bundle.train.images[0].float() / 255
    assert torch.allclose(given.train[0][0], expected, rtol=0, atol=1e-6)


def test_skip_bad_leaves_out_an_unreadable_image_with_a_warning(tmp_path, project_log):
    write_images(tmp_path, {"a": 5, "b": 5})
    (tmp_path / "a" / "broken.png").write_bytes(b"not an image")
    bundle = build_datasets(images_config(tmp_path, skip_bad=True), seed=0)
    assert len(bundle.train) + len(bundle.val) == 10
    assert str(tmp_path / "a" / "broken.png") in project_log.text


def test_images_much_smaller_than_the_crop_bring_a_warning(tmp_path, project_log):
    write_images(tmp_path, {"a": 3, "b": 3}, size=12)
    bundle = build_datasets(images_config(tmp_path, image_size=32), seed=0)
    assert bundle.train[0][0].shape == (3, 32, 32)  # scaled up, still usable
    assert "6 images are smaller than half of data.image_size=32" in project_log.text


def no_val_folder(root):
    write_images(root, {"a": 4, "b": 4})


def loose_images(root):
    root.mkdir()
    write_images(root, {"a": 2})
    (root / "a" / "000.png").rename(root / "000.png")
    (root / "a" / "001.png").rename(root / "001.png")
    (root / "a").rmdir()


def empty_class_folder(root):
    write_images(root, {"a": 4})
    (root / "b").mkdir()


def no_images_at_all(root):
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    (root / "b" / "notes.txt").write_text("not an image")


def unknown_val_class(root):
    write_images(root / "train", {"cat": 3})
    write_images(root / "val", {"cat": 3, "emu": 3})


def corrupt_image(root):
    write_images(root, {"a": 4, "b": 4})
    (root / "b" / "002.png").write_bytes(b"\x89PNG truncated")


def too_few_for_the_split(root):
    write_images(root, {"a": 5, "lonely": 1})


def val_without_train(root):
    write_images(root / "val", {"a": 3})


# setup(root), extra settings, words the one-line error must contain
DATA_ERRORS = {
    "missing-folder": (lambda root: None, {}, ["does not exist", "data.root"]),
    "no-class-folders": (loose_images, {}, ["no class folders", "one sub-folder per class"]),
    "empty-class-folder": (empty_class_folder, {}, ["class folder", "/b", "no usable images"]),
    "no-images": (no_images_at_all, {}, ["no images in", ".png"]),
    "val-class-not-in-train": (unknown_val_class, {}, ["emu", "not in train/"]),
    "corrupt-image": (corrupt_image, {}, ["002.png", "not a readable image", "data.skip_bad"]),
    "too-few-for-split": (too_few_for_the_split, {}, ["too few images", "lonely", "1 image"]),
    "no-val-and-no-fraction": (no_val_folder, {"val_fraction": 0.0}, ["data.val_fraction"]),
    "val-without-train": (val_without_train, {}, ["train", "does not"]),
    "smaller-than-crop": (no_val_folder, {"resize": 0, "image_size": 24}, ["16x16", "crop"]),
}


@pytest.mark.parametrize("case", DATA_ERRORS)
def test_each_data_mistake_gives_one_clear_error(tmp_path, case):
    setup, settings, words = DATA_ERRORS[case]
    root = tmp_path / "images"
    setup(root)
    with pytest.raises(ConfigError) as error:
        build_datasets(images_config(root, **settings), seed=0)
    message = str(error.value)
    assert "\n" not in message
    for word in words:
        assert word in message, (word, message)


@pytest.mark.parametrize("dataset", ["cifar10", "mnist"])
def test_missing_torchvision_files_name_the_folder_and_the_setting(tmp_path, dataset):
    with pytest.raises(ConfigError) as error:
        build_datasets(small_data(dataset=dataset, root=str(tmp_path)), seed=0)
    assert str(tmp_path) in str(error.value) and "data.download=true" in str(error.value)


def test_unknown_dataset_raises_config_error():
    with pytest.raises(ConfigError, match="nosuchdata"):
        build_datasets(small_data(dataset="nosuchdata"), seed=0)
