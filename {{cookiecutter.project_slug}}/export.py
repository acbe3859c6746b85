"""Write the model of a checkpoint for inference: its weights, or a program (torch.export, ONNX).

    python export.py CHECKPOINT [OUTPUT]

The checkpoint is verified (SHA-256) and loaded safely. OUTPUT defaults to `weights` plus
the first of WEIGHT_SUFFIXES, in the run folder. Beside it, `OUTPUT.json` records what
using the model needs: the class names, the normalisation and the config of the run (a
.safetensors file holds them in its header too). An OUTPUT ending in .pt2 is a
torch.export program instead, and one ending in .onnx an ONNX model (with the optional
packages of `pip install -e .[export]`): both run without this project's model code, and
both are checked against the model on real validation images (the largest logit difference
and the top-1 agreement are printed and written to OUTPUT.json), and refused beyond a
tolerance.
`python predict.py OUTPUT IMAGES` and `python evaluate.py OUTPUT` take any of these files; in
code, read weights back with `<package>.checkpoint.load_weights(path)` and
`model.load_state_dict(...)`, a .pt2 program with `torch.export.load(path).module()`.
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
USAGE = f"usage: python export.py CHECKPOINT [OUTPUT, ending in {' or '.join(SUFFIXES)}]"


def default_output(checkpoint: Path) -> Path:
    return run_dir_of(checkpoint) / f"weights{WEIGHT_SUFFIXES[0]}"


def main(argv: list[str]) -> int:
    if argv[:1] in (["-h"], ["--help"]):
        print(USAGE)
        return 0
    if not 1 <= len(argv) <= 2:
        print(USAGE, file=sys.stderr)
        return 2
    checkpoint = Path(argv[0])
    output = Path(argv[1]) if len(argv) == 2 else default_output(checkpoint)
    if output.suffix not in SUFFIXES:
        print(f"error: OUTPUT {output} must end in {' or '.join(SUFFIXES)}", file=sys.stderr)
        return 2
    from {{ cookiecutter.package_name }}.errors import exit_code_of

    fix = "name a writable OUTPUT as the second argument"
    return exit_code_of(export, checkpoint, output, fix=fix)


def export(checkpoint: Path, output: Path) -> int:
    # Imported only now: torch takes seconds to import, and usage errors need none of it.
    from {{ cookiecutter.package_name }}.exported import export_weights, info_path

    if output.suffix in PROGRAM_SUFFIXES:
        from {{ cookiecutter.package_name }}.export_program import export_program

        parity = export_program(checkpoint, output)
        print(
            f"checked on {parity['images']} validation images: largest logit difference "
            f"{parity['max_abs_logit_difference']:.2e}, top-1 agreement "
            f"{parity['top1_agreement']:.4f}"
        )
        print(f"wrote the model of {checkpoint} as a program to {output}", end=" ")
    else:
        export_weights(checkpoint, output)
        print(f"wrote the model weights of {checkpoint} to {output}", end=" ")
    print(f"(and {info_path(output).name})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
