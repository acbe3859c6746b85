"""Datasets and samplers: the built-in shapes, the user's image folders and batch order."""

import random
import shutil
import struct
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_images
from PIL import Image

from {{ cookiecutter.package_name }}.config import (
    ConfigError,
    DataConfig,
)
from {{ cookiecutter.package_name }}.data import (
    STATS_FILE,
    CachedImages,
    ShardSampler,
    build_datasets,
    build_loader,
    epoch_batch_sampler,
    sample_seed,
    samplers,
    save_stats,
)
from {{ cookiecutter.package_name }}.data import cache as data_cache
from {{ cookiecutter.package_name }}.errors import EnvironmentProblem
from {{ cookiecutter.package_name }}.shapes import (
    SHAPE_CLASSES,
    make_shapes,
)


def small_data(**changes) -> DataConfig:
    settings = dict(
        train_size=100,
        val_size=20,
        image_size=16,
        batch_size=10,
        num_workers=0,
        cache=False,
        flip=True,
    )
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


def test_per_sample_seeding_draws_as_torch_manual_seed_and_touches_nothing_else(monkeypatch):
    """The seeding of each sample's augmentation gives the draws torch.manual_seed gives,
    puts the global generator's state back, and leaves the GPU generators alone (seeding
    them per sample cost more than decoding an image, and reseeded a CUDA run's own)."""
    torch.manual_seed(1234)
    expected = torch.randint(0, 1000, (4,)), torch.rand(3)
    torch.manual_seed(99)
    before = torch.get_rng_state()

    def gpu_seeding(seed):
        raise AssertionError(f"a GPU generator was seeded with {seed}")

    monkeypatch.setattr(torch.cuda, "manual_seed_all", gpu_seeding)
    with samplers.seeded_cpu_random(1234):
        drawn = torch.randint(0, 1000, (4,)), torch.rand(3)
    assert torch.equal(drawn[0], expected[0]) and torch.equal(drawn[1], expected[1])
    assert torch.equal(torch.get_rng_state(), before)
    with pytest.raises(ValueError), samplers.seeded_cpu_random(5):
        torch.rand(1)
        raise ValueError("a transform that fails")
    assert torch.equal(torch.get_rng_state(), before)  # put back after an error too


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


def test_a_mean_for_other_channels_is_refused_before_any_image_is_decoded(tmp_path, monkeypatch):
    write_images(tmp_path, {"a": 4, "b": 4})  # colour images

    def decode_images(*args):
        raise AssertionError("images decoded before the settings were checked")

    monkeypatch.setattr(data_cache, "decode_images", decode_images)
    for cache in (True, False):
        cfg = images_config(tmp_path, mean=[0.5], std=[0.2], cache=cache)
        with pytest.raises(ConfigError, match=r"data.mean=\[0.5\] has 1 numbers but the images"):
            build_datasets(cfg, seed=0)


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
    write_images(root / "train", {"cat": 3, "dog": 3})
    write_images(root / "val", {"cat": 3, "emu": 3})


def corrupt_image(root):
    write_images(root, {"a": 4, "b": 4})
    (root / "b" / "002.png").write_bytes(b"\x89PNG truncated")


def too_few_for_the_split(root):
    write_images(root, {"a": 5, "lonely": 1})


def val_without_train(root):
    write_images(root / "val", {"a": 3})


def one_class(root):
    write_images(root, {"only": 4})


def line_break_in_a_name(root):
    write_images(root, {"a": 4, "b\nc": 4})
    (root / "b\nc" / "002.png").write_bytes(b"not an image")


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
    "one-class": (one_class, {}, ["one class folder (only)", "at least two classes"]),
    "root-is-a-file": (lambda root: root.write_text("x"), {}, ["is a file, not a folder"]),
    "line-break-in-a-name": (line_break_in_a_name, {}, ["b\\nc/002.png", "not a readable"]),
    "resize-below-crop": (no_val_folder, {"resize": 10, "image_size": 12}, ["data.resize=10"]),
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


def write_odd_sized_images(root, mode: str = "RGB") -> None:
    """root/{train,val}/{a,b}/*.png: noise of many sizes, wider or taller, some square, so
    that every rounding of a resize or crop shows."""
    noise = random.Random(0)
    for split, count in (("train", 9), ("val", 5)):
        for name in ("a", "b"):
            (root / split / name).mkdir(parents=True)
            for index in range(count):
                width, height = noise.randint(16, 41), noise.randint(16, 41)
                if index == 0:
                    height = width
                pixels = noise.randbytes(width * height * 3)
                image = Image.frombytes("RGB", (width, height), pixels).convert(mode)
                image.save(root / split / name / f"{index}.png")


@pytest.mark.parametrize(("resize", "mode"), [(None, "RGB"), (0, "RGB"), (21, "RGB"), (33, "L")])
def test_cached_images_equal_the_uncached_tensors_bit_for_bit(tmp_path, resize, mode):
    """Centre crops (evaluation's, and training's without random crops and flips) and the
    normalisation statistics, for any aspect ratio: the cache resizes with the same PIL
    call and computes as ToTensor and Normalize do."""
    write_odd_sized_images(tmp_path, mode)
    settings = dict(resize=resize, random_crop=False, flip=False)
    files = build_datasets(images_config(tmp_path, **settings), seed=0)
    cached = build_datasets(images_config(tmp_path, cache=True, **settings), seed=0)
    assert isinstance(cached.val, CachedImages) and cached.in_channels == files.in_channels
    assert cached.stats_source == "computed"
    assert cached.mean == files.mean and cached.std == files.std
    for name in ("train", "val"):
        uncached, memory = getattr(files, name), getattr(cached, name)
        assert len(memory) == len(uncached)
        expected = torch.stack([uncached[index][0] for index in range(len(uncached))])
        images, labels = memory[torch.arange(len(memory))]  # one batch: all of them
        assert images.dtype == torch.float32 and torch.equal(images, expected)
        assert labels.tolist() == uncached.targets
    loader = build_loader(cached.val, images_config(tmp_path, batch_size=4), train=False, seed=0)
    assert torch.equal(torch.cat([images for images, _ in loader]), expected)


def write_mnist_files(root, train: int, test: int) -> None:
    """MNIST's four raw files, filled with noise: what torchvision's MNIST reads."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name, count in (("train", train), ("t10k", test)):
        noise = torch.Generator().manual_seed(count)
        images = torch.randint(0, 256, (count, 28, 28), dtype=torch.uint8, generator=noise)
        labels = torch.arange(count, dtype=torch.uint8) % 10
        header = struct.pack(">IIII", 2051, count, 28, 28)
        (raw / f"{name}-images-idx3-ubyte").write_bytes(header + images.numpy().tobytes())
        header = struct.pack(">II", 2049, count)
        (raw / f"{name}-labels-idx1-ubyte").write_bytes(header + labels.numpy().tobytes())


def test_cache_serves_a_torchvision_dataset_as_its_files_would(tmp_path):
    write_mnist_files(tmp_path, train=30, test=10)
    settings = dict(dataset="mnist", root=str(tmp_path), random_crop=False, flip=False)
    files = build_datasets(small_data(**settings), seed=0)
    cached = build_datasets(small_data(**settings, cache=True), seed=0)
    assert isinstance(cached.train, CachedImages) and len(cached.train) == 30
    assert cached.in_channels == 1 and cached.mean == files.mean and cached.std == files.std
    expected = torch.stack([files.val[index][0] for index in range(10)])
    images, labels = cached.val[torch.arange(10)]
    assert torch.equal(images, expected) and labels.tolist() == [i % 10 for i in range(10)]


def position_coded(count: int, side: int) -> CachedImages:
    """Images whose pixels tell where they came from: channel 0 the row, 1 the column,
    2 the image; with mean 0 and std 1, a crop shows its origin as value * 255."""
    rows = torch.arange(side).view(1, side, 1).expand(count, side, side)
    columns = torch.arange(side).view(1, 1, side).expand(count, side, side)
    number = torch.arange(count).view(count, 1, 1).expand(count, side, side)
    images = torch.stack([rows, columns, number], dim=1).to(torch.uint8)
    labels = torch.arange(count) % 2
    return CachedImages(images, labels, ["a", "b"], 8, (0.0,) * 3, (1.0,) * 3)


def origins(images: torch.Tensor) -> torch.Tensor:
    return (images * 255).round().long()


def epoch_batches(loader, epoch: int, start_batch: int = 0) -> list:
    epoch_batch_sampler(loader).set_epoch(epoch, start_batch)
    return list(loader)


def test_cached_training_crops_and_flips_stay_in_bounds_and_vary():
    dataset = position_coded(count=40, side=12)
    cfg = small_data(batch_size=8)
    loader = build_loader(dataset, cfg, train=True, seed=0)
    seen, flipped, augmentations = set(), set(), {}
    for epoch in (0, 1):
        for images, labels in epoch_batches(loader, epoch):
            assert images.shape == (8, 3, 8, 8) and images.dtype == torch.float32
            pixels = origins(images)
            for image, label in zip(pixels, labels, strict=True):
                number = int(image[2, 0, 0])
                assert (image[2] == number).all() and label == number % 2
                rows, columns = image[0, :, 0], image[1, 0, :]
                top, left = int(rows[0]), int(columns.min())
                # A window of the source: consecutive rows, columns forwards or mirrored.
                assert torch.equal(image[0], rows.view(-1, 1).expand(8, 8))
                assert torch.equal(image[1], columns.view(1, -1).expand(8, 8))
                assert torch.equal(rows, torch.arange(top, top + 8))
                steps = torch.arange(left, left + 8)
                is_flipped = bool(columns[0] > columns[-1])
                assert torch.equal(columns, steps.flip(0) if is_flipped else steps)
                assert 0 <= top <= 4 and 0 <= left <= 4
                seen.add((top, left))
                flipped.add(is_flipped)
                augmentations.setdefault(number, []).append((top, left, is_flipped))
    assert len(seen) > 10 and flipped == {True, False}
    # The same image gets other crops and flips in another epoch (nearly always).
    changed = [number for number, (first, second) in augmentations.items() if first != second]
    assert len(changed) >= 30


def test_cached_augmentation_follows_seed_epoch_and_indices_only():
    dataset = position_coded(count=40, side=12)
    cfg = small_data(batch_size=8)
    straight = [epoch_batches(build_loader(dataset, cfg, train=True, seed=0), e) for e in (0, 1)]
    torch.manual_seed(123)  # the global RNG plays no part
    loader = build_loader(dataset, cfg, train=True, seed=0)
    for epoch in (1, 0):
        # Started in the middle of the epoch, as a resumed run is: the very same batches.
        resumed = epoch_batches(loader, epoch, start_batch=2)
        for (images, labels), (expected, expected_labels) in zip(
            resumed, straight[epoch][2:], strict=True
        ):
            assert torch.equal(images, expected) and torch.equal(labels, expected_labels)
    indices = torch.tensor([5, 3, 17])
    batch = [
        dataset.augmented(indices, torch.Generator().manual_seed(sample_seed(0, 1, 5)), True, True)
        for _ in range(2)
    ]
    assert torch.equal(batch[0][0], batch[1][0])
    other_seed = epoch_batches(build_loader(dataset, cfg, train=True, seed=1), 0)
    assert not torch.equal(other_seed[0][0], straight[0][0][0])
    plain = small_data(batch_size=8, random_crop=False, flip=False)
    for images, _ in epoch_batches(build_loader(dataset, plain, train=True, seed=0), 0):
        assert torch.equal(images, dataset[origins(images)[:, 2, 0, 0]][0])


def test_cached_micro_batches_of_two_ranks_equal_one_process_accumulating_two():
    """Each rank's batch is a slice of the global batch and is augmented from its own first
    index, so 2 ranks see exactly the micro-batches of 1 process with grad_accum_steps=2."""
    dataset = position_coded(count=48, side=12)
    cfg = small_data(batch_size=8)
    alone = epoch_batches(build_loader(dataset, cfg, train=True, seed=0), 1)
    ranks = [
        epoch_batches(build_loader(dataset, cfg, train=True, seed=0, rank=r, world_size=2), 1)
        for r in (0, 1)
    ]
    assert len(alone) == 6 and len(ranks[0]) == len(ranks[1]) == 3
    for step in range(3):
        for rank in (0, 1):
            assert torch.equal(ranks[rank][step][0], alone[2 * step + rank][0])


def test_cache_leaves_out_an_image_that_fails_to_decode_or_names_it(tmp_path, project_log):
    """A JPEG missing its last 50 bytes passes the check of the files (a few more missing
    would not); decoding it for the cache finds the damage, in a worker too: one line naming
    it, or with data.skip_bad a warning and one image less."""
    write_images(tmp_path, {"a": 6, "b": 6}, suffix=".jpg")
    victim = tmp_path / "a" / "002.jpg"
    victim.write_bytes(victim.read_bytes()[:-50])
    for workers in (0, 2):
        with pytest.raises(ConfigError) as error:
            build_datasets(images_config(tmp_path, cache=True, num_workers=workers), seed=0)
        message = str(error.value)
        assert "\n" not in message and str(victim) in message and "data.skip_bad" in message
    bundle = build_datasets(images_config(tmp_path, cache=True, skip_bad=True), seed=0)
    assert len(bundle.train) + len(bundle.val) == 11
    assert f"skipping {victim}: not a readable image" in project_log.text
    assert "set data.skip_bad" not in project_log.text  # it is set: no advice to set it


def test_an_image_damaged_past_its_header_is_left_out_before_loading(tmp_path, project_log):
    """Without the cache, data.skip_bad decodes every image once when the data is built and
    leaves out the ones that fail, named in a warning: no other image takes their place."""
    write_images(tmp_path, {"a": 6, "b": 6}, suffix=".jpg")
    victim = tmp_path / "a" / "002.jpg"
    victim.write_bytes(victim.read_bytes()[:-50])
    bundle = build_datasets(images_config(tmp_path, cache=False, skip_bad=True), seed=0)
    used = [path for part in (bundle.train, bundle.val) for path, _ in part.samples]
    assert len(used) == len(set(used)) == 11 and victim not in used
    for part in (bundle.train, bundle.val):
        assert [part[index][1] for index in range(len(part))] == part.targets
    assert f"skipping {victim}: not a readable image" in project_log.text
    assert "set data.skip_bad" not in project_log.text


def test_a_val_folder_that_lacks_training_classes_names_them_in_a_warning(tmp_path, project_log):
    write_images(tmp_path / "train", {"cat": 3, "dog": 3, "emu": 3, "owl": 3})
    write_images(tmp_path / "val", {"cat": 2, "dog": 2})
    bundle = build_datasets(images_config(tmp_path), seed=0)
    assert bundle.classes == ["cat", "dog", "emu", "owl"] and len(bundle.val) == 4
    warnings = [line for line in project_log.text.splitlines() if "no folder in val/" in line]
    assert len(warnings) == 1, project_log.text
    assert "2 of 4 classes" in warnings[0] and "emu, owl" in warnings[0]
    project_log.clear()
    write_images(tmp_path / "val", {"emu": 2, "owl": 2})
    build_datasets(images_config(tmp_path), seed=0)
    assert "no folder in val/" not in project_log.text


def test_cache_larger_than_the_memory_is_a_clear_error(tmp_path, monkeypatch):
    from {{ cookiecutter.package_name }}.data import cache  # where available_memory is looked up

    write_images(tmp_path, {"a": 5, "b": 5})
    monkeypatch.setattr(cache, "available_memory", lambda device: 2**20 // 10)
    with pytest.raises(ConfigError) as error:
        build_datasets(images_config(tmp_path, image_size=16, resize=640, cache=True), seed=0)
    message = str(error.value)  # 10 images of 3x640x640 bytes
    assert "needs 11.7 MB" in message and "cpu has 0.1 MB available" in message
    assert "data.cache=false" in message and "data.resize" in message
    # The training device is checked too, before the images are moved there.
    monkeypatch.setattr(
        cache, "available_memory", lambda device: 0 if device.type == "meta" else 2**40
    )
    bundle = build_datasets(images_config(tmp_path, cache=True), seed=0)
    with pytest.raises(ConfigError, match="meta has 0.0 MB available"):
        bundle.train.to(torch.device("meta"))


# 8x8 test patterns wider than 8 bits per pixel, as PIL writes them: (mode, suffix, the
# pixels in that mode, the value of white). PIL's convert("L") clips these instead of scaling.
GRADIENT = np.arange(64).reshape(8, 8)
WIDE_IMAGES = {
    "I;16-png": ("I;16", ".png", (GRADIENT * 1040).astype(np.uint16), 65535),
    "I;16B-tiff": ("I;16B", ".tiff", (GRADIENT * 1000 + 500).astype(">u2"), 65535),
    "I-tiff": ("I", ".tif", (65535 - GRADIENT * 900).astype(np.int32), 65535),
    "F-tiff": ("F", ".tiff", (GRADIENT / 63).astype(np.float32), 1.0),
}


def write_wide_image(path, mode: str, pixels) -> None:
    image = Image.frombytes(mode, (8, 8), pixels.tobytes())
    image.save(path)
    with Image.open(path) as written:  # the file holds what the test means
        assert written.mode == ("I;16" if mode == "I;16B" and path.suffix == ".png" else mode)


@pytest.mark.parametrize("kind", WIDE_IMAGES)
def test_16_bit_and_float_images_are_scaled_to_8_bits_everywhere(tmp_path, kind):
    """Training, the cache and the statistics all see the pixels scaled from the white
    level (65535, or 1.0 for floats), rounded: not 0/255 as PIL's convert() clips them."""
    mode, suffix, pixels, white = WIDE_IMAGES[kind]
    for split in ("train", "val"):
        for name, pattern in (("a", pixels), ("b", np.ascontiguousarray(pixels[::-1]))):
            (tmp_path / split / name).mkdir(parents=True, exist_ok=True)
            write_wide_image(tmp_path / split / name / f"0{suffix}", mode, pattern)
    expected = torch.from_numpy(np.rint(pixels.astype(np.float64) * 255 / white) / 255).float()
    exact = dict(image_size=8, resize=0, random_crop=False, flip=False)
    plain = images_config(tmp_path, mean=[0.0], std=[1.0], **exact)
    bundle = build_datasets(plain, seed=0)
    assert bundle.in_channels == 1
    image, label = bundle.val[0]
    assert label == 0 and torch.allclose(image[0], expected, rtol=0, atol=1e-6)
    assert len(image.unique()) == 64  # a gradient, not two values
    cached = build_datasets(images_config(tmp_path, mean=[0.0], std=[1.0], cache=True, **exact), 0)
    for index in range(2):
        assert torch.equal(cached.train[index][0], bundle.train[index][0])
    computed = build_datasets(images_config(tmp_path, **exact), seed=0)
    assert computed.mean[0] == pytest.approx(expected.mean().item(), abs=1e-5)
    # Colour models convert the same pixels to grey, each of its three channels.
    rgb = build_datasets(
        images_config(tmp_path, mean=[0.0] * 3, std=[1.0] * 3, channels=3, **exact), 0
    )
    assert torch.allclose(rgb.val[0][0], expected.expand(3, 8, 8), rtol=0, atol=1e-6)


def test_open_image_rounds_to_the_nearest_8_bit_level(tmp_path):
    """open_image is what evaluation and prediction decode files with, too."""
    from {{ cookiecutter.package_name }}.data import open_image

    cases = [
        ("I;16", [0, 128, 129, 257, 32767, 32768, 65534, 65535], [0, 0, 1, 1, 127, 128, 255, 255]),
        # A float image: NaN black, +inf white, negative clipped, [0, 1] its range.
        (
            "F",
            [np.nan, np.inf, -np.inf, -0.5, 0.25, 0.5, 0.999, 1.0],
            [0, 255, 0, 0, 64, 128, 255, 255],
        ),
        # Floats beyond 1 are in [0, 255], beyond 255 in [0, 65535].
        ("F", [0, 1, 2, 127.4, 200, 255, 254.6, 3], [0, 1, 2, 127, 200, 255, 255, 3]),
        ("F", [0, 257, 65535, 300, 0, 0, 0, 0], [0, 1, 255, 1, 0, 0, 0, 0]),
    ]
    for number, (mode, values, expected) in enumerate(cases):
        dtype = np.uint16 if mode == "I;16" else np.float32
        path = tmp_path / f"{number}{'.png' if mode == 'I;16' else '.tiff'}"
        write_wide_image(path, mode, np.array([values] * 8, dtype=dtype))
        image = open_image(path)
        assert image.mode == "L"
        assert np.asarray(image)[0].tolist() == expected, (mode, values)


def test_other_colour_models_decode_as_rgb(tmp_path):
    from {{ cookiecutter.package_name }}.data import open_image

    for mode in ("CMYK", "YCbCr", "LAB"):
        path = tmp_path / f"{mode}.tiff"
        Image.new(mode, (8, 8)).save(path)
        assert open_image(path).mode == "RGB"


def test_hidden_files_and_folders_are_left_out_at_every_depth(tmp_path, project_log):
    """Jupyter's checkpoints inside a class folder, macOS's __MACOSX and ._ files, a .git
    folder: none is trained on, and one warning line counts them."""
    write_images(tmp_path, {"a": 3, "b": 3})
    image = tmp_path / "a" / "000.png"
    for copy in (
        "a/.ipynb_checkpoints/000-checkpoint.png",
        "a/nested/.hidden.png",
        "b/deeper/.thumbs/x/y.jpg",
        "__MACOSX/a/._000.png",
        ".git/image.png",
    ):
        (tmp_path / copy).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(image, tmp_path / copy)
    (tmp_path / "a" / "nested" / "deep").mkdir()
    shutil.copy(image, tmp_path / "a" / "nested" / "deep" / "visible.png")
    bundle = build_datasets(images_config(tmp_path), seed=0)
    assert bundle.classes == ["a", "b"]
    used = [path for path, _ in bundle.train.samples + bundle.val.samples]
    assert len(used) == 7 and tmp_path / "a" / "nested" / "deep" / "visible.png" in used
    assert not any(part.startswith((".", "__")) for path in used for part in path.parts)
    warnings = [record.getMessage() for record in project_log.records]
    assert [line for line in warnings if "hidden" in line] == [
        f"skipped 5 images in hidden files or folders (names starting with '.', or "
        f"__MACOSX), e.g. {tmp_path / '.git' / 'image.png'}; rename or move them to use them"
    ]


def test_a_folder_that_cannot_be_listed_is_one_line(tmp_path, monkeypatch):
    """As a folder without read permission (not testable as root, who reads everything)."""
    from {{ cookiecutter.package_name }}.data import listing

    write_images(tmp_path, {"a": 3, "b": 3})
    (tmp_path / "b" / "locked").mkdir()
    real_walk = listing.os.walk

    def walk(top, onerror=None, **options):
        for parent, names, files in real_walk(top, onerror=onerror, **options):
            if "locked" in names:
                names.remove("locked")
                onerror(PermissionError(13, "Permission denied", str(Path(parent) / "locked")))
            yield parent, names, files

    monkeypatch.setattr(listing.os, "walk", walk)
    with pytest.raises(ConfigError) as error:
        build_datasets(images_config(tmp_path), seed=0)
    assert str(error.value) == (
        f"cannot list the folder {tmp_path / 'b' / 'locked'} (Permission denied); make it "
        "readable for this user, or move it out of data.root"
    )
    # Inside a hidden folder it does not matter: nothing there is used.
    (tmp_path / "b" / "locked").rename(tmp_path / "b" / ".cache")
    (tmp_path / "b" / ".cache" / "locked").mkdir()
    assert len(build_datasets(images_config(tmp_path), seed=0).classes) == 2


def test_images_beside_the_class_folders_bring_one_warning(tmp_path, project_log):
    write_images(tmp_path, {"a": 3, "b": 3})
    shutil.copy(tmp_path / "a" / "000.png", tmp_path / "stray.png")
    shutil.copy(tmp_path / "b" / "000.png", tmp_path / "another.png")
    bundle = build_datasets(images_config(tmp_path), seed=0)
    assert len(bundle.train) + len(bundle.val) == 6
    (line,) = [
        record.getMessage() for record in project_log.records if "beside" in record.getMessage()
    ]
    assert line.startswith(f"not used: 2 images in {tmp_path} beside the class folders")
    assert "another.png" in line and "move each into the folder of its class" in line


def test_one_class_folder_stops_training_with_exit_2(tmp_path, make_config, capsys):
    from {{ cookiecutter.package_name }}.train import run

    write_images(tmp_path / "images", {"only": 4})
    cfg = make_config("data.dataset=imagefolder", f"data.root={tmp_path / 'images'}")
    assert run(cfg) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: ") and "only" in line and "at least two classes" in line


OFFLINE_TRAIN = """
import runpy, sys, urllib.error, urllib.request

def offline(*args, **kwargs):
    raise urllib.error.URLError("no network in this test")

urllib.request.urlopen = offline
sys.argv[0] = "train.py"
runpy.run_path("train.py", run_name="__main__")
"""


@pytest.mark.slow
def test_a_failed_download_is_one_line_with_the_fix(tmp_path, run_python):
    """train.py with data.download=true and no network: one line, not torchvision's
    traceback (urlopen is replaced, so the test never reaches the network)."""
    root, run_dir = tmp_path / "data", tmp_path / "run"
    result = run_python(
        "-c",
        OFFLINE_TRAIN,
        "data.dataset=cifar10",
        "data.download=true",
        f"data.root={root}",
        f"run.dir={run_dir}",
        "train.device=cpu",
    )
    assert result.returncode == 1, result.stderr  # the network's fault, not the settings'
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: data.dataset=cifar10: downloading CIFAR10 into")
    assert "failed (no network in this test)" in line and "copy its folder into" in line


def test_a_failed_mnist_download_names_the_last_mirror_error(tmp_path, monkeypatch):
    import urllib.error
    import urllib.request

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(EnvironmentProblem) as error:
        build_datasets(small_data(dataset="mnist", root=str(tmp_path), download=True), seed=0)
    message = str(error.value)
    assert "\n" not in message and "downloading MNIST" in message
    assert "(no route to host)" in message and "HTTPS_PROXY" in message
