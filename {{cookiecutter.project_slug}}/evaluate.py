"""Evaluate a trained checkpoint on the validation set of the data it was trained with.

    python evaluate.py run.resume=CHECKPOINT_OR_RUN_FOLDER [key=value ...]
    python evaluate.py CHECKPOINT_OR_RUN_FOLDER [key=value ...]

A run folder means its checkpoints/best.pt (else last.pt). The data and model settings come
from the checkpoint; `key=value` overrides change them, e.g. `data.root=other/images` or
`train.device=cpu`. Prints accuracy, top-5 accuracy (more than 5 classes) and per-class
accuracy, and writes metrics.json, per_class.csv, confusion_matrix.csv,
confusion_matrix.png and data.json (the data settings used) to
`<run folder>/eval/<checkpoint name>/`.

Evaluated on other data (an override of data.* or seed that decides which images are read
and how they are prepared, e.g. data.root), the files go beside those of the checkpoint's
own data, to `eval/<checkpoint name>-on-<data folder name>-<digest of the data settings>/`:
a second evaluation on other data never replaces the first. The files of an evaluation
appear together or not at all: a failure, Ctrl-C, SIGTERM or SIGHUP on the way leaves none
(it says so in one line, and exits 128 + the signal's number). A folder that holds files
evaluate.py did not write is refused with one line and left as it is.
"""

import dataclasses
import hashlib
import json
import logging
import os
import re
import sys
from pathlib import Path

USAGE = "usage: python evaluate.py run.resume=CHECKPOINT_OR_RUN_FOLDER [key=value ...]"
# Overrides that change where the data is read from or how fast, never which images or how
# they are prepared: an evaluation with them is still one of the checkpoint's own data.
SAME_DATA = {"data.download", "data.num_workers", "data.cache", "data.batch_size"}


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
    from {{ cookiecutter.package_name }}.stopping import exit_code_unless_stopped

    # Messages (a skipped file, how the data was read) go to stderr, results to stdout.
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    fix = "evaluate.py writes to the run folder's eval/: copy the run folder somewhere writable"
    return exit_code_unless_stopped(exit_code_of, evaluate, Path(target), overrides, fix=fix)


def evaluate(target: Path, overrides: list[str]) -> int:
    # Imported only now: torch takes seconds to import, and usage errors need none of it.
    from {{ cookiecutter.package_name }}.errors import print_lines
    from {{ cookiecutter.package_name }}.files import (
        atomic_write_text,
        staged_files,
        written_record,
    )
    from {{ cookiecutter.package_name }}.inference import (
        evaluate_checkpoint,
        load_trained,
        resolve_checkpoint,
        write_evaluation,
    )

    checkpoint = resolve_checkpoint(target)
    trained = load_trained(checkpoint, overrides)
    data = data_settings(trained.cfg)
    folder = evaluation_folder(checkpoint, data, overrides)
    check_evaluation_folder(folder)  # before the work: a folder it may not write stops it
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
    with staged_files(folder) as staging:  # all of them, or none
        written = write_evaluation(result, trained, staging)
        # What it wrote, as written: a later evaluation replaces only files still so.
        made = written_record(staging, [path.name for path in written])
        record = {"overrides": overrides, "data": data, "written": made}
        atomic_write_text(staging / DATA_FILE, json.dumps(record, indent=2) + "\n")
    names = [path.name for path in written] + [DATA_FILE]
    other = data_overrides(overrides, data)
    if other:
        print_lines(
            [f"evaluated on other data than its own ({' '.join(other)}): written beside it"]
        )
    print_lines(["wrote " + ", ".join(str(folder / name) for name in names)])
    return 0


DATA_FILE = "data.json"


def data_settings(cfg) -> dict:
    """The settings that decide which images an evaluation reads and how they are prepared
    (data.*, less SAME_DATA, and the seed), with data.root as an absolute path."""
    data = {
        f"data.{key}": value
        for key, value in dataclasses.asdict(cfg.data).items()
        if f"data.{key}" not in SAME_DATA
    }
    data["data.root"] = os.path.abspath(data["data.root"])
    return {**data, "seed": cfg.seed}


def evaluation_folder(checkpoint: Path, data: dict, overrides: list[str]) -> Path:
    """`<run>/eval/<checkpoint name>/` for the checkpoint's own data; with an override that
    changes the data, `<checkpoint name>-on-<data folder name>-<digest of data>/` beside it."""
    from {{ cookiecutter.package_name }}.runs import run_dir_of

    changing = {_key(override) for override in data_overrides(overrides, data)}
    evaluations = run_dir_of(checkpoint) / "eval"
    if not changing:
        return evaluations / checkpoint.stem
    digest = hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:8]
    root = Path(data["data.root"]).name if "data.root" in changing else "data"
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", root).strip("._")[:40] or "data"
    return evaluations / f"{checkpoint.stem}-on-{name}-{digest}"


def data_overrides(overrides: list[str], data: dict) -> list[str]:
    """The overrides that change the data (its settings `data`: see data_settings)."""
    return [override for override in overrides if _key(override) in data]


def _key(override: str) -> str:
    return override.partition("=")[0].strip().lstrip("+~")


# The files an evaluation writes (inference.write_evaluation), beside DATA_FILE.
EVALUATION_FILES = ("metrics.json", "per_class.csv", "confusion_matrix.csv", "confusion_matrix.png")


def check_evaluation_folder(folder: Path) -> None:
    """ConfigError unless `folder` is new, empty or an earlier evaluation whose files that
    this one would replace are each as its DATA_FILE records them (size and SHA-256):
    evaluate.py replaces no file it did not write, nor one changed since."""
    from {{ cookiecutter.package_name }}.config import ConfigError
    from {{ cookiecutter.package_name }}.files import foreign_file, read_record, recorded_files

    if not os.path.lexists(folder) or (folder.is_dir() and not any(folder.iterdir())):
        return
    record = read_record(folder / DATA_FILE, "data") if folder.is_dir() else None
    earlier = record or read_record(folder / "metrics.json", "checkpoint")
    if not folder.is_dir() or earlier is None:
        raise ConfigError(
            f"{folder} holds files that evaluate.py did not write (it has no metrics.json of "
            "an earlier evaluation); move them away, then evaluate again"
        )
    if record is None and os.path.lexists(folder / DATA_FILE):
        foreign = folder / DATA_FILE
    else:
        foreign = foreign_file(folder, EVALUATION_FILES, recorded_files(record))
    if foreign is not None:
        raise ConfigError(
            f"{foreign} is not the file an earlier evaluation wrote there (its {DATA_FILE} "
            "records no such file, or another content), and this evaluation would replace "
            "it; move it away, then evaluate again"
        )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
