"""Train the model: python train.py [CONFIG.yaml ...] [key=value ...]

Run `python train.py --help` for every setting. The settings live in configs/default.yaml.
"""

import sys

from {{ cookiecutter.package_name }}.cli import parse_command_line


def main() -> int:
    cfg, print_only = parse_command_line(sys.argv[1:])
    if print_only:
        return 0
    # Imported only now: torch takes seconds to import, and --help needs none of it.
    from {{ cookiecutter.package_name }}.train import run

    return run(cfg)


if __name__ == "__main__":
    sys.exit(main())
