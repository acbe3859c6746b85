"""The recipe benchmark's instruments: its generated image collections and its runner.

The collections are generated at a small scale (the same drawings, fewer images) and read
back as the project would read them; `bench/recipe.py --quick` runs end to end on the
smallest one. The benchmark's own figures are never asserted here (bench/README.md).
"""

import hashlib
import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image, ImageOps

from tests.conftest import SMOKE_TIMEOUT_S

BENCH = Path(__file__).resolve().parent.parent / "bench"
SCALE = 0.02  # of each class's images, at least image_collections.MIN_PER_CLASS


@pytest.fixture
def collections(monkeypatch):
    """bench/image_collections.py, imported as recipe.py imports it (bench/ on the path)."""
    monkeypatch.syspath_prepend(str(BENCH))
    return importlib.import_module("image_collections")


def test_collections_cover_what_the_issue_asks(collections):
    specs = collections.COLLECTIONS
    assert len(specs) >= 7
    assert len({spec.name for spec in specs}) == len(specs)
    assert min(len(spec.classes) for spec in specs) == 2
    assert max(len(spec.classes) for spec in specs) == 20
    assert min(spec.images for spec in specs) == 100
    assert max(spec.images for spec in specs) == 20_000
    assert min(min(spec.size) for spec in specs) == 8
    assert max(max(spec.size) for spec in specs) >= 256
    assert any(spec.exif_turned_every and spec.format == "jpeg" for spec in specs)
    assert {spec.mode for spec in specs} == {"L", "RGB"}
    assert {spec.format for spec in specs} == {"png", "jpeg"}
    assert {spec.has_val for spec in specs} == {True, False}
    assert any(max(spec.counts) >= 10 * min(spec.counts) for spec in specs)
    assert any(spec.size[0] != spec.size[1] for spec in specs)
    for spec in specs:
        assert len(spec.counts) == len(spec.classes)


def test_generated_collections_have_their_layout_modes_sizes_and_formats(collections, tmp_path):
    for spec in collections.COLLECTIONS:
        folder = collections.ensure(spec, tmp_path, SCALE)
        manifest = json.loads((folder / "collection.json").read_text())
        assert manifest == collections.manifest(spec, SCALE)
        splits = ["train", "val"] if spec.has_val else ["."]
        children = sorted(child.name for child in folder.iterdir() if child.is_dir())
        assert children == (splits if spec.has_val else sorted(spec.classes))
        for class_name, count in zip(spec.classes, manifest["counts"], strict=True):
            files = [path for split in splits for path in (folder / split / class_name).iterdir()]
            assert len(files) == count
            if spec.has_val:
                assert len(list((folder / "val" / class_name).iterdir())) >= 1
            for path in files[:3]:
                with Image.open(path) as image:
                    # Stored sideways or not, every image shows upright at its size.
                    upright = ImageOps.exif_transpose(image)
                    assert (upright.mode, upright.size) == (spec.mode, spec.size)
                    assert image.format == spec.format.upper()
    assert not list(tmp_path.glob("*.partial"))


def test_imbalance_survives_the_scale(collections, tmp_path):
    defects = collections.by_name(["defects"])[0]
    counts = collections.manifest(defects, 1.0)["counts"]
    assert max(counts) == 10 * min(counts)
    assert collections.scaled_counts(defects, 0.1) == [100, 30, 10]


def test_collections_are_deterministic_and_cached(collections, tmp_path):
    tiny = collections.by_name(["tiny"])[0]
    first = collections.ensure(tiny, tmp_path / "a")
    stamps = {path: path.stat().st_mtime_ns for path in first.rglob("*.png")}
    assert collections.ensure(tiny, tmp_path / "a") == first
    assert {path: path.stat().st_mtime_ns for path in first.rglob("*.png")} == stamps
    second = collections.ensure(tiny, tmp_path / "b")
    assert digests(first) == digests(second)
    (first / "collection.json").unlink()  # as after an interrupted run: made again
    assert digests(collections.ensure(tiny, tmp_path / "a")) == digests(second)


def digests(folder: Path) -> dict:
    return {
        path.relative_to(folder).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*.png"))
    }


def test_recipe_quick_runs_end_to_end(tmp_path):
    report = tmp_path / "recipe.json"
    command = [sys.executable, str(BENCH / "recipe.py"), "--quick", "--only", "tiny"]
    command += ["--collections", str(tmp_path / "collections"), "--json", str(report)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=SMOKE_TIMEOUT_S)
    assert result.returncode in (0, 1), result.stderr[-3000:]
    table = result.stdout.strip().splitlines()
    assert table[0].startswith("| collection | what it is | val images | default acc |")
    assert len(table) == 3 and table[2].startswith("| tiny | 2 classes, 100 images, 8 px, gray")
    (outcome,) = json.loads(report.read_text())
    runs = [outcome["default"], *outcome["grid"]]
    assert [run["name"] for run in runs] == ["tiny-default", "tiny-grid0", "tiny-flip"]
    for run in runs:
        assert run["error"] is None
        assert run["val_images"] == 20
        assert 0.0 <= run["best_val_acc"] <= 1.0 and run["seconds"] > 0
    assert "data.flip=true" in outcome["grid"][1]["overrides"]
    assert result.returncode == (1 if outcome["problems"] else 0)


def test_an_earlier_grid_is_taken_only_for_the_same_collection_and_values(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    recipe = importlib.import_module("recipe")
    axes = {"train.epochs": (10, 30), "optim.lr": (0.01,), "data.batch_size": (32,)}
    run = {"name": "tiny-grid0", "overrides": ["train.epochs=10"], "seconds": 3.5}
    # A row from before the grid had sides stands for the side 32.
    assert recipe.earlier_grid(
        [
            {
                "collection": "tiny",
                "axes": axes,
                "grid": [{**run, "best_val_acc": 0.9, "val_images": 20, "error": None}],
            }
        ],
        "tiny",
        {**axes, "data.image_size": (32,)},
    )
    axes = {**axes, "data.image_size": (32,)}
    rows = [{"collection": "tiny", "axes": {key: list(v) for key, v in axes.items()}}]
    rows[0]["grid"] = [{**run, "best_val_acc": 0.9, "val_images": 20, "error": None}]
    (earlier,) = recipe.earlier_grid(rows, "tiny", axes)
    assert (earlier.name, earlier.best_val_acc, earlier.seconds) == ("tiny-grid0", 0.9, 3.5)
    assert recipe.earlier_grid(rows, "glyphs", axes) is None
    assert recipe.earlier_grid(rows, "tiny", {**axes, "optim.lr": (0.03,)}) is None


def test_ema_bench_quick_runs_end_to_end(tmp_path):
    report = tmp_path / "ema.json"
    command = [sys.executable, str(BENCH / "ema.py"), "--quick", "--only", "tiny"]
    command += ["--decays", "0.9", "--collections", str(tmp_path / "c"), "--json", str(report)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=SMOKE_TIMEOUT_S)
    assert result.returncode == 0, result.stderr[-3000:]
    table = result.stdout.strip().splitlines()
    assert table[0] == "| collection | EMA off | EMA 0.9 |" and table[2].startswith("| tiny | ")
    runs = json.loads(report.read_text())["tiny"]
    assert set(runs) == {"off", "0.9"}
    assert "train.ema_decay=0.9" in runs["0.9"]["overrides"]
    for run in runs.values():
        assert run["error"] is None and 0.0 <= run["best_val_acc"] <= 1.0
