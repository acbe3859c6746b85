"""The training recipe: automatic choices for the settings left null, and early stopping.

Every automatic choice is chosen by its rule, logged once, written resolved into the run's
config.yaml and checkpoints, and taken back on resume; early stopping stops, keeps the best
checkpoint, and resumes exactly in the middle of its patience.
"""

import logging

import pytest
import torch
import yaml
from conftest import write_images

from {{ cookiecutter.package_name }} import recipe
from {{ cookiecutter.package_name }}.checkpoint import load_checkpoint
from {{ cookiecutter.package_name }}.config import Config, ConfigError, get_setting
from {{ cookiecutter.package_name }}.data import DataBundle, build_datasets, cache, cache_place
from {{ cookiecutter.package_name }}.engine import PerClass
from {{ cookiecutter.package_name }}.log import LOGGER_NAME, counted
from {{ cookiecutter.package_name }}.recipe import (
    AUTOMATIC,
    choose_data_settings,
    choose_machine_settings,
    choose_training_settings,
    with_setting,
)
from {{ cookiecutter.package_name }}.train import main

# The automatic settings, all left to the recipe (the small test config sets most of them).
ALL_AUTOMATIC = tuple(f"{key}=null" for key in AUTOMATIC)
IMAGES = ("data.dataset=imagefolder", "data.image_size=16", "model.width=8")


def automatic(**sizes) -> Config:
    cfg = Config()
    return choose_training_settings(cfg, sizes["train"], sizes.get("val", 100))


@pytest.mark.parametrize(
    ("train", "batch", "lr", "epochs"),
    [
        (100, 16, 0.003536, 100),
        (1_000, 32, 0.005, 60),
        (1_438, 64, 0.007071, 50),
        (10_000, 128, 0.01, 20),
        (50_000, 128, 0.01, 20),
    ],
)
def test_the_rules_scale_with_the_size_of_the_training_set(train, batch, lr, epochs):
    cfg = automatic(train=train)
    assert (cfg.data.batch_size, cfg.optim.lr, cfg.train.epochs) == (batch, lr, epochs)
    assert cfg.train.early_stop_patience == max(-(-epochs // 4), 5)


@pytest.mark.parametrize(
    ("cores", "torch_threads", "processes", "workers", "threads"),
    [(2, 2, 1, 0, 2), (16, 8, 1, 8, 8), (8, 8, 1, 7, 8), (16, 8, 4, 3, 2), (4, 4, 4, 0, 1)],
)
def test_workers_and_threads_follow_the_cores_of_this_process(
    monkeypatch, cores, torch_threads, processes, workers, threads
):
    monkeypatch.setattr("os.cpu_count", lambda: cores)
    monkeypatch.setattr(torch, "get_num_threads", lambda: torch_threads)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(processes))
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)  # the test command may set them
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(cores)), raising=False)
    monkeypatch.setattr(recipe, "busy_cores", lambda: 0.0)  # an idle machine (test_threads.py)
    cfg = choose_machine_settings(Config())
    assert (cfg.data.num_workers, cfg.train.threads) == (workers, threads)
    given = Config()
    given.data.num_workers, given.train.threads = 5, 0  # set by the user: kept
    chosen = choose_machine_settings(given)
    assert (chosen.data.num_workers, chosen.train.threads) == (5, 0)


def test_what_the_user_sets_wins_and_the_callers_config_is_left_alone():
    cfg = Config()
    cfg.data.batch_size, cfg.train.epochs, cfg.train.early_stop_patience = 8, 3, 0
    chosen = choose_training_settings(cfg, 100_000, 1_000)
    assert (chosen.data.batch_size, chosen.train.epochs, chosen.train.early_stop_patience) == (
        8,
        3,
        0,
    )
    assert chosen.optim.lr == pytest.approx(0.01 * (8 / 128) ** 0.5, rel=1e-4)
    assert cfg.optim.lr is None, "the caller's config was changed"


@pytest.mark.parametrize(
    ("batch_size", "train", "world_size", "running"),
    [(64, 20, 1, 20), (None, 10, 1, 10), (512, 10, 3, 4), (32, 100, 2, 32)],
)
def test_the_learning_rate_follows_the_batch_that_runs_not_a_larger_setting(
    project_log, batch_size, train, world_size, running
):
    """A batch is at most this process's share of the training set (padded to the same
    size on every rank); the automatic learning rate is scaled to that batch, and the
    auto: line says so."""
    project_log.set_level(logging.INFO, logger=LOGGER_NAME)
    cfg = Config()
    cfg.data.batch_size = batch_size
    data = DataBundle(list(range(train)), list(range(100)), ["a", "b"], 3)
    chosen = choose_data_settings(cfg, data, world_size)
    assert chosen.optim.lr == pytest.approx(0.01 * (running / 128) ** 0.5, abs=1e-6)
    (line,) = [r.getMessage() for r in project_log.records if "auto: optim.lr=" in r.getMessage()]
    assert f"batch size {running}" in line
    if running < chosen.data.batch_size:
        assert f"data.batch_size={chosen.data.batch_size} is more than" in line


def test_too_few_validation_images_turn_early_stopping_off_in_one_line(project_log):
    project_log.set_level(logging.INFO, logger=LOGGER_NAME)
    cfg = automatic(train=500, val=12)
    assert cfg.train.early_stop_patience == 0
    lines = [r.getMessage() for r in project_log.records if "early_stop_patience" in r.getMessage()]
    assert len(lines) == 1
    assert "12 images" in lines[0] and "data.val_fraction" in lines[0]


@pytest.mark.parametrize(
    ("epochs", "patience", "reason"),
    [
        (2, 5, "a quarter of 2 epochs, at least 5; too few epochs to stop early"),
        (1, 5, "a quarter of 1 epoch, at least 5; too few epochs to stop early"),
        (6, 5, "a quarter of 6 epochs, at least 5; too few epochs to stop early"),
        (7, 5, "a quarter of 7 epochs, at least 5"),  # stops before epoch 7 at the earliest
        (40, 10, "a quarter of 40 epochs, at least 5"),
    ],
)
def test_log_lines_of_the_choices_read_right_for_one_and_for_few(
    project_log, epochs, patience, reason
):
    # "early_stop_patience=5 (2 epochs)" read as if the patience were 2 epochs; it can
    # never end a run of 2 epochs early. "1 training images" and "1 images" miscounted.
    project_log.set_level(logging.INFO, logger=LOGGER_NAME)
    cfg = with_setting(Config(), "train.epochs", epochs)
    assert choose_training_settings(cfg, 1, 100).train.early_stop_patience == patience
    automatic(train=1, val=1)
    lines = [record.getMessage() for record in project_log.records]
    assert f"auto: train.early_stop_patience={patience} ({reason})" in lines
    assert "auto: data.batch_size=16 (1 training image)" in lines
    assert any("the validation split has 1 image, too few" in line for line in lines)
    assert (counted(1, "batch", "batches"), counted(2, "batch", "batches")) == (
        "1 batch",
        "2 batches",
    )
    assert counted(0, "epoch") == "0 epochs"


@pytest.mark.slow
def test_choices_are_logged_written_resolved_and_taken_back_on_resume(
    make_config, tmp_path, capsys, monkeypatch
):
    images = tmp_path / "images"
    write_images(images, {"a": 40, "b": 40, "c": 40})
    settings = (*IMAGES, f"data.root={images}", *ALL_AUTOMATIC, "train.device=cpu")
    first = make_config(*settings, "train.max_steps=3")
    assert main(first) == 0
    output = capsys.readouterr().out
    resolved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text(encoding="utf-8"))
    for key in AUTOMATIC:
        section, name = key.split(".")
        assert resolved[section][name] is not None, f"{key} was not written resolved"
        assert output.count(f"auto: {key}=") == 1, f"{key} was not logged once"
    saved = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["config"]
    assert {key: saved[key.split(".")[0]][key.split(".")[1]] for key in AUTOMATIC} == {
        key: resolved[key.split(".")[0]][key.split(".")[1]] for key in AUTOMATIC
    }
    assert resolved["data"]["cache"] is True  # 120 tiny images fit any memory

    # Resumed where memory is scarcer: the run goes on cached, as it began, and its config
    # is the same; a new run would now choose to stream (the decoded images, ~490 kB at the
    # automatic 32 px, take more than a quarter of 1 MB, and the disk is full).
    monkeypatch.setattr(cache, "available_memory", lambda device: 1_000_000)
    monkeypatch.setattr(cache_place, "free_space", lambda folder: 0)
    assert main(make_config(*settings, "run.resume=auto", "train.max_steps=6")) == 0
    assert not build_datasets(make_config(*settings).data, seed=0).cached
    again = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text(encoding="utf-8"))
    for key in AUTOMATIC:
        section, name = key.split(".")
        assert again[section][name] == resolved[section][name], key


def test_a_cache_too_large_falls_back_to_streaming_in_one_line(
    make_config, tmp_path, project_log, monkeypatch
):
    project_log.set_level(logging.INFO, logger=LOGGER_NAME)
    images = tmp_path / "images"
    write_images(images, {"a": 10, "b": 10})
    monkeypatch.setattr(cache, "available_memory", lambda device: 1_000)
    monkeypatch.setattr(cache_place, "free_space", lambda folder: 0)  # nor on disk
    cfg = make_config(*IMAGES, f"data.root={images}", "data.cache=null")
    data = build_datasets(cfg.data, seed=0)
    assert not data.cached
    (line,) = [r.getMessage() for r in project_log.records if "data.cache" in r.getMessage()]
    assert line.startswith("auto: data.cache=False") and "read from their files" in line
    cfg = make_config(*IMAGES, f"data.root={images}", "data.cache=true")
    with pytest.raises(ConfigError, match="data.cache=true needs"):  # asked for: refused
        build_datasets(cfg.data, seed=0)


def run_rows(tmp_path, name):
    import csv

    with (tmp_path / name / "metrics.csv").open(encoding="utf-8") as file:
        return list(csv.DictReader(file))


EARLY = (
    "data.train_size=64",
    "data.val_size=32",
    "train.epochs=40",
    "train.early_stop_patience=3",
)


@pytest.mark.slow
def test_early_stopping_stops_keeps_the_best_and_a_finished_run_stays_finished(
    make_config, tmp_path
):
    assert main(make_config(*EARLY)) == 0
    rows = run_rows(tmp_path, "run")
    accuracies = [float(row["val_acc"]) for row in rows]
    best = accuracies.index(max(accuracies))
    assert len(rows) < 40, "the run never stopped early"
    assert len(rows) - 1 - best == 3, "it stopped after another number of epochs than 3"
    best_checkpoint = load_checkpoint(tmp_path / "run" / "checkpoints" / "best.pt")
    assert best_checkpoint["progress"]["best_epoch"] == best
    assert best_checkpoint["progress"]["best_val_acc"] == pytest.approx(max(accuracies))
    last = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["progress"]
    # Resumed, the finished run trains no further.
    assert main(make_config(*EARLY, "run.resume=auto")) == 0
    again = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["progress"]
    assert again["global_step"] == last["global_step"]
    assert len(run_rows(tmp_path, "run")) == len(rows)


@pytest.mark.slow
def test_a_run_stopped_in_the_middle_of_its_patience_resumes_exactly(make_config, tmp_path):
    straight = tmp_path / "straight"
    assert main(make_config(*EARLY, run_dir=straight)) == 0
    rows = run_rows(tmp_path, "straight")
    accuracies = [float(row["val_acc"]) for row in rows]
    best = accuracies.index(max(accuracies))
    steps_per_epoch = int(rows[0]["step"])
    # Stopped one epoch after the best, and resumed: patience has 2 epochs to go.
    stop_at = steps_per_epoch * (best + 2)
    assert main(make_config(*EARLY, f"train.max_steps={stop_at}")) == 0
    assert main(make_config(*EARLY, "run.resume=auto")) == 0
    assert [row["val_acc"] for row in run_rows(tmp_path, "run")] == [row["val_acc"] for row in rows]
    expected = load_checkpoint(straight / "checkpoints" / "last.pt")
    actual = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert actual["progress"] == expected["progress"]
    for key, tensor in expected["model"].items():
        assert torch.equal(actual["model"][key], tensor), key


def test_balanced_accuracy_and_the_weakest_class_of_imbalanced_classes():
    # 90 images of "big" (81 right), 10 of "small" (2 right).
    sums = torch.tensor([81.0, 2.0, 90.0, 10.0], dtype=torch.float64)
    per_class = PerClass(["big", "small"], sums)
    assert per_class.balanced_accuracy == pytest.approx((0.9 + 0.2) / 2)
    assert per_class.summary() == "  balanced acc 0.5500, weakest small 0.2000"
    balanced = PerClass(["a", "b"], torch.tensor([5.0, 4.0, 10.0, 10.0], dtype=torch.float64))
    assert balanced.summary() == "" and balanced.balanced_accuracy == pytest.approx(0.45)


def test_metrics_hold_the_balanced_accuracy_and_the_log_names_the_weakest_class(
    make_config, tmp_path, capsys
):
    images = tmp_path / "images"
    write_images(images / "train", {"many": 60, "few": 12})
    write_images(images / "val", {"many": 30, "few": 6}, first=100)
    cfg = make_config(*IMAGES, f"data.root={images}", "data.batch_size=16")
    assert main(cfg) == 0
    (row,) = run_rows(tmp_path, "run")
    assert 0 <= float(row["val_balanced_acc"]) <= 1
    output = capsys.readouterr().out
    assert "balanced acc" in output and "weakest few" in output


def test_the_automatic_keys_are_settings_of_the_schema():
    cfg = Config()
    for key in AUTOMATIC:
        assert get_setting(cfg, key) is None, f"{key} is not left to the recipe by default"
