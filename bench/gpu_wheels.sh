#!/usr/bin/env bash
# Downloads into bench/wheels/ the packages that bench/gpu_check.sh needs on a GPU machine
# beyond those it already has, as wheels for CPython 3.12 on x86-64 Linux:
#
#     bench/gpu_wheels.sh            (needs pip and a network; run from anywhere)
#
# The lent GPU machines have no network but hold torch, torchvision, Lightning, TensorBoard,
# safetensors, hypothesis, pytest, matplotlib, tqdm, numpy, pillow, PyYAML, Jinja2, click,
# requests, rich, packaging and typing-extensions (/work/.library/device/KINDS.md). Missing
# there: cookiecutter (the bake), OmegaConf (every baked project) and Optuna (use_sweeps),
# with the dependencies that are not on the list above. Each is pinned (--no-deps), at the
# version requirements-dev.txt pins or, for a dependency, the one it resolved to here, so
# the set is the same wherever it is made. bench/wheels/ is git-ignored; the GPU check
# installs it with `pip install --no-index --no-deps --target` (see bench/gpu_check.py).
set -euo pipefail
cd "$(dirname "$0")"
WHEELS=(
    cookiecutter==2.7.1 arrow==1.4.0 binaryornot==0.6.0 python-slugify==9.2.0
    text-unidecode==1.3 tzdata==2026.6
    omegaconf==2.4.0
    optuna==5.0.0 alembic==1.20.1 sqlalchemy==2.1.9 mako==1.4.3 colorlog==6.12.0
)
PYTHON=${PYTHON:-python3}
rm -rf wheels && mkdir wheels
"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --dest wheels \
    --python-version 3.12 --implementation cp --abi cp312 \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform any \
    "${WHEELS[@]}"
echo "bench/wheels: $(ls wheels | wc -l) wheels, $(du -sh wheels | cut -f1)"
