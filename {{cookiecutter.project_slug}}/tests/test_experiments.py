"""configs/experiments/: every overlay loads, they stack in order, and the examples train."""

import pytest
from conftest import write_images

from {{ cookiecutter.package_name }}.cli import DEFAULT_CONFIG
from {{ cookiecutter.package_name }}.config import Config, load_config, to_dict
from {{ cookiecutter.package_name }}.train import main

EXPERIMENTS = DEFAULT_CONFIG.parent / "experiments"
IMAGEFOLDER = EXPERIMENTS / "resnet18_imagefolder.yaml"
LONG = EXPERIMENTS / "long_schedule.yaml"


def flat(config: dict, prefix: str = "") -> dict:
    items = {}
    for key, value in config.items():
        if isinstance(value, dict):
            items.update(flat(value, f"{prefix}{key}."))
        else:
            items[f"{prefix}{key}"] = value
    return items


@pytest.mark.parametrize("path", sorted(EXPERIMENTS.glob("*.yaml")), ids=lambda path: path.stem)
def test_each_experiment_loads_and_changes_the_defaults(path):
    defaults = flat(to_dict(Config()))
    loaded = flat(to_dict(load_config([DEFAULT_CONFIG, path], [])))
    changed = {key for key in defaults if loaded[key] != defaults[key]}
    assert "run.name" in changed and len(changed) >= 3, changed
    assert path.read_text(encoding="utf-8").startswith("# "), "say what it is for, first"
    # What depends on the machine, not on the experiment, stays the recipe's choice.
    machine = {key: loaded[key] for key in ("data.num_workers", "train.threads")}
    assert machine == {"data.num_workers": None, "train.threads": None}


def test_experiments_stack_in_order_and_overrides_win(run_python):
    both = [str(IMAGEFOLDER), str(LONG)]
    result = run_python("train.py", *both, "train.epochs=7", "--print-config")
    assert result.returncode == 0, result.stderr
    printed = result.stdout
    assert "dataset: imagefolder" in printed and "name: resnet18" in printed  # first file
    assert "warmup_epochs: 5" in printed and "name: long" in printed  # the later file wins
    assert "epochs: 7" in printed  # key=value wins over both
    reverse = load_config([DEFAULT_CONFIG, LONG, IMAGEFOLDER], [])
    assert (reverse.sched.warmup_epochs, reverse.run.name) == (2, "resnet18-imagefolder")


@pytest.mark.slow
def test_resnet18_imagefolder_experiment_trains(tmp_path, read_metrics):
    for split in ("train", "val"):
        write_images(tmp_path / "images" / split, {"cat": 3, "dog": 3}, size=32)
    small = [
        f"data.root={tmp_path / 'images'}",
        "data.image_size=32",
        "data.batch_size=3",
        "data.num_workers=0",
        "train.epochs=1",
        "train.device=cpu",
        f"run.dir={tmp_path / 'run'}",
    ]
    assert main(load_config([DEFAULT_CONFIG, IMAGEFOLDER], small)) == 0
    (row,) = read_metrics(tmp_path / "run")
    assert float(row["train_loss"]) > 0 and int(row["step"]) == 2
