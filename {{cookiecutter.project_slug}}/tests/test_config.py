"""The configuration: default.yaml against the schema, overlays, and the command line."""

import dataclasses
import re

import pytest
from omegaconf import OmegaConf

from {{ cookiecutter.package_name }}.cli import DEFAULT_CONFIG
from {{ cookiecutter.package_name }}.config import (
    ConfigError,
    load_config,
    schema_fields,
)

KEY_LINE = re.compile(r"^(?P<indent>\s*)(?P<key>\w+):(?P<rest>.*)$")


@pytest.fixture
def run_train(run_python):
    """run_train(*args) -> `python train.py ARGS` in the project root."""
    return lambda *args: run_python("train.py", *args)


def read_yaml(text: str) -> dict:
    return OmegaConf.to_container(OmegaConf.create(text))


def field_default(item: dataclasses.Field):
    if item.default_factory is not dataclasses.MISSING:
        return item.default_factory()
    return item.default


def leaf_keys(tree: dict, prefix: str = "") -> dict:
    """{"a.b": value} for every leaf of a nested mapping."""
    leaves = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            leaves.update(leaf_keys(value, f"{prefix}{key}."))
        else:
            leaves[f"{prefix}{key}"] = value
    return leaves


def test_default_yaml_holds_every_schema_key_with_the_schema_default():
    in_yaml = leaf_keys(read_yaml(DEFAULT_CONFIG.read_text(encoding="utf-8")))
    schema = dict(schema_fields())
    assert sorted(in_yaml) == sorted(schema), "default.yaml and the schema list different keys"
    for key, item in schema.items():
        default = field_default(item)
        value = in_yaml[key]
        if isinstance(default, float):
            assert value == pytest.approx(default), key
        else:
            assert value == default, key


def test_every_setting_in_default_yaml_has_a_comment():
    uncommented = []
    for number, line in enumerate(DEFAULT_CONFIG.read_text(encoding="utf-8").splitlines(), 1):
        match = KEY_LINE.match(line)
        if match is None:
            continue
        rest = match["rest"].strip()
        is_section = rest == ""
        if not is_section and "#" not in rest:
            uncommented.append(f"line {number}: {line.strip()}")
    assert not uncommented, "settings without a comment:\n" + "\n".join(uncommented)


def test_default_yaml_loads_to_the_schema_defaults():
    from {{ cookiecutter.package_name }}.config import Config

    assert load_config([DEFAULT_CONFIG], []) == Config()


BAD_OVERRIDES = {
    "optim.lrr=1": "optim.lrr",  # unknown key
    "+data.foo=1": "data.foo",  # unknown key, Hydra's spelling
    "nosuchsection.key=1": "nosuchsection.key",  # unknown section
    "data.batch_size=abc": "data.batch_size",  # wrong type
    "train.epochs=1.5": "train.epochs",  # wrong type
    "optim.name=rmsprop": "optim.name",  # not one of the choices
    "sched.name=linear": "sched.name",  # not one of the choices
    "optim.lr=0": "optim.lr",  # out of range (> 0)
    "optim.lr=-1": "optim.lr",  # out of range (> 0)
    "data.batch_size=0": "data.batch_size",  # out of range (>= 1)
    "optim.lr=": "optim.lr",  # missing value
}


@pytest.mark.parametrize("override, key", BAD_OVERRIDES.items(), ids=list(BAD_OVERRIDES))
def test_bad_override_gives_one_error_line_and_exit_2(run_train, tmp_path, override, key):
    run_dir = tmp_path / "never"
    result = run_train(f"run.dir={run_dir}", override)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error:"), result.stderr
    assert key in lines[0], f"the error does not name {key}: {lines[0]}"
    assert "Traceback" not in result.stderr + result.stdout
    assert not run_dir.exists(), "a bad config must not create the run folder"


def test_bad_key_in_a_yaml_file_names_the_key_and_the_file(run_train, tmp_path):
    overlay = tmp_path / "bad.yaml"
    overlay.write_text("optim:\n  lrr: 0.1\n", encoding="utf-8")
    run_dir = tmp_path / "never"
    result = run_train(str(overlay), f"run.dir={run_dir}")
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert "optim.lrr" in lines[0] and str(overlay) in lines[0], lines[0]
    assert not run_dir.exists()


@pytest.mark.parametrize(
    "override", ["optim.lrr=1", "data.batch_size=abc", "optim.name=rmsprop", "optim.lr=0"]
)
def test_load_config_raises_config_error(override):
    with pytest.raises(ConfigError):
        load_config([DEFAULT_CONFIG], [override])


IMAGE_SETTING_ERRORS = {
    ("data.resize=20", "data.image_size=32"): "data.resize=20 is smaller than",
    ("data.mean=[0.5,0.5,0.5]",): "data.mean and data.std go together",
    ("data.mean=[0.5,0.5]", "data.std=[0.2,0.2]"): "one number per channel",
    ("data.mean=[0.5]", "data.std=[0.2]", "data.channels=3"): "data.channels=3",
    ("data.mean=[0.5]", "data.std=[0]"): "data.std=[0.0]",
    ("data.channels=2",): "choose 1 (grayscale), 3 (RGB) or null",
    ("data.val_fraction=1",): "data.val_fraction",
}


@pytest.mark.parametrize("overrides", IMAGE_SETTING_ERRORS, ids=str)
def test_image_settings_that_contradict_each_other_are_refused(overrides):
    with pytest.raises(ConfigError) as error:
        load_config([DEFAULT_CONFIG], list(overrides))
    assert IMAGE_SETTING_ERRORS[overrides] in str(error.value)


def test_yaml_overlays_stack_and_overrides_win(tmp_path):
    first = tmp_path / "first.yaml"
    first.write_text("optim:\n  lr: 0.5\n  weight_decay: 0.125\ndata:\n  batch_size: 16\n")
    second = tmp_path / "second.yaml"
    second.write_text("optim:\n  lr: 0.25\n")

    cfg = load_config([DEFAULT_CONFIG, first, second], [])
    assert cfg.optim.lr == 0.25  # the later file wins
    assert cfg.optim.weight_decay == 0.125  # kept from the earlier file
    assert cfg.data.batch_size == 16
    assert cfg.optim.name == "adamw"  # untouched keys keep the defaults

    reversed_order = load_config([DEFAULT_CONFIG, second, first], [])
    assert reversed_order.optim.lr == 0.5

    overridden = load_config([DEFAULT_CONFIG, first, second], ["optim.lr=0.125"])
    assert overridden.optim.lr == 0.125  # the command line wins over every file


def test_help_lists_every_setting(run_train):
    result = run_train("--help")
    assert result.returncode == 0, result.stderr
    missing = [key for key, _ in schema_fields() if key not in result.stdout]
    assert not missing, f"--help does not mention: {missing}"


def test_print_config_prints_yaml_and_does_not_train(run_train, tmp_path):
    run_dir = tmp_path / "never"
    result = run_train(
        "--print-config", "optim.lr=0.003", "data.batch_size=7", f"run.dir={run_dir}"
    )
    assert result.returncode == 0, result.stderr
    printed = read_yaml(result.stdout)
    assert printed["optim"]["lr"] == pytest.approx(0.003)
    assert printed["data"]["batch_size"] == 7
    assert printed["run"]["dir"] == str(run_dir)
    assert sorted(leaf_keys(printed)) == sorted(key for key, _ in schema_fields())
    assert not run_dir.exists(), "--print-config must not start a run"


def test_unknown_option_and_stray_argument_exit_2(run_train, tmp_path):
    for argument in ("--lr", "optim.lr"):
        result = run_train(argument, f"run.dir={tmp_path / 'never'}")
        assert result.returncode == 2, argument
        assert result.stderr.startswith("error:") and argument in result.stderr
        assert "Traceback" not in result.stderr
