"""Image files from elsewhere, read as an image viewer shows them: EXIF orientation, every
suffix PIL reads, symbolic links (loops, dangling, shared folders), names that are not valid
UTF-8, and data.skip_bad leaving bad files out rather than replacing them. Training, the
cache, the data's fingerprint and predict.py must agree on every one."""

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_images
from PIL import Image

from {{ cookiecutter.package_name }}.config import ConfigError, DataConfig
from {{ cookiecutter.package_name }}.data import build_datasets, build_loader, open_image
from {{ cookiecutter.package_name }}.data.fingerprint import image_folder_files
from {{ cookiecutter.package_name }}.data.images import read_header
from {{ cookiecutter.package_name }}.inference import image_files


def images_config(root, **changes) -> DataConfig:
    settings = dict(image_size=16, batch_size=4, num_workers=0, cache=False, flip=False)
    return DataConfig(dataset="imagefolder", root=str(root), **{**settings, **changes})


def used_files(bundle) -> list[Path]:
    return [path for part in (bundle.train, bundle.val) for path, _ in part.samples]


# 16 rows x 24 columns, upright: four quadrants of four colours, so each of the eight
# turns and mirrors of the picture looks different (and the quarter turns change its shape).
QUADRANTS = ((255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255))
UPRIGHT = np.zeros((16, 24, 3), dtype=np.uint8)
for number, colour in enumerate(QUADRANTS):
    UPRIGHT[
        8 * (number // 2) : 8 * (number // 2 + 1), 12 * (number % 2) : 12 * (number % 2 + 1)
    ] = colour
# EXIF orientation -> the pixels a camera stores for the upright picture, from the EXIF
# standard's meaning of each value (how the stored rows must be turned to be shown).
STORED = {
    1: UPRIGHT,
    2: UPRIGHT[:, ::-1],  # shown mirrored left to right
    3: UPRIGHT[::-1, ::-1],  # shown turned half round
    4: UPRIGHT[::-1],  # shown mirrored top to bottom
    5: UPRIGHT.transpose(1, 0, 2),  # shown mirrored along the main diagonal
    6: np.rot90(UPRIGHT, 1),  # shown turned a quarter clockwise
    7: UPRIGHT.transpose(1, 0, 2)[::-1, ::-1],  # shown mirrored along the other diagonal
    8: np.rot90(UPRIGHT, -1),  # shown turned a quarter anticlockwise
}


def write_oriented_jpeg(path: Path, orientation: int) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    pixels = np.ascontiguousarray(STORED[orientation])
    Image.fromarray(pixels).save(path, quality=95, exif=exif.tobytes())


def quadrant_colours(pixels: np.ndarray) -> list[tuple[int, ...]]:
    """The colour at the centre of each quadrant, rounded to 0 or 255 (JPEG blurs a bit)."""
    rows, columns = pixels.shape[0], pixels.shape[1]
    centres = [(rows // 4, columns // 4), (rows // 4, 3 * columns // 4)]
    centres += [(3 * rows // 4, columns // 4), (3 * rows // 4, 3 * columns // 4)]
    return [tuple(int(value > 127) * 255 for value in pixels[r, c]) for r, c in centres]


@pytest.mark.parametrize("orientation", range(1, 9))
def test_each_exif_orientation_is_applied_when_decoding(tmp_path, orientation):
    path = tmp_path / "photo.jpg"
    write_oriented_jpeg(path, orientation)
    with Image.open(path) as raw:  # the file really is stored turned
        assert raw.size == STORED[orientation].shape[1::-1]
    pixels = np.asarray(open_image(path))
    assert pixels.shape == UPRIGHT.shape
    assert quadrant_colours(pixels) == list(QUADRANTS)
    # The header check measures the size a viewer shows (24 wide, 16 high), too.
    assert read_header(path)[0] == (24, 16)


def test_training_the_cache_and_prediction_see_photos_upright(tmp_path):
    """A sideways photo (orientation 6) in every class: the tensors of training (uncached and
    cached) are those of the upright picture, and predict.py reads the same pixels."""
    for split in ("train", "val"):
        for name in ("a", "b"):
            (tmp_path / split / name).mkdir(parents=True)
            write_oriented_jpeg(tmp_path / split / name / "0.jpg", 6)
            write_oriented_jpeg(tmp_path / split / name / "1.jpg", 1)
    exact = dict(image_size=16, resize=0, random_crop=False, mean=[0.0] * 3, std=[1.0] * 3)
    uncached = build_datasets(images_config(tmp_path, **exact), seed=0)
    cached = build_datasets(images_config(tmp_path, cache=True, **exact), seed=0)
    for index in range(len(uncached.val)):
        image, _ = uncached.val[index]
        assert torch.equal(image, cached.val[index][0])
        pixels = (image * 255).round().byte().permute(1, 2, 0).numpy()
        assert quadrant_colours(pixels) == list(QUADRANTS)  # the centre 16x16 of the picture


def write_odd_suffixes(folder: Path) -> dict[str, bool]:
    """Images under suffixes PIL reads, in any case, and images under other names: name ->
    whether it is used."""
    folder.mkdir(parents=True, exist_ok=True)
    picture = Image.fromarray(UPRIGHT)
    picture.save(folder / "a.jfif", "JPEG")
    picture.save(folder / "b.jpe", "JPEG")
    picture.save(folder / "c.JPG", "JPEG")
    picture.convert("L").save(folder / "d.pgm", "PPM")
    picture.save(folder / "e.Png", "PNG")
    picture.save(folder / "no_suffix", "PNG")
    picture.save(folder / "notes.txt", "JPEG")
    (folder / "readme.txt").write_text("not an image")
    # PostScript is a program (PIL would have Ghostscript run it): never opened as an image.
    (folder / "drawing.eps").write_text("%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n")
    return {
        "a.jfif": True,
        "b.jpe": True,
        "c.JPG": True,
        "d.pgm": True,
        "e.Png": True,
        "no_suffix": False,
        "notes.txt": False,
        "readme.txt": False,
        "drawing.eps": False,
    }


def test_every_suffix_pil_reads_is_used_and_other_images_are_named_once(tmp_path, project_log):
    expected = write_odd_suffixes(tmp_path / "a")
    write_odd_suffixes(tmp_path / "b")
    bundle = build_datasets(images_config(tmp_path), seed=0)
    used = sorted(path.name for path in used_files(bundle))
    assert used == sorted(2 * [name for name, is_used in expected.items() if is_used])
    lines = [record.getMessage() for record in project_log.records]
    (line,) = [line for line in lines if "reads as images" in line]
    assert line.startswith("not used: 4 files that PIL reads as images but whose names do not")
    assert str(tmp_path / "a" / "no_suffix") in line
    # The fingerprint and predict.py list the very same files.
    listed = {str(tmp_path / relative) for relative in image_folder_files(tmp_path)}
    assert listed == {str(path) for path in used_files(bundle)}
    assert sorted(map(str, image_files(tmp_path))) == sorted(listed)


def test_a_postscript_file_named_as_an_image_is_never_run(tmp_path):
    write_images(tmp_path, {"a": 3, "b": 3})
    (tmp_path / "a" / "page.png").write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n")
    with pytest.raises(ConfigError, match="page.png is not a readable image"):
        build_datasets(images_config(tmp_path), seed=0)


def test_links_are_followed_at_any_depth_each_folder_once(tmp_path, project_log):
    root, elsewhere = tmp_path / "data", tmp_path / "elsewhere"
    write_images(root, {"a": 3, "b": 3})
    write_images(elsewhere, {"more": 2, "classb": 3})
    (root / "a" / "linked").symlink_to(elsewhere / "more")  # a sub-folder from elsewhere
    (root / "c").symlink_to(elsewhere / "classb")  # a class folder from elsewhere
    (root / "a" / "loop").symlink_to(root / "a")  # back to its own class folder
    (root / "a" / "linked" / "again").symlink_to(elsewhere / "more")  # a loop through a link
    (root / "b" / "gone.png").symlink_to(tmp_path / "missing.png")
    (root / "b" / "gone").symlink_to(tmp_path / "missing")
    bundle = build_datasets(images_config(root), seed=0)
    used = used_files(bundle)
    assert bundle.classes == ["a", "b", "c"] and len(used) == len(set(used)) == 11
    assert root / "a" / "linked" / "000.png" in used
    lines = [record.getMessage() for record in project_log.records]
    (loops,) = [line for line in lines if "already read" in line]
    assert loops.startswith("not used: 2 links to a file or folder already read")
    (dangling,) = [line for line in lines if "nothing" in line]
    assert dangling.startswith(
        f"not used: 2 links that lead to nothing, e.g. {root / 'b' / 'gone'}"
    )
    listed = {str(root / relative) for relative in image_folder_files(root)}
    assert listed == set(map(str, used))
    assert sorted(map(str, image_files(root))) == sorted(listed)


def test_a_folder_reached_from_two_classes_is_one_error_line(tmp_path):
    write_images(tmp_path / "train", {"a": 3, "b": 3})
    write_images(tmp_path / "val", {"a": 2})
    (tmp_path / "val" / "b").symlink_to(tmp_path / "train" / "b")  # validation = training
    with pytest.raises(ConfigError) as error:
        build_datasets(images_config(tmp_path), seed=0)
    message = str(error.value)
    assert "\n" not in message and "are the same folder" in message
    assert str(tmp_path / "val" / "b") in message and "remove the link" in message


def test_one_file_reached_by_two_names_in_a_class_counts_once(tmp_path, project_log):
    root = tmp_path / "data"
    write_images(root, {"a": 3, "b": 3})
    (root / "a" / "sub").mkdir()
    (root / "a" / "again.png").symlink_to(root / "a" / "000.png")
    os.link(root / "a" / "001.png", root / "a" / "sub" / "copy.png")  # a hard link
    bundle = build_datasets(images_config(root), seed=0)
    used = used_files(bundle)
    assert len(used) == 6 and {root / "a" / "000.png", root / "a" / "001.png"} <= set(used)
    lines = [record.getMessage() for record in project_log.records]
    (repeated,) = [line for line in lines if "already read" in line]
    assert repeated.startswith("not used: 2 links to a file or folder already read")
    assert str(root / "a" / "again.png") in repeated
    # The data's fingerprint and predict.py list the same files as training.
    listed = {str(root / relative) for relative in image_folder_files(root)}
    assert listed == set(map(str, used))
    assert sorted(map(str, image_files(root))) == sorted(listed)


@pytest.mark.parametrize("link", ["symbolic", "hard"])
def test_a_file_reached_from_two_classes_is_one_error_line(tmp_path, link):
    root = tmp_path / "data"
    write_images(root, {"a": 3, "b": 3})
    duplicate = root / "b" / "dup.png"  # the same image under class a and class b
    if link == "symbolic":
        duplicate.symlink_to(Path("..") / "a" / "000.png")
    else:
        os.link(root / "a" / "000.png", duplicate)
    with pytest.raises(ConfigError) as error:
        build_datasets(images_config(root), seed=0)
    message = str(error.value)
    assert "\n" not in message and "are the same file" in message
    assert str(root / "a" / "000.png") in message and str(duplicate) in message


def make_name_of_bytes(folder: Path, name: bytes) -> Path:
    """A path whose last name is `name` (bytes that need not be UTF-8), or a skip where the
    file system refuses such names."""
    path = Path(os.fsdecode(os.path.join(os.fsencode(folder), name)))
    try:
        path.mkdir()
        path.rmdir()
    except (OSError, UnicodeError) as error:
        pytest.skip(f"this file system refuses names that are not UTF-8 ({error})")
    return path


@pytest.mark.slow
def test_a_file_name_that_is_not_utf8_trains_and_predicts(tmp_path, make_config, run_python):
    from {{ cookiecutter.package_name }}.train import run

    images = tmp_path / "images"
    write_images(images, {"a": 4, "b": 4}, suffix=".jpg")
    odd = make_name_of_bytes(images / "a", b"caf\xe9.jpg")
    shutil.copy(images / "a" / "000.jpg", odd)
    broken = make_name_of_bytes(images / "b", b"\xff.jpg")
    broken.write_bytes((images / "b" / "000.jpg").read_bytes()[:-50])  # fails only at decode
    settings = ["data.dataset=imagefolder", "data.image_size=16", "data.batch_size=4"]
    settings += [f"data.root={images}", "data.skip_bad=true", "train.epochs=1"]
    assert run(make_config(*settings)) == 0
    log = (tmp_path / "run" / "train.log").read_text(encoding="utf-8")
    assert f"skipping {images / 'b'}/\\xff.jpg: not a readable image" in log
    assert odd in image_files(images) and len(image_folder_files(images)) == 10
    output = tmp_path / "predictions.csv"
    result = run_python("predict.py", str(tmp_path / "run"), str(images), str(output))
    assert result.returncode == 0, result.stderr
    assert "caf\\xe9.jpg" in output.read_text(encoding="utf-8")
    assert "Traceback" not in result.stderr and "\\xff.jpg" in result.stderr


def test_a_class_folder_name_that_is_not_utf8_is_one_error_line(tmp_path):
    write_images(tmp_path, {"a": 3})
    odd = make_name_of_bytes(tmp_path, b"b\xff")
    shutil.copytree(tmp_path / "a", odd)
    with pytest.raises(ConfigError) as error:
        build_datasets(images_config(tmp_path), seed=0)
    message = str(error.value)
    assert "\n" not in message and f"{tmp_path}/b\\xff is not valid UTF-8" in message
    message.encode("utf-8")  # printable and loggable as it is


@pytest.mark.parametrize("workers", [0, 2])
def test_skip_bad_leaves_a_bad_file_out_the_same_way_with_and_without_the_cache(
    tmp_path, project_log, workers
):
    """A JPEG whose header is sound but whose data is cut short, in validation: left out,
    named, and counted once; no image takes its place, so every validation image counts
    once, and the cached and uncached runs validate on the very same images."""
    write_images(tmp_path / "train", {"a": 5, "b": 5}, suffix=".jpg")
    write_images(tmp_path / "val", {"a": 3, "b": 3}, suffix=".jpg")
    victim = tmp_path / "val" / "a" / "001.jpg"
    victim.write_bytes(victim.read_bytes()[:-50])
    settings = dict(skip_bad=True, random_crop=False, num_workers=workers)
    uncached = build_datasets(images_config(tmp_path, **settings), seed=0)
    cached = build_datasets(images_config(tmp_path, cache=True, **settings), seed=0)
    assert len(uncached.val) == len(cached.val) == 5
    assert victim not in [path for path, _ in uncached.val.samples]
    assert uncached.mean == cached.mean  # the same training images
    for bundle in (uncached, cached):
        cfg = images_config(tmp_path, **settings)
        batches = list(build_loader(bundle.val, cfg, train=False, seed=0))
        labels = torch.cat([labels for _, labels in batches]).tolist()
        images = torch.cat([images for images, _ in batches])
        assert labels == [0, 0, 1, 1, 1]  # each image once, with its own label
        assert len({image.numpy().tobytes() for image in images}) == 5
    warnings = [record.getMessage() for record in project_log.records]
    assert sum(f"skipping {victim}: not a readable image" in line for line in warnings) == 2
    assert sum("1 of 6 validation images could not be decoded" in line for line in warnings) == 2


def test_an_image_that_breaks_after_the_check_is_one_line_not_a_substitute(tmp_path):
    write_images(tmp_path, {"a": 4, "b": 4}, suffix=".jpg")
    bundle = build_datasets(images_config(tmp_path, skip_bad=True), seed=0)
    path, _ = bundle.val.samples[0]
    path.write_bytes(path.read_bytes()[:-50])
    with pytest.raises(ConfigError) as error:
        bundle.val[0]
    assert str(error.value).startswith(f"{path}: not a readable image")
    assert "decoded when the run started" in str(error.value)


@pytest.mark.slow
def test_skip_bad_on_images_without_a_bad_file_trains_exactly_as_without_it(tmp_path, make_config):
    """The decode pass of data.skip_bad consumes no random numbers: the same seed gives the
    same weights whether the setting is on or off, where no file is bad."""
    from {{ cookiecutter.package_name }}.checkpoint import load_checkpoint
    from {{ cookiecutter.package_name }}.train import run

    write_images(tmp_path / "images", {"a": 6, "b": 6})
    settings = [f"data.root={tmp_path / 'images'}", "data.dataset=imagefolder"]
    settings += ["data.image_size=16", "data.batch_size=4"]
    weights = []
    for skip_bad in ("false", "true"):
        folder = tmp_path / f"run-{skip_bad}"
        assert run(make_config(*settings, f"data.skip_bad={skip_bad}", run_dir=folder)) == 0
        weights.append(load_checkpoint(folder / "checkpoints" / "last.pt")["model"])
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][key], weights[1][key]) for key in weights[0])
