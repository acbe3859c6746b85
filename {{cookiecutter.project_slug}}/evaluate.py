"""Evaluate a trained checkpoint on the validation set of the data it was trained with.

    python evaluate.py run.resume=CHECKPOINT_OR_RUN_FOLDER [key=value ...]
    python evaluate.py CHECKPOINT_OR_RUN_FOLDER [key=value ...]

A run folder means its checkpoints/best.pt (else last.pt). The data and model settings come
from the checkpoint; `key=value` overrides change them, e.g. `data.root=other/images` or
`train.device=cpu`. Prints accuracy, top-5 accuracy (more than 5 classes) and per-class
accuracy, and writes metrics.json, per_class.csv, confusion_matrix.csv and
confusion_matrix.png to `<run folder>/eval/<checkpoint name>/`.
"""

import logging
import sys
from pathlib import Path

USAGE = "usage: python evaluate.py run.resume=CHECKPOINT_OR_RUN_FOLDER [key=value ...]"


def parse_arguments(argv: list[str]) -> tuple[str, list[str]]:
    """(checkpoint or run folder, the other overrides); exits 2 with the usage if unclear."""
    target, overrides = None, []
    for argument in argv:
        if argument.startswith("run.resume="):
            target = argument.partition("=")[2]
        elif "=" in argument:
            overrides.append(argument)
        elif target is None and not argument.startswith("-"):
            target = argument
        else:
            print(f"error: unexpected argument {argument!r}\n{USAGE}", file=sys.stderr)
            sys.exit(2)
    if not target:
        print(USAGE, file=sys.stderr)
        sys.exit(2)
    return target, overrides


def main(argv: list[str]) -> int:
    if argv[:1] in (["-h"], ["--help"]):
        print(__doc__.strip())
        return 0
    target, overrides = parse_arguments(argv)
    from {{ cookiecutter.package_name }}.errors import exit_code_of

    # Messages (a skipped file, how the data was read) go to stderr, results to stdout.
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    fix = "evaluate.py writes to the run folder's eval/: copy the run folder somewhere writable"
    return exit_code_of(evaluate, Path(target), overrides, fix=fix)


def evaluate(target: Path, overrides: list[str]) -> int:
    # Imported only now: torch takes seconds to import, and usage errors need none of it.
    from {{ cookiecutter.package_name }}.errors import print_lines
    from {{ cookiecutter.package_name }}.inference import (
        evaluate_checkpoint,
        load_trained,
        resolve_checkpoint,
        write_evaluation,
    )
    from {{ cookiecutter.package_name }}.runs import run_dir_of

    checkpoint = resolve_checkpoint(target)
    trained = load_trained(checkpoint, overrides)
    result = evaluate_checkpoint(trained)
    # The figures first: where the files cannot be written, they are still shown (and a
    # reader of stdout that stops early, `| head`, does not stop the files being written).
    top = f", top-5 accuracy {result.top_k:.4f}" if result.top_k is not None else ""
    lines = [
        f"checkpoint {checkpoint} (step {trained.step}), {result.images} validation images",
        f"accuracy {result.accuracy:.4f}{top}, loss {result.loss:.4f}",
    ]
    width = max(len(name) for name in result.classes)
    for name, count, correct, accuracy in result.per_class():
        shown = "   -  " if accuracy is None else f"{accuracy:.4f}"
        lines.append(f"  {name:<{width}}  {shown}  ({correct}/{count})")
    print_lines(lines)
    written = write_evaluation(result, trained, run_dir_of(checkpoint) / "eval" / checkpoint.stem)
    print_lines(["wrote " + ", ".join(str(path) for path in written)])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
