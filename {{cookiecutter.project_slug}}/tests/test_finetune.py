"""Fine-tuning: the classifier trained alone first with the backbone held bit-still, then the
whole network with a lower learning rate for the backbone; the recipe's choices of those
settings; an exact resume in either phase; and a from-scratch run trained exactly as before.

No pretrained weights are needed: the phases are set by train.freeze_epochs and
optim.backbone_lr_ratio, which model.pretrained only chooses automatically.
"""

import csv
import logging
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from {{ cookiecutter.package_name }}.checkpoint import load_checkpoint
from {{ cookiecutter.package_name }}.config import (
    Config,
    ConfigError,
    ModelConfig,
    OptimConfig,
    SchedConfig,
    schema_fields,
)
from {{ cookiecutter.package_name }}.log import LOGGER_NAME
from {{ cookiecutter.package_name }}.model import build_model
from {{ cookiecutter.package_name }}.optim import (
    BACKBONE,
    CLASSIFIER,
    PER_STEP_SCHEDULERS,
    FineTuning,
    build_optimizer,
    build_scheduler,
    classifier_parameters,
)
from {{ cookiecutter.package_name }}.recipe import choose_training_settings, with_setting
from {{ cookiecutter.package_name }}.shapes import SHAPE_CLASSES
from {{ cookiecutter.package_name }}.train import build_trainer, main

# 64 images in batches of 16: 4 optimizer steps an epoch, 12 in the run; the first epoch
# trains the classifier alone. Dropout makes an exact resume depend on the restored RNG.
STEPS_PER_EPOCH, EPOCHS = 4, 3
PHASES = (
    "data.train_size=64",
    "data.val_size=32",
    "data.batch_size=16",
    f"train.epochs={EPOCHS}",
    "train.freeze_epochs=1",
    "optim.backbone_lr_ratio=0.1",
    "optim.weight_decay=0.05",
    "model.dropout=0.2",
)
HEAD_STEPS = STEPS_PER_EPOCH  # optimizer steps of the head-only phase
SCHEDULERS = dict(schema_fields())["sched.name"].metadata["choices"]


def parameter_names(model_state: dict) -> list[str]:
    """The parameters of a SmallResNet's state dict (batch norm's buffers left out)."""
    buffers = ("running_mean", "running_var", "num_batches_tracked")
    return [name for name in model_state if not name.endswith(buffers)]


def is_classifier(name: str) -> bool:
    return name.startswith("head.")  # SmallResNet's classifier


def write_initial_weights(path: Path) -> dict:
    """A SmallResNet's weights for model.weights, so the test knows where training starts."""
    model = build_model(ModelConfig(width=8, dropout=0.2), len(SHAPE_CLASSES), 3)
    weights = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    torch.save(weights, path)
    return weights


def step_checkpoints(run_dir: Path) -> dict[int, dict]:
    """{optimizer step: checkpoint} of a run saved after every step."""
    found = {}
    for path in (run_dir / "checkpoints").glob("step-*.pt"):
        found[int(path.stem.removeprefix("step-"))] = load_checkpoint(path)
    return found


def group_lrs(checkpoint: dict) -> dict[str, set[float]]:
    """{part: the learning rates of its groups} for the step after the checkpoint's."""
    lrs = {CLASSIFIER: set(), BACKBONE: set()}
    for group in checkpoint["optimizer"]["param_groups"]:
        lrs[group["part"]].add(group["lr"])
    return lrs


@pytest.mark.slow
@pytest.mark.parametrize(
    ("optimizer", "settings"),
    # SGD at a rate that moves every weight within the few steps of the run.
    [("adamw", ()), ("sgd", ("optim.lr=0.2", "model.freeze=[stem]"))],
)
def test_the_head_trains_alone_then_the_backbone_at_its_fraction_of_the_rate(
    make_config, tmp_path, optimizer, settings
):
    initial = write_initial_weights(tmp_path / "initial.pt")
    cfg = make_config(
        *PHASES,
        f"optim.name={optimizer}",
        *settings,
        f"model.weights={tmp_path / 'initial.pt'}",
        "run.save_every_steps=1",
        "run.keep_last=100",
    )
    assert main(cfg) == 0
    run_dir = tmp_path / "run"
    saved = step_checkpoints(run_dir)
    assert sorted(saved) == list(range(1, EPOCHS * STEPS_PER_EPOCH + 1))
    names = parameter_names(initial)
    frozen = "model.freeze=[stem]" in settings
    permanently_frozen = [name for name in names if frozen and name.startswith("stem.")]
    for step in range(1, HEAD_STEPS + 1):  # phase one: every backbone weight bit-still
        weights = saved[step]["model"]
        for name in names:
            if is_classifier(name):
                assert not torch.equal(weights[name], initial[name]), (step, name)
            else:
                assert torch.equal(weights[name], initial[name]), (step, name)
        if step > 1:
            assert not torch.equal(weights["head.weight"], saved[step - 1]["model"]["head.weight"])
        if step < HEAD_STEPS:
            lrs = group_lrs(saved[step])
            assert lrs[BACKBONE] == {0.0} and min(lrs[CLASSIFIER]) > 0, step
    last = saved[EPOCHS * STEPS_PER_EPOCH]["model"]
    head_end = saved[HEAD_STEPS]["model"]
    for name in names:  # phase two: all change, but what model.freeze froze
        if name in permanently_frozen:
            assert torch.equal(last[name], initial[name]), name
        else:
            assert not torch.equal(last[name], head_end[name]), name
    for step in range(HEAD_STEPS, EPOCHS * STEPS_PER_EPOCH):
        lrs = group_lrs(saved[step])
        (classifier_lr,) = lrs[CLASSIFIER]
        assert classifier_lr > 0 and lrs[BACKBONE] == {classifier_lr * 0.1}, step
    # lr.csv (and the log lines, metrics.csv) give the classifier's learning rate.
    with (run_dir / "lr.csv").open(newline="", encoding="utf-8") as file:
        logged = {int(row["step"]): float(row["lr"]) for row in csv.DictReader(file)}
    for step, checkpoint in saved.items():
        lr = checkpoint["optimizer"]["param_groups"][0]["lr"]
        assert logged[step] == pytest.approx(lr, rel=1e-5), step  # written to 6 digits
        assert checkpoint["optimizer"]["param_groups"][0]["part"] == CLASSIFIER


def small_model(freeze=()) -> nn.Module:
    return build_model(ModelConfig(width=8, freeze=list(freeze)), num_classes=10, in_channels=3)


def test_four_groups_by_part_and_decay_each_with_its_base_lr():
    model = small_model(freeze=["stem"])
    optimizer = build_optimizer(OptimConfig(lr=0.02, weight_decay=0.05), model, FineTuning(2, 0.25))
    groups = optimizer.param_groups
    assert [(g["part"], g["weight_decay"], g["lr"]) for g in groups] == [
        (CLASSIFIER, 0.05, 0.02),
        (CLASSIFIER, 0.0, 0.02),
        (BACKBONE, 0.05, 0.02 * 0.25),
        (BACKBONE, 0.0, 0.02 * 0.25),
    ]
    assert groups[0]["params"] == [model.head.weight] and groups[1]["params"] == [model.head.bias]
    in_groups = [id(p) for group in groups for p in group["params"]]
    trainable = [id(p) for p in model.parameters() if p.requires_grad]
    assert sorted(in_groups) == sorted(trainable), "each trainable parameter once, frozen out"
    assert all(id(p) not in in_groups for p in model.stem.parameters())


def test_the_classifier_is_found_inside_wrappers_and_by_timm_s_get_classifier():
    model = small_model()
    head = [model.head.weight, model.head.bias]
    assert classifier_parameters(model) == head
    assert classifier_parameters(nn.DataParallel(model)) == head  # .module, as DDP

    class Compiled(nn.Module):  # as torch.compile wraps a model
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self._orig_mod = inner

    assert classifier_parameters(Compiled(nn.DataParallel(model))) == head

    class TimmLike(nn.Module):  # timm's models name their classifier this way
        def __init__(self) -> None:
            super().__init__()
            self.fc_norm = nn.LayerNorm(4)
            self.classifier = nn.Linear(4, 2)
            self.after = nn.Linear(2, 2)  # the last layer, but not what get_classifier names

        def get_classifier(self) -> nn.Module:
            return self.classifier

    timm_like = TimmLike()
    assert classifier_parameters(timm_like) == list(timm_like.classifier.parameters())


def test_a_head_only_phase_without_a_trainable_classifier_is_refused_in_one_line():
    with pytest.raises(ConfigError, match=r"train\.freeze_epochs=1 .*model\.freeze froze it"):
        build_optimizer(OptimConfig(lr=0.01), small_model(freeze=["head"]), FineTuning(1, 0.1))
    # Without a head-only phase, a frozen classifier is as before: the rest trains.
    build_optimizer(OptimConfig(lr=0.01), small_model(freeze=["head"]), FineTuning(0, 0.1))


def lrs_by_step(name: str, tuning: FineTuning, epochs: int = 6, per_epoch: int = 5):
    """[(classifier lr, backbone lr)] of each optimizer step of a run scheduled by `name`
    (the backbone's: None where it has no groups of its own)."""
    optimizer = build_optimizer(OptimConfig(lr=0.1), small_model(), tuning)
    sched = SchedConfig(name=name, step_size=2, milestones=[3], gamma=0.5, patience=0)
    scheduler = build_scheduler(sched, optimizer, per_epoch, epochs * per_epoch, tuning)
    rates = []
    for _ in range(epochs):
        for _ in range(per_epoch):
            groups = optimizer.param_groups
            rates.append((groups[0]["lr"], groups[2]["lr"] if len(groups) > 2 else None))
            optimizer.step()
            if name in PER_STEP_SCHEDULERS:
                scheduler.step()
        if name == "plateau":
            scheduler.step(1.0)  # never better: every epoch cuts the rate
        elif name not in PER_STEP_SCHEDULERS:
            scheduler.step()
    return rates


@pytest.mark.parametrize("name", SCHEDULERS)
def test_every_schedule_holds_the_backbone_still_then_keeps_it_at_its_ratio(name):
    head_epochs, per_epoch = 2, 5
    rates = lrs_by_step(name, FineTuning(head_epochs, 0.1), per_epoch=per_epoch)
    head, whole = rates[: head_epochs * per_epoch], rates[head_epochs * per_epoch :]
    assert all(backbone == 0.0 and classifier > 0 for classifier, backbone in head)
    assert all(backbone == 0.1 * classifier > 0 for classifier, backbone in whole)
    if name != "cosine":  # the classifier follows the named schedule over the whole run
        plain = lrs_by_step(name, FineTuning(0, 1.0), per_epoch=per_epoch)
        assert [classifier for classifier, _ in rates] == pytest.approx(
            [lr for lr, _ in plain], rel=1e-12
        )


def test_cosine_runs_one_warmup_and_decay_in_each_phase():
    head_epochs, per_epoch, epochs = 2, 5, 6
    rates = [c for c, _ in lrs_by_step("cosine", FineTuning(head_epochs, 0.1), epochs, per_epoch)]
    head_steps = head_epochs * per_epoch
    head, whole = rates[:head_steps], rates[head_steps:]
    warmup = round(SchedConfig().warmup_epochs * per_epoch)
    for phase, steps in ((head, head_steps), (whole, (epochs - head_epochs) * per_epoch)):
        assert phase[0] == pytest.approx(0.1 / (warmup + 1)), "each phase starts warming up"
        assert max(phase) == pytest.approx(0.1) and phase.index(max(phase)) == warmup
        decay = phase[warmup:]
        assert all(a > b for a, b in zip(decay, decay[1:], strict=False))
        assert phase[-1] == pytest.approx(
            0.1 * 0.5 * (1 + math.cos(math.pi * (steps - warmup - 1) / (steps - warmup)))
        )


@pytest.mark.parametrize("name", SCHEDULERS)
def test_the_schedule_s_state_loads_with_weights_only(name, tmp_path):
    tuning = FineTuning(1, 0.1)
    optimizer = build_optimizer(OptimConfig(lr=0.1), small_model(), tuning)
    scheduler = build_scheduler(SchedConfig(name=name), optimizer, 10, 100, tuning)
    for _ in range(3):
        optimizer.step()
        scheduler.step(1.0) if name == "plateau" else scheduler.step()
    torch.save(scheduler.state_dict(), tmp_path / "scheduler.pt")
    again = build_scheduler(SchedConfig(name=name), optimizer, 10, 100, tuning)
    again.load_state_dict(torch.load(tmp_path / "scheduler.pt", weights_only=True))
    assert again.state_dict() == scheduler.state_dict()


def pretrained_config(**settings) -> Config:
    cfg = with_setting(Config(), "model.pretrained", True)
    for key, value in settings.items():
        cfg = with_setting(cfg, key.replace("__", "."), value)
    return cfg


@pytest.mark.parametrize(
    ("images", "lr", "epochs", "freeze"),
    [(100, 0.0003536, 30, 3), (1_000, 0.0005, 20, 2), (10_000, 0.001, 8, 1), (50_000, 0.001, 8, 1)],
)
def test_pretrained_weights_choose_a_lower_rate_a_shorter_run_and_a_head_phase(
    images, lr, epochs, freeze
):
    cfg = choose_training_settings(pretrained_config(), images, 100)
    assert (cfg.optim.lr, cfg.train.epochs) == (lr, epochs)
    assert (cfg.train.freeze_epochs, cfg.optim.backbone_lr_ratio) == (freeze, 0.1)
    scratch = choose_training_settings(Config(), images, 100)
    assert cfg.optim.lr == round(scratch.optim.lr / 10, 7)
    assert (scratch.train.freeze_epochs, scratch.optim.backbone_lr_ratio) == (0, 1.0)
    sgd = choose_training_settings(pretrained_config(optim__name="sgd"), images, 100)
    assert sgd.optim.lr == lr  # one rule for both optimizers, as from scratch


def test_the_fine_tuning_choices_are_logged_once_each(caplog, monkeypatch):
    monkeypatch.setattr(logging.getLogger(LOGGER_NAME), "propagate", True)
    caplog.set_level(logging.INFO, logger=LOGGER_NAME)
    choose_training_settings(pretrained_config(), 1_000, 100)
    lines = [record.getMessage() for record in caplog.records]
    for choice in ("train.freeze_epochs=2 (", "optim.backbone_lr_ratio=0.1 ("):
        assert sum(line.startswith(f"auto: {choice}") for line in lines) == 1, lines


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"train__freeze_epochs": 0}, (0, 0.1)),
        ({"optim__backbone_lr_ratio": 0.5}, (2, 0.5)),
        ({"train__epochs": 5}, (1, 0.1)),
        ({"train__epochs": 1}, (0, 0.1)),  # no room for a head-only phase
        ({"train__epochs": 40, "train__freeze_epochs": 7}, (7, 0.1)),
    ],
)
def test_a_value_the_user_sets_wins(settings, expected):
    cfg = choose_training_settings(pretrained_config(**settings), 1_000, 100)
    assert (cfg.train.freeze_epochs, cfg.optim.backbone_lr_ratio) == expected
    explicit = pretrained_config(optim__lr=0.02, train__epochs=12)
    chosen = choose_training_settings(explicit, 1_000, 100)
    assert (chosen.optim.lr, chosen.train.epochs) == (0.02, 12)


def test_a_head_phase_as_long_as_the_run_is_one_line_naming_both_keys():
    cfg = with_setting(with_setting(Config(), "train.epochs", 3), "train.freeze_epochs", 3)
    with pytest.raises(ConfigError, match=r"train\.freeze_epochs=3 .*train\.epochs=3") as error:
        choose_training_settings(cfg, 1_000, 100)
    assert "\n" not in str(error.value)


@pytest.mark.slow
def test_resume_in_the_middle_of_each_phase_is_exact(make_config, tmp_path, assert_same_run):
    """Stopped by train.max_steps inside the head-only phase (step 2), resumed and stopped
    again inside the whole network's (step 7), resumed to the end: the same weights,
    optimizer, schedule and metrics as a run that never stopped."""
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert main(make_config(*PHASES, run_dir=straight)) == 0
    for stop in (2, 7):
        resume = ("run.resume=auto",) if stop == 7 else ()
        assert main(make_config(*PHASES, *resume, f"train.max_steps={stop}", run_dir=split)) == 0
        stopped = load_checkpoint(split / "checkpoints" / "last.pt")
        assert stopped["progress"]["global_step"] == stop
    assert main(make_config(*PHASES, "run.resume=auto", run_dir=split)) == 0
    assert_same_run(straight, split)


@pytest.mark.slow
def test_an_extended_run_trains_the_whole_network_in_its_extra_epochs(make_config, tmp_path):
    """run.extend starts a schedule of its own after the run's epochs: the head-only phase is
    behind it, so the backbone learns from the first extra step, at its ratio."""
    assert main(make_config(*PHASES, "train.epochs=2")) == 0
    extend = ("run.resume=auto", "run.extend=true", "run.save_every_steps=1", "run.keep_last=100")
    assert main(make_config(*PHASES, *extend)) == 0
    saved = step_checkpoints(tmp_path / "run")
    first_extra = 2 * STEPS_PER_EPOCH + 1
    for step in range(first_extra, EPOCHS * STEPS_PER_EPOCH):
        (classifier_lr,) = group_lrs(saved[step])[CLASSIFIER]
        assert classifier_lr > 0 and group_lrs(saved[step])[BACKBONE] == {classifier_lr * 0.1}
    before, after = saved[first_extra - 1]["model"], saved[first_extra]["model"]
    for name in parameter_names(before):
        assert not torch.equal(before[name], after[name]), name


def old_optimizer(model: nn.Module, cfg) -> tuple[torch.optim.Optimizer, object]:
    """The optimizer and cosine schedule as they were built before fine-tuning existed:
    two groups (with and without weight decay), warmup then cosine for every parameter."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    groups = [
        {"params": decay, "weight_decay": cfg.optim.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if cfg.optim.name == "sgd":
        optimizer = torch.optim.SGD(
            groups, lr=cfg.optim.lr, momentum=cfg.optim.momentum, nesterov=True, fused=True
        )
    else:
        optimizer = torch.optim.AdamW(
            groups, lr=cfg.optim.lr, betas=tuple(cfg.optim.betas), fused=True
        )
    warmup = round(cfg.sched.warmup_epochs * STEPS_PER_EPOCH)
    total = STEPS_PER_EPOCH * cfg.train.epochs

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = min((step - warmup) / max(total - warmup, 1), 1.0)
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_a_run_from_scratch_trains_bit_identically_to_before(make_config, optimizer):
    cfg = make_config(*PHASES[:4], f"optim.name={optimizer}")
    for key in ("train.freeze_epochs", "optim.backbone_lr_ratio"):  # left to the recipe
        cfg = with_setting(cfg, key, None)
    cfg = choose_training_settings(cfg, 64, 32)
    assert (cfg.train.freeze_epochs, cfg.optim.backbone_lr_ratio) == (0, 1.0)
    new_model = small_model()
    old_model = small_model()
    old_model.load_state_dict(new_model.state_dict())
    trainer = build_trainer(cfg, new_model, torch.device("cpu"), STEPS_PER_EPOCH)
    optimizer, scheduler = old_optimizer(old_model, cfg)
    assert len(trainer.optimizer.param_groups) == 2
    assert all("part" not in group for group in trainer.optimizer.param_groups)
    batches = torch.Generator().manual_seed(0)
    for _ in range(6):
        images = torch.randn(8, 3, 16, 16, generator=batches)
        labels = torch.randint(0, 10, (8,), generator=batches)
        for model, step_optimizer, step_scheduler in (
            (new_model, trainer.optimizer, trainer.scheduler),
            (old_model, optimizer, scheduler),
        ):
            F.cross_entropy(model(images), labels).backward()
            step_optimizer.step()
            step_optimizer.zero_grad(set_to_none=True)
            step_scheduler.step()
    old_weights = old_model.state_dict().values()
    for (name, new), old in zip(new_model.state_dict().items(), old_weights, strict=True):
        assert torch.equal(new, old), name
    assert trainer.optimizer.state_dict()["param_groups"] == optimizer.state_dict()["param_groups"]


def test_gradient_clipping_measures_only_what_the_step_moves():
    """In the head-only phase the backbone's gradients (lr 0) do not shrink the classifier's
    step: the norm that train.grad_clip bounds is that of the groups that move."""
    from {{ cookiecutter.package_name }}.config import TrainConfig
    from {{ cookiecutter.package_name }}.device import float32_precision
    from {{ cookiecutter.package_name }}.engine import Trainer, optimizer_step

    backbone, head = nn.Linear(4, 4), nn.Linear(4, 2)
    groups = [{"params": list(head.parameters()), "lr": 1.0}]
    groups.append({"params": list(backbone.parameters()), "lr": 0.0})
    optimizer = torch.optim.SGD(groups, lr=1.0)
    model = nn.Sequential(backbone, head)
    cpu = torch.device("cpu")
    trainer = Trainer(model, optimizer, None, False, float32_precision(cpu), TrainConfig(), cpu)
    trainer.cfg.grad_clip = 1.0
    for parameter in head.parameters():
        parameter.grad = torch.full_like(parameter, 0.1)  # norm 0.3: under the bound
    for parameter in backbone.parameters():
        parameter.grad = torch.full_like(parameter, 100.0)  # would dominate the norm
    before = [parameter.detach().clone() for parameter in head.parameters()]
    optimizer_step(trainer)
    for old, new in zip(before, head.parameters(), strict=True):
        assert torch.allclose(new, old - 0.1)  # the head's full step, not clipped away
