"""The moving average of the weights (train.ema_decay): its arithmetic, its place in the
metrics and best.pt, and an exact resume with it."""

import pytest
import torch
from torch import nn

from {{ cookiecutter.package_name }}.checkpoint import load_checkpoint
from {{ cookiecutter.package_name }}.ema import WARMUP_UPDATES, WeightAverage
from {{ cookiecutter.package_name }}.log import read_csv
from {{ cookiecutter.package_name }}.train import main


def small_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))


def test_the_average_follows_the_warmed_up_decay_and_copies_integer_buffers():
    model = small_model()
    average = WeightAverage(model, decay=0.99)
    expected = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    for update in range(5):
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.add_(torch.randn_like(parameter))
        model(torch.randn(8, 3))  # batch-norm statistics and step counter move too
        decay = min(0.99, (1 + update) / (WARMUP_UPDATES + update))
        assert average.decay_now() == pytest.approx(decay)
        average.update()
        for name, tensor in model.state_dict().items():
            if tensor.is_floating_point():
                expected[name] = decay * expected[name] + (1 - decay) * tensor
            else:
                expected[name] = tensor.clone()
    for name, tensor in average.model.state_dict().items():
        torch.testing.assert_close(tensor, expected[name], rtol=1e-6, atol=1e-6, msg=name)
    assert average.model.state_dict()["1.num_batches_tracked"].item() == 5
    assert not any(parameter.requires_grad for parameter in average.model.parameters())


def test_the_average_round_trips_through_its_state():
    model = small_model()
    average = WeightAverage(model, decay=0.9)
    for _ in range(3):
        with torch.no_grad():
            model[0].weight.add_(1.0)
        average.update()
    again = WeightAverage(small_model(), decay=0.9)
    again.load_state_dict(average.state_dict())
    assert again.updates == 3
    for name, tensor in average.model.state_dict().items():
        assert torch.equal(again.model.state_dict()[name], tensor), name


@pytest.mark.slow
def test_training_validates_the_average_and_best_pt_goes_by_it(make_config, tmp_path):
    assert main(make_config("train.epochs=3", "train.ema_decay=0.9")) == 0
    rows = read_csv(tmp_path / "run" / "metrics.csv")
    ema_accuracies = [float(row["val_acc_ema"]) for row in rows]
    assert len(rows) == 3 and all(row["val_loss_ema"] for row in rows)
    best = load_checkpoint(tmp_path / "run" / "checkpoints" / "best.pt")
    assert best["progress"]["best_val_acc"] == pytest.approx(max(ema_accuracies))
    assert best["progress"]["best_epoch"] == ema_accuracies.index(max(ema_accuracies))
    last = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert last["ema"]["updates"] == last["progress"]["global_step"]
    differs = [
        name
        for name, tensor in last["model"].items()
        if tensor.is_floating_point() and not torch.equal(tensor, last["ema"]["weights"][name])
    ]
    assert differs, "the average is a copy of the weights"


def test_without_the_average_its_columns_stay_empty(make_config, tmp_path):
    assert main(make_config("train.max_steps=8")) == 0
    (row,) = read_csv(tmp_path / "run" / "metrics.csv")
    assert row["val_acc_ema"] == "" and row["val_acc"] != ""
    assert "ema" not in load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")


@pytest.mark.slow
def test_a_run_with_the_average_resumes_exactly(make_config, tmp_path):
    settings = ("train.epochs=2", "train.ema_decay=0.95", "run.save_every_steps=3")
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert main(make_config(*settings, run_dir=straight)) == 0
    assert main(make_config(*settings, "train.max_steps=11", run_dir=split)) == 0
    assert main(make_config(*settings, "run.resume=auto", run_dir=split)) == 0
    expected = load_checkpoint(straight / "checkpoints" / "last.pt")
    actual = load_checkpoint(split / "checkpoints" / "last.pt")
    assert actual["ema"]["updates"] == expected["ema"]["updates"]
    for name, tensor in expected["ema"]["weights"].items():
        assert torch.equal(actual["ema"]["weights"][name], tensor), name
    assert (
        read_csv(split / "metrics.csv")[-1]["val_acc_ema"]
        == (read_csv(straight / "metrics.csv")[-1]["val_acc_ema"])
    )


def test_export_and_inference_use_the_average(make_config, tmp_path):
    from {{ cookiecutter.package_name }}.checkpoint import load_weights
    from {{ cookiecutter.package_name }}.exported import export_weights
    from {{ cookiecutter.package_name }}.inference import load_trained

    assert main(make_config("train.max_steps=6", "train.ema_decay=0.9")) == 0
    best = tmp_path / "run" / "checkpoints" / "last.pt"
    average = load_checkpoint(best)["ema"]["weights"]
    exported = load_weights(export_weights(best, tmp_path / "weights.pt"))
    trained = load_trained(best, []).model.state_dict()
    for name, tensor in average.items():
        assert torch.equal(exported[name], tensor), name
        assert torch.equal(trained[name].cpu(), tensor), name
