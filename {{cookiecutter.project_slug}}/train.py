"""Train the model: python train.py [CONFIG.yaml ...] [key=value ...]

Run `python train.py --help` for every setting. The settings live in configs/default.yaml.
With --find-lr, a learning-rate range test with those settings instead (docs/lr-find.md).
"""

import sys

from {{ cookiecutter.package_name }}.cli import (
    DEFAULT_CONFIG,
    parse_command_line,
    split_arguments,
    wants_lr_find,
)


def main() -> int:
    cfg, print_only = parse_command_line(sys.argv[1:])
    if print_only:
        return 0
    from {{ cookiecutter.package_name }}.errors import exit_code_of

    # run() and run_lr_find() turn their errors into one line themselves; this covers
    # their import.
    task = find_lr if wants_lr_find(sys.argv[1:]) else train
    return exit_code_of(task, cfg, fix="point run.dir at a writable folder")


def train(cfg) -> int:
    # Imported only now: torch takes seconds to import, and --help needs none of it.
    from {{ cookiecutter.package_name }}.resume_rules import settings_given
    from {{ cookiecutter.package_name }}.train import run

    # A resumed run keeps its own settings but those given here (see resume_rules.py).
    config_files, overrides, _ = split_arguments(sys.argv[1:])
    given = settings_given([path for path in config_files if path != DEFAULT_CONFIG], overrides)
    return run(cfg, given=given)


def find_lr(cfg) -> int:
    from {{ cookiecutter.package_name }}.lr_find import run_lr_find

    # The printed command repeats the config files and overrides of this command line.
    return run_lr_find(cfg, sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
