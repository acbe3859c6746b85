"""Write an image folder as tar shards for training from elsewhere (docs/shards.md).

    python prepare_shards.py DATA_ROOT OUT [--shard-size MB | --per-shard N]
                             [--val-fraction F] [--split-seed S] [--skip-bad]
                             [--decoded N [--resize R] [--interpolation MODE]]

DATA_ROOT is an image folder as data.dataset=imagefolder reads it (train/ and val/ class
folders, or one folder of classes); its images are listed, split and checked as training
lists them, with --val-fraction, --split-seed and --skip-bad in the roles of data.val_fraction,
data.split_seed and data.skip_bad. OUT receives train-NNNNNN.tar and val-NNNNNN.tar shards
in the WebDataset layout and shards.json, their index, written last. Train from them with
`python train.py data.dataset=shards data.root=OUT` (or OUT copied to a URL).

With --decoded N, each image is stored decoded for data.image_size=N (resized with
--resize and --interpolation, in the roles of data.resize and data.interpolation), as the
decoded cache stores it: shards several times larger, and training that decodes nothing,
for collections where decoding sets the pace (docs/shards.md).
"""

import argparse
import logging
import sys
from pathlib import Path

USAGE = (
    "usage: python prepare_shards.py DATA_ROOT OUT [--shard-size MB | --per-shard N] "
    "[--val-fraction F] [--split-seed S] [--skip-bad] "
    "[--decoded N [--resize R] [--interpolation MODE]]"
)


class OneLineParser(argparse.ArgumentParser):
    """argparse, with its errors said in one line and exit status 2, as train.py's are."""

    def error(self, message: str) -> None:
        print(f"error: {message}; {USAGE}", file=sys.stderr)
        sys.exit(2)


def positive(kind):
    def parse(text: str):
        value = kind(text)
        if not value > 0:
            raise ValueError(text)
        return value

    parse.__name__ = f"positive {kind.__name__}"
    return parse


def natural(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError(text)
    return value


def at_least_8(text: str) -> int:
    value = int(text)
    if value < 8:  # data.image_size's own bound
        raise ValueError(text)
    return value


def fraction(text: str) -> float:
    value = float(text)
    if not 0 <= value < 1:
        raise ValueError(text)
    return value


def parse_arguments(argv: list[str]) -> argparse.Namespace:
    parser = OneLineParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.usage = USAGE.removeprefix("usage: ")
    parser.add_argument("data_root", type=Path, metavar="DATA_ROOT")
    parser.add_argument("out", type=Path, metavar="OUT")
    size = parser.add_mutually_exclusive_group()
    size.add_argument(
        "--shard-size",
        type=positive(float),
        default=256,
        metavar="MB",
        help="about this many megabytes per shard (default 256)",
    )
    size.add_argument(
        "--per-shard", type=positive(int), metavar="N", help="N images per shard instead"
    )
    parser.add_argument(
        "--val-fraction",
        type=fraction,
        default=0.2,
        metavar="F",
        help="without a val/ folder: share of each class held out (data.val_fraction, 0.2)",
    )
    parser.add_argument(
        "--split-seed",
        type=natural,
        default=0,
        metavar="S",
        help="seed of that split (data.split_seed, 0)",
    )
    parser.add_argument(
        "--skip-bad",
        action="store_true",
        help="leave unreadable images out with a warning (data.skip_bad)",
    )
    parser.add_argument(
        "--decoded",
        type=at_least_8,
        metavar="N",
        help="store each image decoded for data.image_size=N instead of its file's bytes",
    )
    parser.add_argument(
        "--resize",
        type=natural,
        metavar="R",
        help="with --decoded: data.resize (default N * 1.14; 0 = no resize)",
    )
    parser.add_argument(
        "--interpolation",
        choices=("bilinear", "bicubic", "nearest"),
        metavar="MODE",
        help="with --decoded: data.interpolation, bilinear (default), bicubic or nearest",
    )
    arguments = parser.parse_args(argv)
    if arguments.decoded is None and (arguments.resize, arguments.interpolation) != (None, None):
        parser.error("--resize and --interpolation apply with --decoded N only")
    return arguments


def main(argv: list[str]) -> int:
    arguments = parse_arguments(argv)
    from {{ cookiecutter.package_name }}.errors import exit_code_of

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    return exit_code_of(prepare, arguments, fix="name a writable OUT folder")


def prepare(arguments: argparse.Namespace) -> int:
    # Imported only now: torch takes seconds to import, and usage errors need none of it.
    from {{ cookiecutter.package_name }}.config import DataConfig
    from {{ cookiecutter.package_name }}.data.shard_writer import Decoding, ShardPlan, prepare_shards

    data = DataConfig(
        dataset="imagefolder",
        root=str(arguments.data_root),
        val_fraction=arguments.val_fraction,
        split_seed=arguments.split_seed,
        skip_bad=arguments.skip_bad,
    )
    plan = ShardPlan(arguments.per_shard, round(arguments.shard_size * 1e6))
    decoding = None
    if arguments.decoded is not None:
        decoding = Decoding(
            arguments.decoded, arguments.resize, arguments.interpolation or "bilinear"
        )
    prepare_shards(data, arguments.out, plan, decoding)
    print(f"train from them: python train.py data.dataset=shards data.root={arguments.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
