"""Export the model of a checkpoint for inference, checked against the model itself.

    python export.py CHECKPOINT            # everything, into <run folder>/export/
    python export.py CHECKPOINT OUTPUT     # one file: weights, .pt2 or .onnx by its suffix

CHECKPOINT is a checkpoint file or a run folder (its best.pt, else last.pt), as for
evaluate.py and predict.py. The checkpoint is verified (SHA-256) and loaded safely; where
the run kept a moving average of the weights (train.ema_decay), that is what is exported.
By default `<run>/export/` gets:

    model.safetensors (model.pt where the project has no safetensors)   the weights, with
        the class names, normalisation and model config in its header (and model.*.json)
    model.pt2     a torch.export program: runs without this project's model code
    model.onnx    an ONNX model (with the packages of `pip install -e .[export]`; else skipped
                  with a line saying so)
    export.json   for each file, read back and run on real validation images beside the
                  model: the largest logit difference and the top-1 agreement

A program beyond the tolerance is refused with one line and no file. OUTPUT names one file
instead, with `OUTPUT.json` beside it.

The files of an export appear together or not at all: a failure, Ctrl-C, SIGTERM or SIGHUP
on the way leaves none (it says so in one line, and exits 128 + the signal's number). An
export replaces only what an earlier export wrote: an OUTPUT that is still the file its
`OUTPUT.json` card records (size and SHA-256), an export/ folder's files that its export.json
records. Any other existing file (a training checkpoint above all, or a file put in place of
an export beside its card) is refused with one line and left as it is.

`python predict.py FILE IMAGES` and `python evaluate.py FILE` take any of these files; in
code, read weights back with `<package>.checkpoint.load_weights(path)`, a .pt2 program with
`torch.export.load(path).module()`.
"""

import sys
from pathlib import Path

from {{ cookiecutter.package_name }}.features import has_feature
from {{ cookiecutter.package_name }}.runs import run_dir_of

# Projects generated with safetensors write them (and export them by default).
HAS_SAFETENSORS = has_feature("safetensors_io")
WEIGHT_SUFFIXES = (".safetensors", ".pt") if HAS_SAFETENSORS else (".pt",)  # first: default
PROGRAM_SUFFIXES = (".pt2", ".onnx")  # a torch.export program, an ONNX model
SUFFIXES = (*WEIGHT_SUFFIXES, *PROGRAM_SUFFIXES)
USAGE = (
    f"usage: python export.py CHECKPOINT_OR_RUN_FOLDER [OUTPUT, ending in {' or '.join(SUFFIXES)}]"
)


def default_folder(checkpoint: Path) -> Path:
    return run_dir_of(checkpoint) / "export"


def main(argv: list[str]) -> int:
    if argv[:1] in (["-h"], ["--help"]):
        print(USAGE)
        return 0
    if not 1 <= len(argv) <= 2:
        print(USAGE, file=sys.stderr)
        return 2
    checkpoint = Path(argv[0])
    output = Path(argv[1]) if len(argv) == 2 else None
    if output is not None and output.suffix not in SUFFIXES:
        print(f"error: OUTPUT {output} must end in {' or '.join(SUFFIXES)}", file=sys.stderr)
        return 2
    from {{ cookiecutter.package_name }}.errors import exit_code_of
    from {{ cookiecutter.package_name }}.stopping import exit_code_unless_stopped

    fix = "name a writable OUTPUT as the second argument"
    return exit_code_unless_stopped(exit_code_of, export, checkpoint, output, fix=fix)


def export(checkpoint: Path, output: Path | None) -> int:
    # Imported only now: torch takes seconds to import, and usage errors need none of it.
    from {{ cookiecutter.package_name }}.export_program import (
        check_export_folder,
        check_output_file,
        export_program,
    )
    from {{ cookiecutter.package_name }}.exported import (
        check_replaceable,
        export_weights,
        info_path,
    )
    from {{ cookiecutter.package_name }}.files import staged_files
    from {{ cookiecutter.package_name }}.inference import resolve_checkpoint

    checkpoint = resolve_checkpoint(checkpoint)
    if output is None:
        check_export_folder(default_folder(checkpoint))
        return export_everything(checkpoint, default_folder(checkpoint))
    check_output_file(checkpoint, output)
    check_replaceable(output)
    if output.suffix in PROGRAM_SUFFIXES:
        parity = export_program(checkpoint, output)
        print(
            f"checked on {parity['images']} validation images: largest logit difference "
            f"{parity['max_abs_logit_difference']:.2e}, top-1 agreement "
            f"{parity['top1_agreement']:.4f}"
        )
        print(f"wrote the model of {checkpoint} as a program to {output}", end=" ")
    else:
        with staged_files(output.parent) as staging:  # the weights and their card together
            export_weights(checkpoint, staging / output.name)
        print(f"wrote the model weights of {checkpoint} to {output}", end=" ")
    print(f"(and {info_path(output).name})")
    return 0


def export_everything(checkpoint: Path, folder: Path) -> int:
    from {{ cookiecutter.package_name }}.export_program import export_all

    for name, figures in export_all(checkpoint, folder).items():
        if "skipped" in figures:
            print(f"{name}: skipped, {figures['skipped']}")
        else:
            print(
                f"{name}: largest logit difference {figures['max_abs_logit_difference']:.2e}, "
                f"top-1 agreement {figures['top1_agreement']:.4f} on {figures['images']} "
                "validation images"
            )
    print(f"wrote the model of {checkpoint} to {folder} (figures in export.json)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
