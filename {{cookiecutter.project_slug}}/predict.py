"""Predict the classes of images with a trained checkpoint.

    python predict.py CHECKPOINT IMAGE_OR_FOLDER [OUTPUT.csv]

CHECKPOINT is a checkpoint file or a run folder (its best.pt, else last.pt). A folder is
searched for images recursively. Prints one line per image (file, class, probability) and
writes them with the top classes to OUTPUT.csv, by default `predictions.csv` in the run
folder. Images are prepared as for validation in training (resize, centre crop, the
normalisation of the run). Unreadable files are skipped with a warning.
"""

import logging
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
    # Imported only now: torch takes seconds to import, and usage errors need none of it.
    from {{ cookiecutter.package_name }}.checkpoint import CheckpointError
    from {{ cookiecutter.package_name }}.config import ConfigError
    from {{ cookiecutter.package_name }}.inference import (
        image_files,
        load_trained,
        predict_files,
        resolve_checkpoint,
        write_predictions,
    )
    from {{ cookiecutter.package_name }}.runs import run_dir_of

    # Messages (a skipped file, how the data was read) go to stderr, results to stdout.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    try:
        files = image_files(Path(argv[1]))
        checkpoint = resolve_checkpoint(Path(argv[0]))
        trained = load_trained(checkpoint, [])
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except CheckpointError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    predictions = predict_files(trained, files)
    if not predictions:
        print(f"error: none of the {len(files)} files could be read as an image", file=sys.stderr)
        return 1
    for prediction in predictions:
        probability, index = prediction.probabilities.max(dim=0)
        print(f"{prediction.file}\t{trained.classes[index]}\t{probability.item():.4f}")
    output = Path(argv[2]) if len(argv) == 3 else run_dir_of(checkpoint) / "predictions.csv"
    write_predictions(predictions, trained.classes, output)
    print(f"wrote {len(predictions)} predictions to {output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
