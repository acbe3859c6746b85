"""Published weights (model.pretrained), offline-first, without a network: weights files with
the real layout (random tensors) are made in a temporary TORCH_HOME and Hugging Face cache,
and the project must load them exactly as torchvision's and timm's own loaders do."""

import dataclasses
import sys

import pytest
import torch
import torchvision
import yaml

import {{ cookiecutter.package_name }} as package
from {{ cookiecutter.package_name }}.checkpoint import load_checkpoint
from {{ cookiecutter.package_name }}.config import ConfigError, ModelConfig
from {{ cookiecutter.package_name }}.fetch_weights import main as fetch_weights
from {{ cookiecutter.package_name }}.inference import load_trained
from {{ cookiecutter.package_name }}.model import build_model, check_model_name
from {{ cookiecutter.package_name }}.pretrained import (
    Preprocessing,
    torch_hub_file,
    weights_preprocessing,
)
from {{ cookiecutter.package_name }}.train import main, run

TORCHVISION_MODEL = "mobilenet_v3_small"  # 10 MB of weights; resnet18's are 45 MB
FETCH = f"python -m {package.__name__}.fetch_weights"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def no_download(*args, **kwargs):
    raise AssertionError("a download was attempted")


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    """An empty TORCH_HOME, where no file can be downloaded to."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    return tmp_path / "torch_home"


@pytest.fixture
def torchvision_file(torch_home):
    """Random weights of TORCHVISION_MODEL where torchvision looks for its published ones."""
    weights = torchvision.models.get_model_weights(TORCHVISION_MODEL).DEFAULT
    path = torch_hub_file(weights.url)
    assert path.parent == torch_home / "hub" / "checkpoints"
    path.parent.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(torchvision.models.get_model(TORCHVISION_MODEL, weights=None).state_dict(), path)
    return path


def torchvision_own(name: str) -> dict:
    """What torchvision's own loader makes of the cached file."""
    weights = torchvision.models.get_model_weights(name).DEFAULT
    return torchvision.models.get_model(name, weights=weights).state_dict()


def classifier_keys(model_state: dict, weights_state: dict) -> set:
    return {key for key in model_state if model_state[key].shape != weights_state[key].shape}


def test_torchvision_weights_load_as_torchvision_loads_them(torchvision_file):
    expected = torchvision_own(TORCHVISION_MODEL)
    cfg = ModelConfig(name=TORCHVISION_MODEL, pretrained=True)
    model = build_model(cfg, num_classes=5, in_channels=3).state_dict()
    assert model.keys() == expected.keys()
    replaced = classifier_keys(model, expected)
    assert replaced == {"classifier.3.weight", "classifier.3.bias"}
    assert model["classifier.3.weight"].shape[0] == 5
    assert not torch.equal(model["classifier.3.weight"], expected["classifier.3.weight"][:5])
    for key in expected.keys() - replaced:
        assert torch.equal(model[key], expected[key]), key
    # The weights' own class count keeps their classifier too.
    same = build_model(cfg, num_classes=1000, in_channels=3).state_dict()
    assert all(torch.equal(same[key], expected[key]) for key in expected)


def test_a_grayscale_model_gets_the_sum_of_the_rgb_filters(torchvision_file):
    expected = torchvision_own(TORCHVISION_MODEL)
    cfg = ModelConfig(name=TORCHVISION_MODEL, pretrained=True)
    gray = build_model(cfg, num_classes=5, in_channels=1).state_dict()
    first = "features.0.0.weight"
    assert gray[first].shape[1] == 1
    assert torch.equal(gray[first], expected[first].sum(dim=1, keepdim=True))
    assert torch.equal(gray["features.1.block.0.0.weight"], expected["features.1.block.0.0.weight"])


def test_missing_weights_name_the_file_and_the_fetch_command_without_a_download(torch_home):
    with pytest.raises(ConfigError) as raised:
        build_model(ModelConfig(name=TORCHVISION_MODEL, pretrained=True), 5, 3)
    message = str(raised.value)
    weights = torchvision.models.get_model_weights(TORCHVISION_MODEL).DEFAULT
    assert str(torch_home / "hub" / "checkpoints" / weights.url.rsplit("/", 1)[1]) in message
    assert f"`{FETCH} {TORCHVISION_MODEL}` on a machine with a network" in message
    assert "\n" not in message and not torch_home.exists()


def test_a_cached_file_that_would_run_code_is_refused_in_one_line(torch_home, tmp_path):
    weights = torchvision.models.get_model_weights(TORCHVISION_MODEL).DEFAULT
    path = torch_hub_file(weights.url)
    path.parent.mkdir(parents=True)
    marker = tmp_path / "code_ran"

    class RunsCode:
        def __reduce__(self):
            return (marker.touch, ())

    torch.save({"features.0.0.weight": RunsCode()}, path)
    with pytest.raises(ConfigError) as raised:
        build_model(ModelConfig(name=TORCHVISION_MODEL, pretrained=True), 5, 3)
    assert not marker.exists()  # torchvision's own loader asks torch for the full unpickler
    assert str(path) in str(raised.value) and FETCH in str(raised.value)


def test_the_published_architecture_is_the_one_built_without_reading_the_file(torchvision_file):
    cfg = ModelConfig(name=TORCHVISION_MODEL, pretrained=True)
    for channels in (3, 1):
        pretrained = build_model(cfg, 5, channels)
        torchvision_file.rename(torchvision_file.with_suffix(".away"))  # not read again
        again = build_model(dataclasses.replace(cfg, pretrained=False), 5, channels)
        torchvision_file.with_suffix(".away").rename(torchvision_file)
        again.load_state_dict(pretrained.state_dict())  # strict: same names and shapes
        assert str(again) == str(pretrained)


def test_models_without_published_weights_and_two_sources_are_refused(torch_home, tmp_path):
    with pytest.raises(ConfigError, match="small_resnet has no published weights"):
        build_model(ModelConfig(pretrained=True), 5, 3)
    both = ModelConfig(name=TORCHVISION_MODEL, pretrained=True, weights=str(tmp_path / "w.pt"))
    with pytest.raises(ConfigError, match="keep one"):
        build_model(both, 5, 3)


@pytest.mark.slow
def test_a_pretrained_run_resumes_and_evaluates_without_the_weights_file(
    torchvision_file, make_config, tmp_path
):
    # Exactness of a resume is tests/test_resume.py's; here: it builds the same model (see
    # above) without the file, which a resumed run and evaluate.py no longer read.
    settings = (
        f"model.name={TORCHVISION_MODEL}",
        "model.pretrained=true",
        "data.train_size=64",
        "data.val_size=16",
        "train.epochs=2",
    )
    assert main(make_config(*settings, "train.max_steps=1")) == 0
    first = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    # The data were prepared as the weights' own images were, and that is recorded.
    own = weights_preprocessing(TORCHVISION_MODEL)
    recorded = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text(encoding="utf-8"))
    assert recorded["data"]["mean"] == pytest.approx(list(own.mean))
    assert recorded["data"]["std"] == pytest.approx(list(own.std))
    assert recorded["data"]["interpolation"] == own.interpolation
    assert first["normalization"]["mean"] == pytest.approx(list(own.mean))
    torchvision_file.unlink()  # the checkpoint holds the weights now
    assert main(make_config(*settings, "train.max_steps=2", "run.resume=auto")) == 0
    resumed = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert resumed["progress"]["global_step"] > first["progress"]["global_step"]
    log = (tmp_path / "run" / "train.log").read_text(encoding="utf-8")
    assert log.count("initial weights: MobileNet_V3_Small_Weights.IMAGENET1K_V1") == 1
    trained = load_trained(tmp_path / "run" / "checkpoints" / "last.pt", ["train.device=cpu"])
    assert trained.cfg.model.pretrained is False  # nothing to read: the checkpoint holds it
    # A fork starts from the run's weights, not the published ones (gone, too).
    fork = (f"run.resume={tmp_path / 'run'}", "run.fork=true", "train.max_steps=1")
    assert main(make_config(*settings, *fork, run_dir=tmp_path / "fork")) == 0
    forked = yaml.safe_load((tmp_path / "fork" / "config.yaml").read_text(encoding="utf-8"))
    assert forked["model"]["pretrained"] is False
    assert forked["model"]["weights"].endswith(".pt")


def test_training_without_the_weights_exits_2_with_the_line(torch_home, make_config, capsys):
    cfg = make_config(f"model.name={TORCHVISION_MODEL}", "model.pretrained=true")
    assert run(cfg) == 2
    assert f"{FETCH} {TORCHVISION_MODEL}` on a machine" in capsys.readouterr().err


def test_weights_preprocessing_is_read_from_the_weights_metadata():
    imagenet = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert weights_preprocessing("resnet18") == Preprocessing(*imagenet, 224, 256, "bilinear")
    assert weights_preprocessing("efficientnet_b0") == Preprocessing(*imagenet, 224, 256, "bicubic")
    half = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))  # transform_input, off in the model built here
    assert weights_preprocessing("inception_v3") == Preprocessing(*half, 299, 342, "bilinear")
    assert weights_preprocessing("small_resnet") is None


def test_fetch_weights_reports_a_cached_file_without_the_network(torchvision_file, capsys):
    assert fetch_weights([TORCHVISION_MODEL]) == 0
    out = capsys.readouterr().out
    assert f"{TORCHVISION_MODEL}: {torchvision_file}" in out and "copy the file to" in out


def test_fetch_weights_help_and_names_it_cannot_fetch(torch_home, capsys):
    with pytest.raises(SystemExit) as raised:
        fetch_weights(["--help"])
    assert raised.value.code == 0 and "NAME [NAME ...]" in capsys.readouterr().out
    assert fetch_weights(["resnet19"]) == 2
    assert "error: model.name='resnet19' is not a known model" in capsys.readouterr().err
    assert fetch_weights([TORCHVISION_MODEL, "small_resnet"]) == 2  # checked before any fetch
    assert "small_resnet has no published weights" in capsys.readouterr().err


# timm: its smallest model with published weights; a named skip where timm is not installed.
TIMM_MODEL = "test_resnet"


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache, offline (what HF_HUB_CACHE and HF_HUB_OFFLINE=1 set for a
    process that starts with them)."""
    pytest.importorskip("timm", reason="timm is not installed (the [timm] extra)")
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return tmp_path / "hf"


@pytest.fixture
def timm_file(hf_cache):
    """Random weights of TIMM_MODEL laid out as huggingface_hub caches a download."""
    import timm
    from safetensors.torch import save_file

    repo = timm.models.get_pretrained_cfg(TIMM_MODEL).hf_hub_id
    folder = hf_cache / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(COMMIT)
    path = folder / "snapshots" / COMMIT / "model.safetensors"
    path.parent.mkdir(parents=True)
    torch.manual_seed(0)
    save_file(timm.create_model(TIMM_MODEL, pretrained=False).state_dict(), str(path))
    return path


@pytest.mark.slow
def test_timm_weights_load_as_timm_loads_them(timm_file):
    import timm

    expected = timm.create_model(TIMM_MODEL, pretrained=True).state_dict()
    cfg = ModelConfig(name=f"timm:{TIMM_MODEL}", pretrained=True)
    model = build_model(cfg, num_classes=5, in_channels=3).state_dict()
    replaced = classifier_keys(model, expected)
    assert replaced == {"fc.weight", "fc.bias"} and model["fc.weight"].shape[0] == 5
    assert all(torch.equal(model[key], expected[key]) for key in expected.keys() - replaced)
    gray = build_model(cfg, num_classes=5, in_channels=1).state_dict()
    assert torch.equal(gray["conv1.0.weight"], expected["conv1.0.weight"].sum(1, keepdim=True))
    again = build_model(dataclasses.replace(cfg, pretrained=False), 5, 1)
    again.load_state_dict(gray)  # a resume builds the same model without the file


def test_missing_timm_weights_name_the_cache_entry_and_the_fetch_command(hf_cache, capsys):
    with pytest.raises(ConfigError) as raised:
        build_model(ModelConfig(name=f"timm:{TIMM_MODEL}", pretrained=True), 5, 3)
    message = str(raised.value)
    assert f"{hf_cache}/models--timm--{TIMM_MODEL}.r160_in1k/snapshots/" in message
    assert f"`{FETCH} timm:{TIMM_MODEL}`" in message and "\n" not in message


def test_timm_names_are_checked_and_fetch_reports_a_cached_file(timm_file, capsys):
    check_model_name("timm:resnet18.a1_in1k")
    with pytest.raises(ConfigError, match="did you mean timm:convnext_nano"):
        check_model_name("timm:convnext_nan")
    with pytest.raises(ConfigError, match="no weights of resnet18 tagged 'b9'"):
        check_model_name("timm:resnet18.b9")
    assert fetch_weights([f"timm:{TIMM_MODEL}"]) == 0
    assert f"timm:{TIMM_MODEL}: {timm_file}" in capsys.readouterr().out


def test_timm_preprocessing_is_its_pretrained_config(hf_cache):
    assert weights_preprocessing(f"timm:{TIMM_MODEL}") == Preprocessing(
        (0.5, 0.5, 0.5),
        (0.5, 0.5, 0.5),
        160,
        168,
        "bilinear",  # 168 = floor(160 / 0.95)
    )
    imagenet = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    expected = Preprocessing(*imagenet, 224, 235, "bicubic")
    assert weights_preprocessing("timm:convnext_nano") == expected


def test_without_timm_one_line_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # `import timm` fails as if not installed
    for call in (
        lambda: check_model_name("timm:convnext_nano"),
        lambda: build_model(ModelConfig(name="timm:convnext_nano"), 5, 3),
    ):
        with pytest.raises(ConfigError, match=r'pip install -e "\.\[timm\]"'):
            call()
