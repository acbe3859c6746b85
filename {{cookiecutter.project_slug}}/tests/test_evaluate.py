"""Your own images end to end: training learns, evaluate.py and predict.py agree with the
checkpoint, and a data mistake is one line from the command line."""

import csv
import json

import pytest
import torch
from conftest import SMALL_OVERRIDES, write_images

from {{ cookiecutter.package_name }}.checkpoint import load_checkpoint
from {{ cookiecutter.package_name }}.cli import DEFAULT_CONFIG
from {{ cookiecutter.package_name }}.config import load_config
from {{ cookiecutter.package_name }}.data import STATS_FILE
from {{ cookiecutter.package_name }}.inference import (
    evaluate_checkpoint,
    load_trained,
    resolve_checkpoint,
)
from {{ cookiecutter.package_name }}.train import main, run

# Uneven classes, RGB PNGs and grayscale JPEGs mixed, 20 % of each class held out.
RGB_IMAGES = {"circle": 8, "square": 6, "star": 10}
GRAY_IMAGES = {"circle": 6, "square": 4, "star": 8}
IMAGE_SETTINGS = (
    "data.dataset=imagefolder",
    "data.image_size=16",
    "data.batch_size=8",
    "train.epochs=4",
)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """(image folder, run folder) of a run trained in-process on images written here."""
    root = tmp_path_factory.mktemp("own-images")
    images = root / "images"
    write_images(images, RGB_IMAGES)
    write_images(images, GRAY_IMAGES, mode="L", suffix=".jpg", first=100)
    (images / "square" / "broken.png").write_bytes(b"not an image")
    run_dir = root / "run"
    overrides = [*SMALL_OVERRIDES, *IMAGE_SETTINGS, f"data.root={images}", "data.skip_bad=true"]
    assert main(load_config([DEFAULT_CONFIG], [*overrides, f"run.dir={run_dir}"])) == 0
    return images, run_dir


@pytest.mark.slow
def test_training_on_an_image_folder_learns_above_chance(trained_run, read_metrics):
    images, run_dir = trained_run
    rows = read_metrics(run_dir)
    assert float(rows[-1]["val_acc"]) >= 0.7  # chance is 1/3
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])
    checkpoint = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert checkpoint["classes"] == ["circle", "square", "star"]
    cached = json.loads((run_dir / STATS_FILE).read_text(encoding="utf-8"))
    assert cached == checkpoint["normalization"] and len(cached["mean"]) == 3
    log = (run_dir / "train.log").read_text(encoding="utf-8")
    assert f"skipping {images / 'square' / 'broken.png'}" in log
    assert "MFLOPs per sample, input 3x16x16" in log


@pytest.mark.slow
def test_evaluate_reproduces_the_validation_accuracy_of_training(
    trained_run, run_python, read_metrics
):
    _, run_dir = trained_run
    result = run_python("evaluate.py", f"run.resume={run_dir / 'checkpoints' / 'last.pt'}")
    assert result.returncode == 0, result.stderr
    folder = run_dir / "eval" / "last"
    metrics = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
    expected = float(read_metrics(run_dir)[-1]["val_acc"])
    assert metrics["accuracy"] == pytest.approx(expected, abs=1e-9)
    assert metrics["images"] == 9 and metrics["top5_accuracy"] is None  # 3 classes
    assert f"accuracy {expected:.4f}" in result.stdout
    with (folder / "confusion_matrix.csv").open(newline="", encoding="utf-8") as file:
        table = list(csv.reader(file))
    assert table[0][1:] == ["circle", "square", "star"]
    counts = [[int(value) for value in row[1:]] for row in table[1:]]
    assert [sum(row) for row in counts] == [3, 2, 4]  # 20 % of 14, 10 and 18 images
    assert sum(counts[i][i] for i in range(3)) == round(expected * 9)
    with (folder / "per_class.csv").open(newline="", encoding="utf-8") as file:
        per_class = list(csv.DictReader(file))
    assert [int(row["correct"]) for row in per_class] == [counts[i][i] for i in range(3)]
    assert (folder / "confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_predict_agrees_with_evaluate_on_the_validation_images(trained_run, run_python):
    images, run_dir = trained_run
    checkpoint = run_dir / "checkpoints" / "last.pt"
    output = run_dir / "predict-all.csv"
    result = run_python("predict.py", str(checkpoint), str(images), str(output))
    assert result.returncode == 0, result.stderr
    assert "broken.png" in result.stderr  # skipped with a warning
    with output.open(newline="", encoding="utf-8") as file:
        rows = {row["file"]: row for row in csv.DictReader(file)}
    assert len(rows) == 42 and len(result.stdout.splitlines()) == 42
    for row in rows.values():
        ranked = [part.split("=") for part in row["top3"].split(";")]
        assert ranked[0] == [row["class"], row["probability"]]
        assert sum(float(probability) for _, probability in ranked) == pytest.approx(1, abs=1e-5)
    # The validation images, as evaluate.py counted them, get the same verdicts.
    from {{ cookiecutter.package_name }}.data import build_datasets

    settings = [*SMALL_OVERRIDES, *IMAGE_SETTINGS, f"data.root={images}", "data.skip_bad=true"]
    val = build_datasets(load_config([DEFAULT_CONFIG], settings).data, seed=0).val
    classes = val.classes
    right = sum(rows[str(path)]["class"] == classes[label] for path, label in val.samples)
    evaluated = json.loads((run_dir / "eval" / "last" / "metrics.json").read_text())
    assert right / len(val) == pytest.approx(evaluated["accuracy"], abs=1e-9)


@pytest.mark.slow
def test_top5_accuracy_with_more_than_five_classes(small_config, tmp_path, read_metrics):
    assert main(small_config) == 0  # the built-in shapes: 10 classes
    trained = load_trained(tmp_path / "run" / "checkpoints" / "last.pt", [])
    result = evaluate_checkpoint(trained)
    assert result.images == 64 and len(result.classes) == 10
    assert result.accuracy == pytest.approx(float(read_metrics(tmp_path / "run")[-1]["val_acc"]))
    assert result.top_k is not None and result.accuracy <= result.top_k <= 1


@pytest.mark.slow
def test_training_on_cached_images_learns_and_evaluate_agrees(
    trained_run, tmp_path, run_python, read_metrics
):
    """data.cache=true on the same folder (the unreadable file left out at the check): it
    learns, and evaluate.py, which reads the files without a cache, counts the very same
    validation accuracy, as the cached tensors equal the uncached ones."""
    images, _ = trained_run
    run_dir = tmp_path / "cached"
    settings = [*SMALL_OVERRIDES, *IMAGE_SETTINGS, f"data.root={images}", "data.skip_bad=true"]
    settings += ["data.cache=true", f"run.dir={run_dir}"]
    assert main(load_config([DEFAULT_CONFIG], settings)) == 0
    rows = read_metrics(run_dir)
    assert float(rows[-1]["val_acc"]) >= 0.7  # chance is 1/3
    log = (run_dir / "train.log").read_text(encoding="utf-8")
    assert "data.cache: 33 train + 9 val images decoded into memory, 3x19x19 each" in log
    result = run_python("evaluate.py", f"run.resume={run_dir / 'checkpoints' / 'last.pt'}")
    assert result.returncode == 0, result.stderr
    metrics = json.loads((run_dir / "eval" / "last" / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["images"] == 9
    assert metrics["accuracy"] == pytest.approx(float(rows[-1]["val_acc"]), abs=1e-9)


# python train.py ARGS, with the memory available for the cache patched to 1000 bytes.
TRAIN_WITH_LITTLE_MEMORY = """
import runpy, sys
from {{ cookiecutter.package_name }}.data import cache
cache.available_memory = lambda device: 1000
sys.argv = ["train.py", *sys.argv[1:]]
runpy.run_path("train.py", run_name="__main__")
"""


@pytest.mark.slow
def test_a_cache_too_large_for_the_memory_exits_2_before_the_run_folder(
    trained_run, tmp_path, run_python
):
    images, _ = trained_run
    run_dir = tmp_path / "run"
    settings = [*SMALL_OVERRIDES, *IMAGE_SETTINGS, f"data.root={images}", "data.skip_bad=true"]
    settings += ["data.cache=true", f"run.dir={run_dir}"]
    result = run_python("-c", TRAIN_WITH_LITTLE_MEMORY, *settings)
    assert result.returncode == 2, result.stderr
    error = result.stderr.strip()
    assert error.startswith("error: data.cache=true needs ") and "\n" not in error
    assert "cpu has 0.0 MB available" in error and "data.cache=false" in error
    assert not run_dir.exists()  # no run folder, so no checkpoint


def test_a_run_folder_means_its_best_checkpoint(trained_run):
    _, run_dir = trained_run
    assert resolve_checkpoint(run_dir) == run_dir / "checkpoints" / "best.pt"


@pytest.mark.slow
def test_evaluate_names_the_missing_safetensors_weights_of_a_checkpoint(
    trained_run, run_python, tmp_path
):
    """A checkpoint that keeps its model weights in step-<N>.safetensors, as projects generated
    with safetensors write them (every project reads them), given without that file."""
    _, run_dir = trained_run
    checkpoint = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    path = tmp_path / "step-00000008.pt"
    torch.save({**checkpoint, "model": None, "weights_sha256": "0" * 64}, path)
    result = run_python("evaluate.py", f"run.resume={path}")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith("error: ") and str(path) in result.stderr
    assert "step-00000008.safetensors" in result.stderr
    assert "which is missing" in result.stderr


@pytest.mark.slow
def test_a_corrupt_image_stops_training_with_one_line_naming_it(trained_run, run_python, tmp_path):
    images, _ = trained_run
    settings = [*SMALL_OVERRIDES, *IMAGE_SETTINGS, f"data.root={images}"]
    result = run_python("train.py", *settings, f"run.dir={tmp_path / 'r'}")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "Traceback" not in result.stderr
    assert str(images / "square" / "broken.png") in result.stderr
    assert "data.skip_bad=true" in result.stderr
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_an_image_that_fails_to_decode_in_a_worker_is_named_or_skipped(
    tmp_path, make_config, capsys
):
    """The header of a JPEG cut short reads fine, so only decoding it in a DataLoader
    worker finds the damage: still one line naming the file, or a skip with data.skip_bad."""
    write_images(tmp_path / "images", {"a": 6, "b": 6}, suffix=".jpg")
    victim = tmp_path / "images" / "a" / "002.jpg"
    # Cut 200 bytes and the check of the files finds it up front; 50 pass that check. Given
    # statistics, no image is decoded before training (computing them would find it), and
    # batches of 5 take all 10 training images in the first epoch (none dropped).
    victim.write_bytes(victim.read_bytes()[:-50])
    settings = [*IMAGE_SETTINGS, f"data.root={tmp_path / 'images'}", "data.num_workers=2"]
    settings += ["train.epochs=1", "data.batch_size=5"]
    settings += ["data.mean=[0.5,0.5,0.5]", "data.std=[0.25,0.25,0.25]"]
    assert run(make_config(*settings)) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: ") and "\n" not in error and str(victim) in error
    assert error.startswith(f"error: {victim} is not a readable image"), error  # no traceback
    # The run folder appears only once the data passed its checks: training found it.
    assert (tmp_path / "run" / "train.log").is_file()
    assert run(make_config(*settings, "data.skip_bad=true", run_dir=tmp_path / "skip")) == 0


@pytest.mark.slow
@pytest.mark.parametrize(
    "script, arguments, code, words",
    [
        ("predict.py", [], 2, "usage: python predict.py CHECKPOINT IMAGE_OR_FOLDER"),
        ("predict.py", ["ckpt.pt", "images", "out.txt"], 2, "must end in .csv"),
        ("evaluate.py", [], 2, "usage: python evaluate.py run.resume="),
        ("evaluate.py", ["run.resume=nowhere/last.pt"], 1, "nowhere/last.pt does not exist"),
    ],
)
def test_entry_points_answer_mistakes_with_one_line(run_python, script, arguments, code, words):
    result = run_python(script, *arguments)
    assert result.returncode == code
    assert words in result.stderr and "Traceback" not in result.stderr
