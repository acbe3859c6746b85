"""Predict the classes of images with a trained checkpoint.

    python predict.py CHECKPOINT IMAGE_OR_FOLDER [OUTPUT.csv]

CHECKPOINT is a checkpoint file or a run folder (its best.pt, else last.pt). A folder is
searched for images recursively. Prints one line per image (file, class, probability) and
writes them with the top classes to OUTPUT.csv. Without OUTPUT.csv they go to
`predictions.csv` in the run folder, or where that exists already to the first free
`predictions-2.csv`, `predictions-3.csv`, ...: earlier predictions are never overwritten
unless named, and a named OUTPUT.csv replaces only predictions that predict.py wrote (any
other file is refused with one line and left as it is). CHECKPOINT may also be weights
written by export.py. Images are prepared as for validation in training (resize, centre
crop, the normalisation of the run). Unreadable files are skipped with a warning.
"""

import logging
import os
import sys
from pathlib import Path

USAGE = "usage: python predict.py CHECKPOINT IMAGE_OR_FOLDER [OUTPUT.csv]"


def main(argv: list[str]) -> int:
    if argv[:1] in (["-h"], ["--help"]):
        print(__doc__.strip())
        return 0
    if not 2 <= len(argv) <= 3 or any(argument.startswith("-") for argument in argv):
        print(USAGE, file=sys.stderr)
        return 2
    if len(argv) == 3 and not argv[2].endswith(".csv"):
        print(f"error: OUTPUT {argv[2]} must end in .csv\n{USAGE}", file=sys.stderr)
        return 2
    from {{ cookiecutter.package_name }}.errors import exit_code_of

    # Messages (a skipped file, how the data was read) go to stderr, results to stdout.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    output = Path(argv[2]) if len(argv) == 3 else None
    fix = "name a writable OUTPUT.csv as the third argument"
    return exit_code_of(predict, Path(argv[0]), Path(argv[1]), output, fix=fix)


def predict(checkpoint_or_run: Path, images: Path, output: Path | None) -> int:
    # Imported only now: torch takes seconds to import, and usage errors need none of it.
    from {{ cookiecutter.package_name }}.errors import print_lines
    from {{ cookiecutter.package_name }}.inference import (
        image_files,
        load_trained,
        predict_files,
        resolve_checkpoint,
        write_predictions,
    )
    from {{ cookiecutter.package_name }}.runs import run_dir_of

    if output is not None:
        check_output(output)  # before the work: a file it may not replace stops it
    files = image_files(images)
    checkpoint = resolve_checkpoint(checkpoint_or_run)
    trained = load_trained(checkpoint, [])
    predictions = predict_files(trained, files)
    if not predictions:
        print(f"error: none of the {len(files)} files could be read as an image", file=sys.stderr)
        return 1
    if output is None:
        output = first_free(run_dir_of(checkpoint) / "predictions.csv")
    elif output.exists():
        print(f"replacing the earlier {output}", file=sys.stderr)
    # The file first: a reader of stdout that stops early (`| head`) must not cost it.
    write_predictions(predictions, trained.classes, output)
    print_lines(result_line(prediction, trained.classes) for prediction in predictions)
    print(f"wrote {len(predictions)} predictions to {output}", file=sys.stderr)
    return 0


def result_line(prediction, classes: list[str]) -> str:
    """`file<TAB>class<TAB>probability` of the most probable class."""
    probability, index = prediction.probabilities.max(dim=0)
    return f"{prediction.file}\t{classes[index]}\t{probability.item():.4f}"


# How a predictions file of predict.py begins (inference.write_predictions writes it).
HEADER = b"file,class,probability,top"


def check_output(output: Path) -> None:
    """ConfigError unless `output` is new or predictions that predict.py wrote."""
    from {{ cookiecutter.package_name }}.config import ConfigError

    if not os.path.lexists(output):
        return
    if output.is_symlink():  # predict.py writes no links: replacing one loses the user's
        raise ConfigError(
            f"{output} is a symbolic link, which predict.py did not make and would replace; "
            "name a new OUTPUT.csv (or the file it leads to), or move the link away"
        )
    ours = False
    if output.is_file():  # never opened otherwise: a named pipe would wait for a writer
        try:
            with open(output, "rb") as file:
                ours = file.read(len(HEADER)) == HEADER
        except OSError:
            pass
    if not ours:
        raise ConfigError(
            f"{output} exists and is not a predictions file of predict.py; name a new "
            "OUTPUT.csv (or leave it out for the run folder's predictions-N.csv), or move "
            "that file away"
        )


def first_free(path: Path) -> Path:
    """`path`, or where it exists the first of `<stem>-2<suffix>`, `<stem>-3<suffix>`, ..."""
    candidate, number = path, 2
    while os.path.lexists(candidate):  # a link that leads nowhere is someone's too
        candidate = path.with_name(f"{path.stem}-{number}{path.suffix}")
        number += 1
    return candidate


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
