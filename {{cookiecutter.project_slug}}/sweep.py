"""Search hyperparameters: python sweep.py [SWEEP.yaml] [CONFIG.yaml ...] [key=value ...] --trials N

The search space and the study's settings are in configs/sweep.yaml; run
`python sweep.py --help` for the options.
"""

import sys

from {{ cookiecutter.package_name }}.sweep import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
