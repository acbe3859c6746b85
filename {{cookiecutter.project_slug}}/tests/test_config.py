"""The configuration: default.yaml against the schema, overlays, and the command line."""

import dataclasses
import re

import pytest
from omegaconf import OmegaConf

from {{ cookiecutter.package_name }}.cli import DEFAULT_CONFIG
from {{ cookiecutter.package_name }}.config import (
    Config,
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


def leaf_keys(tree: dict, prefix: str = "") -> dict:
    """{"a.b": value} for every leaf of a nested mapping."""
    leaves = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            leaves.update(leaf_keys(value, f"{prefix}{key}."))
        else:
            leaves[f"{prefix}{key}"] = value
    return leaves


def test_default_yaml_holds_every_schema_key_and_runs_as_written():
    # Its values are the user's to change (the template's own tests check that a fresh bake's
    # values equal the schema's defaults): whatever they hold is what a run gets.
    in_yaml = leaf_keys(read_yaml(DEFAULT_CONFIG.read_text(encoding="utf-8")))
    assert sorted(in_yaml) == sorted(dict(schema_fields())), (
        "default.yaml and the schema list different keys"
    )
    loaded = leaf_keys(dataclasses.asdict(load_config([DEFAULT_CONFIG], [])))
    for key, value in in_yaml.items():
        if isinstance(value, float):
            assert loaded[key] == pytest.approx(value), key
        else:
            assert loaded[key] == value, key


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


def settings_table(page: str) -> dict:
    """{key: default} from the table of the main settings in docs/configuration.md."""
    lines = page.splitlines()
    rows = {}
    for line in lines[lines.index("| key | default | meaning |") + 2 :]:
        if not line.startswith("|"):
            break
        keys, default = [cell.strip() for cell in line.strip("|").split("|")][:2]
        value = read_yaml(f"value: {default.strip('`')}")["value"]
        rows.update(dict.fromkeys(re.findall(r"`([\w.]+)`", keys), value))
    return rows


def test_the_configuration_page_gives_the_schema_defaults():
    # The schema's, not default.yaml's: that file is the user's to change.
    in_yaml = leaf_keys(dataclasses.asdict(Config()))
    page = DEFAULT_CONFIG.parents[1] / "docs" / "configuration.md"
    table = settings_table(page.read_text(encoding="utf-8"))
    assert len(table) > 10, "the table of the main settings in docs/configuration.md was not found"
    wrong = {
        key: f"docs {value!r}, the schema {in_yaml.get(key, 'has no such key')!r}"
        for key, value in table.items()
        if key not in in_yaml or in_yaml[key] != value
    }
    assert not wrong, wrong


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


def one_error_line(result) -> str:
    """The single `error:` line of a run that must end with exit 2 and nothing else."""
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


YAML_MISTAKES = {
    # file text: (what the one line says after "FILE:", besides the position)
    "optim:\n  lr: [0.1\n": (":3:1: ", "close the list"),
    "optim:\n\tlr: 0.1\n": (":2:1: ", "indent with spaces"),
    "optim:\n  lr: 0.1\n  weight_decay: 0\n  lr: 0.2\n": (":4:3: ", "'optim.lr' (first at line 2)"),
    "data:\n  flip: true\ndata:\n  flip: false\n": (":3:1: ", "duplicate key 'data'"),
    "optim: 0.001\n": (":1:1: ", "optim is a section, not a setting"),
    "optim:\n  lr:\n    peak: 0.1\n": (":2:3: ", "optim.lr is a setting, not a section"),
    "data:\n  random_crop: 2\n": (":2:3: ", "data.random_crop must be true or false, got 2"),
    "optim.lr: 0.1\n": (":1:1: ", "write optim.lr nested in a YAML file"),
    "- optim\n": (":1:1: ", "holds a list, not settings"),
}


@pytest.mark.parametrize("text", YAML_MISTAKES, ids=list(YAML_MISTAKES))
def test_a_yaml_mistake_is_one_line_with_its_line_and_column(run_train, tmp_path, text):
    overlay = tmp_path / "bad.yaml"
    overlay.write_text(text, encoding="utf-8")
    line = one_error_line(run_train(str(overlay), f"run.dir={tmp_path / 'never'}"))
    position, words = YAML_MISTAKES[text]
    assert f"error: {overlay}{position}" in line, line
    assert words in line, line
    assert not (tmp_path / "never").exists()


def test_a_file_that_is_not_utf8_text_names_the_byte(run_train, tmp_path):
    overlay = tmp_path / "bad.yaml"
    overlay.write_bytes(b"optim:\n  lr: 0.1 # \xff\n")
    line = one_error_line(run_train(str(overlay)))
    assert f"{overlay}:2:13: byte 0xff is not UTF-8" in line, line


def test_a_section_given_a_value_says_which_key_was_meant():
    with pytest.raises(ConfigError) as error:
        load_config([DEFAULT_CONFIG], ["optim=0.001"])
    message = str(error.value)
    assert message.startswith("optim is a section, not a setting"), message
    assert "lr, weight_decay" in message and message.endswith("e.g. optim.lr=0.001"), message


WRONG_VALUES = {
    "optim.lr=abc": "optim.lr must be a number or null, got 'abc'",
    "optim.lr=[0.1]": "optim.lr must be a number or null, got [0.1]",
    "optim.lr={peak: 0.1}": "optim.lr is a setting, not a section",
    "optim.lr.peak=0.1": "optim.lr is a setting, not a section",
    "optim.lr=.inf": "optim.lr must be a number or null, got inf",
    "train.epochs=1.5": "train.epochs must be an integer or null, got 1.5",
    "data.random_crop=maybe": "data.random_crop must be true or false, got 'maybe'",
    "data.flip=2": "data.flip must be true or false or null, got 2",
    "optim.betas=0.9": "optim.betas must be a list of numbers, got 0.9",
    "optim.betas=[a,b]": "optim.betas must be a list of numbers, got ['a', 'b']",
    "model.freeze=[[stem]]": "model.freeze must be a list of names, got [['stem']]",
    "model.freeze={stem: 1}": "model.freeze is a setting, not a section",
    "optim.name=[adamw]": "optim.name must be adamw or sgd, got ['adamw']",
    "optim.name=adam": "optim.name='adam' is not allowed; choose adamw or sgd; did you mean adamw?",
    "train.lr=0.1": "unknown config key 'train.lr'; did you mean optim.lr?",
    "optim.lrr=0.1": "unknown config key 'optim.lrr'; did you mean optim.lr?",
    "batch_size=8": "unknown config key 'batch_size'; did you mean data.batch_size?",
    "optim.lr=[0.1,": "optim.lr='[0.1,': not a YAML value",
    "seed=4294967296": "seed=4294967296 is out of range; it must be < 4294967296",
}


@pytest.mark.parametrize("override", WRONG_VALUES, ids=list(WRONG_VALUES))
def test_a_wrong_value_is_named_in_the_users_words(override):
    with pytest.raises(ConfigError) as error:
        load_config([DEFAULT_CONFIG], [override])
    assert WRONG_VALUES[override] in str(error.value)
    assert "\n" not in str(error.value)


def test_yaml_spellings_that_mean_the_same_are_taken():
    cfg = load_config(
        [DEFAULT_CONFIG],
        ["data.flip=yes", "data.cache=null", "optim.lr=1e-3", "run.name=2", "seed='7'"],
    )
    assert (cfg.data.flip, cfg.data.cache, cfg.optim.lr) == (True, None, 0.001)
    assert (cfg.run.name, cfg.seed) == ("2", 7)


def test_a_broken_override_value_is_one_line(run_train, tmp_path):
    line = one_error_line(run_train("optim.lr=[0.1,", f"run.dir={tmp_path / 'never'}"))
    assert "optim.lr=" in line and "Traceback" not in line


def test_help_spells_types_and_defaults_in_yaml(run_train):
    result = run_train("--help")
    assert result.returncode == 0, result.stderr
    for line in (
        "  optim.lr [number or null] = null",
        "  data.flip [true/false or null] = null",
        "  optim.betas [list of numbers] = [0.9, 0.999]",
        "  optim.name [adamw or sgd] = 'adamw'",
        "  train.epochs [integer or null] = null",
        "  model.freeze [list of names] = []",
    ):
        assert line in result.stdout.splitlines(), line
    assert "Optional" not in result.stdout and "None" not in result.stdout
