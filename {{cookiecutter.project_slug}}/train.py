"""Train the model: python train.py [CONFIG.yaml ...] [key=value ...]

Run `python train.py --help` for every setting. The settings live in configs/default.yaml.
"""

import sys

from {{ cookiecutter.package_name }}.cli import DEFAULT_CONFIG, parse_command_line, split_arguments


def main() -> int:
    cfg, print_only = parse_command_line(sys.argv[1:])
    if print_only:
        return 0
    from {{ cookiecutter.package_name }}.errors import exit_code_of

    # run() turns the errors of training into one line itself; this covers its import.
    return exit_code_of(train, cfg, fix="point run.dir at a writable folder")


def train(cfg) -> int:
    # Imported only now: torch takes seconds to import, and --help needs none of it.
    from {{ cookiecutter.package_name }}.resume_rules import settings_given
    from {{ cookiecutter.package_name }}.train import run

    # A resumed run keeps its own settings but those given here (see resume_rules.py).
    config_files, overrides, _ = split_arguments(sys.argv[1:])
    given = settings_given([path for path in config_files if path != DEFAULT_CONFIG], overrides)
    return run(cfg, given=given)


if __name__ == "__main__":
    sys.exit(main())
