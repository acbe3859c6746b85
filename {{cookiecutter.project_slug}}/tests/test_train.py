"""Training end to end, in-process: the run folder, learning, exact resume, safety."""

import pytest
import torch
from conftest import assert_same

from {{ cookiecutter.package_name }}.checkpoint import load_checkpoint
from {{ cookiecutter.package_name }}.cli import DEFAULT_CONFIG
from {{ cookiecutter.package_name }}.config import (
    ConfigError,
    load_config,
)
from {{ cookiecutter.package_name }}.engine import (
    MAX_PENDING_BATCHES,
    NonFiniteLossError,
    TrainState,
)
from {{ cookiecutter.package_name }}.shapes import SHAPE_CLASSES
from {{ cookiecutter.package_name }}.train import (
    Hooks,
    main,
    run,
)

METRIC_COLUMNS = ("epoch", "train_loss", "val_loss", "val_acc", "lr")
# Columns that measure time, and so differ between two otherwise identical runs.
TIMING_COLUMNS = ("epoch_time_s", "samples_per_s")


def test_one_epoch_smoke_run_writes_the_run_folder(small_config, tmp_path, read_metrics):
    assert main(small_config) == 0
    run_dir = tmp_path / "run"
    for name in ("config.yaml", "train.log", "metrics.csv"):
        assert (run_dir / name).is_file(), name
    assert "epoch 1/1" in (run_dir / "train.log").read_text(encoding="utf-8")
    rows = read_metrics(run_dir)
    assert len(rows) == 1 and rows[0]["epoch"] == "0"
    for column in METRIC_COLUMNS:
        assert rows[0][column] != "", column
    assert 0.0 <= float(rows[0]["val_acc"]) <= 1.0
    assert float(rows[0]["train_loss"]) > 0
    for name in ("last.pt", "best.pt"):
        checkpoint = load_checkpoint(run_dir / "checkpoints" / name)
        assert checkpoint["progress"]["global_step"] == 256 // 32
        assert checkpoint["classes"] == list(SHAPE_CLASSES)
{% if cookiecutter.tracker == "tensorboard" %}
    assert any((run_dir / "tensorboard").glob("events.out.tfevents.*"))
{% endif %}


def test_saved_config_reproduces_the_run_config(small_config, tmp_path):
    assert main(small_config) == 0
    saved = tmp_path / "run" / "config.yaml"
    assert load_config([saved], []) == small_config
    assert load_config([DEFAULT_CONFIG, saved], []) == small_config


def test_loss_decreases_over_a_few_epochs(make_config, tmp_path, read_metrics):
    cfg = make_config("data.train_size=512", "train.epochs=3")
    assert main(cfg) == 0
    rows = read_metrics(tmp_path / "run")
    assert [row["epoch"] for row in rows] == ["0", "1", "2"]
    losses = [float(row["train_loss"]) for row in rows]
    assert losses[-1] < losses[0] - 0.01, f"training did not learn: {losses}"
    assert [int(row["step"]) for row in rows] == [16, 32, 48]
    # The checkpoint of the last epoch points at the start of the next one, its sums reset.
    progress = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["progress"]
    assert (progress["epoch"], progress["batch_in_epoch"], progress["global_step"]) == (3, 0, 48)
    assert (progress["loss_sum"], progress["correct"], progress["seen"]) == (0.0, 0.0, 0)
    assert progress["first_nonfinite_step"] == -1


def _recorded_batches(count: int, seed: int = 0) -> list[tuple]:
    """(loss, logits, labels) of `count` batches of uneven sizes, as the loop records them."""
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for index in range(count):
        size = 3 + index % 5
        loss = torch.rand((), generator=generator) * 10 ** (index % 7 - 3)
        logits = torch.randn(size, 4, generator=generator)
        labels = torch.randint(0, 4, (size,), generator=generator)
        batches.append((loss, logits, labels))
    return batches


def _record(state: TrainState, batches: list[tuple], fold_after: set[int]) -> None:
    for index, (loss, logits, labels) in enumerate(batches):
        state.record(loss, logits, labels)
        state.global_step += 1
        if index in fold_after:
            state.fold_pending()
    state.fold_pending()


def test_running_sums_do_not_depend_on_where_they_are_folded():
    """A resumed run folds at other steps than an uninterrupted one: the sums must agree
    to the last bit, and equal the sums of a loop that adds every batch at once."""
    batches = _recorded_batches(2 * MAX_PENDING_BATCHES + 9)
    loss_sum, correct, seen = 0.0, 0, 0
    for loss, logits, labels in batches:
        loss_sum += float(loss) * labels.size(0)
        correct += int((logits.argmax(dim=1) == labels).sum())
        seen += labels.size(0)
    folds = {
        "every batch": set(range(len(batches))),
        "only at the end and when too many pend": set(),
        "at odd places": {0, 6, 7, 50, 101},
    }
    for where, fold_after in folds.items():
        state = TrainState()
        _record(state, batches, fold_after)
        assert (state.loss_sum, state.correct, state.seen) == (loss_sum, correct, seen), where
        assert state.first_nonfinite_step == -1 and not state.pending


def test_pending_batches_are_folded_before_they_pile_up():
    state = TrainState()
    for loss, logits, labels in _recorded_batches(MAX_PENDING_BATCHES - 1):
        state.record(loss, logits, labels)
    assert len(state.pending) == MAX_PENDING_BATCHES - 1 and state.loss_sum == 0.0
    state.record(*_recorded_batches(1)[0])
    assert not state.pending and state.loss_sum > 0


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_the_first_nonfinite_loss_is_reported_with_its_optimizer_step(bad):
    batches = _recorded_batches(10)
    for index in (4, 7):  # recorded before optimizer steps 5 and 8
        batches[index] = (torch.tensor(bad), *batches[index][1:])
    state = TrainState()
    _record(state, batches, fold_after={2})
    assert state.first_nonfinite_step == 5
    with pytest.raises(NonFiniteLossError, match=r"at optimizer step 5\b"):
        state.check_finite(fp16_scaler_enabled=False)
    state.check_finite(fp16_scaler_enabled=True)  # a scaler skips such steps by design
    assert state.as_dict()["first_nonfinite_step"] == 5


def test_max_steps_stops_inside_an_epoch(make_config, tmp_path):
    assert main(make_config("train.max_steps=3")) == 0
    checkpoint = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    progress = checkpoint["progress"]
    assert (progress["epoch"], progress["batch_in_epoch"], progress["global_step"]) == (0, 3, 3)
    # The running sums of the epoch so far, as plain numbers: 3 batches of 32.
    assert progress["seen"] == 3 * 32 and 0 <= progress["correct"] <= 3 * 32
    assert isinstance(progress["loss_sum"], float) and progress["loss_sum"] > 0
    assert not (tmp_path / "run" / "metrics.csv").exists()  # no epoch was finished


@pytest.mark.slow
def test_after_epoch_hook_sees_each_row_and_can_stop_the_run(make_config, tmp_path, read_metrics):
    seen = []

    def stop_after_second_epoch(row: dict) -> bool:
        seen.append(row)
        return len(seen) == 2

    cfg = make_config("data.train_size=64", "train.epochs=4")
    assert main(cfg, Hooks(after_epoch=stop_after_second_epoch)) == 0
    assert [row["epoch"] for row in seen] == [0, 1]
    rows = read_metrics(tmp_path / "run")
    assert [float(row["val_loss"]) for row in rows] == pytest.approx(
        [row["val_loss"] for row in seen], rel=1e-5
    )
    # Stopped cleanly after the save of epoch 2: resumable, plots drawn.
    progress = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["progress"]
    assert (progress["epoch"], progress["global_step"]) == (2, 4)
    assert (tmp_path / "run" / "loss.png").is_file()


@pytest.mark.slow
def test_step_and_save_hooks_see_every_step_and_every_save(make_config, tmp_path):
    calls = []
    hooks = Hooks(
        after_step=lambda state: calls.append(("step", state.global_step)),
        before_save=lambda state: calls.append(("before_save", state.global_step)),
        after_save=lambda state: calls.append(("after_save", state.global_step)),
    )
    # 64 images in batches of 32: 2 steps an epoch; saves at each epoch's end and at step 3.
    cfg = make_config("data.train_size=64", "train.epochs=2", "run.save_every_steps=3")
    assert main(cfg, hooks) == 0
    assert calls == [
        ("step", 1),
        ("step", 2),
        ("before_save", 2),
        ("after_save", 2),
        ("step", 3),
        ("before_save", 3),
        ("after_save", 3),
        ("step", 4),
        ("before_save", 4),
        ("after_save", 4),
    ]
    # A checkpoint is on disk by the time after_save is called.
    assert (tmp_path / "run" / "checkpoints" / "step-00000004.pt").is_file()


@pytest.mark.slow
def test_save_every_steps_and_keep_last(make_config, tmp_path):
    # 8 steps: saves at steps 3 and 6 inside the epoch, and at its end (step 8).
    assert main(make_config("run.save_every_steps=3", "run.keep_last=2")) == 0
    folder = tmp_path / "run" / "checkpoints"
    assert sorted(path.name for path in folder.glob("step-*.pt")) == [
        "step-00000006.pt",
        "step-00000008.pt",
    ]
    mid_epoch = load_checkpoint(folder / "step-00000006.pt")["progress"]
    assert (mid_epoch["epoch"], mid_epoch["batch_in_epoch"]) == (0, 6)
    for name in ("last.pt", "best.pt"):
        progress = load_checkpoint(folder / name)["progress"]
        assert (progress["epoch"], progress["global_step"]) == (1, 8), name


@pytest.mark.slow
def test_gradient_accumulation_takes_one_step_per_group(make_config, tmp_path):
    assert main(make_config("train.grad_accum_steps=3")) == 0
    checkpoint = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert checkpoint["progress"]["global_step"] == 3  # 8 batches: 3 + 3 + the last 2


# Two epochs of 8 batches. The interrupted run stops at step 5 (inside epoch 0), resumes to
# step 10 (across the end of epoch 0, its evaluation and metrics row) and then to step 12.
# Dropout makes the result depend on the restored RNG state; the schedules cover one stepped
# per batch with a warmup (cosine), a constant one, and one stepped per epoch (step).
RESUME_SETTINGS = ("train.epochs=2", "model.dropout=0.2")
SCHEDULE_SETTINGS = {
    "none": ("sched.name=none",),
    "step": ("sched.name=step", "sched.step_size=1", "sched.gamma=0.5"),
    "cosine": ("sched.name=cosine",),
}


@pytest.mark.slow
@pytest.mark.parametrize("schedule", SCHEDULE_SETTINGS)
def test_resume_after_max_steps_matches_an_uninterrupted_run(
    make_config, tmp_path, read_metrics, schedule
):
    settings = (*RESUME_SETTINGS, *SCHEDULE_SETTINGS[schedule])
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert main(make_config(*settings, "train.max_steps=12", run_dir=straight)) == 0
    assert main(make_config(*settings, "train.max_steps=5", run_dir=split)) == 0
    stopped = load_checkpoint(split / "checkpoints" / "last.pt")
    assert stopped["progress"]["global_step"] == 5
    for max_steps in (10, 12):
        resumed = make_config(
            *settings, f"train.max_steps={max_steps}", "run.resume=auto", run_dir=split
        )
        assert main(resumed) == 0

    expected = load_checkpoint(straight / "checkpoints" / "last.pt")
    actual = load_checkpoint(split / "checkpoints" / "last.pt")
    assert actual["progress"]["global_step"] == 12
    assert_same(expected["model"], actual["model"], "model")
    assert_same(expected["optimizer"], actual["optimizer"], "optimizer")
    assert_same(expected["scheduler"], actual["scheduler"], "scheduler")
    assert_same(expected["progress"], actual["progress"], "progress")
    assert torch.equal(expected["rng"]["torch"], actual["rng"]["torch"])

    def without_timings(rows):
        return [{k: v for k, v in row.items() if k not in TIMING_COLUMNS} for row in rows]

    straight_rows = without_timings(read_metrics(straight))
    assert len(straight_rows) == 1
    assert without_timings(read_metrics(split)) == straight_rows


@pytest.mark.slow
def test_fresh_run_refuses_a_folder_with_checkpoints(make_config, tmp_path, capsys):
    assert main(make_config("train.max_steps=2")) == 0
    folder = tmp_path / "run"
    last = folder / "checkpoints" / "last.pt"
    before = {path: path.read_bytes() for path in (last, folder / "config.yaml")}

    with pytest.raises(ConfigError, match="already holds checkpoints"):
        main(make_config())
    capsys.readouterr()
    assert run(make_config()) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 1 and errors[0].startswith("error:") and str(folder) in errors[0]
    for path, content in before.items():
        assert path.read_bytes() == content, f"{path.name} was changed"


def test_resume_from_a_corrupt_checkpoint_exits_1_naming_it(make_config, tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00" * 100)
    assert run(make_config(f"run.resume={bad}")) == 1
    assert str(bad) in capsys.readouterr().err


def test_unknown_model_name_fails_before_creating_the_run_folder(make_config, tmp_path):
    with pytest.raises(ConfigError, match="not_a_model"):
        main(make_config("model.name=not_a_model"))
    assert not (tmp_path / "run").exists()
