"""The automatic input settings: data.image_size from the images and the machine's speed,
data.flip for photographs only; recorded for an exact resume, and drawing no random number
that a run with the same side given would not draw."""

import logging

import pytest
import torch
import yaml
from PIL import Image

import {{ cookiecutter.package_name }}.input_size as input_size
from {{ cookiecutter.package_name }}.checkpoint import load_checkpoint
from {{ cookiecutter.package_name }}.config import get_setting
from {{ cookiecutter.package_name }}.data import build_datasets
from {{ cookiecutter.package_name }}.data.survey import (
    SIDES,
    ImageSurvey,
    choose_flip,
    size_from_data,
)
from {{ cookiecutter.package_name }}.input_size import StepTimer, fitting_side
from {{ cookiecutter.package_name }}.log import LOGGER_NAME
from {{ cookiecutter.package_name }}.pretrained import Preprocessing
from {{ cookiecutter.package_name }}.train import main

AUTO_INPUT = ("data.image_size=null", "data.flip=null", "data.dataset=imagefolder")


def survey_of(*sides: int, channels: int = 3, image_format: str = "JPEG") -> ImageSurvey:
    survey = ImageSurvey(channels)
    for side in sides:
        survey.add(None, (side + 40, side), image_format)
    return survey


def write_photos(root, counts: dict[str, int], size: tuple[int, int], suffix=".jpg") -> None:
    """Colour images of `size` (width, height), class by tint, saved as `suffix`."""
    for number, (name, count) in enumerate(counts.items()):
        (root / name).mkdir(parents=True, exist_ok=True)
        noise = torch.Generator().manual_seed(number)
        for index in range(count):
            pixels = torch.randint(0, 80, (size[1], size[0], 3), generator=noise)
            pixels[..., number % 3] += 120
            Image.fromarray(pixels.to(torch.uint8).numpy()).save(root / name / f"{index}{suffix}")


@pytest.mark.parametrize(
    "sides, expected",
    [((16, 16, 20), 32), ((40, 30, 50), 32), ((100, 100, 99), 96), ((375, 280, 500), 320)],
)
def test_the_side_is_the_largest_of_the_ladder_the_median_image_holds(sides, expected):
    side, reason = size_from_data(survey_of(*sides))
    assert side == expected and f"median shorter side {sorted(sides)[1]} px" in reason


def test_a_pretrained_models_own_side_caps_the_choice_and_is_itself_a_candidate():
    assert size_from_data(survey_of(300, 300, 300), ceiling=224)[0] == 224
    assert size_from_data(survey_of(64, 64, 64), ceiling=224)[0] == 64  # not scaled up
    assert size_from_data(survey_of(400, 400, 400), ceiling=299)[0] == 299  # inception_v3


def test_the_timed_choice_takes_only_sides_the_model_runs_on(make_config, tmp_path):
    """vit_b_16 takes 224 px only: chosen without timing, never a traceback."""
    cfg = make_config("model.name=vit_b_16", "data.image_size=null")
    choose = input_size.size_chooser(cfg, torch.device("cpu"))
    side, reason = choose(survey_of(300, 300, 300), 3, 100)
    assert side == 224 and "the only side model.name=vit_b_16 takes" in reason


def test_a_side_is_no_larger_than_data_resize(make_config, tmp_path):
    write_photos(tmp_path / "photos", {"a": 4, "b": 4}, size=(400, 300))
    root = f"data.root={tmp_path / 'photos'}"
    data = build_datasets(make_config(*AUTO_INPUT, root, "data.resize=100").data, seed=0)
    assert data.chosen["image_size"] == 96 and data.train[0][0].shape == (3, 96, 96)


class PixelTimer:
    """A StepTimer whose seconds per image grow with the pixels, counting what it times."""

    def __init__(self, seconds_per_pixel: float) -> None:
        self.rate, self.timed = seconds_per_pixel, []

    def estimate(self, side: int, image_steps: int) -> float:
        if side not in self.timed:
            self.timed.append(side)
        return self.rate * side * side * image_steps


@pytest.mark.parametrize("budget", [1.0, 10.0, 60.0, 1e9, 1e-9])
def test_the_chosen_side_is_the_largest_that_fits_the_budget_in_few_timings(budget):
    timer = PixelTimer(1e-8)
    side, seconds = fitting_side(timer, list(SIDES), image_steps=10_000, budget=budget)
    fitting = [s for s in SIDES if 1e-8 * s * s * 10_000 <= budget]
    assert side == (fitting[-1] if fitting else SIDES[0])
    assert seconds == timer.estimate(side, 10_000)
    assert len(timer.timed) <= 5, timer.timed  # a bracket search, not every side
    assert max(timer.timed) <= max(2 * side, 64)  # never a long timing far beyond the budget


def test_flips_are_chosen_for_colour_photographs_only():
    assert choose_flip(survey_of(300, 280, 320))[0] is True
    assert choose_flip(survey_of(300, 280, 320, image_format="PNG"))[0] is False
    assert choose_flip(survey_of(300, 280, 320, channels=1))[0] is False
    assert choose_flip(survey_of(28, 28, 28))[0] is False  # digits, icons, thumbnails
    reason = choose_flip(survey_of(28, 28, 28))[1]
    assert "small images (28 px)" in reason and "another class" in reason


def test_building_the_data_chooses_and_reports_the_settings(make_config, tmp_path, project_log):
    project_log.set_level(logging.INFO, logger=LOGGER_NAME)
    write_photos(tmp_path / "photos", {"a": 6, "b": 6}, size=(130, 100))
    cfg = make_config(*AUTO_INPUT, f"data.root={tmp_path / 'photos'}", "data.val_fraction=0.5")
    data = build_datasets(cfg.data, seed=0)
    assert data.chosen == {"image_size": 96, "flip": True}
    assert data.train[0][0].shape == (3, 96, 96)
    lines = [r.getMessage() for r in project_log.records if r.getMessage().startswith("auto:")]
    assert any(line.startswith("auto: data.image_size=96 (median shorter") for line in lines)
    assert any(line.startswith("auto: data.flip=true (colour photographs") for line in lines)


def test_a_given_side_is_kept_and_small_images_are_named_against_it(
    make_config, tmp_path, project_log
):
    write_photos(tmp_path / "photos", {"a": 4, "b": 4}, size=(40, 30))
    root = f"data.root={tmp_path / 'photos'}"
    data = build_datasets(make_config(*AUTO_INPUT, root, "data.image_size=80").data, seed=0)
    assert data.chosen == {"flip": False}  # small images: no flips; the side was given
    (warning,) = [r.getMessage() for r in project_log.records]
    assert warning.startswith("8 images are smaller than half of data.image_size=80")
    with pytest.raises(Exception, match=r"30 pixels, smaller than the crop of data.image_size=80"):
        build_datasets(
            make_config(*AUTO_INPUT, root, "data.image_size=80", "data.resize=0").data, 0
        )
    data = build_datasets(make_config(*AUTO_INPUT, root, "data.resize=0").data, seed=0)
    assert data.chosen["image_size"] == 30  # no resize: no larger than the smallest image


@pytest.mark.slow
def test_the_timed_choice_is_recorded_and_a_resume_takes_it_without_timing(
    make_config, tmp_path, monkeypatch, capsys
):
    write_photos(tmp_path / "photos", {"a": 8, "b": 8}, size=(140, 120))
    settings = (*AUTO_INPUT, f"data.root={tmp_path / 'photos'}", "train.epochs=2")
    # Timing a real model is noisy: here each side costs by its pixels, and for the 10 to 14
    # training images of 2 epochs, 64 px fits the budget and 80 px does not.
    rate = input_size.TIME_BUDGET_S / 120_000
    monkeypatch.setattr(StepTimer, "_time", lambda self, side: rate * side**2)
    assert main(make_config(*settings, "train.max_steps=1")) == 0
    assert "auto: data.image_size=64 (median shorter side 120 px" in capsys.readouterr().out
    resolved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text(encoding="utf-8"))
    saved = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["config"]
    assert resolved["data"]["image_size"] == saved["data"]["image_size"] == 64
    assert resolved["data"]["flip"] is saved["data"]["flip"] is True

    def never(self, side):
        raise AssertionError("a resumed run timed the model again")

    monkeypatch.setattr(StepTimer, "_time", never)
    assert main(make_config(*settings, "run.resume=auto")) == 0
    resumed = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["config"]
    assert get_setting_of(resumed, "data.image_size") == 64


def get_setting_of(saved: dict, key: str):
    section, name = key.split(".")
    return saved[section][name]


@pytest.mark.slow
def test_timing_the_model_draws_no_random_number_of_the_run(make_config, tmp_path, monkeypatch):
    """A run that timed its way to a side trains bit-identically to one given that side."""
    write_photos(tmp_path / "photos", {"a": 8, "b": 8}, size=(70, 64))
    settings = (*AUTO_INPUT, f"data.root={tmp_path / 'photos'}", "train.max_steps=2")
    monkeypatch.setattr(input_size, "TIME_BUDGET_S", 1e9)  # 64 px fits whatever the speed
    auto = make_config(*settings, run_dir=tmp_path / "auto")
    given = make_config(*settings, "data.image_size=64", run_dir=tmp_path / "given")
    assert main(auto) == 0 and main(given) == 0
    weights = [
        load_checkpoint(tmp_path / name / "checkpoints" / "last.pt")["model"]
        for name in ("auto", "given")
    ]
    assert get_setting(auto, "data.image_size") is None  # chosen, not given
    for key, tensor in weights[0].items():
        assert torch.equal(tensor, weights[1][key]), key


IMAGENET = Preprocessing((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 224, 256, "bicubic")


def test_pretrained_weights_prepare_the_images_where_the_settings_are_null(make_config, tmp_path):
    write_photos(tmp_path / "photos", {"a": 4, "b": 4}, size=(130, 100))
    root = f"data.root={tmp_path / 'photos'}"
    data = build_datasets(make_config(*AUTO_INPUT, root).data, seed=0, weights=IMAGENET)
    assert data.chosen["image_size"] == 96  # the images' side, below the weights' 224
    assert data.chosen["mean"] == [0.485, 0.456, 0.406]
    assert data.chosen["std"] == [0.229, 0.224, 0.225]
    assert data.chosen["interpolation"] == "bicubic"
    assert data.mean == (0.485, 0.456, 0.406) and data.train[0][0].shape == (3, 96, 96)
    resize = data.val.transform.transforms[1]
    assert (resize.size, resize.interpolation.value) == (110, "bicubic")
    # A setting given wins; grayscale images get the RGB averages.
    given = ("data.mean=[0.5]", "data.std=[0.25]", "data.interpolation=bilinear", "data.channels=1")
    data = build_datasets(make_config(*AUTO_INPUT, root, *given).data, seed=0, weights=IMAGENET)
    assert "mean" not in data.chosen and "interpolation" not in data.chosen
    assert data.mean == (0.5,)
    gray = make_config(*AUTO_INPUT, root, "data.channels=1").data
    data = build_datasets(gray, seed=0, weights=IMAGENET)
    assert data.chosen["mean"] == [pytest.approx(0.449)]
    assert data.chosen["std"] == [pytest.approx(0.226)]


def test_the_built_in_shapes_keep_their_side_with_pretrained_weights(make_config):
    cfg = make_config("data.image_size=null", "data.flip=null")
    data = build_datasets(cfg.data, seed=0, weights=IMAGENET)
    assert data.chosen["image_size"] == 32 and data.chosen["flip"] is False
    assert data.train[0][0].shape == (3, 32, 32)  # not 224: 12,000 images of it take GBs
