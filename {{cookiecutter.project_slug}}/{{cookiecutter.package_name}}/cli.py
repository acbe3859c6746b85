"""The command line of train.py: config files, `key=value` overrides and a few flags.

Kept free of torch imports, so `--help` and config errors answer at once.
"""

import sys
from pathlib import Path

from .config import Config, ConfigError, get_setting, load_config, schema_fields, to_yaml
from .config_checks import type_words
from .yaml_files import spelling

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "default.yaml"
# train.py's flag for the learning-rate range test (lr_find.py), anywhere among the arguments.
FIND_LR = "--find-lr"
USAGE = """\
usage: python train.py [CONFIG.yaml ...] [key=value ...] [--find-lr] [--print-config] [--help]

Settings come from configs/default.yaml, then each CONFIG.yaml in order, then the
key=value overrides (later wins). Examples:
  python train.py optim.lr=0.003 train.epochs=10
  python train.py configs/experiments/long_schedule.yaml data.batch_size=64
  python train.py run.dir=runs/first run.resume=auto     # continue a stopped run
  python train.py --find-lr data.batch_size=64            # suggest an optim.lr to train with

--find-lr: instead of training, a learning-rate range test with these settings: a short
sweep of rising learning rates, written to runs/<run.name>-lr-find-<timestamp>/ (lr_find.csv,
lr_find.png); prints the suggested optim.lr and the command that trains with it.
"""


def help_text() -> str:
    """The usage line and every setting with its type and default in YAML, and what it does."""
    lines = [USAGE, "settings:"]
    defaults = Config()
    for key, item in schema_fields():
        default = spelling(get_setting(defaults, key), limit=200)
        lines.append(f"  {key} [{type_words(item, in_help=True)}] = {default}")
        lines.append(f"      {item.metadata['help']}")
    return "\n".join(lines)


def parse_command_line(argv: list[str]) -> tuple[Config, bool]:
    """The validated config, and whether only printing it was asked for.

    Exits with status 0 after `--help`, and 2 with one line on stderr for any error.
    """
    if "-h" in argv or "--help" in argv:
        print(help_text())
        sys.exit(0)
    config_files, overrides, print_only = split_arguments(argv)
    try:
        cfg = load_config(config_files, overrides)
    except ConfigError as error:
        _fail(str(error))
    if print_only:
        print(to_yaml(cfg), end="")
    return cfg, print_only


def wants_lr_find(argv: list[str]) -> bool:
    """Whether the command line asks for the learning-rate range test instead of training."""
    return FIND_LR in argv


def split_arguments(argv: list[str]) -> tuple[list[str | Path], list[str], bool]:
    """(config files, starting with configs/default.yaml; key=value overrides; whether
    --print-config was given), --find-lr passed over; exits 2 with one line for an
    argument that is none of these."""
    # The schema holds the same defaults, so an installed copy without configs/ still works.
    config_files: list[str | Path] = [DEFAULT_CONFIG] if DEFAULT_CONFIG.is_file() else []
    overrides, print_only = [], False
    for argument in argv:
        if argument == "--print-config":
            print_only = True
        elif argument == FIND_LR:
            continue  # train.py asks for it itself: see wants_lr_find
        elif argument.startswith("-") and "=" not in argument:
            _fail(f"unknown option {argument!r}; options: --help, --print-config, {FIND_LR}")
        elif "=" in argument:
            overrides.append(argument)
        elif argument.endswith((".yaml", ".yml")):
            config_files.append(argument)
        else:
            _fail(
                f"argument {argument!r} is neither a .yaml file nor key=value; "
                "write overrides as key=value, e.g. optim.lr=0.01"
            )
    return config_files, overrides, print_only


def _fail(message: str) -> None:
    one_line = " ".join(message.split())  # a value quoted in the message may hold a line break
    print(f"error: {one_line}", file=sys.stderr)
    sys.exit(2)
